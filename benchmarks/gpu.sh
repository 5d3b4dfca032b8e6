#!/usr/bin/env bash
# The GPU device check, prepared for one NVIDIA GPU (the `device` tool's machine: python3 with torch, Triton,
# matplotlib, tqdm; no internet). Two parts, each one `run` call that fits the 10-minute limit:
#   bash benchmarks/gpu.sh speed   (default; about 6-8 minutes)
#     gpu-device.txt  nvidia-smi's name, memory and driver
#     gpu-tests.txt   the CUDA exactness checks (triton vs BPTT, float64 and float32)
#     gpu.json        pttfs-bench on the GPU (isolated neuron sweep + CIFAR net), device name inside, plus figures;
#                     written after the isolated sweep and again after the network, so a timeout keeps the first
#   bash benchmarks/gpu.sh mnist   (about 3-4 minutes)
#     gpu-mnist-summary.json, gpu-mnist-metrics.jsonl   chapter 13's MNIST recipe on the GPU (AMP)
# SpikingJelly is not on that machine: carry its wheel in .whl/ (ignored by git), made here with
#   pip download --no-deps -d .whl spikingjelly==2.0.0
# ../shared does not travel either: for the MNIST part, carry the gzipped IDX files in .data/ (ignored by git):
#   mkdir -p .data && for f in ../shared/data/MNIST/raw/*-ubyte; do gzip -c "$f" > .data/$(basename "$f").gz; done
# e.g. run(command="bash benchmarks/gpu.sh speed", carry=[".whl"], timeout_s=590), then the same with "mnist" and
# carry=[".whl", ".data"]. (CIFAR-10 cannot be trained there: no copy of it exists on these machines and the GPU
# machine has no internet.) Run from the repository root.
set -uo pipefail
out=${OUT:-benchmarks}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
part=${1:-speed}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu-device.txt"

if [ "$part" = speed ]; then

# 1. exactness on CUDA: the Triton backend against the sequential reference (float64), plus float32 and autocast
timeout 120 python3 - <<'PY' 2>&1 | tee "$out/gpu-tests.txt"
import torch
from pttfs.dynamics import compare_with_reference as _compare
from pttfs.backends import amos_lif_parallel
from functools import partial
compare_with_reference = lambda *a, backend, **k: _compare(partial(amos_lif_parallel, backend=backend), *a, **k)
from pttfs.backends import choose_backend, amos_lif_parallel
from pttfs.surrogate import ATan
from pttfs import AMOSLIF
assert torch.cuda.is_available()
x = torch.randn(8, 4, device='cuda')
print("auto backend on CUDA:", choose_backend(x, 2.0, AMOSLIF().surrogate))
worst = 0.0
for T in [1, 2, 16, 65, 512]:
    for tau in [1.01, 2.0, 1000.0]:
        for force_last in [False, True]:
            r = compare_with_reference(T, tau, force_last, trailing=(64,), tau_per_neuron=(T % 2 == 0), backend='triton', device='cuda')
            assert r['spikes_equal'], (T, tau, force_last)
            worst = max(worst, r['membrane'], r['grad_x'], r['grad_tau'])
print(f"float64 triton vs BPTT: spikes identical, worst difference {worst:.2e}")
assert worst < 1e-10
r = compare_with_reference(300, 2.0, False, trailing=(4, 256), surrogate=ATan(), backend='triton', device='cuda')
assert r['spikes_equal'] and max(r['membrane'], r['grad_x'], r['grad_tau']) < 1e-10
x = (1 + torch.randn(4096, 1024, device='cuda')).requires_grad_()
s, h = amos_lif_parallel(x, 2.0)
(s.sum() + h.sum()).backward()
assert torch.isfinite(h).all() and torch.isfinite(x.grad).all()
with torch.autocast('cuda', dtype=torch.bfloat16):
    s, h = amos_lif_parallel(torch.randn(64, 1000, device='cuda', dtype=torch.bfloat16), 2.0)
assert torch.isfinite(h.float()).all()
print("float32 T=4096 finite; autocast bf16 finite; all CUDA checks passed")
PY

# 2. the benchmark sweep on the GPU (the paper's grid, trimmed to fit the time)
timeout 400 python3 -c "from pttfs.bench_cli import main; main()" --device cuda --N 2^10,2^14,2^18,2^20 --T 2,4,16,64,256,1024 \
  --network-T 4 --network-B 16,32 --network-C 256 --repeats 20 --peak-memory --out "$out/gpu.json" 2>&1 | tail -40

fi

# 3. a short MNIST training run on the GPU: the CPU recipe of chapter 13 with CUDA and AMP (about 2-4 minutes)
if [ "$part" = mnist ] && ls .data/*-ubyte.gz >/dev/null 2>&1; then
  mkdir -p /tmp/data/MNIST/raw && for f in .data/*-ubyte.gz; do gunzip -c "$f" > /tmp/data/MNIST/raw/$(basename "$f" .gz); done
  timeout 420 python3 -c "from pttfs.train_cli import main; main()" --dataset mnist --data-dir /tmp/data --augment \
    --schedule 1:12,2:4,4:3 --batch-size 128 --workers 8 --device cuda --out /tmp/mnist-gpu 2>&1 | tail -5
  cp /tmp/mnist-gpu/summary.json "$out/gpu-mnist-summary.json"; cp /tmp/mnist-gpu/metrics.jsonl "$out/gpu-mnist-metrics.jsonl"
elif [ "$part" = mnist ]; then
  echo "no .data/*-ubyte.gz: MNIST GPU run skipped"
fi
