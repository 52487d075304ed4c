"""tools/gpu_report.py: the per-test part of `make gpu-check`'s report, from pytest's JUnit XML."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "tools" / "gpu_report.py")
gpu_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_report)

XML = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_nms" name="test_a[cuda]" time="1.5"/>
<testcase classname="tests.test_nms" name="test_b[cuda]" time="0.5">
<failure message="AssertionError: boom&#10;more">x</failure></testcase>
<testcase classname="tests.test_nms" name="test_c[cpu]" time="0"><skipped message="no CUDA device"/></testcase>
</testsuite></testsuites>"""


def test_report_lists_every_test_failures_and_missing_files(tmp_path, capsys):
    for kind in ("junit", "sanitizer"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "test_nms.xml").write_text(XML)
    (tmp_path / "sanitizer" / "timeouts.txt").write_text("test_box_iou: stopped at 100 s\n")
    assert gpu_report.main(tmp_path) == 1
    out = capsys.readouterr().out
    assert "| test_nms.py | 1 | 1 | 1 | 2 s |" in out
    assert "- FAIL tests/test_nms.py::test_b[cuda]: AssertionError: boom" in out
    assert "PASS tests/test_nms.py::test_a[cuda]" in out and "SKIP tests/test_nms.py::test_c[cpu]" in out
    assert "test_box_iou: stopped at 100 s" in out
    # Every other test file left no XML: reported, not silently missing.
    assert "No result (not finished or not started): " in out and "test_assign.py" in out


def test_report_passes_when_every_file_passed(tmp_path, capsys):
    passing = XML.replace('<failure message="AssertionError: boom&#10;more">x</failure>', "")
    for kind in ("junit", "sanitizer"):
        (tmp_path / kind).mkdir()
        for test_file in (ROOT / "tests").glob("test_*.py"):
            (tmp_path / kind / f"{test_file.stem}.xml").write_text(passing)
    assert gpu_report.main(tmp_path) == 0
    assert "Failures" not in capsys.readouterr().out
