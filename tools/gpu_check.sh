#!/usr/bin/env bash
# `make gpu-check`: everything that needs a GPU, in one command and within one device call (GPU_DEADLINE
# seconds, default 540), one report. Runs on the GPU machine with its own python3 and torch (no .venv, no
# downloads): the build; every test file (CPU and CUDA cases) as its own pytest process, GPU_JOBS at a time
# with the cores split between them (torch threads pinned per process); compute-sanitizer memcheck over the
# CUDA cases, one process per test file; then the benchmarks with --device cuda, alone on the card so that
# their timings are not shared. Every step stops at its share of the deadline; the report lists each test's
# result (tools/gpu_report.py reads pytest's JUnit XML).
set -uo pipefail
PY=${GPU_PY:-python3}
REPORT=${GPU_REPORT:-gpu-report}
DEADLINE=${GPU_DEADLINE:-540}
JOBS=${GPU_JOBS:-8}
CORES=$(nproc)
THREADS=$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))
mkdir -p "$REPORT/junit" "$REPORT/sanitizer"
SUMMARY="$REPORT/report.md"
START=$SECONDS
status=0

left() { echo $(( DEADLINE - (SECONDS - START) )); }

step() {  # step NAME LOGFILE SECONDS CMD...: runs CMD for at most SECONDS, logs it, records pass/fail
  local name=$1 log=$2 limit=$3
  shift 3
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$REPORT/$log" 2>&1
  rc=$?
  local result=pass
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then result="TIMEOUT (${limit} s)"; status=1
  elif [ $rc -ne 0 ]; then result=FAIL; status=1; fi
  echo "| $name | $result | $((SECONDS - t0)) s | $log |" >> "$SUMMARY"
}

# each_file LIMIT KIND CMD...: CMD FILE JUNIT for every test file, JOBS at a time, each for at most LIMIT s.
each_file() {
  local limit=$1 kind=$2
  shift 2
  printf '%s\n' tests/test_*.py | xargs -P "$JOBS" -I{} bash -c '
    f={}; name=$(basename "$f" .py)
    OMP_NUM_THREADS='"$THREADS"' MKL_NUM_THREADS='"$THREADS"' timeout --kill-after=10 '"$limit"' \
      "$@" "$f" --junitxml="'"$REPORT/$kind"'/$name.xml" > "'"$REPORT/$kind"'/$name.log" 2>&1
    rc=$?; [ $rc -eq 5 ] && rc=0  # no CUDA case in that file
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "$name: stopped at '"$limit"' s" >> "'"$REPORT/$kind"'/timeouts.txt"
    exit $rc' _ "$@"
}

{
  echo "# mutualops GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1
  echo "$CORES cores, $JOBS test processes of $THREADS threads, deadline $DEADLINE s"
  echo '```'
  echo
  echo "| step | result | time | log |"
  echo "| --- | --- | --- | --- |"
} > "$SUMMARY"

# An in-place build is the fallback where that python's setuptools predates editable wheels (PEP 660).
step build build.log "$(( $(left) * 25 / 100 ))" \
  bash -c "'$PY' -m pip install --no-build-isolation --no-deps -e . || '$PY' setup.py build_ext --inplace"
# Test dependencies the machine lacks, from the py3.12 wheels `make gpu-wheels` downloads (carried in the call).
WHEELS=${GPU_WHEELS:-gpu-wheels}
if [ -d "$WHEELS" ]; then
  step "test dependencies from $WHEELS" deps.log 60 bash -c "'$PY' - '$WHEELS' <<'EOF'
import importlib.metadata as md, pathlib, subprocess, sys
missing = []
for wheel in sorted(pathlib.Path(sys.argv[1]).glob('*.whl')):
    try:
        md.version(wheel.name.split('-')[0])
    except md.PackageNotFoundError:
        missing.append(str(wheel))
print('installing', missing or 'nothing')
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-deps', '--target',
                          'build/gpu-deps', *missing]) if missing else 0)
EOF"
  export PYTHONPATH="$PWD/build/gpu-deps${PYTHONPATH:+:$PYTHONPATH}"
fi
export -f each_file
export JOBS THREADS REPORT
# The deadline left is shared: tests 35%, sanitizer 30%, benchmarks the rest.
budget=$(left)
step "tests (every file, CPU and CUDA cases)" tests.log "$(( budget * 35 / 100 ))" \
  bash -c "each_file $(( budget * 35 / 100 - 15 )) junit '$PY' -m pytest -q -rs -p no:cacheprovider"
step "compute-sanitizer memcheck (CUDA cases)" sanitizer.log "$(( budget * 30 / 100 ))" \
  bash -c "each_file $(( budget * 30 / 100 - 15 )) sanitizer env MUTUALOPS_PROPERTY_EXAMPLES=20 compute-sanitizer --tool memcheck --error-exitcode 1 \
    --target-processes all '$PY' -m pytest -q -m cuda -p no:cacheprovider -k 'not compile'"
benches=(benchmarks/bench_*.py)
for i in "${!benches[@]}"; do
  bench=${benches[$i]}
  name=$(basename "$bench" .py)
  step "$name --device cuda" "$name.txt" "$(( $(left) / (${#benches[@]} - i) ))" \
    "$PY" "$bench" --device cuda --json "$REPORT/$name.json"
done
"$PY" tools/gpu_report.py "$REPORT" >> "$SUMMARY" 2>&1 || status=1

for log in "$REPORT"/*.txt; do
  [ -f "$log" ] || continue
  { echo; echo "## $(basename "$log")"; echo '```'; cat "$log"; echo '```'; } >> "$SUMMARY"
done
echo "Total: $((SECONDS - START)) s" >> "$SUMMARY"
# The device tool brings back few files: the report, and the logs, XML and JSON in one archive.
tar czf "$REPORT/logs.tar.gz" -C "$REPORT" --exclude report.md --exclude logs.tar.gz . \
  && find "$REPORT" -mindepth 1 ! -name report.md ! -name logs.tar.gz -delete
cat "$SUMMARY"
exit $status
