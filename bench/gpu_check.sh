#!/usr/bin/env bash
# GPU check for the Triton kernels, from a fresh copy of the repository on the device machine
# (Python 3.12, torch, triton, pybind11, cmake, ninja; NO internet: nothing is downloaded).
#
#   bash bench/gpu_check.sh            # on the GPU machine; logs + JSON under $OUT (default ./gpu_out)
#   GPU_CHECK_DRY=1 bash bench/gpu_check.sh   # CPU dry run: same steps, interpreter-sized
#
# Steps (each under `timeout`, ~8 min in all): build/install the package (no build isolation,
# no deps; gymnasium/safetensors from wheels in $WHEELS when missing), `pytest -m cuda` (every
# cuda-marked test, tests/test_cuda_graph_step.py's real-CUDA-graph twins included), the
# cuda-marked tests of the triton files, the sm_90 compile/spill check, a short benchmark, the
# graph-replay clock of the policy step (bench/graph_replay.py: CudaGraphStep, B=1 and 256).
# Every step's log is $OUT/<step>.log; $OUT/summary.json has each step's exit code and time.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
WHEELS="${WHEELS:-shared/wheels}"
PY="${PYTHON:-python3}"
DRY="${GPU_CHECK_DRY:-0}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TRITON_DEFAULT_FP_FUSION=1
SUMMARY="$OUT/summary.tsv"
: > "$SUMMARY"

step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${secs}s): $*" | tee -a "$OUT/steps.log"
  timeout -k 10 "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0))s; tail:" | tee -a "$OUT/steps.log"
  tail -n 5 "$OUT/$name.log" | sed 's/^/   | /' | tee -a "$OUT/steps.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$SUMMARY"
  return 0
}

# -- environment facts (never fails)
step env 60 "$PY" -c "
import json, platform, sys, torch
try:
    import triton; tv = triton.__version__
except Exception as e:
    tv = f'missing: {e}'
cuda = torch.cuda.is_available()
print(json.dumps(dict(python=sys.version.split()[0], torch=torch.__version__, triton=tv, cuda=cuda,
      device=torch.cuda.get_device_name() if cuda else None, platform=platform.platform())))"
cp "$OUT/env.log" "$OUT/env.json" 2>/dev/null
HAS_GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$HAS_GPU" != "1" ] && [ "$DRY" != "1" ]; then
  echo "no CUDA device: set GPU_CHECK_DRY=1 for a CPU dry run" | tee -a "$OUT/steps.log"
  exit 2
fi

# -- offline installs: test-time deps from carried wheels when missing, then the package itself
for mod_pkg in gymnasium:gymnasium safetensors:safetensors pytest:pytest; do
  mod=${mod_pkg%%:*}; pkg=${mod_pkg##*:}
  if ! "$PY" -c "import $mod" 2>/dev/null; then
    if ls "$WHEELS"/"$pkg"-*.whl >/dev/null 2>&1; then
      step "wheel_$pkg" 120 "$PY" -m pip install --no-index --find-links "$WHEELS" "$pkg"
    else
      echo "   $pkg missing and no wheel under $WHEELS (tests that need it will fail)" | tee -a "$OUT/steps.log"
    fi
  fi
done
if [ "$DRY" = "1" ] && [ "${GPU_CHECK_SKIP_INSTALL:-0}" = "1" ]; then
  step build 300 "$PY" setup.py build_ext --inplace   # dry run in a dev checkout: no reinstall
else
  step install 300 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
fi

# -- tests: on the GPU the cuda-marked ones; dry run: the same selection collected + the CPU part
TRITON_TESTS="tests/test_triton_ops.py tests/test_triton_module.py tests/test_triton_autograd.py tests/test_triton_graph_safe.py"
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rs)
if [ "$HAS_GPU" = "1" ]; then
  step pytest_cuda 240 "${PYTEST[@]}" -m cuda --junitxml="$OUT/pytest_cuda.xml" tests
  step pytest_triton_cuda 150 "${PYTEST[@]}" -m cuda --junitxml="$OUT/pytest_triton_cuda.xml" $TRITON_TESTS
else
  step pytest_cuda 120 "${PYTEST[@]}" -m cuda --collect-only tests
  step pytest_triton_cuda 300 "${PYTEST[@]}" --junitxml="$OUT/pytest_triton_cpu.xml" \
    tests/test_triton_graph_safe.py tests/test_triton_ops.py -k "graph_safe or seed or policy_plan_matches"
  # CudaGraphStep's logic on CPU (EmulatedGraph); its cuda-marked twins ran in pytest_cuda on the GPU
  step pytest_graph_step_cpu 300 "${PYTEST[@]}" --junitxml="$OUT/pytest_graph_step_cpu.xml" \
    tests/test_cuda_graph_step.py
fi
step sm90_spills 200 "${PYTEST[@]}" tests/test_triton_ops.py -k "sm90"

# -- benchmark: torch eager vs triton (the run's JSON carries device, versions, commit)
if [ "$HAS_GPU" = "1" ]; then
  step bench 150 rlmodule-fast-bench --device cuda --ops policy_step,fused_mlp \
    --providers torch-eager,triton --batches 1,256,4096 --quick --json "$OUT/bench.json" --out "$OUT/bench"
else
  step bench 150 env TRITON_INTERPRET=1 rlmodule-fast-bench --device cpu --ops fused_mlp \
    --providers torch-eager,triton --batches 1 --quick --repeats 1 --json "$OUT/bench.json" --out "$OUT/bench"
fi
# -- graph-replay clock of the policy step (fastpath.CudaGraphStep vs the eager triton step; B=1 host latency)
if [ "$HAS_GPU" = "1" ]; then
  step bench_graph 150 "$PY" bench/graph_replay.py --batches 1,256 --json "$OUT/graph_replay.json"
else
  step bench_graph 150 env TRITON_INTERPRET=1 "$PY" bench/graph_replay.py --emulate --batches 1 \
    --models cartpole --json "$OUT/graph_replay.json"
fi

"$PY" - "$SUMMARY" "$OUT/summary.json" <<'EOF'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
res = {n: {"rc": int(rc), "seconds": int(s)} for n, rc, s in rows}
json.dump(res, open(sys.argv[2], "w"), indent=1)
print(json.dumps(res))
EOF
echo "logs and JSON in $OUT"
