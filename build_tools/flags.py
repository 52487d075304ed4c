"""The extension's compiler and linker flags, one list for both builds: setup.py imports them, CMakeLists.txt
reads them as CMake lists with `python build_tools/flags.py cxx|link|nvcc`.

-fopenmp: at::parallel_for is an inline OpenMP loop that runs serially in code compiled without it (the runtime
is libgomp.so.1, the one torch already loaded); it also honours the `omp simd` reductions.
-fno-trapping-math lets gcc vectorize the selects around divisions. Neither changes a result.
-ffp-contract=off (C++) and --fmad=false (CUDA): no fused multiply-add, so the shared math rounds the same on
every CPU (aarch64 has FMA) and on the GPU, and CUDA results (IoU, assignment, NMS decisions) equal the CPU's.
-l:libstdc++.so.6 (Linux): the C++ runtime must be the process's shared one. A g++ whose image lacks the
libstdc++.so development link (seen on a CUDA machine) silently links libstdc++.a instead: the extension then
carries a second, uninitialised copy of the locale machinery and crashes the first time an error message
formats a number.
"""

import sys

CXX = ["-O3", "-fno-trapping-math", "-fopenmp", "-ffp-contract=off"]
NVCC = ["-O3", "--expt-relaxed-constexpr", "--fmad=false"]
LINK = ["-fopenmp"] + (["-l:libstdc++.so.6"] if sys.platform.startswith("linux") else [])

if __name__ == "__main__":
    lists = {"cxx": CXX, "nvcc": NVCC, "link": LINK}
    if len(sys.argv) != 2 or sys.argv[1] not in lists:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(lists)}")
    print(";".join(lists[sys.argv[1]]))
