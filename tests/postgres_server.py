"""A throwaway PostgreSQL server on loopback (Debian's ``postgresql``: initdb into a temporary
folder, run as the ``postgres`` user when this process is root), for the distributed-search
tests and ``bench/search.py --workers``."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Unavailable(Exception):
    """No PostgreSQL binaries (or no postgres user to run them as root)."""


def postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _as_server_user() -> dict[str, str]:
    """initdb and postgres refuse to run as root: as root, run them as Debian's postgres user."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(0.5)
                return
        time.sleep(0.2)
    raise RuntimeError("PostgreSQL did not start")


@contextmanager
def running_postgres() -> Iterator[str]:
    """A fresh server for the duration; yields its SQLAlchemy URL (user edgetune, password s3cret)."""
    binaries = postgres_bin()
    if binaries is None or (os.geteuid() == 0 and not _has_user("postgres")):
        raise Unavailable("needs Debian's postgresql (make test installs it)")
    folder = Path(tempfile.mkdtemp(prefix="edgetune-pg-"))  # pytest's own folders are closed to the postgres user
    data, sockets = folder / "data", folder / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
    password = folder / "pw"
    password.write_text("s3cret\n")
    os.chmod(password, 0o644)
    init = [str(binaries / "initdb"), "-D", str(data), "-U", "edgetune", "--auth=scram-sha-256", f"--pwfile={password}", "-E", "UTF8"]
    subprocess.run(init, check=True, capture_output=True, **_as_server_user())  # type: ignore[call-overload]
    port = free_port()
    server = subprocess.Popen(
        [str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets), "-c", "listen_addresses=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **_as_server_user(),  # type: ignore[call-overload]
    )
    try:
        _wait_for(port)
        yield f"postgresql+psycopg2://edgetune:s3cret@127.0.0.1:{port}/postgres"
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
