# %% [markdown]
# # Speed: the benchmark
#
# > Our CPU analogue of the paper's Figs. 3–4: the isolated neuron over N × T and the full CIFAR network, in training and inference mode, against SpikingJelly's LIF and PSN neurons measured in the same process. `pttfs-bench` (Appendix D) is the command line.

# %% [markdown]
# After this chapter you can time our neuron against SpikingJelly's LIF and PSN and read the stored results of `pttfs-bench`, and tell the limits of the machine from those of the code.

# %%
#| default_exp bench

# %%
#| export
import json
import math
import statistics
import subprocess
import sys
import time
import torch
from torch import nn, Tensor
from pttfs.neuron import AMOSLIF
from pttfs.models import cifar_net


# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
import re


# %% [markdown]
# ## Method
#
# First, what the comparison measures. On the CPU our neuron runs the fused kernel of chapter 7: one lane per neuron,
# sequential over $t$, computing the closed forms of chapters 2–4 in one pass forward and one backward. The ratios
# below therefore measure fusion and the closed-form backward against SpikingJelly's implementations, not a
# time-parallel scan; at the sizes here, $N \gg T$, the neurons alone fill the cores. The paper's Figs. 3–4 were
# measured on GPUs; these are CPU numbers, our analogue of them.
#
# We follow the PSN paper's protocol, which the AMOS paper reuses, as SpikingJelly's own benchmarks code it: a
# neuron layer alone on input `[T, N]` (N neurons, T steps), in **training mode** (forward, backward of the sum of
# the output spikes into the input's gradient, then `x.grad.zero_()`, all inside the timed call; the input is one
# leaf that requires grad, made once) and in **inference mode** (forward under `torch.no_grad()`); and the whole
# CIFAR network of the PSN paper with each neuron in turn. The input is not cloned inside the timed call: a fresh leaf per call would cost every neuron the
# same time and shrink the ratios at large sizes, where touching fresh memory dominates (each stored run records
# this step as its `protocol`).
# Every timing is the median of `repeats` calls after `warmup` calls, with a CUDA synchronisation around each call on a GPU. The peers run in the same process, on
# the same inputs, one after the other at each point of the sweep, so that ratios are measured side by side:
#
# | name | what |
# |---|---|
# | `amos` | `AMOSLIF`, backend `'auto'` (the fused kernel on CPU when it builds) |
# | `amos-torch` | `AMOSLIF`, the textbook backend of chapter 4 |
# | `amos-sequential` | the BPTT reference of chapter 1 (only where it is quick enough) |
# | `sj-lif` | SpikingJelly 2.0 `neuron.LIFNode(tau=2.0, step_mode='m')`: its defaults, hard reset to 0, reset in the graph, Sigmoid surrogate |
# | `sj-lif-psnpaper` | the same LIF as the PSN paper's code configures it: `v_reset=None` (soft reset), `detach_reset=True`, `surrogate.ATan()` |
# | `sj-psn` | SpikingJelly 2.0 `neuron.PSN(T)` |
#
# SpikingJelly is an optional extra: `pip install "pttfs[bench]"`. Without it the SJ rows are skipped.

# %%
#| export
def spikingjelly_neuron(name: str, T: int):
    "SpikingJelly's LIF (`'sj-lif'`, `'sj-lif-psnpaper'`) or PSN (`'sj-psn'`) for T steps; None without SpikingJelly."
    try: from spikingjelly.activation_based import neuron
    except ImportError: return None
    if name == 'sj-lif': return neuron.LIFNode(tau=2.0, step_mode='m')
    if name == 'sj-lif-psnpaper':                 # as the PSN paper's code builds its LIF: soft reset, detached, ATan
        from spikingjelly.activation_based import surrogate
        return neuron.LIFNode(tau=2.0, v_reset=None, detach_reset=True, surrogate_function=surrogate.ATan(), step_mode='m')
    if name == 'sj-psn': return neuron.PSN(T=T)
    raise ValueError(f"unknown SpikingJelly neuron {name!r}")


NEURONS = ('amos', 'amos-torch', 'amos-sequential', 'sj-lif', 'sj-lif-psnpaper', 'sj-psn')

def make_neuron(name,  # one of NEURONS, or a dict of `AMOSLIF` keyword arguments
                T: int,  # time steps (PSN's weight is T x T)
               ) -> nn.Module:
    "A neuron layer for multi-step input [T, *] by name (or `AMOSLIF(**name)` for a dict); None if its package is missing."
    if isinstance(name, dict): return AMOSLIF(**{'step_mode': 'm', **name})
    if name == 'amos': return AMOSLIF(tau=2.0, step_mode='m')
    if name == 'amos-torch': return AMOSLIF(tau=2.0, backend='torch', step_mode='m')
    if name == 'amos-sequential': return AMOSLIF(tau=2.0, backend='sequential', step_mode='m')
    if name.startswith('sj-'): return spikingjelly_neuron(name, T)
    raise ValueError(f"neuron must be one of {NEURONS}, got {name!r}")


def reset_state(module: nn.Module):
    "Reset SpikingJelly's stateful neurons (LIF keeps its membrane between calls); ours keep no state."
    try: from spikingjelly.activation_based.base import MemoryModule
    except ImportError: return
    for m in module.modules():
        if isinstance(m, MemoryModule): m.reset()


# %%
#| export
def median_ms(fn,  # the call to time
              warmup: int = 3,  # untimed calls first (allocations, kernel builds, caches)
              repeats: int = 15,  # timed calls; the median is reported
              device: str = 'cpu',
             ) -> float:
    "Median wall time of `fn()` in milliseconds; synchronises CUDA around every call."
    sync = torch.cuda.synchronize if str(device).startswith('cuda') else (lambda: None)
    for _ in range(warmup): fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def saved_tensor_bytes(fn, exclude=()) -> int:
    "Bytes of distinct storages that autograd saves for the backward while `fn()` runs (its activation memory)."
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}
    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded: seen[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


# %% [markdown]
# A check of the memory probe on a case we can count by hand: `x * y` saves both operands (2 × 4 kB), and
# `torch.sin(x)` saves `x`, which we exclude:

# %%
x, y = torch.randn(1000, requires_grad=True), torch.randn(1000, requires_grad=True)
test_eq(saved_tensor_bytes(lambda: x * y), 8000)
test_eq(saved_tensor_bytes(lambda: torch.sin(x), exclude=[x]), 0)
print(saved_tensor_bytes(lambda: x * y), saved_tensor_bytes(lambda: torch.sin(x), exclude=[x]))

# %% [markdown]
# ## The isolated neuron

# %%
#| export
TRAIN_PROTOCOL = 'one leaf, x.grad zeroed in the call'    # stored with every result (see Method)

def neuron_step(neuron: nn.Module,
                x: Tensor,  # [T, N]; in 'train' a leaf that requires grad
                mode: str):
    "One call in `mode`: 'train' (forward, backward of the sum of the spikes into `x.grad`, which is then zeroed) or 'inference' (no_grad)."
    reset_state(neuron)
    if mode == 'inference':
        with torch.no_grad(): return neuron(x)
    if not (x.is_leaf and x.requires_grad): raise ValueError("neuron_step(mode='train') needs x to be a leaf that requires grad")
    out = neuron(x)
    out.sum().backward()
    x.grad.zero_()                                  # SpikingJelly's own benchmark does the same, inside the timed call
    return out


def isolated_neuron_benchmark(Ns=(2**10, 2**14, 2**18),  # neuron counts
                              Ts=(4, 16, 64, 256),  # time steps
                              modes=('train', 'inference'),
                              neurons=('amos', 'sj-lif', 'sj-psn'),  # names from NEURONS
                              device: str = 'cpu',
                              warmup: int = 3, repeats: int = 15,
                              max_elements: int = 2**26,  # skip points with T·N above this (memory, time)
                              sequential_max_elements: int = 2**20,  # the Python-loop reference only below this
                              progress=None,  # a callable(description) called before each point, or None
                              rounds: int = 1,  # measure the neurons of a point in turn this many times; report the median
                             ) -> list:
    "Median times (ms) and saved-activation bytes for every (N, T, mode, neuron); one dict per measurement."
    records = []
    for N in Ns:
        for T in Ts:
            if T * N > max_elements: continue
            x = torch.randn(T, N, device=device, requires_grad='train' in modes)
            layers = {name: make_neuron(name, T) for name in neurons
                      if not (name == 'amos-sequential' and T * N > sequential_max_elements)}
            layers = {name: neuron.to(device) for name, neuron in layers.items() if neuron is not None}
            for mode in modes:
                # Rounds interleave the neurons (A B C A B C ...), so that a slow spell of a noisy machine falls on
                # all of them rather than on one: the ratios are what the comparison is about.
                times = {name: [] for name in layers}
                for round_ in range(rounds):
                    for name, neuron in layers.items():
                        if progress: progress(f"N=2^{int(math.log2(N))} T={T} {name} {mode} ({round_ + 1}/{rounds})")
                        times[name].append(median_ms(lambda: neuron_step(neuron, x, mode), warmup, repeats, device))
                for name, neuron in layers.items():
                    record = dict(N=N, T=T, mode=mode, neuron=name, ms=statistics.median(times[name]))
                    if rounds > 1: record['ms_rounds'] = times[name]
                    if mode == 'train':
                        reset_state(neuron)
                        record['saved_bytes'] = saved_tensor_bytes(lambda: neuron(x), exclude=[x])
                    records.append(record)
    return records


# %% [markdown]
# The training step leaves `x.grad` zeroed, and it refuses an input it cannot take the gradient of:
#

# %%
x = torch.randn(8, 64, requires_grad=True)
neuron_step(AMOSLIF(step_mode='m'), x, 'train')
test_eq(x.grad.abs().sum().item(), 0.0)           # the gradient was written, then zeroed, as the protocol says
test_fail(lambda: neuron_step(AMOSLIF(step_mode='m'), torch.randn(8, 64), 'train'), exc=ValueError, contains='leaf')

# %% [markdown]
# Saved tensors are what a layer adds to a network's activation memory, but a step's **peak** also holds its
# fresh outputs: $S$, and in training $\partial\mathcal L/\partial X$. We measure the peak of
# one `neuron_step` above what was in use before it (the input $X$ counted out). On a GPU, PyTorch's caching
# allocator counts it for us (`torch.cuda.max_memory_allocated`). On the CPU nothing does, so each measurement
# runs in a fresh Linux process that tells glibc to give every block of 64 KiB or more its own mapping and to
# return freed memory at once (`mallopt`), so that its resident size follows the live tensors; it resets the
# resident high-water mark (`/proc/self/clear_refs`), runs the step, and reads `VmHWM`. A first, unmeasured step
# builds kernels and lazy state.
#

# %%
#| export
_PEAK_CHILD = r"""
import ctypes, gc, json, re, sys
libc = ctypes.CDLL('libc.so.6')
libc.mallopt(-3, 1 << 16)      # M_MMAP_THRESHOLD: every block of 64 KiB or more is its own mapping ...
libc.mallopt(-1, 0)            # M_TRIM_THRESHOLD: ... and freed memory goes back at once, so RSS follows live tensors
import torch
from pttfs.bench import make_neuron, neuron_step
spec, T, N, mode = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
neuron = make_neuron(spec, T)
def status(key): return int(re.search(key + r':\s+(\d+) kB', open('/proc/self/status').read()).group(1)) * 1024
if neuron is None: print('null'); sys.exit()
x = torch.randn(T, N, requires_grad=True)
neuron_step(neuron, x, mode)                       # unmeasured: kernel build, lazy state
gc.collect()
before = status('VmRSS')
try:
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')    # VmHWM := VmRSS
except OSError: print('null'); sys.exit()
neuron_step(neuron, x, mode)
print(status('VmHWM') - before)
"""

def peak_memory_bytes(neuron,  # a name in NEURONS, or a dict of `AMOSLIF` keyword arguments
                      T: int, N: int,  # the input is [T, N] float32
                      mode: str = 'train',  # as in `neuron_step`
                      device: str = 'cpu',
                      timeout: float = 600,  # seconds for the CPU measurement's process
                     ):
    "Peak memory (bytes) of one `neuron_step` above what was in use before it; None if the neuron or the measurement is unavailable."
    if str(device).startswith('cuda'):
        layer = make_neuron(neuron, T)
        if layer is None: return None
        layer, x = layer.to(device), torch.randn(T, N, device=device, requires_grad=True)
        neuron_step(layer, x, mode); torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device); torch.cuda.reset_peak_memory_stats(device)
        neuron_step(layer, x, mode); torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if not sys.platform.startswith('linux'): return None          # mallopt, /proc: glibc on Linux only
    result = subprocess.run([sys.executable, '-c', _PEAK_CHILD, json.dumps(neuron), str(T), str(N), mode],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"peak memory of {neuron!r} at T={T}, N={N} failed: {result.stderr.strip()[-1000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def add_peak_memory(records: list,  # from `isolated_neuron_benchmark`
                    device: str = 'cpu', progress=None):
    "Add `peak_bytes` to every record. Run it after all timings: its processes allocate and free gigabytes, and a run that interleaved them with timings gave erratic times for large outputs."
    for record in records:
        if progress: progress(f"peak memory N=2^{int(math.log2(record['N']))} T={record['T']} {record['neuron']} {record['mode']}")
        record['peak_bytes'] = peak_memory_bytes(record['neuron'], record['T'], record['N'], record['mode'], device)
    return records


# %%
show_doc(peak_memory_bytes)

# %% [markdown]
# ## The full network
#
# The CIFAR network of the PSN paper (Fang et al. 2023b), which the AMOS paper reuses for Fig. 4: three
# `Conv3×3 → BN → neuron` blocks, average pooling, three more, average pooling, then
# `Flatten → Linear(C·64 → C·16) → neuron → Linear(C·16 → classes)`. Convolutions see the time steps as extra
# batch: `[T, B, ...]` is flattened to `[T·B, ...]` around every stateless layer. `C = 256` is the paper's width;
# on a CPU we use a narrower one. The network itself is `pttfs.models.cifar_net` (chapter 11), here with a plain
# linear read-out and each neuron in turn; the command line below shares `pttfs-train`'s helpers (one-line errors,
# `atomic_write`, the machine description, chapter 12).

# %%
net = cifar_net(lambda: AMOSLIF(step_mode='m'), channels=8)
print(net(torch.randn(4, 2, 3, 32, 32)).shape, f"| parameters at C=256: {sum(p.numel() for p in cifar_net(AMOSLIF).parameters()) / 1e6:.2f}M")
test_eq(net(torch.randn(4, 2, 3, 32, 32)).shape, (4, 2, 10))


# %%
#| export
def network_benchmark(Ts=(4,), Bs=(16,), channels: int = 32, neurons=('amos', 'sj-lif', 'sj-psn'),
                      modes=('train', 'inference'), device: str = 'cpu', warmup: int = 2, repeats: int = 5,
                      progress=None) -> list:
    "Median times (ms) of the CIFAR network on [T, B, 3, 32, 32] with each neuron, forward+backward or inference."
    records = []
    for T in Ts:
        for B in Bs:
            x = torch.randn(T, B, 3, 32, 32, device=device)
            for name in neurons:
                if make_neuron(name, T) is None: continue
                torch.manual_seed(0)
                net = cifar_net(lambda: make_neuron(name, T), channels).to(device)
                for mode in modes:
                    if progress: progress(f"network T={T} B={B} C={channels} {name} {mode}")
                    net.train(mode == 'train')
                    def step():
                        reset_state(net)
                        if mode == 'inference':
                            with torch.no_grad(): return net(x)
                        net.zero_grad(set_to_none=True)
                        net(x).sum().backward()
                    records.append(dict(T=T, B=B, C=channels, mode=mode, neuron=name,
                                        ms=median_ms(step, warmup, repeats, device)))
    return records


# %% [markdown]
# ## Machine, ratios, figures

# %%
#| export
def memory_rates(device: str = 'cpu', mib: int = 256, repeats: int = 5) -> dict:
    "Memory speeds in GB/s for the roofline: a copy between warm buffers (bytes read + written), and allocate-and-fill of a fresh buffer."
    n = mib * 2**20 // 4
    source, target = torch.ones(n, device=device), torch.empty(n, device=device)
    target.copy_(source)
    copy_ms = median_ms(lambda: target.copy_(source), 1, repeats, device)
    fresh_ms = median_ms(lambda: torch.empty(n, device=device).fill_(1.0), 1, repeats, device)   # page faults included
    return dict(buffer_mib=mib, copy_GBps=round(2 * 4 * n / copy_ms / 1e6, 1), first_touch_GBps=round(4 * n / fresh_ms / 1e6, 1))


def ratios(records: list, reference: str = 'amos', keys=('N', 'T', 'mode')) -> list:
    "For every point, each neuron's time divided by the reference's: > 1 means the reference is faster."
    table = {}
    for r in records: table.setdefault(tuple(r[k] for k in keys), {})[r['neuron']] = r['ms']
    out = []
    for point, times in sorted(table.items()):
        if reference not in times: continue
        row = dict(zip(keys, point))
        row.update({f"{name}/{reference}": ms / times[reference] for name, ms in times.items() if name != reference})
        out.append(row)
    return out


# %%
records = [dict(N=1024, T=4, mode='train', neuron='amos', ms=0.25), dict(N=1024, T=4, mode='train', neuron='sj-lif', ms=1.75)]
print(ratios(records))
test_close(ratios(records)[0]['sj-lif/amos'], 7.0, eps=1e-9)

# %%
rates = memory_rates(mib=16, repeats=2)       # speeds vary from run to run: checked, not printed
test_eq(set(rates), {'buffer_mib', 'copy_GBps', 'first_touch_GBps'})
test_eq(rates['copy_GBps'] > 0 and rates['first_touch_GBps'] > 0, True)


# %%
#| export
def plot_ratios(result: dict, mode: str = 'train', part: str = 'isolated',
                peers=None,  # names whose time / the reference's gets a heatmap each; None: every other neuron measured
                reference: str = 'amos'):
    "Figs. 3–4 style: heatmaps of each peer's time / the reference's over (N or B) × T, and absolute times along T."
    import matplotlib, matplotlib.colors; import matplotlib.pyplot as plt
    # Fig. 3: rows are neuron counts N, the absolute times at the smallest N; Fig. 4: rows are batch sizes B, the
    # absolute times at B = 16 (the paper's 4c) when it was measured.
    row_key, row_label = ('N', lambda n: f"$2^{{{int(math.log2(n))}}}$") if part == 'isolated' else ('B', str)
    records = [r for r in result[part] if r['mode'] == mode]
    rows, Ts = sorted({r[row_key] for r in records}), sorted({r['T'] for r in records})
    table = ratios(records, reference, keys=(row_key, 'T', 'mode'))
    if peers is None: peers = [n for n in NEURONS if n != reference]
    peers = [p for p in peers if any(f"{p}/{reference}" in r for r in table)]
    columns = min(3, len(peers) + 1); lines = math.ceil((len(peers) + 1) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.6 * lines), squeeze=False)
    axes = list(axes.flat)
    for ax in axes[len(peers) + 1:]: ax.axis('off')
    for ax, peer in zip(axes, peers):
        grid = [[next((r[f"{peer}/{reference}"] for r in table if r[row_key] == v and r['T'] == T and f"{peer}/{reference}" in r), float('nan'))
                 for T in Ts] for v in rows]
        finite = [g for row in grid for g in row if not math.isnan(g)]
        # ratios span two orders of magnitude (2 to over 100): a log colour scale keeps the small ones apart
        image = ax.imshow(grid, cmap='viridis', origin='lower', aspect='auto',
                          norm=matplotlib.colors.LogNorm(vmin=min(finite), vmax=max(finite)))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        for i, v in enumerate(rows):
            for j, T in enumerate(Ts):
                if not math.isnan(grid[i][j]):     # dark text on the light (high) end of the colour map
                    ax.text(j, i, f"{grid[i][j]:.1f}", ha='center', va='center', fontsize=8,
                            color='k' if image.norm(grid[i][j]) > 0.6 else 'w')
        ax.set_xticks(range(len(Ts)), [str(T) for T in Ts]); ax.set_yticks(range(len(rows)), [row_label(v) for v in rows])
        ax.set_xlabel('T'); ax.set_ylabel(row_key); ax.set_title(f"{peer} / {reference} ({mode})")
    ax = axes[len(peers)]
    fixed = 16 if part == 'network' and 16 in rows else rows[0]
    for name in sorted({r['neuron'] for r in records}):
        points = sorted((r['T'], r['ms']) for r in records if r['neuron'] == name and r[row_key] == fixed)
        if points: ax.plot(*zip(*points), 'o-', label=name)
    ax.set_xscale('log', base=2); ax.set_yscale('log'); ax.set_xlabel('T'); ax.set_ylabel('ms')
    what = 'network' if part == 'network' else 'neuron'
    ax.set_title(f"{what}: absolute time, {row_key} = {row_label(fixed)} ({mode})"); ax.legend(fontsize=8)
    fig.suptitle(f"{result['machine'].get('cpu_model') or result['machine']['processor']} | {result['machine']['device']} | {result['machine']['date'][:10]}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_isolated(result: dict, mode: str = 'train'):
    "Fig. 3 style, for the isolated neuron (`plot_ratios` with part='isolated')."
    return plot_ratios(result, mode, 'isolated')



# %% [markdown]
# ## The stored results
#
# The committed results in `benchmarks/` were produced by the command written in each file's `settings`
# (`benchmarks/README.md` lists every stored file with its command, machine and date). We
# read them here (these outputs are compared: they are the stored numbers, not a new run). There are three runs,
# one after the other on the same 2-core machine:
#
# * `cpu-2core.json`: `pttfs-bench --rounds 3 --peak-memory --out benchmarks/cpu-2core.json`, glibc's allocator as it comes.
#   This is the headline run: each point's three neurons are timed in turn three times (A B C A B C A B C) and the
#   median kept, because single sweeps there move the small-size ratios by ±20 % from run to run.
# * `cpu-2core-heap-reuse.json`: `pttfs-bench --out benchmarks/cpu-2core-heap-reuse.json` (one round) under
#   `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824`, which make glibc serve large blocks from a heap it keeps, so that a fresh tensor
#   reuses pages already touched (what jemalloc or tcmalloc, which PyTorch's CPU tuning guide recommends, do as
#   well). Every neuron's step allocates fresh outputs, and where the first touch of a page is much slower than a
#   warm copy (each file stores both speeds, `machine.memory`), this run shows how much of each time is the
#   allocator rather than the neuron. It applies to all three neurons alike.
# * `cpu-2core-grid.json`: the full grid, `pttfs-bench --N 2^10,2^12,2^14,2^16,2^18,2^20
#   --T 2,4,16,64,256,1024 --network-T 1,2,4,8 --network-B 8,16,32 --out benchmarks/cpu-2core-grid.json` (one
#   round; points with T·N > 2^26 skipped), allocator as it comes; it draws the figures (Fig. 3 below, Fig. 4 in
#   `benchmarks/cpu-2core-grid-network-*.png`).

# %%
from pathlib import Path
stored_runs = ('cpu-2core.json', 'cpu-2core-heap-reuse.json', 'cpu-2core-grid.json')      # the three runs listed above
results = {name: json.loads((Path('../benchmarks') / name).read_text()) for name in stored_runs}
for name, result in results.items():
    m = result['machine']
    print(f"{name}: {m.get('cpu_model')} ({m['cpu_count']} cores, {m['torch_threads']} threads), {m['device']}, torch {m['torch']}, "
          f"env {m['environment'] or '{}'}")
    if 'memory' in m: print(f"  memory: warm copy {m['memory']['copy_GBps']} GB/s, allocate-and-fill {m['memory']['first_touch_GBps']} GB/s "
                            f"({m['memory']['buffer_mib']} MiB buffers)")
    print("  command: pttfs-bench " + ' '.join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else v}"
                                           for k, v in result['settings'].items() if k in ('device', 'N', 'T', 'out') or (k == 'rounds' and v > 1))
          + (' --peak-memory' if result['settings'].get('peak_memory') else ''))
    print(f"  training step: {result['protocol']}")


# %% [markdown]
# The time of SpikingJelly's LIF and PSN divided by ours, at every point (above 1: ours is faster):

# %%
def ratio_table(result, mode):
    rows = [r for r in result['isolated_ratios'] if r['mode'] == mode]
    print(f"{mode:9} {'N':>8} " + ' '.join(f"{'T=' + str(T):>13}" for T in sorted({r['T'] for r in rows})))
    for N in sorted({r['N'] for r in rows}):
        cells = [f"{r['sj-lif/amos']:5.1f} | {r['sj-psn/amos']:5.1f}" for r in sorted(rows, key=lambda r: r['T']) if r['N'] == N]
        print(f"{'':9} {'2^' + str(int(math.log2(N))):>8} " + ' '.join(f"{c:>13}" for c in cells))

cpu = results.get('cpu-2core.json')
print("cells: LIF/AMOS | PSN/AMOS")
for name, result in results.items():
    print(name)
    for mode in ('train', 'inference'): ratio_table(result, mode)

# %%
#| fig-cap: The isolated neuron in training mode, SpikingJelly's LIF and PSN against ours over N × T (ratios above 1: ours is faster): look at the smallest ratios, at the largest N, where every neuron is bound by memory traffic.
# NBVAL_IGNORE_OUTPUT
grid = results.get('cpu-2core-grid.json') or cpu          # the widest sweep stored
if grid: plot_isolated(grid, 'train');

# %% [markdown]
# Training-mode activation memory: the bytes autograd keeps for the backward (`saved_bytes`, the input itself not
# counted), per neuron and point. With a fixed τ and only spikes used downstream, the fused backend keeps two
# int32 indices per neuron and recomputes the membrane in the backward. Below it, from the same run
# (`--peak-memory`, measured after all its timings), the peak of one step above the input, as
# `peak_memory_bytes` (defined above) measures it:
#

# %%
if cpu:
    saved = {(r['N'], r['T'], r['neuron']): r['saved_bytes'] for r in cpu['isolated'] if 'saved_bytes' in r}
    names = sorted({k[2] for k in saved})
    print(f"{'N':>6} {'T':>4} " + ' '.join(f"{n + ' MiB':>12}" for n in names))
    for N, T in sorted({k[:2] for k in saved}):
        print(f"{'2^' + str(int(math.log2(N))):>6} {T:>4} " + ' '.join(f"{saved.get((N, T, n), float('nan')) / 2**20:12.3f}" for n in names))
    # peak_bytes: from `--peak-memory`; steps under 2^20 elements are below its resolution (pages, 64 KiB blocks)
    peaks = {(r['N'], r['T'], r['mode'], r['neuron']): r['peak_bytes'] for r in cpu['isolated']
             if r.get('peak_bytes') is not None and r['N'] * r['T'] >= 2**20}
    if peaks:
        print(f"\npeak of one step above X, bytes per element (train | inference)")
        print(f"{'N':>6} {'T':>4} " + ' '.join(f"{n:>13}" for n in names))
        for N, T in sorted({k[:2] for k in peaks}):
            cell = lambda n: ' | '.join(f"{peaks[(N, T, mode, n)] / (N * T):4.1f}" if (N, T, mode, n) in peaks else '   -'
                                        for mode in ('train', 'inference'))
            print(f"{'2^' + str(int(math.log2(N))):>6} {T:>4} " + ' '.join(f"{cell(n):>13}" for n in names))

# %% [markdown]
# Per backend and configuration of our own neuron, counted here (bytes, not times, so this output is compared):
# what autograd keeps for a `[16, 1024]` input. The recomputing path keeps $t_f$ and $t_{sf}$ (one byte each
# per neuron while T ≤ 255, four beyond: chapter 7); a learnable τ, or the membrane as an output, needs $H$ (4 bytes per element) for the τ gradient or
# for $\partial\mathcal L/\partial H$; the textbook backend keeps $H$; the sequential reference keeps every
# step's graph. (The Triton backend, which needs a GPU, stores $H$ and the two indices, like the
# stored-membrane row.)

# %%
from pttfs.neuron import AMOSLIF
T, N = 16, 1024
configurations = {'torch (textbook)': lambda: AMOSLIF(2.0, backend='torch', step_mode='m'),
                  'cpu-fused, fixed tau': lambda: AMOSLIF(2.0, step_mode='m'),
                  'cpu-fused, membrane returned': lambda: AMOSLIF(2.0, return_membrane=True, step_mode='m'),
                  'cpu-fused, learnable tau': lambda: AMOSLIF(2.0, learnable_tau=True, step_mode='m'),
                  'cpu-fused, tau per channel': lambda: AMOSLIF(2.0, learnable_tau=True, num_channels=N, channel_dim=1, step_mode='m'),
                  'sequential (BPTT)': lambda: AMOSLIF(2.0, backend='sequential', step_mode='m')}
kept = {}
for name, make in configurations.items():
    neuron, leaf = make(), torch.randn(T, N).requires_grad_()
    kept[name] = saved_tensor_bytes(lambda: neuron(leaf), exclude=[leaf])
    print(f"{name:30} {kept[name]:8d} bytes = {kept[name] / (T * N):5.2f} per element")
test_eq(kept['cpu-fused, fixed tau'], 2 * 1 * N)                  # t_f and t_sf, a byte each (T <= 255), nothing of size [T, N]

# %% [markdown]
# The peak of one training and one inference step per configuration, measured with `peak_memory_bytes` at
# $T = 64$, $N = 2^{18}$ (64 MiB per `[T, N]` tensor). The numbers move from run to run by a few hundred kB, so
# this table is not compared; the checks after it are. What we expect, per element of `[T, N]` in float32: in
# training the fused fixed-τ path holds $S$ and $\partial\mathcal L/\partial X$ (which autograd then adds into
# `x.grad`, made by the unmeasured first step), **8 bytes**, and a learnable τ also stores $H$, **12 bytes**; in
# inference the fused path writes only $S$, **4 bytes**.
# SpikingJelly's LIF keeps 12 bytes per element for its backward (the table above), so its training peak must
# exceed ours; in inference it builds the output from per-step pieces, so it holds more than $S$ as well.
#

# %%
# NBVAL_IGNORE_OUTPUT
T, N = 64, 2**18                                  # 64 MiB per [T, N] tensor
configurations = {'cpu-fused, fixed tau': {}, 'cpu-fused, learnable tau': {'learnable_tau': True},
                  'torch (textbook)': {'backend': 'torch'}, 'sequential (BPTT)': {'backend': 'sequential'},
                  'SpikingJelly LIF': 'sj-lif', 'SpikingJelly PSN': 'sj-psn'}
peak = {}
print(f"{'peak above X, bytes per element':32} {'train':>6} {'inference':>10}")
for name, spec in configurations.items():
    peak[name] = {mode: peak_memory_bytes(spec, T, N, mode) for mode in ('train', 'inference')}
    cell = lambda b: f"{b / (T * N):.1f}" if b is not None else '-'
    print(f"{name:32} {cell(peak[name]['train']):>6} {cell(peak[name]['inference']):>10}")

# %%
bytes_per_element = lambda name, mode: peak[name][mode] / (T * N)
test_close(bytes_per_element('cpu-fused, fixed tau', 'train'), 8, eps=0.5)          # S, dL/dX
test_close(bytes_per_element('cpu-fused, learnable tau', 'train'), 12, eps=0.5)     # ... and H
test_close(bytes_per_element('cpu-fused, fixed tau', 'inference'), 4, eps=0.5)      # S
if peak['SpikingJelly LIF']['train'] is not None:
    test_eq(peak['cpu-fused, fixed tau']['train'] < peak['SpikingJelly LIF']['train'], True)
    test_eq(peak['cpu-fused, fixed tau']['inference'] < peak['SpikingJelly LIF']['inference'], True)

# %% [markdown]
# The full network (the CIFAR net at the width in the file): our time per step and the peers' ratios, over the
# T and B each run measured (`cpu-2core-grid.json` sweeps T ∈ {1, 2, 4, 8} × B ∈ {8, 16, 32}, Fig. 4's axes):
#

# %%
for name, result in results.items():
    rows = sorted(result.get('network_ratios', []), key=lambda r: (r['mode'], r['T'], r['B']))
    times = {(r['T'], r['B'], r['mode'], r['neuron']): r['ms'] for r in result.get('network', [])}
    print(f"{name}: C = {rows[0]['C'] if rows else '-'}; AMOS ms, and LIF/AMOS | PSN/AMOS")
    for r in rows:
        print(f"  {r['mode']:9} T={r['T']:<2} B={r['B']:<3} {times[(r['T'], r['B'], r['mode'], 'amos')]:8.1f} ms   "
              f"{r['sj-lif/amos']:5.2f} | {r['sj-psn/amos']:5.2f}")


# %% [markdown]
# ### The margin, point by point
#
# How much faster is our neuron than the *faster* of the two peers, at its worst and at its best point, in each
# stored run? The smallest margin says more than the largest: it is where a user with that size gains least.

# %%
def margins(result: dict, mode: str) -> tuple:
    "Smallest and largest (faster peer time / AMOS time) over the isolated sweep, each with its (N, T)."
    rows = [r for r in result['isolated_ratios'] if r['mode'] == mode and 'sj-lif/amos' in r and 'sj-psn/amos' in r]
    margin = lambda r: min(r['sj-lif/amos'], r['sj-psn/amos'])
    low, high = min(rows, key=margin), max(rows, key=margin)
    return (margin(low), low['N'], low['T']), (margin(high), high['N'], high['T'])

for name, result in results.items():
    for mode in ('train', 'inference'):
        (lo, nlo, tlo), (hi, nhi, thi) = margins(result, mode)
        print(f"{name:26} {mode:9}: smallest {lo:5.2f}x (N=2^{int(math.log2(nlo))}, T={tlo:4}), "
              f"largest {hi:6.2f}x (N=2^{int(math.log2(nhi))}, T={thi})")

# %% [markdown]
# ### What bounds the largest sizes: memory traffic
#
# At $N = 2^{18}$, $T = 256$ (2^26 elements, 256 MiB per tensor) the ratio against LIF is at its smallest of the
# long-T points. LIF's cost there is not its step loop, whose per-step tensors of 1 MiB stay in cache; it is close
# to streaming the data once. No implementation can be faster than moving the bytes its step must move. The least a
# step must move, per element of `[T, N]` in float32:
#
# * inference: read $X$, write $S$: 8 bytes;
# * training, as the protocol measures it: forward (read $X$, write $S$: 8), the sum of the spikes (read 4),
#   backward recomputing $H$ (read $X$, write $\partial\mathcal L/\partial X$: 8), autograd adding
#   $\partial\mathcal L/\partial X$ into `x.grad` (read 8, write 4), and the protocol's `x.grad.zero_()` (write 4):
#   36 bytes, of which $S$ and $\partial\mathcal L/\partial X$ are fresh tensors (8 bytes first touched).
#
# Divided by the warm copy speed stored with each run, beside LIF's time and ours in the same run:

# %%
least_bytes = {'inference': (8, "read X, write S"),          # per element of [T, N] in float32
               'train': (36, "forward 8, sum 4, backward 8, add into x.grad 12, zero x.grad 4")}
N, T = 2**18, 256
for name, result in results.items():
    memory = result['machine'].get('memory')
    times = {(r['N'], r['T'], r['mode'], r['neuron']): r['ms'] for r in result['isolated']}
    if not memory or (N, T, 'train', 'sj-lif') not in times: continue
    print(f"{name}: warm copy {memory['copy_GBps']} GB/s, allocate-and-fill {memory['first_touch_GBps']} GB/s")
    for mode, (nbytes, what) in least_bytes.items():
        bound = nbytes * N * T / memory['copy_GBps'] / 1e6                  # ms, if every byte moved at warm-copy speed
        budget = times[(N, T, mode, 'sj-lif')] / 10
        print(f"  {mode:9} N=2^18 T=256: {nbytes} B/element ({what}) -> at least {bound:5.1f} ms; "
              f"LIF/10 = {budget:5.1f} ms; AMOS took {times[(N, T, mode, 'amos')]:5.1f} ms")

# %% [markdown]
# The bound is a large share of LIF's own time: at this size LIF is itself close to memory speed, so no neuron can be
# ten times faster than it here, however it computes. In training, the protocol's own work on `x.grad` (autograd
# adds the new gradient into it, then the step zeroes it: 16 of the 36 bytes, the same for every neuron) is close to
# half of the least traffic. Our own times sit above the bound: fresh output pages cost more than warm ones (which is
# why the fused kernel asks for huge pages, chapter 7), and the kernel's access pattern (blocks of 2048 neurons
# walking 256 rows, 8 KiB per row) keeps the hardware prefetchers from streaming at copy speed. Wider blocks help at
# this size but lose at small N, so the kernel keeps 2048. Reusing output buffers across calls would beat the bound's
# fresh-page part, but a network cannot do that, so the benchmark does not.

# %% [markdown]
# ## The paper's algorithm, raced
#
# The sweeps above race our fused kernel, and the fused kernel is not the paper's algorithm: the paper computes all
# the steps of a layer at once (Eqs. 5, 9 and 19), which is our textbook `'torch'` backend (chapters 4 and 5). And
# the LIF peer above runs with SpikingJelly's defaults (hard reset, the reset kept in the graph, a Sigmoid
# surrogate), while the PSN paper, whose protocol the AMOS paper follows, builds its LIF with a soft reset
# (`v_reset=None`), a detached reset and ATan. `cpu-2core-forms.json` times all of them side by side, at the same
# points and with the same protocol: our three forms of one neuron, both LIF configurations, and PSN. Each ratio
# measures something different:
#
# * `amos-torch / amos`: what fusion buys over the time-parallel form written as PyTorch operations. The equations
#   and the results are the same (chapter 5); the kernel makes one pass where the textbook form makes a chain of
#   whole-tensor operations.
# * `amos-sequential / amos-torch`: the paper's parallel form against backpropagation through time, both written
#   as PyTorch operations. This is the paper's claim in its own terms.
# * `amos-sequential / amos`: the fused kernel against BPTT.
# * `sj-lif / amos`, `sj-lif-psnpaper / amos`, `sj-psn / amos`: the peers against the kernel, as above.
#
# What we expect: BPTT pays PyTorch's per-operation overhead at each of its T steps, so the parallel form should beat
# it more as T grows. The parallel form makes several passes over `[T, N]` where the kernel makes one, so it should
# lose to the kernel everywhere.

# %%
forms = json.loads(Path('../benchmarks/cpu-2core-forms.json').read_text())
m = forms['machine']
print(f"{m.get('cpu_model')}, {m['torch_threads']} threads, {m['date'][:10]}; rounds {forms['settings']['rounds']}, repeats {forms['settings']['repeats']}")
times = {(r['N'], r['T'], r['mode'], r['neuron']): r['ms'] for r in forms['isolated']}
columns = [('amos-torch', 'amos'), ('amos-sequential', 'amos-torch'), ('amos-sequential', 'amos'),
           ('sj-lif', 'amos'), ('sj-lif-psnpaper', 'amos'), ('sj-psn', 'amos'), ('sj-lif-psnpaper', 'amos-torch')]
for mode in ('train', 'inference'):
    print(f"\n{mode}: time ratios (above 1: the second is faster)")
    print(f"{'N':>5} {'T':>4} " + ' '.join(f"{a.replace('amos-', '') + '/' + b.replace('amos-', ''):>17}" for a, b in columns))
    for N, T in sorted({(k[0], k[1]) for k in times}):
        cell = lambda a, b: f"{times[(N, T, mode, a)] / times[(N, T, mode, b)]:17.2f}" if (N, T, mode, a) in times and (N, T, mode, b) in times else f"{'-':>17}"
        print(f"{'2^' + str(int(math.log2(N))):>5} {T:>4} " + ' '.join(cell(a, b) for a, b in columns))


# %%
def wins(a: str, b: str, mode: str) -> list:
    "The (N, T) points of the forms sweep where a is faster than b, of those where both were measured."
    both = [k for k in times if k[2] == mode and k[3] == a and (*k[:3], b) in times]
    return [k[:2] for k in sorted(both) if times[k] < times[(*k[:3], b)]], len(both)

for mode in ('train', 'inference'):
    for a, b in [('amos', 'amos-torch'), ('amos', 'sj-lif-psnpaper'), ('amos', 'sj-psn'), ('amos-torch', 'amos-sequential'),
                 ('amos-torch', 'sj-lif-psnpaper'), ('amos-torch', 'sj-psn'), ('sj-lif-psnpaper', 'sj-lif')]:
        points, of = wins(a, b, mode)
        where = ', '.join(f"(2^{int(math.log2(N))}, {T})" for N, T in points) if 0 < len(points) < of else ''
        print(f"{mode:9} {a:>10} faster than {b:<15} at {len(points):2d} of {of} points {where}")

# %%
#| fig-cap: The forms raced in training mode, each against the fused kernel: the paper's time-parallel form beats BPTT only where N is small and T long, and no form beats the kernel.
# NBVAL_IGNORE_OUTPUT
plot_ratios(forms, 'train', peers=('amos-torch', 'amos-sequential', 'sj-lif', 'sj-lif-psnpaper', 'sj-psn'));

# %% [markdown]
# The fused kernel is the fastest form at every point, as expected. The paper's form against BPTT is another story:
# it wins at the points listed, where N is small and T long, and loses where N is large. Both are written as
# PyTorch operations, so the difference is in what those operations touch. The parallel form applies each of its
# operations (the scans of chapters 2 and 4, the threshold, the maximum, the surrogate) to a whole `[T, N]` tensor.
# In a training step that is dozens of passes over memory (count them in exercise 2). BPTT's operations touch one
# step, `N` numbers, which at N = 2^14 (64 KiB) stay in the processor's cache. So on a CPU the loop pays per-operation
# overhead, T times over, and the parallel form pays memory traffic. Overhead dominates at small N, traffic at large
# N. A GPU turns this around, since it needs whole tensors to fill its lanes; that is the paper's setting, not this
# one. Against the peers, the time-parallel form beats LIF only where it beats BPTT, and PSN nowhere. PSN is
# parallel over time too, but as one `T × T` matrix product. So on a CPU our speed over both peers comes from
# fusion, not from parallelism over time. Last, the LIF that the PSN paper configures (soft reset, no graph through
# the reset) is faster than SpikingJelly's default one at every point: it is the stronger peer, and the kernel beats
# it everywhere.
#
# ### Where time-parallelism itself could pay
#
# With few neurons and many steps it is different: the fused kernel has only N lanes, and each walks its T steps
# one after another. The time-parallel form does more work, but it does it over all T at once. If time-parallelism
# pays anywhere on a CPU, it is here. `cpu-2core-crossover.json` times the kernel, the time-parallel form and BPTT
# at N = 1 to 64 and T = 2^6 to 2^14:

# %%
cross = json.loads(Path('../benchmarks/cpu-2core-crossover.json').read_text())
ctimes = {(r['N'], r['T'], r['mode'], r['neuron']): r['ms'] for r in cross['isolated']}
for mode in ('train', 'inference'):
    print(f"{mode}: ms of amos | amos-torch | amos-sequential, and amos-torch / amos")
    for N, T in sorted({(k[0], k[1]) for k in ctimes}):
        t = [ctimes.get((N, T, mode, n), float('nan')) for n in ('amos', 'amos-torch', 'amos-sequential')]
        print(f"  N={N:<3} T={T:<6} {t[0]:9.3f} | {t[1]:9.3f} | {t[2]:10.3f}   {t[1] / t[0]:7.1f}")
crossings = [(k[0], k[1], k[2]) for k in ctimes if k[3] == 'amos-torch' and ctimes[k] < ctimes[(*k[:3], 'amos')]]
print(f"points where the time-parallel form beats the one-lane kernel: {len(crossings)} of "
      f"{sum(1 for k in ctimes if k[3] == 'amos')}" + (f": {sorted(crossings)}" if crossings else ''))

# %%
#| fig-cap: Few neurons, many steps: the one-lane kernel against the time-parallel form and BPTT at N = 1 to 64; look for a crossover, and find none up to T = 2^14.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, mode in zip(axes, ('train', 'inference')):
    for N, colour in zip(sorted({k[0] for k in ctimes}), plt.cm.viridis([0.0, 0.3, 0.6, 0.85])):
        for neuron, style in (('amos', 'o-'), ('amos-torch', 's--')):
            points = sorted((k[1], v) for k, v in ctimes.items() if k[0] == N and k[2] == mode and k[3] == neuron)
            ax.plot(*zip(*points), style, color=colour, label=f"{neuron}, N={N}")
    ax.set_xscale('log', base=2); ax.set_yscale('log'); ax.set_xlabel('T'); ax.set_ylabel('ms'); ax.set_title(mode)
axes[0].legend(fontsize=7, ncol=2)
fig.suptitle(f"one-lane kernel (solid) against the time-parallel form (dashed), few neurons | {cross['machine'].get('cpu_model')}", fontsize=9)
fig.tight_layout()

# %%
per_step = {mode: 1e6 * ctimes[(1, 16384, mode, 'amos')] / 16384 for mode in ('train', 'inference')}
print("one-lane kernel at N = 1, T = 2^14: " + ', '.join(f"{mode} {ns:.1f} ns per step" for mode, ns in per_step.items()))
for mode in ('train', 'inference'):
    trend = [(T, ctimes[(1, T, mode, 'amos-torch')] / ctimes[(1, T, mode, 'amos')]) for T in sorted({k[1] for k in ctimes})]
    print(f"N = 1, {mode}: time-parallel / one-lane kernel along T: " + ', '.join(f"{T}: {r:.1f}" for T, r in trend))

# %% [markdown]
# No crossover in the measured range: the one-lane kernel spends nanoseconds per step (printed above), while
# the time-parallel form starts from a fixed cost of a few dozen PyTorch calls and then scans memory. At N = 1 its
# ratio falls over the longest T, because its fixed cost is spread over more steps, so a crossing beyond T = 2^14 cannot be
# ruled out, but no network we train has such T. The paper's parallelism over time pays on hardware whose lanes would
# otherwise sit idle; on two CPU cores the neurons fill the lanes, and one pass over memory is what counts.

# %% [markdown]
# ## The networks we train
#
# The isolated neuron is the paper's Fig. 3; its Fig. 4 times whole networks. Ours are the networks pttfs trains:
# the Fashion-MNIST recipe network (two convolutions per block, batch 128) at T = 1, 4 and 8, and the CIFAR network
# at the paper's width, C = 256, at batch 16 and T = 4. `benchmarks/network_throughput.py` builds each with
# `pttfs-train`'s own `model_for`, once with AMOS neurons and the TSD, once with SpikingJelly's LIF and once with
# PSN (both with the rate read-out of the baselines). It then counts images per second: in training (forward,
# loss, backward, an Adam step) and in inference (a full T-step forward, no early exit, so that every neuron does
# the same work). Each is timed in float32 and under bfloat16 autocast, the recipe's precision. Random images, so
# the data pipeline is not in these numbers; the neurons take turns at each point, three rounds, median kept. In a
# network the neuron is one layer among convolutions and batch norms, so we expect the ratios to be much smaller
# than the isolated neuron's, and to grow with T, where the neurons' share grows.

# %%
throughput = json.loads(Path('../benchmarks/network-throughput.json').read_text())
m = throughput['machine']
command = re.sub(r'--out \S+', '--out benchmarks/network-throughput.json', throughput['command'])   # where it was run: no local path
print(f"{m.get('cpu_model')}, {m['torch_threads']} threads: {command}")
speed = {(r['network'], r['T'], r['precision'], r['mode'], r['neuron']): r['images_per_second'] for r in throughput['rows']}
print(f"{'network':8} {'T':>2} {'precision':9} {'mode':9} {'AMOS img/s':>10} {'LIF img/s':>10} {'PSN img/s':>10} {'AMOS/LIF':>9} {'AMOS/PSN':>9}")
for net, T, precision, mode in sorted({k[:4] for k in speed}, key=lambda k: (k[0] != 'fmnist', k[1], k[2], k[3] != 'train')):
    a, l, p = (speed[(net, T, precision, mode, n)] for n in ('amos', 'lif', 'psn'))
    print(f"{net:8} {T:>2} {precision:9} {mode:9} {a:10.1f} {l:10.1f} {p:10.1f} {a / l:9.2f} {a / p:9.2f}")
for peer in ('lif', 'psn'):
    gains = {k[:4]: speed[(*k[:4], 'amos')] / speed[k] for k in speed if k[4] == peer}
    (low, at_low), (high, at_high) = min((v, k) for k, v in gains.items()), max((v, k) for k, v in gains.items())
    print(f"AMOS / {peer.upper()}: faster at {sum(v > 1 for v in gains.values())} of {len(gains)} points; "
          f"smallest {low:.2f}x {at_low}, largest {high:.2f}x {at_high}")

# %%
#| fig-cap: Our network step against the same network with SpikingJelly's LIF and PSN, per T, in float32 and bfloat16: the margins are tens of percent, a fraction of the isolated neuron's, because convolutions and batch norm take most of a step.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for ax, mode in zip(axes, ('train', 'inference')):
    for neuron, marker, colour in (('amos', 'o', 'C0'), ('lif', 's', 'C3'), ('psn', '^', 'C2')):
        for precision, style in (('bf16', '-'), ('float32', ':')):
            points = sorted((k[1], v) for k, v in speed.items() if k[0] == 'fmnist' and k[2] == precision and k[3] == mode and k[4] == neuron)
            ax.plot(*zip(*points), marker + style, color=colour, label=f"{neuron}, {precision}")
    ax.set_xscale('log', base=2); ax.set_xticks([1, 4, 8], ['1', '4', '8']); ax.set_yscale('log')
    ax.set_xlabel('T'); ax.set_ylabel('images per second'); ax.set_title(f"Fashion-MNIST network, batch 128, {mode}")
axes[0].legend(fontsize=7)
fig.suptitle(f"{m.get('cpu_model')} | {m['torch_threads']} threads | {m['date'][:10]}", fontsize=9); fig.tight_layout()

# %% [markdown]
# As expected, the margins in a network are a fraction of the isolated neuron's: convolutions, batch norm and the
# optimiser take most of each step, whichever neuron sits between them. They are smallest in the CIFAR network at
# C = 256, where 256-channel convolutions leave the neurons the smallest share, and there PSN can tie or pass AMOS
# (the printed extremes). What a user gains from the neuron in these networks is tens of percent, not the factors of
# the isolated sweep; the next section looks at the rest of the epoch.

# %% [markdown]
# ## A training epoch
#
# The neuron is one layer of a network, and what a user waits for is the epoch. For the Fashion-MNIST recipe network
# (two convolutions per block, T = 1, batch 128, bfloat16 autocast), a training step is mostly convolutions, batch
# norm, pooling and the neuron, and the epoch adds loading and augmenting the images and evaluating the test set.
# Three changes of the earlier chapters aim at it: whole splits in memory with batched crops (chapter 10), 2×2
# pooling as strided additions (chapter 11), and a fused kernel that reads and writes bfloat16 itself and keeps its
# spike times in 8 bits (chapter 7). `benchmarks/epoch_race.py` races the code before them against the code after,
# in alternating fresh processes on the same machine: a one-epoch `pttfs-train` run (data, one training pass, the
# test set, checkpoint and figures) in each, and the median time of a training step on random images. We expect the
# epoch to gain more than the step, since the data pipeline gains only in the epoch:

# %%
race = json.loads(Path('../benchmarks/epoch-race.json').read_text())
median = race['median']
print(f"machine: {race['machine'].get('cpu_model')}, {race['machine']['torch_threads']} threads (the two revisions: benchmarks/epoch-race.json)")
print(f"{'':24} {'before':>8} {'after':>8} {'before/after':>12}")
for key, label in [('epoch_seconds', 'one-epoch run (s)'), ('step_ms_bf16', 'step, bfloat16 (ms)'), ('step_ms_float32', 'step, float32 (ms)')]:
    b, a = median['before'][key], median['after'][key]
    print(f"{label:24} {b:8.1f} {a:8.1f} {b / a:11.2f}x")
epochs = [(r['before']['epoch_seconds'], r['after']['epoch_seconds']) for r in race['rounds'] if 'epoch_seconds' in r['before']]
print("every round's one-epoch runs (before, after):", ', '.join(f"({b:.0f} s, {a:.0f} s)" for b, a in epochs))
print("\nwhere an 'after' bfloat16 step spends its time (profiler, self time):")
for row in race['profile_after_bf16'][:8]:
    print(f"  {row['name'][:44]:44} {row['self_ms_per_step']:6.1f} ms {row['share']:5.0%}")

# %% [markdown]
# What it shows: the epoch gains about as much as the bfloat16 step, so the step's gains carry over whole, and the
# data pipeline's gain adds little on top at this size. The float32 step barely
# moves: the kernel's gains are in its bfloat16 input and output. The profile says what bounds the step now: the
# convolutions, forward and backward, take more than half of it, and the neuron is next. A layout that the
# convolutions prefer (channels-last), kept through the neuron without conversions, is the next thing to try.

# %% [markdown]
# ## Summary
# `isolated_neuron_benchmark` and `network_benchmark` time our neuron and SpikingJelly's side by side, with the
# training step SpikingJelly's own benchmarks use; `pttfs-bench` writes JSON (with the machine's memory speeds and,
# with `--peak-memory`, each step's peak memory) and Fig. 3-style heatmaps. In the stored runs the fused kernel is
# faster than the faster peer at every point, in both modes (the margins above), and by one to two orders of
# magnitude where the peers' cost grows with T (LIF's step loop, PSN's T × T product); a fixed-τ training step holds
# fewer bytes per element than either peer. Small and mid sizes are bound by per-call overhead, which is why the
# common fixed-τ call is one C++ autograd node; the largest by memory traffic, which bounds every implementation
# alike. The paper's own time-parallel form, raced beside them as PyTorch operations, beats BPTT only where N is
# small and T long, and never the fused kernel: on two CPU cores the neurons fill the lanes, one pass over memory is
# what counts, and the one-lane kernel has no crossover with it up to T = 2^14 even at N = 1. In the networks we
# train, the neuron's gain over LIF and PSN shrinks to tens of percent. In a network the neuron is one layer among many: the epoch of the Fashion-MNIST network gained about as much as its
# bfloat16 step (pooling, and the kernel's bfloat16 input and output), the data pipeline little on top, and its step
# is now bound by the convolutions.

# %% [markdown]
# ## Exercises
#
# 1. Run `pttfs-bench` on your machine for N = 2^14 and T = 4, 64, 256 and compare the ratios with the stored ones. Which of them move, and why might they?
# 2. The time-parallel form makes about $\log_2 T$ passes over `[T, N]`. Count the PyTorch operations in one training step of `amos_lif_parallel` at T = 256 with `torch.profiler`, and estimate from `forms` how much of its time at N = 2^10 is per-operation overhead.
# 3. Rerun the crossover sweep with `--threads 1`. Does the balance between the one-lane kernel and the time-parallel form move?

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
