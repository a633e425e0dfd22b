"""Benchmarks on a board over SSH: copy the artifact and the bench agent, run it, bring the
JSON back.

The system ``ssh`` and ``scp`` do the work, so the user's own configuration, keys and agent
apply (``--ssh-config`` points at another config file). Host keys are checked strictly and
nothing runs without keys (BatchMode). Commands are argument lists, never a local shell; the
one string the remote shell sees is built from validated parts and ``shlex.quote``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from edgetune.errors import InputError
from edgetune.profile.measure import AGENT, Settings, parse_agent_output

_HOST = re.compile(r"^[A-Za-z0-9_.:-]+$")
_USER = re.compile(r"^[A-Za-z0-9_.-]+$")
_REMOTE_DIR = re.compile(r"^/[A-Za-z0-9_./-]+$")
SSH_FAILED = 255
REMOTE_TIMEOUT = 124  # coreutils timeout's exit status
REMOTE_TIMEOUT = 124  # coreutils timeout's exit status


@dataclass(frozen=True)
class SshDevice:
    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"

    @classmethod
    def parse(cls, url: str) -> SshDevice:
        """``ssh://user@host[:port][?python=/path/to/python]``."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme != "ssh" or not host or not _HOST.match(host) or host.startswith("-"):
            raise InputError(f"device {url!r} is not like ssh://user@host[:port]", "give the board's address")
        user = unquote(parts.username) if parts.username else None
        if user is not None and (not _USER.match(user) or user.startswith("-")):
            raise InputError(f"user name {user!r} in {url!r} has characters edgetune does not pass to ssh", "use a plain user name")
        try:
            port = parts.port
        except ValueError:
            raise InputError(f"the port in {url!r} is not a number in 1..65535", "fix the port") from None
        python = parse_qs(parts.query).get("python", ["python3"])[0]
        return cls(host, user, port, python)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"ssh://{self.destination}{port}"


def _options(config: Path | None, timeout_s: float) -> list[str]:
    options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={max(1, int(timeout_s))}"]
    return (["-F", str(config)] if config is not None else []) + options


class _Session:
    def __init__(self, device: SshDevice, config: Path | None, timeout_s: float) -> None:
        self.device, self.config, self.timeout_s = device, config, timeout_s

    def ssh(self, remote_command: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", *_options(self.config, min(self.timeout_s, 30))]
        if self.device.port:
            argv += ["-p", str(self.device.port)]
        return self._run([*argv, "--", self.device.destination, remote_command], timeout or self.timeout_s)

    def scp(self, local: Path, remote_path: str) -> None:
        # An absolute local path: a relative one with a colon would read as host:path.
        self._copy(str(local.resolve()), f"{self._remote()}:{remote_path}")

    def fetch(self, remote_path: str, local: Path) -> None:
        self._copy(f"{self._remote()}:{remote_path}", str(local.resolve()))

    def _remote(self) -> str:
        host = f"[{self.device.host}]" if ":" in self.device.host else self.device.host  # IPv6 in brackets for scp
        return f"{self.device.user}@{host}" if self.device.user else host

    def _copy(self, source: str, destination: str) -> None:
        argv = ["scp", "-q", *_options(self.config, min(self.timeout_s, 30))]
        if self.device.port:
            argv += ["-P", str(self.device.port)]
        done = self._run([*argv, "--", source, destination], self.timeout_s)
        if done.returncode != 0:
            raise self._error(done)

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise InputError(f"{argv[0]} is not installed on this machine", "install the OpenSSH client") from None
        except subprocess.TimeoutExpired:
            raise InputError(f"{self.device} did not finish within {timeout:g} s", "check the board, or raise --timeout") from None

    def _error(self, done: subprocess.CompletedProcess[str]) -> InputError:
        return ssh_error(done.stderr, str(self.device))


def ssh_error(stderr: str, device: str) -> InputError:
    """The one-line error for a failed ssh or scp, from what OpenSSH printed."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "no message"
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return InputError(f"{device}: the host key is unknown or changed ({last})", "add the board's key to known_hosts (ssh once by hand)")
    if "Permission denied" in text or "Too many authentication failures" in text:
        return InputError(f"{device}: authentication failed ({last})", "check the key in your ssh config or agent")
    if any(k in text for k in ("Connection refused", "timed out", "No route to host", "Could not resolve", "Network is unreachable")):
        return InputError(f"{device} is unreachable ({last})", "check the address, the port and that sshd runs on the board")
    return InputError(f"{device}: ssh failed ({last})", "check the connection with ssh by hand")


def _folder(session: _Session, device: SshDevice) -> str:
    made = session.ssh("mktemp -d")
    if made.returncode != 0:
        raise session._error(made)
    remote_dir = made.stdout.strip().splitlines()[-1] if made.stdout.strip() else ""
    if not _REMOTE_DIR.match(remote_dir):
        raise InputError(f"{device}: mktemp -d answered {remote_dir!r}", "check the board's shell and /tmp")
    return remote_dir


def _agent(session: _Session, device: SshDevice, remote_dir: str, args: list[str], label: str) -> dict[str, Any]:
    agent = " ".join(shlex.quote(part) for part in [device.python, f"{remote_dir}/agent.py", *args])
    # The board stops the agent itself a little before the local timeout: killing the local
    # ssh would leave it running there and disturb later measurements.
    limit = max(1, int(session.timeout_s) - 2)
    command = f"if command -v timeout >/dev/null 2>&1; then exec timeout {limit} {agent}; else exec {agent}; fi"
    done = session.ssh(command)
    if done.returncode == REMOTE_TIMEOUT:
        raise InputError(f"{device} did not finish within {session.timeout_s:g} s", "check the board, or raise --timeout")
    if done.returncode == SSH_FAILED:
        raise session._error(done)
    if done.returncode == 127 or "No such file or directory" in done.stderr and not done.stdout.strip():
        raise InputError(f"{device}: {device.python} is not there", "install Python 3 with numpy on the board, or pass ?python=/path")
    return parse_agent_output(done.stdout, done.stderr, done.returncode, label, str(device))


def run_remote(path: Path, device: SshDevice, settings: Settings, config: Path | None = None) -> dict[str, Any]:
    """Copy ``path`` and the agent to a fresh folder on the board, run, clean up, return the agent's JSON."""
    session = _Session(device, config, settings.timeout_s)
    remote_dir = _folder(session, device)
    try:
        model = f"{remote_dir}/model{path.suffix}"  # the board sees fixed names, never the user's
        session.scp(AGENT, f"{remote_dir}/agent.py")
        session.scp(path, model)
        return _agent(session, device, remote_dir, settings.agent_args(model), path.name)
    finally:
        session.ssh(f"rm -rf {shlex.quote(remote_dir)}", timeout=30)


def run_remote_outputs(
    path: Path, device: SshDevice, inputs: Path, save: Path, kernels: tuple[str, ...], config: Path | None, timeout_s: float
) -> dict[str, Any]:
    """The agent's ``--outputs`` mode on the board: the inputs go over, the outputs come back to ``save``."""
    session = _Session(device, config, timeout_s)
    remote_dir = _folder(session, device)
    try:
        model = f"{remote_dir}/model{path.suffix}"
        session.scp(AGENT, f"{remote_dir}/agent.py")
        session.scp(path, model)
        session.scp(inputs, f"{remote_dir}/inputs.npy")
        args = [model, "--outputs", f"{remote_dir}/inputs.npy", f"{remote_dir}/outputs.npz"]
        raw = _agent(session, device, remote_dir, args + (["--kernels", ",".join(kernels)] if kernels else []), path.name)
        session.fetch(f"{remote_dir}/outputs.npz", save)
        return raw
    finally:
        session.ssh(f"rm -rf {shlex.quote(remote_dir)}", timeout=30)
