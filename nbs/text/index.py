# %% [markdown]
# # pttfs
#
# > Parallel training of time-to-first-spike spiking neural networks: a literate, tested implementation of the At-Most-One-Spike LIF neuron of Che et al., *Parallel Training Time-to-First-Spike Spiking Neural Networks* (AAAI 2026).

# %%
#| default_exp __init__

# %%
#| export
#| hide
# The package's front door: the dozen names a user needs (`from pttfs import *` gives these); the rest stays
# importable from the chapter module that defines it (`from pttfs.backends import register_backend`, ...).
from pttfs.surrogate import Sigmoid, ATan
from pttfs.dynamics import amos_lif_sequential
from pttfs.backends import amos_lif_parallel
from pttfs import fused as _fused, triton_kernels as _triton     # register the 'cpu-fused' and 'triton' backends
from pttfs.neuron import AMOSLIF
from pttfs.decoders import TemporalSelectorDecoder, RateDecoder
from pttfs.data import load_dataset, direct_encode
from pttfs.models import build_model, SpikingClassifier
from pttfs.run_eval import load_run

__all__ = ['Sigmoid', 'ATan', 'amos_lif_sequential', 'amos_lif_parallel', 'AMOSLIF', 'TemporalSelectorDecoder',
           'RateDecoder', 'load_dataset', 'direct_encode', 'build_model', 'SpikingClassifier', 'load_run']

# %% [markdown]
# A TTFS neuron fires at most once. The paper shows that this makes the neuron parallel over time, forward *and*
# backward, with no approximation: the membrane is a cumulative sum, the spike an argmax, and the exact
# backpropagation-through-time gradient a closed form (the *second fake spike*) plus a reversed cumulative sum.
# This package derives each equation in a notebook, implements it, and checks it against a plain sequential loop
# differentiated by autograd; the notebooks are the source of the package and its tests.
#
# The method is that of Che, Fang, Xue, Huang, Ma and Tian, *Parallel Training Time-to-First-Spike Spiking Neural
# Networks*, AAAI 2026 (the authors' code: <https://github.com/CheKaiWei/PTTFS>). Abbreviations used throughout:
# TTFS, time-to-first-spike coding; AMOS, at most one spike; LIF, leaky integrate-and-fire; TSD, the paper's
# temporal selector decoder; PSN, the parallel spiking neuron of Fang et al. 2023 (whose CIFAR protocol the paper
# follows); TWD, ETTFS's temporal weighting decoder (Che et al. 2024); TQ-TTFS, the time-quantised TTFS network of
# Yang et al. 2024; SCNN, the small spiking convolutional network used for MNIST and Fashion-MNIST; P1–P3, the three
# properties the paper asks of its decoder (chapter 9 quotes them).
#
# ## Install
#
# PyTorch and torchvision must come from one index, built for each other. On a machine **without an NVIDIA GPU**,
# take PyTorch's CPU wheels first (a fraction of the CUDA build's size), then pttfs from a clone of this
# repository:
#
# ```sh
# pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
# pip install -e .
# ```
#
# **With an NVIDIA GPU** (Linux), `pip install -e .` alone takes the default index's CUDA build of both. Mixing the
# two (a CPU torch beside the default index's torchvision) breaks torchvision's operators; `pttfs-train` then says
# so in one line, with the command that repairs it.
#
# ## Quick start
#
# Train a TTFS network on the 8×8 `digits` set that ships with scikit-learn (no download, ~98 % test accuracy):
#
# ```sh
# pttfs-train --out runs/digits
# ```
#
# The first call on a CPU compiles the fused C++ kernel, once per install; one line on stderr says so, and the
# run reports the compile apart from its epoch times. The end of this page gives both times as measured. Without `--out`, each run gets a new folder `runs/DATASET-DATE-TIME`.
#
# The run folder then holds `metrics.jsonl`, `last.pt`, `summary.json`, `accuracy.png` and `t_first.png`; see
# `pttfs-train --help` for the datasets (MNIST, Fashion-MNIST, CIFAR-10/100 through torchvision), the schedule of
# time steps, the decoder and `--resume`. To evaluate the trained network the way a chip would run it, stopping
# each test image at the decoder's decision:
#
# ```sh
# pttfs-eval runs/digits            # writes runs/digits/eval.json; --full computes all T, --T and --decoder-threshold change them
# ```
#
# `eval.json` holds the accuracy, the average decision step, Table 5's decision table (the fraction of samples
# deciding at each step and their accuracy), the spikes spent up to the decision, the steps actually computed and
# the images per second. **Counting steps:** a decision step `t` counts from 0 (`"t": 0` is the first step, as in
# the paper's Table 5 and in `t_first.png`), while `avg_timesteps` ("1.05 steps on average") counts the steps a
# sample needs, $t_{1st} + 1$, so a network that always decides at `t = 0` averages 1.00 steps. Python ≥ 3.9; the install pulls in `torch`, `torchvision`, `matplotlib` and
# `scikit-learn`. For the notebooks and the tests, install the development extras and run the test suite:
#
# ```sh
# pip install -e ".[dev]"
# bash .ci/test
# ```
#
# The baselines of the paper's Table 3, SpikingJelly's LIF and PSN neurons in the same network
# (`pttfs-train --neuron lif|psn`), need SpikingJelly: `pip install -e ".[baselines]"`.
#
# ## Use
#
# With `step_mode='m'` the neuron takes a whole sequence, time first (`[T, B, ...]`), and returns its spikes,
# and the membrane potentials on request. (Its default, as SpikingJelly's, is `step_mode='s'`: one step per call.)

# %%
import torch
from pttfs import AMOSLIF, amos_lif_parallel, amos_lif_sequential

torch.manual_seed(0)
x = 1 + torch.randn(16, 4, 8)                     # [T, B, N] input currents
neuron = AMOSLIF(tau=2.0, v_threshold=1.0, learnable_tau=True, return_membrane=True, step_mode='m')
spikes, membrane = neuron(x)
print(neuron)
print("spikes per neuron:", spikes.sum(0).unique().tolist(), "| first-spike times of sample 0:",
      spikes[:, 0].argmax(0).tolist())

# %% [markdown]
# It is exact: the same spikes, and the same gradients as backpropagation through time with a loop over $t$:

# %%
x = (1 + torch.randn(64, 32, dtype=torch.float64)).requires_grad_()
for neuron_fn in (amos_lif_parallel, amos_lif_sequential):
    spikes, membrane = neuron_fn(x, tau=2.0)
    grad, = torch.autograd.grad((spikes * torch.arange(64.0, dtype=torch.float64)[:, None]).sum() + membrane.sum(), x)
    print(f"{neuron_fn.__name__:20} spikes: {int(spikes.sum())}, grad[0, :3]: {[round(v, 6) for v in grad[0, :3].tolist()]}")

# %% [markdown]
# It also runs one step at a time, as SpikingJelly's single-step mode does, and that is its default:
# `AMOSLIF()` takes `[B, ...]` per call and keeps its state until `reset()`, so a SpikingJelly network built with
# `spiking_neuron=AMOSLIF` works as built, and `functional.set_step_mode(net, 'm')` and `functional.reset_net(net)`
# do what they do for SpikingJelly's neurons. SpikingJelly's argument names `surrogate_function`, `store_v_seq`,
# `backend` and `step_mode` are accepted; `v_reset`, `detach_reset` and `decay_input` mean nothing for a neuron that
# fires once and never resets, and are refused with that reason. `AMOSLIF(step_mode='m', stateful=True)` continues
# a sequence fed in chunks, with the exact gradient through the carried state. A trained `SpikingClassifier` can
# stop each sample at its decision: `model.predict(images, T, early_exit=True)` gives the full pass's decisions and
# predictions (also with hidden `force_last` layers and in bfloat16, where the carried state stays float32) while
# computing only the steps up to each decision; a network with another temporal layer is refused.

# %% [markdown]
# ### From SpikingJelly: the readout that trains
#
# A SpikingJelly classifier usually reads its last spiking layer by firing rate against a one-hot target. With AMOS
# neurons that readout stalls: each output neuron fires at most once, so its rate is 0 or 1/T, the target is out of
# reach and the neurons that fired all tie (chapter 6 shows it on a toy task). Read the output layer's *membrane*
# at the first output spike instead, which is the paper's temporal selector decoder: put your body of SpikingJelly
# layers and `AMOSLIF` neurons in a `SpikingClassifier` with a `TemporalSelectorDecoder` and train on the
# cross-entropy of its logits. A run trained by `pttfs-train` loads back into Python with `load_run`.

# %%
from torch import nn
from spikingjelly.activation_based import layer, functional
from pttfs import SpikingClassifier, TemporalSelectorDecoder, load_dataset

torch.manual_seed(0)
body = nn.Sequential(layer.Flatten(), layer.Linear(64, 128), AMOSLIF())     # digits: 8x8 images
functional.set_step_mode(body, 'm')                                         # [T, B, ...] through the body
model = SpikingClassifier(body, TemporalSelectorDecoder(128, 10))            # membranes at the first output spike
digits = load_dataset('digits')
images, labels = torch.stack([digits[i][0] for i in range(256)]), torch.tensor([digits[i][1] for i in range(256)])
optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
for step in range(20):
    logits, decision = model(images, 4)                                     # T = 4 steps
    loss = nn.functional.cross_entropy(logits, labels)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    if step in (0, 19): print(f"step {step:2}: loss {loss.item():.3f}, training accuracy {(logits.argmax(1) == labels).float().mean():.2f}, "
                              f"deciding at t = 0: {(decision == 0).float().mean():.0%}")
# a run of pttfs-train, back in Python: model = load_run('runs/digits'); logits, decision = model(images, model.trained_T)

# %% [markdown]
# ## The chapters
#
# Read them in order; each states an equation, implements it, and checks it.
#
# 0. [Surrogate gradients](nbs/00_surrogate.ipynb): the step Θ and its surrogate derivatives (`Sigmoid`, default α = 4; `ATan`).
# 1. [AMOS dynamics](nbs/01_dynamics.ipynb), Eqs. 1–4: `amos_lif_sequential`, the loop-over-time reference; `force_last` and why it is off by default; `compare_with_reference`, the exactness check every later implementation passes.
# 2. [Parallel charging](nbs/02_charging.ipynb), Eqs. 5–6: where the literal cumsum overflows (float32 from T = 129 at τ = 2) and `leaky_scan`, a chunked form that is exact for any T and any finite input.
# 3. [First-spike extraction](nbs/03_first_spike.ipynb), Eqs. 7–9: fake spikes, the first crossing (Eq. 9's argmax as a weighted maximum), spikes.
# 4. [The parallel backward](nbs/04_backward.ipynb), Eqs. 10–20: the mask gradient, the second fake spike, the reversed scan, the τ and threshold gradients, the paper's Fig. 1 for one neuron; `AMOSLIFFunction`, checked against BPTT.
# 5. [Backends](nbs/05_backends.ipynb): `amos_lif_parallel`, the function every later chapter calls; how `backend='auto'` chooses between the textbook code and the compiled kernels, what the kernels share, and where a new backend or surrogate goes.
# 6. [The neuron module](nbs/06_neuron.ipynb): `AMOSLIF`, with fixed or learnable τ (scalar or per channel) and an optional learnable threshold; step by step with carried state, in SpikingJelly networks.
# 7. [A fused CPU kernel](nbs/07_fused.ipynb): why the textbook path is slow, and the same equations in one pass over memory (`'cpu-fused'`, C++ in `pttfs/csrc/amos_lif.cpp`, compiled at first use, with a fallback).
# 8. [Triton kernels for the GPU](nbs/08_triton.ipynb): the `'triton'` backend, tested on the CPU through Triton's interpreter.
# 9. [Output decoders](nbs/09_decoders.ipynb): the temporal selector decoder (membranes at the first output spike), and rate decoding, TWD and TQ-TTFS for Table 4's comparison; the paper's Fig. 2.
# 10. [Data](nbs/10_data.ipynb): torchvision's MNIST, Fashion-MNIST, CIFAR-10/100 (and the routes to them offline), the offline `digits`, the PSN paper's augmentation, direct encoding.
# 11. [Models](nbs/11_models.ipynb): the SCNN and the PSN paper's CIFAR network with AMOS LIF neurons and a decoder, or SpikingJelly's LIF and PSN as baselines; inference that stops at the decision (`predict(..., early_exit=True)`).
# 12. [Training](nbs/12_train.ipynb): incremental time steps, a learning rate that anneals every stage, a decoder threshold raised by stage, evaluation (accuracy, average time steps, decisions, spikes), precise batch norm, a training loop of a few lines with its curve, what a checkpoint must hold for an exact resume, spike rasters before and after training.
# 13. [Evaluation and ablations](nbs/13_evaluation.ipynb): the measured early-exit speed-up, an energy estimate from the spikes up to the decision (our stated formula), the MNIST and Fashion-MNIST recipes, equal-epoch controls that test incremental T (P3 does not hold in our setting), the decoder threshold swept at evaluation time, Tables 3, 4 and 5 in the paper's shape on Fashion-MNIST, and the commands for paper-scale runs.
# 14. [Speed: the benchmark](nbs/14_benchmark.ipynb): our CPU analogue of the paper's Figs. 3–4, against SpikingJelly's LIF (default and as the PSN paper configures it) and PSN; the paper's time-parallel form and sequential BPTT raced beside the fused kernel, and where time-parallelism could pay; throughput of the networks we train.
#
# Appendices, after the chapters they serve (no chapter imports one):
#
# - **A.** [Run folders, checkpoints and settings](nbs/15_runs.ipynb): atomic writes, checksummed checkpoints, locked run folders, output files and figures that never replace a reader's, a run's settings back to its network, one-line errors.
# - **B.** [The `pttfs-train` command](nbs/16_train_cli.ipynb): flags and recipes (the PSN paper's CIFAR protocol) checked before any work, baselines, resuming a killed run, data-parallel under `torchrun`, the figures of a run.
# - **C.** [Evaluating a run](nbs/17_run_eval.ipynb): `load_run`, `evaluate_run` and `pttfs-eval` (early exit, decisions, spikes to the decision), and `ablation`, which re-runs chapter 13's studies.
# - **D.** [The `pttfs-bench` command](nbs/18_bench_cli.ipynb): chapter 14's benchmarks from the command line.
#

# %% [markdown]
# ## What the stored runs show
#
# Accuracy and latency from the runs in `benchmarks/` (each file keeps its command and machine; chapter 13 reads them
# in full). The MNIST recipe over seeds, the Fashion-MNIST recipe and two settings trained on its full training set, and the equal-epoch controls that test whether more
# time steps pay (P3): the same 10 epochs on a training subset spent at T = 1, or split incrementally over T = 1, 2, 4
# with a cosine per stage or one over all epochs, the learning rate stepped per batch and batch norm's statistics
# recomputed before testing; then the decoder threshold held higher through training, which is what spreads
# decisions over time steps (Welch's t-test against T = 1 and against V_th = 1):
#

# %%
import json, statistics
from pathlib import Path
stored = Path('benchmarks') if Path('benchmarks').is_dir() else Path('../benchmarks')   # the repository root, or nbs/
mnist = [json.load(open(p))['summary'] for p in sorted(stored.glob('mnist-tsd-augment*.json'))]
accuracy = [100 * s['test_accuracy'] for s in mnist]
print(f"MNIST recipe:         {statistics.mean(accuracy):.2f} ± {statistics.stdev(accuracy):.2f} % over {len(mnist)} seeds "
      f"(mean ± sd), {statistics.mean(s['avg_timesteps'] for s in mnist):.2f} average decision steps")
fmnist = json.load(open(stored / 'fmnist-recipe.json'))['summary']
print(f"Fashion-MNIST recipe: {100 * fmnist['test_accuracy']:.2f} % (one seed), {fmnist['avg_timesteps']:.2f} average decision steps")
full = json.load(open(stored / 'fmnist-full.json'))            # all 60,000 training images, 22 epochs, precise BN
for config, what in (('full-v1', 'V_th 1, the recipe schedule'), ('full-v3', 'V_th 3 held, longer T = 2 and 4 stages')):
    rows = [r for r in full['runs'] if r['config'] == config]
    values = [100 * r['test_accuracy_precise_bn'] for r in rows]
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ''
    print(f"Fashion-MNIST, full training set, {what}: {statistics.mean(values):.2f}{spread} % (n = {len(values)}), "
          f"{statistics.mean(r['avg_timesteps_precise_bn'] for r in rows):.2f} steps, "
          f"{100 * statistics.mean(1 - r['decisions_precise_bn'][0]['fraction'] for r in rows):.1f} % deciding after t = 0")
from pttfs.evaluation import welch
w = welch(*([r['test_accuracy_precise_bn'] for r in full['runs'] if r['config'] == c] for c in ('full-v3', 'full-v1')))
print(f"Fashion-MNIST, full training set, V_th 3 against V_th 1: {100 * w['difference']:+.2f} points, Welch p = {w['p']:.3f} (n = {w['n'][0]}, {w['n'][1]})")
def accuracies(study, config): return [r['test_accuracy_precise_bn'] for r in study['runs'] if r['config'] == config]
def line(study, config, what, reference):
    values, w = accuracies(study, config), welch(accuracies(study, config), accuracies(study, reference))
    steps = statistics.mean(r['avg_timesteps_precise_bn'] for r in study['runs'] if r['config'] == config)
    return (f"{what:34} {statistics.mean(values) * 100:.2f} ± {statistics.stdev(values) * 100:.2f} % (n = {len(values)}), "
            f"{steps:.2f} steps" + ('' if config == reference else f"; vs {reference}: {100 * w['difference']:+.2f}, p = {w['p']:.3f}"))
batch = json.load(open(stored / 'decoder-controls-batch.json'))
for config, what in (('t1-b', 'controls, T = 1 only'), ('inc-b', 'controls, incremental, cosine per stage'),
                     ('inc-cosine-b', 'controls, incremental, one cosine')):
    print(line(batch, config, what, 't1-b'))
thresholds = json.load(open(stored / 'decoder-thresholds.json'))
for config in thresholds['configs']:
    if config != 'inc-b': print(line(thresholds, config, f"incremental, V_th {config.split('-v')[1]} held", 'inc-b'))
t4 = json.load(open(stored / 'decoder-thresholds-t4.json'))
for config in t4['configs']:
    if config.startswith('t4-') and len(accuracies(t4, config)) > 1:
        print(line(t4, config, 'T = 4 only, ' + ('V_th 1' if config == 't4-b' else f"V_th {config.split('-v')[1]} held"), 't4-b'))

# %% [markdown]
# The paper's headline accuracies (its abstract) beside ours, each of ours read from its stored file with the
# machine it ran on. CIFAR is not in the table: its data cannot be had where these runs were made.

# %%
paper = {'MNIST': 99.51, 'Fashion-MNIST': 93.14, 'CIFAR-10': 95.06, 'CIFAR-100': 74.07}     # the paper's abstract, %
def machine_of(path):
    "The CPU a stored run names (older files describe their machine in words)."
    machine = json.load(open(path))['machine']
    return machine['cpu_model'] if isinstance(machine, dict) else machine.split('(')[1].split(',')[0]
ours = {'MNIST': (f"{statistics.mean(accuracy):.2f} ± {statistics.stdev(accuracy):.2f} ({len(mnist)} seeds)",
                  ', '.join(sorted({machine_of(p) for p in stored.glob('mnist-tsd-augment*.json')}))),
        'Fashion-MNIST': (f"{100 * fmnist['test_accuracy']:.2f} (1 seed)", machine_of(stored / 'fmnist-recipe.json'))}
print(f"{'dataset':14} {'paper %':>8}   {'ours %':24} machine")
for name, value in paper.items():
    mine, machine = ours.get(name, ('not run', ''))
    print(f"{name:14} {value:8.2f}   {mine:24} {machine}")
assert ours['MNIST'][0].startswith(f"{statistics.mean(accuracy):.2f}")            # the record: computed, not typed

# %% [markdown]
# Speed: the isolated neuron against SpikingJelly's LIF and PSN in the same process (chapter 14 has the whole
# sweep and the network), as the range of "their time / our time" over the stored grid of neuron counts and time
# steps, training mode (forward and backward):

# %%
grid = json.load(open(stored / 'cpu-2core.json'))
for peer in ('sj-lif', 'sj-psn'):
    ratios = [r[f'{peer}/amos'] for r in grid['isolated_ratios'] if r['mode'] == 'train' and r.get(f'{peer}/amos')]
    print(f"{peer}: {min(ratios):.1f}x to {max(ratios):.1f}x our time (median {statistics.median(ratios):.1f}x) over "
          f"{len(ratios)} points; {grid['machine']['cpu_model']}, {grid['machine']['cpu_count']} cores, torch {grid['machine']['torch']}")

# %% [markdown]
# The quick start's first call, from a fresh install (an empty extensions folder, so the kernel is compiled first),
# timed by `benchmarks/first_call.py`:

# %%
first = json.load(open(stored / 'first-call.json'))
span = lambda key: f"{min(r[key] for r in first['rows']):.0f}–{max(r[key] for r in first['rows']):.0f} s"
print(f"`{first['quick_start']}` from a fresh install, {len(first['rows'])} times: {span('wall_seconds')} in all, of which "
      f"{span('compile_seconds')} compiling the kernel (once per install) and {span('run_wall_seconds')} training and evaluating; "
      f"{100 * first['rows'][0]['test_accuracy']:.1f} % test accuracy | {first['machine']['cpu_model']}, {first['machine']['cpu_count']} cores")

# %%
#| hide
# a record of the stored runs that the paragraph below describes (it fails only if the files change)
from fastcore.test import test_eq
w_t4 = welch(accuracies(t4, 't4-v4'), accuracies(t4, 't4-b'))
t4_table = [r['decisions_precise_bn'] for r in t4['runs'] if r['config'] == 't4-v4']
test_eq([-0.015 < w_t4['difference'] < -0.005, w_t4['p'] > 0.05, all(d[1]['fraction'] > 0.5 for d in t4_table)], [True, True, True])
test_eq([0 < w['difference'] < 0.01, w['p'] > 0.05], [True, True])      # full training set: V_th 3 against V_th 1

# %% [markdown]
# In our setting incremental T does not beat T = 1 trained for the same epochs, also with every stage's learning rate
# annealed and batch norm's statistics recomputed, and almost every image decides at the first step; a decoder
# threshold held higher spreads the decisions over steps, and the images that decide early are nearly all right, but
# the ones left to the last step cost more than the early ones gain (chapter 13). Trained at T = 4 from the start, a
# threshold of 4 makes most images decide at t = 1 rather than t = 0, about a point below $V_{th} = 1$ (not
# significant with two seeds). Table 5's trade of latency for accuracy did not appear in these short runs, nor on the
# full training set, where a threshold of 3 ends above $V_{th} = 1$ by less than a point, not significantly.
#
# ## Backends and speed
#
# `amos_lif_parallel` and `AMOSLIF` choose a backend by device (`backend='auto'`), or take one by name:
#
# | backend | where | what |
# |---|---|---|
# | `'torch'` | anywhere | the textbook: one PyTorch operation per equation (chapters 2–4) |
# | `'cpu-fused'` | CPU, float32/64, `Sigmoid`/`ATan` | a C++/OpenMP kernel (`pttfs/csrc/amos_lif.cpp`) compiled on first use (once per install, then cached; the quick start below gives the time); one pass forward, one backward; the common fixed-τ call is a C++ autograd node |
# | `'triton'` | CUDA, float32/64, `Sigmoid`/`ATan` | the same algorithm in Triton |
#
# The two fused kernels run one lane per neuron, sequential over $t$, and compute the same closed forms as the
# textbook (the second fake spike, the reversed recursion). That is the right shape when there are many more
# neurons than time steps, as in every layer of these networks; the textbook backend's scan, parallel over time,
# might be expected to win for a few neurons over very long sequences, but chapter 14 races the two there and the
# fused kernel stays ahead. So the CPU speed-ups above (and in chapter 14) measure fusion and the closed-form backward, not a
# time-parallel scan.
#
# All of them pass the same exactness checks against the sequential reference. If the C++ kernel cannot be built
# (no compiler), `backend='auto'` falls back to `'torch'` with one warning, and a backend asked for by name is an
# error that says why; `PTTFS_DISABLE_FUSED=1` switches the kernel off.
# **Threads.** torch uses one thread per core by default (`OMP_NUM_THREADS` or `torch.set_num_threads` change
# that); `pttfs-train --threads N` sets it for one run. On a shared machine use fewer: two runs side by side with
# two threads each on two cores ran 1.6 times slower than with one each, and a run beside a busy process 1.4 times
# slower with two than with one (`benchmarks/threads.txt`). The default stays torch's, so that a run's numbers do
# not depend on what else the machine was doing. To time the neuron against SpikingJelly (`pip install -e ".[bench]"`): `pttfs-bench --out bench.json`. The
# committed results (`benchmarks/`, each with its machine) and what they show are in chapter 14.
#
# ## The contract
#
# `amos_lif_sequential(x, tau=2.0, v_threshold=1.0, surrogate=Sigmoid(), force_last=False)` and
# `amos_lif_parallel(x, ...)` take `x` of shape `[T, *]` and return `(spikes, membrane)` shaped like `x`;
# `membrane` is $H[t]$ after charging (Eq. 4, input scaled by $1/\tau$) at every step, also after the spike. In
# float64 the parallel neuron reproduces the reference's spikes exactly and its membrane and gradients (input, τ
# and a learnable threshold) within $10^{-10}$, for T from 1 to 512, τ in (1, 1000], both `force_last` modes
# (`tests/` checks this with hypothesis). It is exact for any finite input on every backend: with inputs up to
# $10^{30}$ in float32 and $10^{300}$ in float64, the spikes are the reference's and no value is infinite or NaN
# where the reference's is finite. In float32 it stays finite for T up to 4096; float16/bfloat16 input is computed
# in float32. A NaN or an infinity in one neuron's input spoils that neuron only. Ties, where $H[t]$ lands exactly on
# $V_{th}$: the fused CPU kernel repeats the loop's arithmetic step for step (compiled without floating-point
# contraction), so its spikes are the reference's bit for bit there too; the time-parallel `'torch'` scan adds in
# another order, so where $H$ is within a rounding of $V_{th}$ its spike can differ from the loop's, and at long T with
# a large τ, where the membrane creeps along $V_{th}$ for many steps, by several steps (chapter 7 shows both). `v_threshold` may be a number or a tensor (one per neuron, or one that requires grad: backend
# `'torch'`); `AMOSLIF(learnable_threshold=True)` learns it.
#
# ## What a run folder guarantees
#
# `pttfs-train --out DIR` writes `last.pt`, `metrics.jsonl`, `summary.json`, `accuracy.png` and `t_first.png` to
# `DIR` (without `--out`, a new `runs/DATASET-DATE-TIME`), and nothing there is lost without your say:
#
# * **Refused, not overwritten.** Without `--resume`, a folder that holds any of those files is refused (exit 2,
#   one line), and every file in it is left byte for byte as it was. There is no overwrite flag: remove the
#   folder or choose another `--out`.
# * **Locked.** While a run writes `DIR` it holds an OS file lock there (`DIR/.pttfs-train.lock`); a second
#   `pttfs-train` on `DIR` is refused at once (exit 2, naming the holder's pid). The lock dies with the process,
#   so a killed run never leaves `DIR` locked. The lock file is never opened through a symbolic link.
# * **What survives a kill.** `last.pt` and `metrics.jsonl` are replaced atomically after every epoch, so a kill
#   at any moment (also during a write) leaves the last complete epoch, and `--resume` continues from it to the
#   same metrics as an uninterrupted run, rewriting `metrics.jsonl` from the checkpoint's rows. `last.pt` carries
#   a SHA-256 of its contents; a damaged file is refused. The figures are written before `summary.json`, so a run
#   with a summary has its figures; `--resume` of a finished run rewrites a short `metrics.jsonl` or a missing
#   figure, and refuses a `summary.json` that is not JSON. The temporaries of a killed write (`last.pt.tmp-PID`,
#   ...) are removed by the next run that takes the lock, and only after it is allowed to write; no other file is.
# * **A checkpoint is data.** `last.pt` is read with `torch.load(weights_only=True)`, so a planted file runs no
#   code. Its settings go through the same checks as the command line, and the network they describe must be
#   the stored weights' names and shapes, so an edited checkpoint is refused in one line, while a run made before
#   a module class was renamed still loads.
# * **A finished run stays finished.** `--resume` of a run that has all its epochs (or at least `--stop-after`)
#   trains nothing; it says so in one line (and writes `summary.json` only if a kill took it).
# * **Checked first.** Flags (with bounds: T ≤ 1024, batch ≤ 2^20, 0 ≤ seed < 2^32, 0 < lr ≤ 1000), `--out`
#   (not a file, not below a file, writable) and the data are checked before `DIR` is created, so a refused run
#   leaves no empty folder behind.
# * **One line, never a traceback.** A training loss that is not finite stops the run (the checkpoint keeps the
#   last good epoch; `metrics.jsonl` is strict JSON); a full disk or Ctrl-C says where the run stands and how to
#   `--resume`. Without a terminal (a log file, `nohup`, CI) each epoch prints one line.
# * **Other outputs.** `pttfs-eval` (default `RUN/eval.json`) and `pttfs-bench` check `--out` before any work and
#   never replace an existing file; `--overwrite` replaces only an earlier output of the same command. Both take
#   the device as `pttfs-train` does: `cuda` when present, else `cpu`.
#
# ## Read it as a website; contribute
#
# `bash .ci/site` turns the committed, executed notebooks into a static book in `_site/` without running them:
# one page per chapter with a table of contents, previous and next links, typeset equations, figures, code and
# its outputs, including the `show_doc` API blocks. Open `_site/index.html`; it works offline, since MathJax is
# served from the site itself. It is built with nbconvert, because nbconvert is already a development dependency
# and renders exactly what the notebooks store; one small template adds the navigation. (nbdev's own
# `nbdev_docs` needs Quarto, a separate install outside pip; Sphinx with myst-nb or mkdocs-jupyter would add a second
# toolchain for the same pages.) `bash .ci/site --check` then opens every page in headless Chromium and fails on a
# missing page, untypeset TeX, an image that does not load, a dead internal link, a visible input prompt, code cut
# at the right edge or not in a monospace box, a chapter without numbered sections or a contents list, and
# `show_doc` or figure-drawing code left unfolded; CI runs it.
#
# How to change the book, and what CI checks, is in [CONTRIBUTING.md](CONTRIBUTING.md): the notebooks are the
# source, and their stored outputs are tests.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
