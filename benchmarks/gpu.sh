#!/bin/bash
# The step and sweep benchmarks on a GPU machine, against PyTorch on the same GPU
# (benchmarks/README.md "On a GPU"). Usage: bash benchmarks/gpu.sh OUT_DIR [SWEEP_SCALE].
# Writes each benchmark's table (.txt), progress (.err) and JSON into OUT_DIR. Each part has its
# own time limit, so one that runs long leaves the others' results. PARTS (default step,sweep:
# 270 + 310 s at most, within one 10-minute call) picks them; PARTS=energy (420 s) is a second call.
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [SWEEP_SCALE]}
scale=${2:-0.5}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# JAX and PyTorch run one after another in separate processes: neither may hold the other's
# memory, so JAX allocates as it needs instead of taking 75 % of the GPU at start.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
py=${PYTHON:-python3}
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c 'import jax, flax, optax, orbax.checkpoint, torch; print("jax", jax.__version__, "flax",
flax.__version__, "optax", optax.__version__, "torch", torch.__version__, jax.devices())'
} 2>&1 | tee "$out/env.txt"
parts=",${PARTS:-step,sweep},"
if [[ $parts == *,step,* ]]; then
timeout "${STEP_TIMEOUT:-270}" $py -m benchmarks.step --models=efficientnet_b0 \
  --b0_batch_sizes=32,128 --depthwise=grouped --peers=torch --no_prefix_cache \
  --out="$out/step_b0.json" > "$out/step_b0.txt" 2> "$out/step_b0.err"
echo "step benchmark: exit $?"; cat "$out/step_b0.txt"; tail -5 "$out/step_b0.err"
fi
if [[ $parts == *,sweep,* ]]; then
timeout "${SWEEP_TIMEOUT:-310}" $py -m benchmarks.sweep --scale="$scale" --frameworks=tljax,torch \
  --timeout=140 --out="$out/sweep.json" > "$out/sweep.txt" 2> "$out/sweep.err"
echo "sweep benchmark: exit $?"; cat "$out/sweep.txt"; tail -5 "$out/sweep.err"
fi
if [[ $parts == *,energy,* ]]; then
timeout "${ENERGY_TIMEOUT:-420}" $py -m benchmarks.energy --meter=nvml --out="$out/energy" \
  > "$out/energy.txt" 2> "$out/energy.err"
echo "energy benchmark: exit $?"; cat "$out/energy.txt"; tail -5 "$out/energy.err"
fi
