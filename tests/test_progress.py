"""Progress in a log (stderr not a terminal): one line as a stage starts and one as it ends,
claims nothing the stage does not do, and numbers a stage that runs again."""

from __future__ import annotations

import pytest

from edgetune.progress import StderrProgress


def test_log_lines_tell_the_truth_once(capsys: pytest.CaptureFixture[str]) -> None:
    progress = StderrProgress()
    progress.tty = False
    for done in (0, 45, 100):  # a fine-tune reports a share of its budget, not steps
        progress(done, 100, "fine-tune")
    progress(100, 100, "fine-tune")  # reported as ended again: no second pair of lines
    for _ in range(2):
        for done in range(3):
            progress(done, 2, "calibration")
    lines = [line.split(" in ")[0] for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        "fine-tune: started",
        "fine-tune: done",
        "calibration: started",
        "calibration: done",
        "calibration (#2): started",
        "calibration (#2): done",
    ]
