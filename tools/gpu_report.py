"""The test part of `make gpu-check`'s report: pytest's JUnit XML (one file per test file) as markdown.

    python tools/gpu_report.py REPORT_DIR

Reads REPORT_DIR/junit/*.xml (every test) and REPORT_DIR/sanitizer/*.xml (the CUDA cases under
compute-sanitizer), prints a table per run (file, passed, failed, skipped, time), every failure with its first
line, the test files that left no XML (stopped at the deadline), and then every test with its result. Exits
with 1 when a test failed or a file left no result.
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def results(xml):
    """(test id, PASS/FAIL/SKIP, first line of the message) for each test case of one JUnit file."""
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        outcome, message = "PASS", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "FAIL", (child.get("message") or child.text or "").strip().splitlines()[:1]
                message = message[0] if message else ""
            elif child.tag == "skipped" and outcome == "PASS":
                outcome, message = "SKIP", (child.get("message") or "").strip()
        yield name, outcome, message, float(case.get("time", 0.0))


def section(title, folder, test_files):
    lines, bad = [f"## {title}", "", "| file | passed | failed | skipped | time |", "| --- | --- | --- | --- | --- |"], 0
    every, failures, missing = [], [], []
    for test_file in test_files:
        xml = folder / f"{test_file.stem}.xml"
        if not xml.exists():
            missing.append(test_file.name)
            continue
        rows = list(results(xml))
        count = {k: sum(r[1] == k for r in rows) for k in ("PASS", "FAIL", "SKIP")}
        lines.append(f"| {test_file.name} | {count['PASS']} | {count['FAIL']} | {count['SKIP']} | "
                     f"{sum(r[3] for r in rows):.0f} s |")
        failures += [f"- FAIL {name}: {message}" for name, outcome, message, _ in rows if outcome == "FAIL"]
        every += [f"{outcome} {name}" for name, outcome, _, _ in rows]
        bad += count["FAIL"]
    lines.append("")
    if failures:
        lines += ["Failures:", ""] + failures + [""]
    timeouts = folder / "timeouts.txt"
    if timeouts.exists():
        lines += ["Stopped at the deadline: " + ", ".join(timeouts.read_text().split("\n")).strip(", "), ""]
    if missing:
        lines += [f"No result (not finished or not started): {', '.join(missing)}", ""]
    return lines, every, bad + len(missing)


def main(report):
    report = Path(report)
    test_files = sorted((ROOT / "tests").glob("test_*.py"))
    out, listing, bad = [], [], 0
    for title, kind in (("Tests (every file, CPU and CUDA cases)", "junit"),
                        ("compute-sanitizer memcheck (CUDA cases)", "sanitizer")):
        lines, every, failed = section(title, report / kind, test_files)
        out += lines
        listing += [f"## every test: {title}", "", "```"] + every + ["```", ""]
        bad += failed
    print("\n".join(["", *out, *listing]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
