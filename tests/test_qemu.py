"""The emulated board: the real aarch64 builds of LiteRT and ONNX Runtime under qemu user-mode
emulation, pinned to the Raspberry Pi's core, checked against this host on the digits model.

The board is built once into the cache (``edgetune device setup qemu``, about 40 s with the
network) when qemu-user-static and debootstrap are installed and the tests run as root, as in
CI (``make test`` installs both); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import bench_json

from edgetune.cli.main import run
from edgetune.errors import InputError
from edgetune.profile.parity import compare, output_lsb
from edgetune.profile.qemu import CORES, QemuDevice, board_ready


@pytest.fixture(scope="module")
def board() -> None:
    """The cached board, built here when missing (CI builds it; a machine without qemu skips)."""
    if board_ready() is None:
        return
    from edgetune.profile.qemu_setup import missing_tools, setup

    needs = missing_tools()
    if needs:
        pytest.skip("the emulated-board lane needs " + "; ".join(needs) + " (make test installs them as root)")
    try:
        setup()
    except InputError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"could not build the emulated board: {exc.one_line()}")


def _eval(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    code = run(["eval", *argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else {}, captured.err.strip()


@pytest.mark.parametrize(("device", "part"), [("qemu:raspberry-pi-4", "0xd08"), ("qemu:raspberry-pi-5", "0xd0b")])
def test_tflite_on_the_emulated_board_matches_the_host(board, artifacts, capsys, device: str, part: str) -> None:  # type: ignore[no-untyped-def]
    code, doc, err = _eval(capsys, [str(artifacts / "model.tflite"), "--data", "digits:test", "--device", device])
    assert code == 0, err
    parity = doc["parity"]
    assert parity["machine"]["board"]["machine"] == "aarch64" and parity["machine"]["board"]["cpu"] == part
    assert parity["machine"]["host"]["machine"] == platform.machine() and parity["runtime"]["board"] == parity["runtime"]["host"]
    assert set(parity["paths"]) == {"xnnpack", "builtin", "reference"} and parity["samples"] == 360
    assert parity["output_lsb"] > 0 and parity["latency"] is None and "results only" in parity["note"]
    for name in ("xnnpack", "reference"):
        assert parity["paths"][name]["max_lsb"] <= 1, parity["paths"][name]
    for path in parity["paths"].values():
        assert path["top1_agreement"] >= 0.995, path
    host_code, host_doc, _ = _eval(capsys, [str(artifacts / "model.tflite"), "--data", "digits:test"])
    assert host_code == 0 and abs(doc["accuracy"] - host_doc["accuracy"]) <= 0.005


def test_onnx_on_the_emulated_board_and_bench_reports_no_latency(board, artifacts, capsys) -> None:  # type: ignore[no-untyped-def]
    code, doc, err = bench_json(capsys, [str(artifacts / "model.onnx"), "--device", "qemu:raspberry-pi-5", "--samples", "8"])
    assert code == 0, err
    assert doc["kind"] == "emulated" and doc["latency"] is None and doc["target"] == "raspberry-pi-5"
    assert set(doc["paths"]) == {"optimized", "unoptimized"} and doc["samples"] == 8 and "seeded random" in doc["data"]
    assert all(p["max_lsb"] <= 1 for p in doc["paths"].values()), doc["paths"]
    assert "p50_ms" not in doc and "outputs" not in doc


def test_gate_checks_parity_on_the_emulated_board(board, artifacts, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "edgetune.toml"
    body = (
        '[recipe]\nmodel = "edgetune.zoo:digits_cnn"\ncalib = "digits"\neval = "digits:test"\n'
        '[gate]\nartifacts = ["model.tflite"]\n[targets.raspberry-pi-4]\ndevice = "qemu:raspberry-pi-4"\n'
        'parity_samples = 100\nparity_kernels = ["xnnpack", "reference"]\nmax_parity_lsb = 1\nmin_parity_agreement = {agreement}\n'
        "max_latency_p50_ms = 10\n"
    )
    config.write_text(body.format(agreement=0.995))
    report = json.loads((artifacts / "report.json").read_text())
    (tmp_path / "report.json").write_text(json.dumps(report))
    for name in ("model.tflite", "model.onnx"):
        shutil.copy(artifacts / name, tmp_path / name)
    code = run(["gate", "--config", str(config), "--report", str(tmp_path / "report.json"), "--json", "--quiet"])
    doc = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["max_parity_lsb"]["passed"] and checks["min_parity_agreement"]["passed"]
    assert checks["max_parity_lsb"]["kind"] == "emulated" and "100 samples of digits:test" in checks["max_parity_lsb"]["detail"]
    assert not checks["max_latency_p50_ms"]["passed"] and checks["max_latency_p50_ms"]["kind"] == "unavailable", "no latency from qemu"
    assert code == 1 and doc["failed"] == ["raspberry-pi-4: max_latency_p50_ms (model.tflite)"]
    assert set(doc["measurements"]["raspberry-pi-4"]["model.tflite"]["parity"]["paths"]) == {"xnnpack", "reference"}


def test_emulated_devices_fail_in_one_line(artifacts, capsys, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, _, err = bench_json(capsys, [str(artifacts / "model.tflite"), "--device", "qemu:stm32h7"])
    assert code == 2 and err.startswith("error: target stm32h7 has no emulated core") and "qemu:raspberry-pi-4" in err
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "empty"))
    code, _, err = _eval(capsys, [str(artifacts / "model.tflite"), "--data", "digits:test", "--device", "qemu:raspberry-pi-4"])
    assert code == 2 and "\n" not in err and err.endswith("run: edgetune device setup qemu (it says what else it needs)"), err
    code, _, err = _eval(capsys, [str(artifacts / "model.tflite"), "--data", "digits:test", "--device", "adb:emulator-5554"])
    assert code == 2 and err.startswith("error: outputs can be compared on qemu:TARGET or ssh:// devices"), err


def test_cpuinfo_matches_the_core_qemu_emulates() -> None:
    a72 = CORES["cortex-a72"].cpuinfo(2)
    assert a72.count("processor\t:") == 2 and "CPU part\t: 0xd08" in a72 and "asimddp" not in a72, "no dot product on the A72"
    a76 = CORES["cortex-a76"].cpuinfo(1)
    assert "CPU part\t: 0xd0b" in a76 and "asimddp" in a76
    assert QemuDevice.parse("qemu:raspberry-pi-4").core is CORES["cortex-a72"]
    assert QemuDevice.parse("qemu:raspberry-pi-5").core is CORES["cortex-a76"]


def test_parity_counts_lsb_and_changed_predictions() -> None:
    host = np.array([[0.0, 0.5, 1.0], [1.0, 0.0, 0.0]], np.float32)
    board = host.copy()
    board[0, 1] += 0.25  # 1 LSB at a scale of 0.25: no prediction changes
    same = compare(host, board, 0.25)
    assert same["max_lsb"] == 1 and same["differing_share"] == pytest.approx(1 / 6) and same["changed_predictions"] == 0
    board[1, 2] += 1.5  # 6 LSB: the second sample now says class 2
    moved = compare(host, board, 0.25)
    assert moved["max_lsb"] == 6 and moved["top1_agreement"] == 0.5 and moved["changed_predictions"] == 1
    assert compare(host, host, None)["max_lsb"] is None, "a float model has no LSB"


def test_both_artifacts_carry_the_same_output_step(artifacts) -> None:  # type: ignore[no-untyped-def]
    tflite, onnx = output_lsb(artifacts / "model.tflite"), output_lsb(artifacts / "model.onnx")
    assert tflite is not None and tflite == pytest.approx(onnx, rel=1e-6)
    assert output_lsb(artifacts / "model.fp32.onnx") is None


def test_board_archives_keep_links_and_refuse_paths_outside(tmp_path: Path) -> None:
    from edgetune.profile.qemu_setup import _restore, _save_archive, safe_members

    board = tmp_path / "board"
    (board / "rootfs" / "usr" / "bin").mkdir(parents=True)
    (board / "rootfs" / "usr" / "bin" / "python3.11").write_text("elf")
    (board / "rootfs" / "usr" / "bin" / "python3").symlink_to("python3.11")
    (board / "rootfs" / "etc").mkdir()
    (board / "rootfs" / "etc" / "alternatives").symlink_to("/usr/bin/python3")  # absolute: inside the emulated root
    (board / "cores" / "cortex-a72").mkdir(parents=True)
    (board / "board.json").write_text('{"suite": "bookworm"}')
    archive = tmp_path / "board.tar.gz"
    _save_archive(board, archive)
    out = tmp_path / "out"
    out.mkdir()
    assert _restore(archive, out) == {"suite": "bookworm"}
    assert (out / "rootfs" / "usr" / "bin" / "python3").readlink() == Path("python3.11")
    assert (out / "rootfs" / "etc" / "alternatives").readlink() == Path("/usr/bin/python3")
    assert not (out / "cores").exists(), "cores are made again on restore, for that machine's CPU count"

    def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        return info

    escapes = [
        [member("../escape")],
        [member("/etc/passwd")],
        [member("rootfs/x", tarfile.SYMTYPE, "/etc"), member("rootfs/x/cron.d/evil")],  # a write through a link
        [member("rootfs/shadow", tarfile.LNKTYPE, "/etc/shadow")],  # a hard link to a host file
        [member("rootfs/y", tarfile.LNKTYPE, "rootfs/not-in-the-archive")],
    ]
    for members in escapes:
        with pytest.raises(InputError, match="unsafe entry"):
            safe_members(members)
    kept = safe_members([member("rootfs/dev/null", tarfile.CHRTYPE), member("rootfs/a"), member("rootfs/b", tarfile.LNKTYPE, "rootfs/a")])
    assert [m.name for m in kept] == ["rootfs/a", "rootfs/b"], "device files are skipped, inner hard links kept"
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(InputError, match="cannot unpack the board archive"):
        _restore(tmp_path / "broken.tar.gz", out)


def test_setup_says_what_is_missing(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu, no debootstrap here
    assert run(["device", "setup", "qemu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: qemu-aarch64-static is not installed; apt-get install qemu-user-static (Debian/Ubuntu)", err
    assert not (tmp_path / "cache" / "qemu").exists() or not any((tmp_path / "cache" / "qemu").iterdir()), "nothing half-made"
    from edgetune.profile.qemu_setup import missing_tools

    assert any(n.startswith("debootstrap") for n in missing_tools()) and any(n.startswith("qemu") for n in missing_tools())


def test_the_mirror_comes_from_apt(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from edgetune.profile import qemu_setup

    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    assert qemu_setup.apt_mirror([sources]) == "http://mirror.example/debian"
    listing = tmp_path / "sources.list"
    listing.write_text("# a comment\ndeb [arch=amd64] https://other.example/debian bookworm main\n")
    assert qemu_setup.apt_mirror([listing]) == "https://other.example/debian"
    assert qemu_setup.apt_mirror([tmp_path / "missing"]) == qemu_setup.DEFAULT_MIRROR
    ubuntu = tmp_path / "ubuntu.sources"
    ubuntu.write_text("Types: deb\nURIs: http://azure.archive.ubuntu.com/ubuntu/\nSuites: noble noble-updates\nComponents: main\n")
    assert qemu_setup.apt_mirror([ubuntu]) == qemu_setup.DEFAULT_MIRROR, "Ubuntu's mirrors have no bookworm"


def test_several_artifacts_share_one_emulated_process(board, artifacts) -> None:  # type: ignore[no-untyped-def]
    from edgetune.data import load_dataset
    from edgetune.profile.parity import ParityRequest, parity_all

    test = load_dataset("digits:test", "test", limit=40)
    device = QemuDevice.parse("qemu:raspberry-pi-4")
    requests = [ParityRequest(artifacts / name, device, test.x, "digits:test") for name in ("model.tflite", "model.onnx")]
    tflite, onnx = parity_all(requests)
    assert set(tflite["paths"]) == {"xnnpack", "builtin", "reference"} and set(onnx["paths"]) == {"optimized", "unoptimized"}
    assert tflite["samples"] == onnx["samples"] == 40 and tflite["paths"]["xnnpack"]["max_lsb"] == 0
    assert onnx["outputs"]["optimized"].shape == (40, 10) and tflite["outputs"]["xnnpack"].shape == (40, 10)
