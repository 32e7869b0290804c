#!/usr/bin/env bash
# The one script to run on a GPU machine, from the repository root:
#
#     OUT=/some/folder bash benchmarks/run_gpu.sh
#
# 1. records the machine and versions        -> $OUT/versions.txt
# 2. builds and installs the package (sm_90) -> $OUT/install.log
# 3. runs the GPU tests, then the whole suite -> $OUT/gpu_tests.log
# 4. runs the benchmark sweep on CUDA        -> $OUT/bench.log, $OUT/<device-slug>/<op>.{json,md,png}
#
# Every step runs even if an earlier one failed; each step's exit status and duration
# are appended to versions.txt, and the script exits nonzero if any step failed.
# Results stay within two folder levels under $OUT and to a handful of files (the
# device runner brings back at most 8).
#
# Time: the device runner stops a command after 600 s, so the script keeps to a total
# budget (TOTAL_BUDGET, default 570 s): each step gets at most what is left, and the test
# steps leave BENCH_RESERVE (default 240 s) for the benchmark. A step that has no time left
# is recorded as skipped and counts as a failure. Step results are appended to
# versions.txt as they finish, so a run cut short still says how far it got.
#
# Knobs (environment): OUT (default ./gpu_out), DQK_CUDA_ARCHS (default 90),
# SKIP_INSTALL=1, SKIP_TESTS=1, SKIP_BENCH=1, BENCH_ARGS (extra `dqk bench` arguments),
# BENCH_OPS (comma-separated ops, default every op, the VQ ones included),
# DQK_BENCH_CASES (fnmatch patterns on case names), TOTAL_BUDGET, BENCH_RESERVE, and
# per-step caps INSTALL_TIMEOUT, GPU_TESTS_TIMEOUT, TESTS_TIMEOUT, BENCH_TIMEOUT (seconds).
#
# Every op's sweep does not fit in one 600 s call, nor its files in the 8 brought back:
# run the ops in groups. The vector-quantisation sweeps compile a graph per case (24
# each): give each its own call, e.g.
#
#     OUT=/some/folder SKIP_TESTS=1 BENCH_OPS=vq_nearest bash benchmarks/run_gpu.sh
#     OUT=/other/folder SKIP_TESTS=1 BENCH_OPS=vq_ema_update bash benchmarks/run_gpu.sh
set -u
set -o pipefail

OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# only a folder that starts empty is tidied at the end (never delete someone's files)
if [ -z "$(ls -A "$OUT")" ]; then OUT_WAS_EMPTY=1; else OUT_WAS_EMPTY=0; fi
export DQK_CUDA_ARCHS="${DQK_CUDA_ARCHS:-90}"
PY="${PYTHON:-python}"
VERSIONS="$OUT/versions.txt"
FAILED=()
T0=$(date +%s)
TOTAL_BUDGET="${TOTAL_BUDGET:-570}"
if [ "${SKIP_BENCH:-0}" = "1" ]; then BENCH_RESERVE=0; else BENCH_RESERVE="${BENCH_RESERVE:-240}"; fi

# time_left [RESERVE]: seconds of the total budget left, minus RESERVE
time_left() { echo $(( T0 + TOTAL_BUDGET - $(date +%s) - ${1:-0} )); }

# run_step NAME LOGFILE CAP_S RESERVE_S CMD...: run CMD for at most min(CAP, time left -
# RESERVE) seconds, tee-ing its output into LOGFILE
run_step() {
  local name="$1" log="$2" cap="$3" reserve="$4"; shift 4
  local start rc limit
  limit=$(time_left "$reserve")
  if [ "$limit" -gt "$cap" ]; then limit="$cap"; fi
  if [ "$limit" -lt 10 ]; then
    echo "=== [$name] SKIPPED: no time left in TOTAL_BUDGET=${TOTAL_BUDGET}s" | tee -a "$log"
    printf '%-12s rc=%-4s %-20s %5ss\n' "$name" "-" "SKIPPED (no time)" 0 >> "$VERSIONS"
    FAILED+=("$name")
    return 0
  fi
  start=$(date +%s)
  echo "=== [$name] $(date -u +%FT%TZ): $*" | tee -a "$log"
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - start ))
  local what="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then what="TIMED OUT after ${limit}s"; fi
  # pytest's 5 is "no tests collected" (e.g. no test carries the marker): not a failure
  if [ "$rc" -eq 5 ] && [[ "$name" == *tests* ]]; then what="no tests collected"; rc=0; fi
  if [ "$rc" -ne 0 ] && [ "$what" = "ok" ]; then what="FAILED"; fi
  echo "=== [$name] rc=$rc ($what) in ${took}s" | tee -a "$log"
  printf '%-12s rc=%-4s %-20s %5ss\n' "$name" "$rc" "$what" "$took" >> "$VERSIONS"
  if [ "$rc" -ne 0 ]; then FAILED+=("$name"); fi
  return 0
}

# --------------------------------------------------------------------------- versions
{
  echo "# dqkernels GPU run, $(date -u +%FT%TZ)"
  echo "## repository"
  git rev-parse HEAD 2>/dev/null || echo "(no git metadata)"
  git status --short 2>/dev/null | head -40
  echo "## nvidia-smi"
  nvidia-smi 2>&1 || echo "nvidia-smi failed"
  echo "## nvcc"
  nvcc --version 2>&1 || echo "nvcc not found on PATH"
  echo "## compilers and build tools"
  (gcc --version 2>&1 | head -1) || true
  (cmake --version 2>&1 | head -1) || echo "cmake not found"
  (ninja --version 2>&1) || echo "ninja not found"
  echo "## python"
  "$PY" - <<'EOF' 2>&1
import platform, sys
print("python", sys.version.replace("\n", " "))
print("platform", platform.platform())
try:
    import torch
    print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cudnn",
          torch.backends.cudnn.version(), "| cuda available", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("device", torch.cuda.get_device_name(0), f"sm_{p.major}{p.minor}",
              f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs")
except Exception as exc:
    print("torch import failed:", exc)
import importlib.metadata
for mod in ("triton", "numpy", "pybind11", "matplotlib", "tqdm", "pytest", "sklearn",
            "faiss", "vector_quantize_pytorch", "einops"):
    try:
        m = __import__(mod)
        try:   # a module without __version__: its distribution's version
            print(mod, getattr(m, "__version__", None) or importlib.metadata.version(mod))
        except importlib.metadata.PackageNotFoundError:
            print(mod, "?")
    except Exception as exc:
        print(mod, "MISSING", f"({type(exc).__name__})")
EOF
} > "$VERSIONS" 2>&1
cat "$VERSIONS"
echo "## steps (name, exit status, outcome, seconds)" >> "$VERSIONS"

# --------------------------------------------------------------------------- install
if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  # --no-deps: the GPU machine has no network; torch/triton/numpy are already there and
  # a missing optional dependency (tqdm, matplotlib) is reported by the steps below.
  # DQK_CUDA=1 and DQK_REQUIRE_EXT=1: fail loudly instead of silently falling back.
  run_step install "$OUT/install.log" "${INSTALL_TIMEOUT:-400}" "$BENCH_RESERVE" \
    env DQK_CUDA=1 DQK_REQUIRE_EXT=1 "$PY" -m pip install --no-build-isolation --no-deps \
      --no-index -v -e .
  run_step ext-check "$OUT/install.log" 120 "$BENCH_RESERVE" "$PY" -c "
import dqkernels, torch
from dqkernels import _ext, backends
print('dqkernels', dqkernels.__version__, 'from', dqkernels.__file__)
print('_C:', _ext.LOAD_ERROR or 'loaded', _ext.build_info())
for dt in (torch.float32, torch.bfloat16):
    for b in backends.BACKENDS:
        print(dt, b, backends.why_unavailable(b, 'cuda', dt) or 'available')
assert _ext.has_cuda_kernels(), 'dqkernels._C has no CUDA kernels'
"
fi

# --------------------------------------------------------------------------- tests
if [ "${SKIP_TESTS:-0}" != "1" ]; then
  run_step gpu-tests "$OUT/gpu_tests.log" "${GPU_TESTS_TIMEOUT:-300}" "$BENCH_RESERVE" \
    "$PY" -m pytest tests -m gpu -q -rs -p no:cacheprovider
  run_step all-tests "$OUT/gpu_tests.log" "${TESTS_TIMEOUT:-400}" "$BENCH_RESERVE" \
    "$PY" -m pytest tests -q -rs -p no:cacheprovider
fi

# --------------------------------------------------------------------------- bench
if [ "${SKIP_BENCH:-0}" != "1" ]; then
  # `dqk bench` through the CLI; if the CLI itself cannot be built (a subcommand module
  # missing), the same entry point through benchmarks/run.py
  if "$PY" -c "import dqkernels.cli as c; c.build_parser()" >/dev/null 2>&1; then
    BENCH=("$PY" -m dqkernels.cli bench)
  else
    echo "dqkernels.cli could not build its parser; using benchmarks/run.py" | tee -a "$OUT/bench.log"
    BENCH=("$PY" benchmarks/run.py)
  fi
  OPS_ARGS=()
  if [ -n "${BENCH_OPS:-}" ]; then OPS_ARGS=(--ops "$BENCH_OPS"); fi
  # the device and versions the timings belong to, at the top of bench.log
  "$PY" -c "
import importlib.metadata, torch
print('bench device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA',
      '| torch', torch.__version__, '| CUDA', torch.version.cuda)
for mod in ('triton', 'faiss', 'vector_quantize_pytorch'):
    try:
        m = __import__(mod)
        print(mod, getattr(m, '__version__', None) or importlib.metadata.version(mod))
    except Exception as exc:
        print(mod, 'MISSING', f'({type(exc).__name__})')
" 2>&1 | tee -a "$OUT/bench.log"
  # shellcheck disable=SC2086
  run_step bench "$OUT/bench.log" "${BENCH_TIMEOUT:-600}" 5 \
    "${BENCH[@]}" --device cuda --out "$OUT" --no-progress \
    ${OPS_ARGS[@]+"${OPS_ARGS[@]}"} ${BENCH_ARGS:-}
fi

# --------------------------------------------------------------------------- tidy $OUT
# Keep at most two folder levels (move deeper files up, flattening their names) and only
# JSON, markdown, PNG, logs and text.
if [ "$OUT_WAS_EMPTY" = "1" ]; then
  find "$OUT" -mindepth 3 -type f | while read -r f; do
    rel="${f#"$OUT"/}"; top="${rel%%/*}"; rest="${rel#*/}"
    mv "$f" "$OUT/$top/${rest//\//_}"
  done
  find "$OUT" -type f ! \( -name '*.json' -o -name '*.md' -o -name '*.png' -o -name '*.log' \
    -o -name '*.txt' \) -print -delete
  find "$OUT" -mindepth 1 -type d -empty -delete
else
  echo "OUT=$OUT was not empty at the start: not tidied"
fi

{
  echo "total $(( $(date +%s) - T0 ))s"
  if [ "${#FAILED[@]}" -gt 0 ]; then echo "FAILED: ${FAILED[*]}"; else echo "all steps passed"; fi
} >> "$VERSIONS"

# The runner returns at most 8 files: fold the logs into one if there are more.
if [ "$OUT_WAS_EMPTY" = "1" ] && [ "$(find "$OUT" -type f | wc -l)" -gt 8 ]; then
  for f in "$OUT"/install.log "$OUT"/bench.log; do
    [ -f "$f" ] && { echo "=== $(basename "$f")"; cat "$f"; } >> "$OUT/gpu_tests.log" && rm -f "$f"
  done
fi
echo "=== files under $OUT:"
find "$OUT" -type f | sort

tail -n 8 "$VERSIONS"
if [ "${#FAILED[@]}" -gt 0 ]; then
  exit 1
fi
exit 0
