# Set-up and checks. `make demo` and `make test` work on a fresh machine: they
# create .venv, install the pinned dependencies, build mutualops and run.
# Both are idempotent: stamps under .stamps/ skip what is already done.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMPS := .stamps
NATIVE_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh') \
                  setup.py pyproject.toml build_tools/cuda.py build_tools/flags.py CMakeLists.txt
# The GPU machine brings its own python3 and torch and has no package registry.
GPU_PY ?= python3
GPU_REPORT ?= $(if $(OUT),$(OUT),gpu-report)

.PHONY: demo test lint format cpp-test bench gpu-check gpu-wheels clean

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMPS)/deps: requirements.txt | $(VPY)
	$(VPY) -m pip install -q -r requirements.txt
	@mkdir -p $(STAMPS) && touch $@

# Editable install: Python changes need no rebuild; C++/CUDA changes redo this.
$(STAMPS)/build: $(STAMPS)/deps $(NATIVE_SOURCES)
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	@touch $@

# The main job: a baseline and a mutual FCOS trained and evaluated on the
# synthetic shapes (about 3 minutes on 2 cores after the set-up; the same
# numbers on every run on one machine and thread count).
demo: $(STAMPS)/build
	$(VPY) -m mutualops.demo --out runs/demo

# The C++ build of the same sources (CMake + find_package(Torch)) and ctest.
cpp-test: $(STAMPS)/deps
	@mkdir -p build
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE="$(CURDIR)/$(VPY)" \
	  -DCMAKE_PREFIX_PATH="$$($(VPY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" > build/cmake.log 2>&1 \
	  || (cat build/cmake.log; exit 1)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cmake --build build/cmake
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ctest --test-dir build/cmake --output-on-failure

test: $(STAMPS)/build cpp-test
	$(VPY) -m pytest -q tests

CXX_SOURCES = $(shell find csrc tests/cpp -name '*.h' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu')

# Style, checked in CI before the tests: ruff (pyproject.toml) and clang-format (.clang-format).
lint: $(STAMPS)/deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: $(STAMPS)/deps
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

bench: $(STAMPS)/build
	for b in benchmarks/bench_*.py; do $(VPY) $$b || exit 1; done

# On a machine with a GPU (see README): build against that machine's python3 and
# torch, run every test on CUDA, the benchmarks with --device cuda and
# compute-sanitizer over the CUDA tests; everything lands in $(GPU_REPORT).
gpu-check:
	GPU_PY="$(GPU_PY)" GPU_REPORT="$(GPU_REPORT)" bash tools/gpu_check.sh

# Here, before a device call: the GPU machine's python 3.12 wheels of the test dependencies with CUDA cases
# (55 MiB, under the device tool's 64 MiB carry); gpu-check installs those the machine lacks.
GPU_WHEEL_PINS = $(shell grep -E '^(numpy|scipy|hypothesis|pycocotools|tqdm|shapely)==' requirements.txt)
gpu-wheels: $(STAMPS)/deps
	rm -rf gpu-wheels
	$(VPY) -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d gpu-wheels $(GPU_WHEEL_PINS)
	du -sh gpu-wheels

clean:
	rm -rf build $(STAMPS) mutualops/_C*.so mutualops/_build_info.py *.egg-info
