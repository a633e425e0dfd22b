"""The gate's outputs: a table for people, JUnit XML for CI systems (one test case per
budget per target), and Markdown for GitHub's job summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from edgetune.artifacts import write_file
from edgetune.gate.run import Check


def _value(check: Check) -> str:
    if check.value is None:
        return "n/a"
    if check.name == "latency_regression":
        return f"{100 * check.value['slowdown']:+.1f}%, p={check.value['p_value']:.2g}"
    if isinstance(check.value, float):
        return f"{check.value:.4g}"
    if isinstance(check.value, list):
        return "none" if not check.value else ", ".join(map(str, check.value))
    return str(check.value)


def rows(checks: list[Check]) -> list[tuple[str, ...]]:
    return [(c.target, c.label, _value(c), str(c.limit), c.kind, "pass" if c.passed else "FAIL") for c in checks]


HEADER = ("target", "budget", "value", "limit", "kind", "result")


def junit_xml(checks: list[Check]) -> bytes:
    suites = ElementTree.Element(
        "testsuites", name="edgetune gate", tests=str(len(checks)), failures=str(sum(not c.passed for c in checks))
    )
    by_target: dict[str, list[Check]] = {}
    for check in checks:
        by_target.setdefault(check.target, []).append(check)
    for target, group in by_target.items():
        suite = ElementTree.SubElement(
            suites, "testsuite", name=f"edgetune gate: {target}", tests=str(len(group)), failures=str(sum(not c.passed for c in group))
        )
        for check in group:
            case = ElementTree.SubElement(suite, "testcase", classname=f"edgetune.gate.{target}", name=check.label)
            text = f"{check.kind}: value {_value(check)}, limit {check.limit}" + (f"; {check.detail}" if check.detail else "")
            if not check.passed:
                ElementTree.SubElement(case, "failure", message=text).text = text
            else:
                ElementTree.SubElement(case, "system-out").text = text
    ElementTree.indent(suites)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suites, encoding="utf-8") + b"\n"


def markdown(checks: list[Check], passed: bool) -> str:
    lines = [f"### edgetune gate: {'passed' if passed else 'FAILED'}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows(checks):
        cells = [cell.replace("|", "\\|") for cell in row]
        cells[-1] = "✅ pass" if row[-1] == "pass" else "❌ **FAIL**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(document: dict[str, Any], checks: list[Check], junit: Path | None, markdown_path: Path | None) -> list[str]:
    written = []
    if junit is not None:
        write_file(junit, junit_xml(checks))
        written.append(str(junit))
    text = markdown(checks, document["passed"])
    if markdown_path is not None:
        write_file(markdown_path, text.encode())
        written.append(str(markdown_path))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
        written.append(summary)
    return written
