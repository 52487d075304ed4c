#!/usr/bin/env bash
# `make gpu-check`: everything that needs a GPU, in one command, one report.
# Runs on the GPU machine with its own python3 and torch (no .venv, no
# downloads): build, every test with CUDA cases enabled, the benchmarks with
# --device cuda, and compute-sanitizer (memcheck) over the CUDA tests.
set -uo pipefail
PY=${GPU_PY:-python3}
REPORT=${GPU_REPORT:-gpu-report}
mkdir -p "$REPORT"
SUMMARY="$REPORT/report.md"
status=0

step() {  # step NAME LOGFILE CMD...: runs CMD, logs it, records pass/fail
  local name=$1 log=$2
  shift 2
  local t0=$SECONDS
  if "$@" > "$REPORT/$log" 2>&1; then
    echo "| $name | pass | $((SECONDS - t0)) s | $log |" >> "$SUMMARY"
  else
    echo "| $name | FAIL | $((SECONDS - t0)) s | $log |" >> "$SUMMARY"
    status=1
  fi
}

{
  echo "# mutualops GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1
  echo '```'
  echo
  echo "| step | result | time | log |"
  echo "| --- | --- | --- | --- |"
} > "$SUMMARY"

# An in-place build is the fallback where that python's setuptools predates
# editable wheels (PEP 660).
step build build.log bash -c "'$PY' -m pip install --no-build-isolation --no-deps -e . || '$PY' setup.py build_ext --inplace"
step "tests (all, CUDA enabled)" tests.log "$PY" -m pytest -q -rs tests
for bench in benchmarks/bench_*.py; do
  name=$(basename "$bench" .py)
  step "$name --device cuda" "$name.txt" "$PY" "$bench" --device cuda --json "$REPORT/$name.json"
done
step "compute-sanitizer memcheck (CUDA tests)" sanitizer.log \
  compute-sanitizer --tool memcheck --error-exitcode 1 --target-processes all \
  "$PY" -m pytest -q -m cuda -p no:cacheprovider tests -k "not compile"

for log in "$REPORT"/*.txt; do
  [ -f "$log" ] || continue
  { echo; echo "## $(basename "$log")"; echo '```'; cat "$log"; echo '```'; } >> "$SUMMARY"
done
{ echo; echo "## test summary"; echo '```'; tail -n 15 "$REPORT/tests.log"; echo '```'; } >> "$SUMMARY"
# The device tool brings back at most 8 files: the report, and the logs and
# JSON in one archive.
tar czf "$REPORT/logs.tar.gz" -C "$REPORT" --exclude report.md --exclude logs.tar.gz . \
  && find "$REPORT" -type f ! -name report.md ! -name logs.tar.gz -delete
cat "$SUMMARY"
exit $status
