"""The package's layers: which module may import which, no import cycle, and each optional extra importable
with only its own dependencies (pyproject.toml's optional-dependencies)."""

import ast
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mutualops")


def modules():
    """{dotted name: path} of every Python module of the package, and of the compiled one (path None)."""
    found = {"mutualops._C": None, "mutualops._build_info": None}  # both made by the build
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py") and name != "_build_info.py":
                parts = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return found


def imports(name, path, known):
    """The package's modules that `name` imports anywhere in its body (at the top or inside a function). `from
    package import module` counts as importing the module, not the package's __init__."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
                elif target in known:
                    found.add(target)
    found.discard(name)
    return found


def graph():
    known = modules()
    return {name: imports(name, path, known) if path else set() for name, path in known.items()}


def test_no_import_cycles():
    edges = graph()
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = trail[trail.index(name):] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        state[name] = "open"
        for other in sorted(edges[name]):
            visit(other, trail + [name])
        state[name] = "done"

    for name in sorted(edges):
        visit(name, [])


COMMANDS = {"mutualops.train", "mutualops.evaluate", "mutualops.demo", "mutualops.export.__main__"}


def layer(name):
    if name in COMMANDS:  # python -m mutualops.<command>: the detector's tools under their old names
        return "commands"
    for prefix in ("mutualops.ops", "mutualops.detector", "mutualops.integrations", "mutualops.export"):
        if name == prefix or name.startswith(prefix + "."):
            return prefix.split(".")[1]
    return name.split(".", 1)[1] if "." in name else "top"


# Which layer may import which: the ops sit on the private runtime (_extension, _validate, _math); metrics on
# the ops; the ONNX translations, the integrations and the detector on those; the oracle (reference) is the
# tests' and benchmarks' alone, and the package's top level (__init__) exposes the ops and metrics.
ALLOWED = {
    "top": {"_extension", "ops", "metrics"},
    "_extension": {"_build_info", "_C"},
    "_build_info": set(),
    "_C": set(),
    "_validate": set(),
    "_math": set(),
    "ops": {"_validate", "_math", "ops"},
    "metrics": {"_validate", "ops"},
    "reference": {"_math"},
    "export": set(),
    "integrations": {"_extension", "ops"},
    "detector": {"_math", "ops", "metrics", "export", "detector"},
    "commands": {"detector"},
}


def test_layers_import_only_what_they_sit_on():
    for name, targets in graph().items():
        for target in targets:
            assert layer(target) in ALLOWED[layer(name)], f"{name} imports {target}"


def run_without(blocked, code):
    """Runs code in a fresh interpreter in which the packages `blocked` look absent, as when not installed."""
    prelude = textwrap.dedent(f"""
        import sys
        for name in {sorted(blocked)!r}:
            sys.modules[name] = None  # import raises ModuleNotFoundError, importlib.util.find_spec gives None
    """)
    env = {**os.environ, "MUTUALOPS_ULTRALYTICS": "0"}
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=os.path.dirname(ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


DETECTOR = ["torchvision", "pycocotools", "matplotlib", "tqdm", "PIL"]
ONNX = ["onnx", "onnxscript", "onnxruntime", "onnx_ir"]
TEST_ONLY = ["scipy", "hypothesis", "shapely", "pytest"]


def test_the_ops_need_only_torch_and_numpy():
    out = run_without(DETECTOR + ONNX + TEST_ONLY + ["ultralytics"], """
        import torch, mutualops
        boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
        print(mutualops.nms(boxes, torch.tensor([0.9, 0.8]), 0.1).tolist())
        print(sorted(m for m in sys.modules if m.startswith("mutualops.") and m.split(".")[1] in
                     ("detector", "reference", "export", "integrations")))
    """)
    assert out.split("\n")[:2] == ["[0]", "[]"]


@pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) is None for m in ONNX[:3]),
                    reason="needs the onnx extra")
def test_the_onnx_extra_works_without_the_detector():
    out = run_without(DETECTOR + ["ultralytics"], """
        import torch, mutualops
        from mutualops.export import translation_table

        class Pairwise(torch.nn.Module):
            def forward(self, a, b):
                return mutualops.box_iou(a, b)

        boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
        program = torch.onnx.export(Pairwise(), (boxes, boxes), dynamo=True, verbose=False,
                                    custom_translation_table=translation_table())
        print(sorted({n.op_type for n in program.model_proto.graph.node})[:3])
        print("mutualops.detector" in sys.modules)
    """)
    assert out.strip().splitlines()[-1] == "False"


@pytest.mark.skipif(__import__("importlib").util.find_spec("ultralytics") is None, reason="needs ultralytics")
def test_the_ultralytics_extra_works_without_the_detector():
    # Ultralytics brings torchvision, matplotlib, tqdm and Pillow itself; pycocotools is the detector's alone.
    out = run_without(["pycocotools"] + ONNX, """
        import mutualops
        from mutualops.integrations import ultralytics as mo_ultralytics
        mo_ultralytics.install()
        from ultralytics.utils import tal
        print(tal.TaskAlignedAssigner.forward.__module__)
        mo_ultralytics.uninstall()
        print("mutualops.detector" in sys.modules)
    """)
    assert out.split() == ["mutualops.integrations.ultralytics", "False"]


def test_public_functions_are_typed_and_documented():
    import inspect

    import mutualops
    from mutualops import metrics
    from mutualops.integrations import ultralytics as mo_ultralytics

    functions = [getattr(mutualops, name) for name in mutualops.__all__ if inspect.isfunction(getattr(mutualops, name))]
    functions += [metrics.harmony, metrics.paired_harmony, metrics.gt_index_from_assignment, metrics.gt_index_from_iou,
                  mo_ultralytics.install]
    assert len(functions) >= 20
    for fn in functions:
        signature = inspect.signature(fn)
        untyped = [p.name for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty]
        assert not untyped and signature.return_annotation is not inspect.Signature.empty, (fn.__name__, untyped)
        doc = inspect.getdoc(fn) or ""
        sections = (["Args:"] if signature.parameters else []) + (
            ["Returns:"] if signature.return_annotation not in (None, "None") else [])
        assert all(section in doc for section in sections), fn.__name__
