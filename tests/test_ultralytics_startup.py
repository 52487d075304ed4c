"""MUTUALOPS_ULTRALYTICS=1: the drop-in reaches every process Ultralytics starts, without touching the script.

The processes here are real: the installed `yolo` command, and a worker started with the command and the
generated script by which Ultralytics starts its DDP workers. A sitecustomize module on their PYTHONPATH counts
calls of mutualops' and Ultralytics' functions (sys.setprofile) and writes the counts at exit, so that the
tests see which code ran rather than trusting that install() was called.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap

import pytest

pytest.importorskip("ultralytics")

from test_ultralytics_integration import write_dataset  # noqa: E402

COUNTER = textwrap.dedent('''
    import atexit, json, os, sys, threading

    WATCH = {
        ("mutualops/ops/task_aligned.py", "assign_task_aligned"): "mutualops assigner",
        ("mutualops/ops/nms.py", "batched_nms"): "mutualops nms",
        ("ultralytics/utils/tal.py", "_forward"): "ultralytics assigner",
        ("ultralytics/utils/nms.py", "non_max_suppression"): "ultralytics nms",
    }
    NAMES = {name for _, name in WATCH}
    counts = {key: 0 for key in WATCH.values()}

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name in NAMES:
            path = frame.f_code.co_filename.replace(os.sep, "/")
            for (suffix, name), key in WATCH.items():
                if frame.f_code.co_name == name and path.endswith(suffix):
                    counts[key] += 1

    def write():
        from mutualops.integrations import ultralytics as mo  # already loaded where it matters
        counts["installed"] = mo.installed()
        with open(os.path.join(os.environ["MUTUALOPS_TEST_COUNTS"], f"{os.getpid()}.json"), "w") as f:
            json.dump({"argv": sys.argv, "counts": counts}, f)

    sys.setprofile(profile)
    threading.setprofile(profile)
    atexit.register(write)
''')


@pytest.fixture
def counted_env(tmp_path, monkeypatch):
    """Environment for a child process that counts calls into tmp_path/counts; returns (env, read), where
    read() gives the counts of every process that ran Ultralytics' code."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(COUNTER)
    counts = tmp_path / "counts"
    counts.mkdir()
    env = dict(os.environ, MUTUALOPS_ULTRALYTICS="1", MUTUALOPS_TEST_COUNTS=str(counts), YOLO_OFFLINE="1",
               YOLO_CONFIG_DIR=str(tmp_path / "config"), OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "hook"), os.environ.get("PYTHONPATH", "")]))

    def read():
        runs = [json.loads(p.read_text()) for p in counts.glob("*.json")]
        return [r for r in runs if sum(v for k, v in r["counts"].items() if k != "installed")]

    return env, read


def test_the_startup_file_is_installed_and_costs_nothing_when_off():
    paths = site.getsitepackages() + [sysconfig.get_paths()["purelib"]]
    assert any(os.path.isfile(os.path.join(p, "mutualops-startup.pth")) for p in paths), paths
    probe = "import sys; print('torch' in sys.modules, '_mutualops_startup' in sys.modules)"
    for value in ("", "0", "1"):
        out = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, MUTUALOPS_ULTRALYTICS=value),
                             capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["False", "True"], (value, out)  # torch waits for ultralytics


@pytest.mark.parametrize("value,expected", [("1", True), ("yes", True), ("0", False), ("", False), ("maybe", False)])
def test_the_variable_installs_when_ultralytics_loads(value, expected):
    probe = ("import ultralytics; from ultralytics.utils import tal, nms; "
             "from mutualops.integrations import ultralytics as mo; "
             "print(mo.installed(), tal.TaskAlignedAssigner.forward is mo._assigner_forward, "
             "nms.non_max_suppression is mo.non_max_suppression, ultralytics.__loader__ is ultralytics.__spec__.loader)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env=dict(os.environ, MUTUALOPS_ULTRALYTICS=value, YOLO_OFFLINE="1"))
    assert out.stdout.split()[-4:] == [str(expected)] * 3 + ["True"], out
    warned = [line for line in out.stderr.splitlines() if "MUTUALOPS_ULTRALYTICS must be 1 or 0" in line]
    assert len(warned) == (value == "maybe"), out.stderr


def test_the_yolo_command_trains_and_validates_on_mutualops(tmp_path, counted_env):
    env, read = counted_env
    data = write_dataset(tmp_path / "shapes")
    yolo = shutil.which("yolo", path=os.path.dirname(sys.executable))
    assert yolo, "the yolo command of the ultralytics package"
    out = subprocess.run([yolo, "detect", "train", f"data={data}", "model=yolov8n.yaml", "epochs=1", "imgsz=64",
                          "batch=4", "workers=0", "device=cpu", "plots=False", "amp=False", "seed=0",
                          f"project={tmp_path / 'runs'}", "name=cli", "exist_ok=True"],
                         env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "run on mutualops (MUTUALOPS_ULTRALYTICS=1)" in out.stdout + out.stderr
    (run,) = read()
    counts = run["counts"]
    assert counts["installed"] and counts["mutualops assigner"] >= 2 and counts["mutualops nms"] >= 1, run
    assert counts["ultralytics assigner"] == 0 and counts["ultralytics nms"] == 0, run


def test_a_ddp_worker_started_as_ultralytics_starts_it_runs_on_mutualops(tmp_path, counted_env, monkeypatch):
    """Ultralytics starts each DDP worker as `python -m torch.distributed.run ... <generated script>`, which
    unpickles the trainer and trains. The command and the script are Ultralytics' own (generate_ddp_command);
    with one process on the CPU the worker trains without a process group."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import dist

    env, read = counted_env
    monkeypatch.setattr(dist, "USER_CONFIG_DIR", tmp_path)  # where the generated script and state go
    data = write_dataset(tmp_path / "shapes")
    trainer = DetectionTrainer(overrides=dict(data=str(data), model="yolov8n.yaml", epochs=1, imgsz=64, batch=4,
                                              workers=0, device="cpu", plots=False, amp=False, seed=0,
                                              project=str(tmp_path / "runs"), name="ddp", exist_ok=True))
    trainer.world_size = 1
    cmd, script = dist.generate_ddp_command(trainer)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[-1] == script
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    finally:
        dist.ddp_cleanup(trainer, script)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (worker,) = read()
    assert worker["argv"][0] == script, worker
    counts = worker["counts"]
    assert counts["installed"] and counts["mutualops assigner"] >= 2 and counts["mutualops nms"] >= 1, worker
    assert counts["ultralytics assigner"] == 0 and counts["ultralytics nms"] == 0, worker


def test_bench_yolo_trains_each_side_in_its_own_process(tmp_path):
    """benchmarks/bench_yolo.py --quick: both sides train (the drop-in one through MUTUALOPS_ULTRALYTICS, which
    each child checks), with equal per-step losses, and validate; tables.py renders the record."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    record = tmp_path / "yolo-cpu.json"
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_yolo.py"), "--quick", "--threads", "2",
                          "--work", str(tmp_path / "work"), "--json", str(record)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads(record.read_text())
    assert data["losses_equal"] and data["max_loss_difference"] < 1e-4
    for side in ("ultralytics", "mutualops"):
        assert data["training"][side]["steps"] >= 1 and data["training"][side]["assigner_ms_per_call"] > 0
        assert data["validation"][side]["images"] == 4 and data["validation"][side]["nms_calls"] >= 1
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    try:
        import tables
    finally:
        sys.path.pop(0)
    assert "| mutualops drop-in |" in tables.yolo_tables(data, str(record))
