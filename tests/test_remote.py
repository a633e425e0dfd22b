"""Benchmarks on a "board" over SSH: a real OpenSSH server on loopback, key-only, whose Python
environment is the Raspberry-Pi-like one (tflite-runtime 2.14, numpy 1.26)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import bench_json

from edgetune.cli.main import run

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Board:
    port: int
    config: Path
    python: str
    folder: Path

    def url(self, python: str | None = None) -> str:
        return f"ssh://{os.environ.get('USER', 'root')}@127.0.0.1:{self.port}?python={python or self.python}"


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    pi_python = os.environ.get("EDGETUNE_TFLITE214")
    if not Path(SSHD).is_file() or not pi_python:
        if os.environ.get("CI"):
            pytest.fail("CI needs openssh-server (make test installs it) and EDGETUNE_TFLITE214")
        pytest.skip("needs Debian's openssh-server and the tflite-runtime 2.14 environment (make test sets both up)")
    folder = tmp_path_factory.mktemp("board")
    for name in ("host_key", "client_key", "stranger_key"):
        _keygen(folder / name)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = _free_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\nAuthorizedKeysFile {folder / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\n"
        f"PermitRootLogin prohibit-password\nPidFile {folder / 'sshd.pid'}\nLogLevel ERROR\n"
    )
    host_key = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (folder / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {folder / 'client_key'}\n  IdentitiesOnly yes\n  UserKnownHostsFile {folder / 'known_hosts'}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stderr=subprocess.PIPE)
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield Board(port, folder / "ssh_config", pi_python, folder)
    server.terminate()
    server.wait(timeout=10)


def test_tflite_on_the_board_runs_tflite_runtime_214_and_warns_about_unaccelerated_int8(board, artifacts, capsys) -> None:  # type: ignore[no-untyped-def]
    code, doc, err = bench_json(
        capsys,
        [
            str(artifacts / "model.tflite"),
            "--device",
            board.url(),
            "--ssh-config",
            str(board.config),
            "--runs",
            "30",
            "--target",
            "raspberry-pi-5",
        ],
    )
    assert code == 0, err
    assert doc["kind"] == "measured" and doc["device"].startswith("ssh://") and doc["runtime"] == "tflite-runtime 2.14.0"
    assert doc["machine"]["numpy"].startswith("1.26") and doc["threads"] == 4
    assert 0 < doc["p50_ms"] <= doc["p99_ms"] and doc["runs"] >= 30
    assert any("reference kernels" in w for w in doc["warnings"]), "tflite-runtime 2.14 does not delegate int8"
    assert "memory_plan" in doc


def test_several_boards_in_parallel(board, artifacts, capsys) -> None:  # type: ignore[no-untyped-def]
    devices = ["--device", board.url(), "--device", board.url()]
    code, doc, err = bench_json(capsys, [str(artifacts / "model.tflite"), *devices, "--ssh-config", str(board.config), "--runs", "10"])
    assert code == 0, err
    assert [r["kind"] for r in doc["results"]] == ["measured", "measured"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unreachable", "is unreachable"),
        ("stranger", "authentication failed"),
        ("unknown-host", "host key is unknown"),
        ("no-runtime", "onnxruntime is not installed"),
        ("no-python", "is not there"),
        ("timeout", "did not finish within"),
    ],
)
def test_board_failures_are_one_clear_line(board, artifacts, capsys, case: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    config, url, model, extra = board.config, board.url(), artifacts / "model.tflite", []
    if case == "unreachable":
        url = f"ssh://root@127.0.0.1:{_free_port()}"
    elif case == "stranger":
        config = board.folder / "stranger_config"
        config.write_text(board.config.read_text().replace("client_key", "stranger_key"))
    elif case == "unknown-host":
        config = board.folder / "empty_known_hosts_config"
        (board.folder / "empty_known_hosts").write_text("")
        config.write_text(board.config.read_text().replace("known_hosts", "empty_known_hosts"))
    elif case == "no-runtime":
        model = artifacts / "model.onnx"  # the board has no onnxruntime
    elif case == "no-python":
        url = board.url(python="/nonexistent/python3")
    else:
        extra = ["--runs", "1", "--min-seconds", "60", "--timeout", "3"]
    code, _, err = bench_json(capsys, [str(model), "--device", url, "--ssh-config", str(config), *extra])
    assert code == 2 and err.startswith("error: ") and "\n" not in err and expected in err, err


def test_device_urls_are_checked_before_anything_runs(artifacts, capsys) -> None:  # type: ignore[no-untyped-def]
    for url in ("ssh://-oProxyCommand=x", "ssh://root@host;rm:22", "ftp://host", "ssh://root@host:99999"):
        code, _, err = bench_json(capsys, [str(artifacts / "model.tflite"), "--device", url])
        assert code == 2 and err.startswith("error: ") and "\n" not in err, (url, err)


def test_ssh_is_required(artifacts, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = bench_json(capsys, [str(artifacts / "model.tflite"), "--device", "ssh://root@127.0.0.1:1"])
    assert code == 2 and "ssh is not installed" in err


def test_no_shell_metacharacters_reach_the_board(board, artifacts, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    odd = tmp_path / "model; touch PWNED $(id).tflite"
    shutil.copy(artifacts / "model.tflite", odd)
    code, doc, err = bench_json(capsys, [str(odd), "--device", board.url(), "--ssh-config", str(board.config), "--runs", "5"])
    assert code == 0, err
    assert not (Path.home() / "PWNED").exists() and not any(Path.home().glob("PWNED*"))


def test_eval_on_the_board_compares_its_outputs_with_the_host(board, artifacts, capsys) -> None:  # type: ignore[no-untyped-def]
    """The board runs tflite-runtime 2.14, the host LiteRT: same file, other kernels."""
    argv = ["eval", str(artifacts / "model.tflite"), "--data", "digits:test", "--device", board.url(), "--ssh-config", str(board.config)]
    assert run([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    parity = doc["parity"]
    assert parity["kind"] == "board" and parity["device"].startswith("ssh://") and parity["samples"] == 360
    assert parity["runtime"]["board"] == "tflite-runtime 2.14.0" and parity["runtime"]["host"].startswith("ai-edge-litert")
    assert "bench measures its latency" in parity["note"] and "seconds" not in parity
    assert set(parity["paths"]) == {"xnnpack", "builtin", "reference"}
    # 2.14 runs int8 on its built-in kernels where the host's LiteRT uses XNNPACK: the default
    # path answers differently (within a few LSB), and the check shows it.
    assert parity["paths"]["xnnpack"]["differing_share"] > 0 and parity["worst"]["max_lsb"] <= 3
    assert all(p["top1_agreement"] >= 0.99 for p in parity["paths"].values())
    assert doc["accuracy"] > 0.95


def test_gate_checks_parity_on_a_real_board(board, artifacts, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import shutil as files

    for name in ("model.tflite", "report.json"):
        files.copy(artifacts / name, tmp_path / name)
    (tmp_path / "edgetune.toml").write_text(
        '[recipe]\neval = "digits:test"\n[gate]\nartifacts = ["model.tflite"]\nrepetitions = 3\nrepetition_seconds = 0.2\nalpha = 0.1\n'
        f'[targets.raspberry-pi-4]\ndevice = "{board.url()}"\nssh_config = "{board.config}"\nparity_samples = 50\nparity_kernels = ["reference"]\nmax_parity_lsb = 3\n'
    )
    argv = ["gate", "--config", str(tmp_path / "edgetune.toml"), "--report", str(tmp_path / "report.json"), "--json", "--quiet"]
    code = run(argv)
    captured = capsys.readouterr()
    assert captured.out, captured.err
    doc = json.loads(captured.out)
    check = next(c for c in doc["checks"] if c["name"] == "max_parity_lsb")
    assert check["kind"] == "measured" and "50 samples of digits:test" in check["detail"] and "reference" in check["detail"]
    assert code == 0 and check["passed"] and check["value"] <= 3, doc["failed"]
