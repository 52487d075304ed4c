"""Finds the CUDA toolkit the way this project's machines need it found.

Used by setup.py and CMakeLists.txt. The nvcc on PATH may be a wrapper script
(`exec /real/bin/nvcc "$@"`), so torch's guess of CUDA_HOME (the wrapper's
parent folder) can be wrong; and some headers torch's CUDA build includes
(cusparse.h & co.) may only exist in the pip `nvidia` packages.

    python build_tools/cuda.py home       # the toolkit's real home, or nothing
    python build_tools/cuda.py include    # extra include folders, ';'-separated
    python build_tools/cuda.py lib        # extra library folders, ';'-separated
"""

import glob
import importlib.util
import os
import re
import shutil
import sys


def is_cuda_home(path):
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) and any(
        os.path.isfile(os.path.join(path, "bin", exe)) for exe in ("nvcc", "nvcc.exe")
    )


def resolve_nvcc(path, depth=0):
    """Follows links and wrapper scripts (`exec /real/nvcc "$@"`) to the real nvcc."""
    path = os.path.realpath(path)
    if depth > 4:
        return path
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head.startswith(b"#!"):
        return path
    for token in head.decode(errors="replace").replace('"', " ").replace("'", " ").split():
        if token.startswith("/") and os.path.basename(token) == "nvcc" and os.path.isfile(token):
            if os.path.realpath(token) != path:
                return resolve_nvcc(token, depth + 1)
    return path


def find_cuda_home():
    """The toolkit's real home (with include/ and lib64/), or None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            home = os.environ[var]
            if not is_cuda_home(home):
                raise SystemExit(f"mutualops: {var}={home} has no bin/nvcc and include/cuda_runtime.h")
            return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(resolve_nvcc(nvcc)))
        if is_cuda_home(home):
            return home
    for home in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if is_cuda_home(home):
            return home
    return None


def pip_cuda_dirs(cuda_major, kind="include"):
    """Folders of `kind` (include or lib) of the pip `nvidia` packages: headers and
    libraries that torch's CUDA build needs but the toolkit may lack."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for base in spec.submodule_search_locations:
        # New layout: nvidia/cu13/include; old one: nvidia/cusparse/include. Headers of
        # another CUDA major (nvidia/cu12) must not leak in.
        for d in glob.glob(os.path.join(base, "*", kind)):
            name = os.path.basename(os.path.dirname(d))
            if name == f"cu{cuda_major}" or not re.fullmatch(r"cu\d+", name):
                dirs.append(d)
    return sorted(set(d for d in dirs if os.path.isdir(d)))




def main(argv):
    if argv[1:] == ["home"]:
        print(find_cuda_home() or "")
    elif argv[1:] in (["include"], ["lib"]):
        import torch

        print(";".join(pip_cuda_dirs((torch.version.cuda or "").split(".")[0], argv[1])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
