#!/usr/bin/env bash
# Every CUDA path in one run, with no network: under 8 minutes on one H100.
#
#   benchmarks/gpu_smoke.sh [--out DIR]        # on a GPU machine (1 GPU; 2 ranks where >1 GPU)
#   benchmarks/gpu_smoke.sh --cpu-check        # the same steps at tiny sizes on a CPU (tested)
#
# Steps: synthetic shards (benchmarks/gpu_smoke.py data: analytic shapes, exact SDFs) -> a
# randomly initialised CLIP text tower saved locally (ViT-L/14; open_clip builds it without
# weights) -> base40M training with DataLoader workers, stopped and resumed -> DDP and FSDP under
# torchrun (2 ranks with >1 GPU, else 1) -> torch.compile training -> upsampler and SDF
# training -> export -> `pointdiff sample` (device and precision auto, CFG, upsampler, SDF mesh
# at grid 128) -> a measured sampling run -> one table of samples/s, MFU and peak memory.
# The frozen CLIP record is checked end to end: the weights come from $POINTDIFF_CLIP_WEIGHTS
# and are matched to the checkpoint's SHA-256; nothing is downloaded (HF_HUB_OFFLINE=1).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-check) MODE=cpu ;;
        --out) OUT="$2"; shift ;;
        *) echo "usage: $0 [--cpu-check] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
PY="${PYTHON:-.venv/bin/python}"  # the project venv by default; PYTHON=... for another
OUT="${OUT:-$(mktemp -d /tmp/gpu_smoke.XXXXXX)}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

if [ "$MODE" = gpu ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        echo "no CUDA device: run with --cpu-check" >&2; exit 1; }
    GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    NPROC=$(( GPUS > 1 ? 2 : 1 ))
    DEVICE=cuda ARCH=ViT-L-14 OBJECTS=64 POINTS=4096 GRID=128 SAMPLE_STEPS=16 SAMPLE_BATCH=8
    BASE=(base40M --batch_size=32 --num_workers=4)
    UP=(upsample40M --cond_dim=768 --batch_size=16 --num_workers=4)
    SDF=(--preset sdf_small --batch_size=16 --num_workers=4)
    STEPS=30 SHORT=10
else
    NPROC=1
    DEVICE=cpu ARCH=ViT-S-32-alt OBJECTS=6 POINTS=256 GRID=24 SAMPLE_STEPS=2 SAMPLE_BATCH=2
    BASE=(tiny --cond_dim=256 --batch_size=2 --num_workers=1)
    UP=(upsample_tiny --cond_dim=256 --batch_size=2 --num_workers=1)
    SDF=(--preset sdf_tiny --batch_size=2 --num_workers=1 --num-queries 256)
    STEPS=4 SHORT=2
    export OMP_NUM_THREADS=1
fi
COMMON=(--warmup_steps=1 --log_every=2 --keep_checkpoints=2)
TORCHRUN=("$PY" -m torch.distributed.run --standalone --max-restarts=0 --nproc_per_node="$NPROC")
say() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

say "synthetic shards and a random $ARCH text tower -> $OUT"
"$PY" benchmarks/gpu_smoke.py data "$OUT/data" --objects "$OBJECTS" --points "$POINTS"
"$PY" benchmarks/gpu_smoke.py clip "$OUT/clip.safetensors" --arch "$ARCH"
export POINTDIFF_CLIP_WEIGHTS="$OUT/clip.safetensors"
TEXT=(--text "clip:$ARCH:openai" --no-clip-download --device "$DEVICE" --data "$OUT/data")

say "base training with DataLoader workers, stopped at step $SHORT, then resumed to $STEPS"
RUN=("${BASE[@]}" "${TEXT[@]}" "${COMMON[@]}" --ckpt_every="$SHORT")
"$PY" train/train_base.py "${RUN[@]}" --run-dir "$OUT/base" --max_steps="$STEPS" --stop-at "$SHORT"
"$PY" benchmarks/gpu_smoke.py train "$OUT/train.json" base --label resumed -- "${RUN[@]}" \
    --run-dir "$OUT/base" --max_steps="$STEPS" --resume

say "DDP and FSDP, $NPROC process(es) under torchrun"
"${TORCHRUN[@]}" benchmarks/gpu_smoke.py train "$OUT/ddp.json" base --label DDP -- "${RUN[@]}" \
    --run-dir "$OUT/ddp" --max_steps="$SHORT"
"${TORCHRUN[@]}" benchmarks/gpu_smoke.py train "$OUT/fsdp.json" base --label FSDP -- "${RUN[@]}" \
    --run-dir "$OUT/fsdp" --max_steps="$SHORT" --fsdp=True

say "torch.compile training"
"$PY" benchmarks/gpu_smoke.py train "$OUT/compile.json" base --label compile -- "${RUN[@]}" \
    --run-dir "$OUT/compile" --max_steps="$SHORT" --compile=True

say "upsampler and SDF head"
"$PY" benchmarks/gpu_smoke.py train "$OUT/up.json" upsampler -- "${UP[@]}" "${TEXT[@]}" \
    --run-dir "$OUT/up" "${COMMON[@]}" --max_steps="$SHORT" --ckpt_every="$SHORT"
"$PY" train/train_sdf.py --data "$OUT/data" --out "$OUT/sdf" --device "$DEVICE" "${SDF[@]}" \
    "${COMMON[@]}" --max_steps="$STEPS" --ckpt_every="$STEPS"

say "export, then pointdiff sample (device and precision auto, CFG, upsampler, SDF mesh)"
"$PY" train/export_pipeline.py "$OUT/pipe" --base "$OUT/base" --upsampler "$OUT/up" \
    --sdf "$OUT/sdf" --sampler heun --steps "$SAMPLE_STEPS" --guidance 3 --up-steps "$SAMPLE_STEPS"
"$PY" -m pointdiff.cli sample "a red box" "a blue sphere" --checkpoint "$OUT/pipe" \
    --out "$OUT/samples" --grid-size "$GRID" --no-download
test -s "$OUT/samples/01_a_blue_sphere/mesh.glb"

say "measured sampling and meshing"
"$PY" benchmarks/gpu_smoke.py sample "$OUT/sample.json" --checkpoint "$OUT/pipe" \
    --grid "$GRID" --batch "$SAMPLE_BATCH" --steps "$SAMPLE_STEPS"

say "done: $OUT"
"$PY" benchmarks/gpu_smoke.py table "$OUT"/{train,ddp,fsdp,compile,up,sample}.json
