#!/usr/bin/env bash
# One chunk of training of the deep toys (data set v2, issue 14) on the GPUs at hand; the same command again
# resumes where the last chunk stopped. The logic is in lbdist/toy/chunks.py (python -m lbdist.toy.chunks).
#
#   LBDIST_COMMIT=<sha> bash tools/train_toys_chunk.sh CKPT_DIR OUTDIR [MINUTES] [flags of lbdist.toy.chunks]
#
# CKPT_DIR (e.g. .toyckpt: inside the repository, ignored by git, named in the device call's `carry`) holds
# <family>.pt and progress.json from the last run, or nothing. OUTDIR receives 8 files at most: the three
# checkpoints and progress.json (copy them back into CKPT_DIR for the next run), train.log, and
# <family>.tar.gz per exported pipeline (EMA weights, bf16; unpack with tar -xzf into lbdist/toy/weights).
# Default flags: --compile reduce-overhead (CUDA graphs). MINUTES (default 8) bounds each family's process.
# PYTHON picks the interpreter (default python3, the one with PyTorch on the GPU machines).
set -uo pipefail
CKPT=${1:?usage: train_toys_chunk.sh CKPT_DIR OUTDIR [MINUTES] [flags]}
OUTDIR=${2:?usage: train_toys_chunk.sh CKPT_DIR OUTDIR [MINUTES] [flags]}
MINUTES=${3:-8}
shift $(( $# < 3 ? $# : 3 ))
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${TMPDIR:-/tmp}/lbdist-toys-export
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$CKPT" "$OUTDIR" "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"${PYTHON:-python3}" -m lbdist.toy.chunks --minutes "$MINUTES" --ckpt-dir "$CKPT" --out "$WORK" \
  --compile reduce-overhead "$@"
STATUS=$?
cp "$CKPT"/*.pt "$CKPT"/progress.json "$OUTDIR"/ 2>/dev/null
cat "$CKPT"/*.log > "$OUTDIR/train.log" 2>/dev/null
for dir in "$WORK"/*/; do
  [ -f "$dir/model_index.json" ] && tar -C "$WORK" -czf "$OUTDIR/$(basename "$dir").tar.gz" "$(basename "$dir")"
done
ls -la "$OUTDIR"
exit $STATUS
