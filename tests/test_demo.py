"""`make demo`'s script end to end at a tiny budget: both variants, the paired harmony, the files, the elapsed
time (the full budget's timing is measured on the 2-core machine and reported in the README)."""

import json

import pytest

from mutualops.detector import demo


def test_demo_runs_and_reports(tmp_path, capsys):
    demo.main(["--out", str(tmp_path), "--epochs", "1", "--num-images", "16", "--test-images", "4", "--threads", "1"])
    out = capsys.readouterr().out
    assert "FCOS baseline" in out and "FCOS mutual" in out
    assert "harmony, mutual - baseline over the" in out and "demo finished in" in out
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["variants"]) == {"FCOS baseline", "FCOS mutual"}
    assert {"difference", "low", "high", "num_objects"} <= set(saved["paired_harmony"])
    assert saved["elapsed"].endswith(" s") and saved["command"] == "make demo"
    assert (tmp_path / "score_vs_iou.png").stat().st_size > 0 and (tmp_path / "ap_vs_harmony.png").stat().st_size > 0


def test_demo_user_errors_are_one_line(tmp_path, capsys):
    # --num-images 4: a batch of 16 is more than the data set, which train refuses.
    for argv in (["--test-images", "0"], ["--epochs", "x"], ["--num-images", "4"]):
        with pytest.raises(SystemExit) as exit_info:
            demo.main(["--out", str(tmp_path), *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--out", str(blocker / "run"), "--epochs", "1", "--num-images", "16", "--test-images", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Not a directory" in err
