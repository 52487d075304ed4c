"""Build of mutualops: CPU kernels always, CUDA kernels when torch and a toolkit allow.

MUTUALOPS_WITH_CUDA=auto|0|1 chooses; CUDA_HOME, TORCH_CUDA_ARCH_LIST and MAX_JOBS
are honoured as in torch.utils.cpp_extension.
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)

from build_tools import flags  # noqa: E402
from build_tools.cuda import find_cuda_home, pip_cuda_dirs  # noqa: E402

DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def log(msg):
    print(f"mutualops build: {msg}", file=sys.stderr)


def choose_cuda():
    want = os.environ.get("MUTUALOPS_WITH_CUDA", "auto").strip().lower()
    if want not in ("auto", "0", "1"):
        raise SystemExit(f"mutualops build: MUTUALOPS_WITH_CUDA must be auto, 0 or 1, got {want!r}")
    if want == "0":
        log("CUDA kernels disabled by MUTUALOPS_WITH_CUDA=0")
        return None
    if torch.version.cuda is None:
        if want == "1":
            raise SystemExit("mutualops build: MUTUALOPS_WITH_CUDA=1 but torch is a CPU-only build")
        log("torch is a CPU-only build: CPU kernels only")
        return None
    home = find_cuda_home()
    if home is None:
        if want == "1":
            raise SystemExit(
                "mutualops build: MUTUALOPS_WITH_CUDA=1 but no CUDA toolkit was found "
                "(set CUDA_HOME to the folder that holds bin/nvcc, include/ and lib64/)"
            )
        log("no CUDA toolkit found: CPU kernels only")
        return None
    return home


CUDA_HOME = choose_cuda()
if CUDA_HOME:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import: set it first.
    os.environ["CUDA_HOME"] = CUDA_HOME
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        log(f"no GPU visible and no TORCH_CUDA_ARCH_LIST: building for {DEFAULT_ARCH_LIST}")
    log(f"CUDA kernels on, toolkit at {CUDA_HOME}, arch list {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')}")

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def write_build_info(with_cuda):
    info = {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda if with_cuda else None,
        "with_cuda": with_cuda,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
    }
    lines = ['"""Written by setup.py at build time; do not edit."""', ""]
    lines += [f"{k.upper()} = {v!r}" for k, v in info.items()]
    with open(os.path.join(ROOT, "mutualops", "_build_info.py"), "w") as f:
        f.write("\n".join(lines) + "\n")


def extension(with_cuda):
    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    sources = rel("csrc/*.cpp") + rel("csrc/ops/*.cpp") + rel("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    kwargs = dict(name="mutualops._C", include_dirs=include_dirs, extra_compile_args={"cxx": list(flags.CXX)},
                  extra_link_args=list(flags.LINK))
    if not with_cuda:
        return CppExtension(sources=sources, **kwargs)
    extra = pip_cuda_dirs(torch.version.cuda.split(".")[0], "include")
    if extra:
        log("adding pip CUDA headers: " + ", ".join(extra))
    include_dirs += extra
    kwargs["extra_compile_args"]["nvcc"] = list(flags.NVCC)
    return CUDAExtension(sources=sources + rel("csrc/cuda/*.cu"), **kwargs)


class BuildKeepingObjects(BuildExtension):
    """Keeps object files in build/ (pip and editable installs otherwise use a fresh
    temporary folder), so that ninja recompiles only what changed. The folder is
    keyed by torch version and backend: objects never mix across builds."""

    def finalize_options(self):
        super().finalize_options()
        flavour = f"torch{torch.__version__}-{'cuda' if CUDA_HOME else 'cpu'}"
        self.build_temp = os.path.join(ROOT, "build", f"temp-{flavour}")


# MUTUALOPS_ULTRALYTICS=1 works through a .pth file in site-packages, which Python runs at every start
# (_mutualops_startup.py says what it does). Wheels take it from build_lib's root; editable installs, whose
# wheel holds no build_lib, from the unpacked wheel (setuptools >= 64's editable_wheel).
STARTUP_PTH = os.path.join(ROOT, "build_tools", "mutualops-startup.pth")


class BuildPyWithStartup(build_py):
    def run(self):
        super().run()
        self.copy_file(STARTUP_PTH, os.path.join(self.build_lib, os.path.basename(STARTUP_PTH)))


if not hasattr(editable_wheel, "_run_build_commands"):
    log("this setuptools' editable_wheel has no _run_build_commands: an editable install will lack "
        "mutualops-startup.pth (MUTUALOPS_ULTRALYTICS); a regular install has it")


class EditableWheelWithStartup(editable_wheel):
    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        outputs = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copy(STARTUP_PTH, os.path.join(unpacked_wheel, os.path.basename(STARTUP_PTH)))
        return outputs


write_build_info(CUDA_HOME is not None)

setup(
    packages=find_packages(include=["mutualops", "mutualops.*"]),
    py_modules=["_mutualops_startup"],
    ext_modules=[extension(CUDA_HOME is not None)],
    cmdclass={"build_ext": BuildKeepingObjects.with_options(use_ninja=shutil.which("ninja") is not None),
              "build_py": BuildPyWithStartup, "editable_wheel": EditableWheelWithStartup},
)
