#!/usr/bin/env bash
# Every GPU figure of the README's table in one run, for a lent CUDA machine whose Python already
# has torch (with CUDA), numpy, OpenCV, psutil, safetensors and huggingface_hub.
#
#   bash benchmarks/gpu_figures.sh OUT_DIR [STEPS...]
#
# STEPS (default: all, most wanted first): fusion worker-small worker-large worker-giant chunking
# worker-base steps (the last: the warm worker's own steps around the forward pass). Each step's
# output goes to OUT_DIR/<step>.txt as it runs, so a step cut off by its time limit
# (DA3_STEP_LIMIT_S, default 150 s) still leaves the steps before it. Wheels of DA3 and its few
# pure-Python needs (depth-anything-3 --no-deps, omegaconf, addict, evo), saved in .whl/
# by `pip download`, are installed into a scratch folder first when the machine lacks them.
set -u
out=${1:?usage: gpu_figures.sh OUT_DIR [STEPS...]}
shift
steps=${*:-fusion worker-small worker-large worker-giant chunking worker-base steps}
limit=${DA3_STEP_LIMIT_S:-150}
views=${DA3_VIEWS:-1 8 32 100}  # of each worker step
frames=${DA3_FRAMES:-300 1000}  # of the chunking step
device=${DA3_DEVICE:-cuda}  # cpu: a quick check that every step still runs (small DA3_VIEWS, DA3_FRAMES)
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out"

if ! $python -c "import depth_anything_3" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/da3-site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/da3-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 DA3_LOG_LEVEL=WARN
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $python -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"
  nproc; } >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

run_step() {
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start)) s"
    tail -n 30 "$out/$name.txt"
}

for step in $steps; do
    case $step in
        fusion)
            run_step fusion $python benchmarks/bench_fusion_speed.py --device $device --repeat 3 ;;
        worker-*)
            run_step "$step" $python benchmarks/bench_worker.py --device $device --models "da3-${step#worker-}" \
                --views $views --weights-dir /tmp/da3-weights --json "$out/$step.json" ;;
        steps)
            run_step steps $python benchmarks/bench_worker_steps.py --device $device --views 100 --repeat 5 ;;
        chunking)
            run_step chunking $python benchmarks/bench_chunking.py model --model da3-large \
                --device $device --frames $frames --chunk 0 --overlap 60 --probes 8 32 ;;
        *) echo "unknown step $step" ;;
    esac
done
