#!/usr/bin/env bash
# The project's GPU check, in one pass, CUDA and CPU side by side: environment, the fast test
# suite with CUDA visible, training on each device, the in-process Predictor and the HTTP
# server on each device under load. Every step runs even when an earlier one failed; each logs
# to a file in $OUT and appends its key numbers to $OUT/summary.txt.
#
#   OUT=/tmp/devout bash scripts/device_check.sh                      # on the GPU machine
#   OUT=/tmp/devout PY=.venv/bin/python SKIP_WHEELS=1 bash scripts/device_check.sh   # dry run, no GPU
#
# Inputs (all optional but OUT):
#   PY           interpreter (python3)
#   SKIP_WHEELS  1: use PY's own packages; else install .whl/*.whl into /tmp/site first
#                (the GPU machine has no package index; the wheels travel with the tree)
#   DEVDATA      folder with news_10k.csv and nltk_data/ (.devdata)
#   EPOCHS       training epochs per device (4)
#   PAUSE_WHILE  a file; while it exists, wait before each heavy step (a shared machine's
#                "benchmark running" flag)
# Without CUDA the CUDA arms print a "skip:" line and the CPU arms still run.
set -u
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT to the folder the logs go to}"
PY=${PY:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
DEVDATA=${DEVDATA:-$ROOT/.devdata}
EPOCHS=${EPOCHS:-4}
PAUSE_WHILE=${PAUSE_WHILE:-}
export NEWS_DATA=$DEVDATA/news_10k.csv NLTK_DATA=$DEVDATA/nltk_data
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
WORK=$(mktemp -d /tmp/hc-device-check.XXXXXX)
START=$SECONDS
FAILED=()

pause() {
    while [ -n "$PAUSE_WHILE" ] && [ -e "$PAUSE_WHILE" ]; do
        echo "waiting: $PAUSE_WHILE exists"
        sleep 15
    done
}

# step NAME LOG COMMAND...: run COMMAND (a function below), its output to the screen and to
# $OUT/LOG; record the exit status and seconds; never stop the script.
step() {
    local name=$1 log=$OUT/$2 t0 rc
    shift 2
    pause
    t0=$SECONDS
    echo "=== $name (t=$((SECONDS - START)) s)" | tee -a "$log"
    "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
    echo "step $name: exit $rc, $((SECONDS - t0)) s" >>"$SUMMARY"
    [ "$rc" = 0 ] || FAILED+=("$name")
}

# --------------------------------------------------------------------------- a. environment
# PYTHONPATH is exported below, in this shell: the braces run in a subshell (the pipe to tee).
{
    echo "=== wheels"
    if [ "${SKIP_WHEELS:-0}" = 1 ]; then
        echo "skip: wheel install (SKIP_WHEELS=1)"
    else
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && echo "installed $(ls .whl/*.whl | wc -l) wheels into /tmp/site" || echo "error: wheel install failed"
        # A .pth as well as PYTHONPATH: the torchrun test rewrites PYTHONPATH for its ranks.
        purelib=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo /tmp/site >"$purelib/hc-device-check-site.pth" && echo "added $purelib/hc-device-check-site.pth" \
            || echo "note: could not write a .pth into $purelib; only PYTHONPATH points at /tmp/site"
    fi
} 2>&1 | tee -a "$OUT/env.log"
[ "${SKIP_WHEELS:-0}" = 1 ] || export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}

env_report() {
    command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "nvidia-smi: not found"
    nproc
    "$PY" - <<'EOF'
import importlib, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(), "threads:", torch.get_num_threads())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "capability:", torch.cuda.get_device_capability(0),
          "cudnn:", torch.backends.cudnn.version())
missing = []
for name in ("fastapi", "starlette", "pydantic", "pydantic_core", "pydantic_settings", "uvicorn", "httptools",
             "uvloop", "msgspec", "prometheus_client", "fastapi_swagger", "nltk", "sklearn", "matplotlib", "httpx",
             "hypothesis", "jsonschema_rs", "yaml", "numpy"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')} ({module.__file__})")
    except Exception as exc:
        missing.append(name)
        print(f"  {name}: MISSING ({exc.__class__.__name__}: {exc})")
sys.exit(1 if missing else 0)
EOF
    echo "data: $(wc -l <"$NEWS_DATA") lines in $NEWS_DATA; stopwords: $(wc -l <"$NLTK_DATA/corpora/stopwords/english")"
}
step environment env.log env_report
HAS_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
echo "cuda=$HAS_CUDA torch=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)" >>"$SUMMARY"

# --------------------------------------------------------------------------- b. fast tests
# The resilience suite (tests/resilience, and the marker) and the container tests need a long
# live-server run or docker; tests/scripts checks for the pinned +cpu torch build. All left out.
fast_tests() {
    local per_test=()
    # pytest-timeout, where installed, ends a hung test instead of the whole step.
    "$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout=90)
    timeout 210 "$PY" -m pytest -q -p no:cacheprovider --maxfail=5 -rfEs --durations=10 ${per_test[@]+"${per_test[@]}"} \
        tests/contract tests/training tests/service tests/bench
}
step tests tests.log fast_tests
line=$(grep -E "^=* *[0-9]+ (passed|failed|errors?|skipped|deselected)|no tests ran" "$OUT/tests.log" | tail -1)
echo "tests: ${line:-no pytest summary line (killed by the timeout?)}" | sed 's/=//g' >>"$SUMMARY"

# --------------------------------------------------------------------------- c. training
TRAIN_ARGS=(--data "$NEWS_DATA" --epochs "$EPOCHS" --patience 100 --no-refit --baseline-c 1.0 --no-plots --seed 42)
train_on() {
    local device=$1
    if [ "$device" = cuda ] && [ "$HAS_CUDA" != 1 ]; then
        echo "skip: training on cuda (CUDA not available)"
        return 0
    fi
    timeout 120 "$PY" -m training "${TRAIN_ARGS[@]}" --device "$device" --artifacts-dir "$WORK/art-$device"
}
train_report() {
    "$PY" -m bench.device_check --summary "$SUMMARY" train-report cuda="$WORK/art-cuda" cpu="$WORK/art-cpu"
}
step train-cuda train.log train_on cuda
step train-cpu train.log train_on cpu
step train-report train.log train_report

# --------------------------------------------------------------------------- d. serving
# The CUDA-trained model when there is one, else the CPU-trained one, else the committed default.
ART=$ROOT/artifacts
for candidate in "$WORK/art-cpu" "$WORK/art-cuda"; do
    ls "$candidate"/*/manifest.json >/dev/null 2>&1 && ART=$candidate
done
echo "serving $ART" | tee -a "$OUT/serve.log"
inproc() { timeout 90 "$PY" -m bench.device_check --summary "$SUMMARY" inproc --artifacts-dir "$ART"; }
serve() { timeout 180 "$PY" -m bench.device_check --summary "$SUMMARY" serve --artifacts-dir "$ART" --seconds 3; }
step inproc serve.log inproc
step serve serve.log serve

# --------------------------------------------------------------------------- e. summary
rm -rf "$WORK"
echo "total $((SECONDS - START)) s; failed steps: ${FAILED[*]:-none}" >>"$SUMMARY"
echo "=== summary ($SUMMARY)"
cat "$SUMMARY"
[ ${#FAILED[@]} = 0 ]
