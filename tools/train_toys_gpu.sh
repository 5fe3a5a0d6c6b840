#!/usr/bin/env bash
# Train the three toy pipelines (wan, hunyuan_video, flux) at once, as three processes: one GPU each when
# the machine has three or more, else all on the first GPU.
# This is the trainer of the bundled (8-block, data set v1) toys. The deep toys of issue 14 (data set v2)
# train in resumable chunks with tools/train_toys_chunk.sh (python -m lbdist.toy.chunks).
#
#   bash tools/train_toys_gpu.sh MINUTES OUTDIR [WORKDIR]      e.g.   bash tools/train_toys_gpu.sh 8 "$OUT"
#
# Each process gets the whole MINUTES budget (VAE, transformer, evaluation and saving included) and writes
# its pipeline to WORKDIR/<family> (default /tmp/lbdist-toys), checkpoints beside it. OUTDIR receives few
# files (the device returns at most 8, 16 MB each): <family>.tar.gz per trained pipeline (split into
# <family>.tar.gz.part-aa, -ab, ... when larger than 15 MB), train.log (all three logs) and summary.txt
# (each family's SUMMARY line). Unpack with:
#   cat OUTDIR/wan.tar.gz* | tar -xz -C lbdist/toy/weights          (and the same for the other families)
# Needs lbdist importable (run from the repository root, or PYTHONPATH set) with diffusers, transformers,
# torch (CUDA), numpy and pillow.
set -uo pipefail
MINUTES=${1:?usage: train_toys_gpu.sh MINUTES OUTDIR [WORKDIR]}
OUTDIR=${2:?usage: train_toys_gpu.sh MINUTES OUTDIR [WORKDIR]}
WORKDIR=${3:-/tmp/lbdist-toys}
REPO=$(cd "$(dirname "$0")/.." && pwd)
FAMILIES=(wan hunyuan_video flux)
mkdir -p "$OUTDIR" "$WORKDIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
declare -A PIDS
i=0
for fam in "${FAMILIES[@]}"; do
  if [ "$NGPU" -ge 3 ]; then GPU=$i; else GPU=0; fi
  i=$((i + 1))
  CUDA_VISIBLE_DEVICES=$GPU python "$REPO/tools/train_toy.py" --family "$fam" --minutes "$MINUTES" --device cuda \
    --out "$WORKDIR/$fam" --ckpt "$WORKDIR/$fam.ckpt.pt" --resume > "$WORKDIR/$fam.log" 2>&1 &
  PIDS[$fam]=$!
done
STATUS=0
for fam in "${FAMILIES[@]}"; do
  wait "${PIDS[$fam]}"; rc=$?
  echo "$fam exit $rc"
  [ "$rc" -eq 0 ] || STATUS=1
done

: > "$OUTDIR/summary.txt"
for fam in "${FAMILIES[@]}"; do
  { echo "===== $fam ====="; grep -v -e torchvision -e "Writing model shards" "$WORKDIR/$fam.log"; } >> "$OUTDIR/train.log"
  grep SUMMARY "$WORKDIR/$fam.log" >> "$OUTDIR/summary.txt" || echo "$fam: no SUMMARY (see train.log)" >> "$OUTDIR/summary.txt"
  if [ -f "$WORKDIR/$fam/model_index.json" ]; then
    tar -C "$WORKDIR" -czf "$WORKDIR/$fam.tar.gz" "$fam"
    if [ "$(stat -c %s "$WORKDIR/$fam.tar.gz")" -gt 15000000 ]; then
      split -b 15000000 "$WORKDIR/$fam.tar.gz" "$OUTDIR/$fam.tar.gz.part-"
    else
      cp "$WORKDIR/$fam.tar.gz" "$OUTDIR/$fam.tar.gz"
    fi
  fi
done
cat "$OUTDIR/summary.txt"
ls -la "$OUTDIR"
exit $STATUS
