#!/usr/bin/env bash
# Threads on a shared machine: a short Fashion-MNIST training run alone, beside a second one, and beside a busy
# process, with one thread, two, and the default (--threads unset: torch's, one per core, since 2026-12-01; the stored
# threads.txt measured a load-average rule there, since dropped: see benchmarks/README.md).
# Usage: bash benchmarks/threads.sh DATA_DIR > benchmarks/threads.txt   (about 4 minutes on 2 cores)
set -u
data=${1:-../shared/data}
work=$(mktemp -d); trap 'rm -rf "$work"; kill $(jobs -p) 2>/dev/null' EXIT
run() {  # run NAME [flags]: one short training run; prints its wall seconds
  local name=$1; shift
  local s=$(date +%s.%N)
  pttfs-train --dataset fashion-mnist --data-dir "$data" --convs-per-block 2 --batch-size 128 --schedule 1:1 \
    --train-subset 4000 --out "$work/$name" "$@" >/dev/null 2>"$work/$name.err" || { cat "$work/$name.err" >&2; exit 1; }
  python -c "print(f'{$(date +%s.%N) - $s:.1f}')"
}
settle() { sleep 20; }   # let the load average fall back between cases
echo "# $(date -u +%FT%TZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, torch $(python -c 'import torch; print(torch.__version__)')"
echo "case | threads | seconds per run"
for t in 2 1; do echo "alone | $t | $(run alone$t --threads $t)"; settle; done
for t in 2 1 default; do
  flag=(); [ "$t" != default ] && flag=(--threads "$t")
  a=$(mktemp); b=$(mktemp)
  run pa$t "${flag[@]}" > "$a" & run pb$t "${flag[@]}" > "$b"; wait
  echo "two side by side | $t | $(cat "$a") and $(cat "$b")"; settle
done
python -c "while True: pass" & spinner=$!
sleep 45                                              # the load average sees the busy process
for t in 2 1 default; do
  flag=(); [ "$t" != default ] && flag=(--threads "$t")
  echo "beside a busy process | $t | $(run busy$t "${flag[@]}")"
done
kill $spinner
