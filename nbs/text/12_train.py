# %% [markdown]
# # Training: `pttfs-train`
#
# > Incremental time-step training (the paper: "we gradually increase T during training"), evaluation of accuracy, latency and spikes, checkpoints that survive a killed run, and the command line.

# %% [markdown]
# After this chapter you can train a TTFS network with incremental time steps from the command line, read its training curve, and resume a killed run exactly.

# %%
#| default_exp train

# %%
#| export
import argparse
import datetime
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import stat
import sys
import tempfile
import time
import torch
from torch import nn, Tensor
from torch.utils.data import DataLoader
from pttfs.data import DATASETS, TensorImages, load_dataset
from pttfs.decoders import DECODERS
from pttfs.models import build_model, spike_recorder, NEURONS, SURROGATES

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc

# %% [markdown]
# ## The schedule
#
# A schedule is a list of stages `T:epochs`: `1:10,2:3,4:2` trains 10 epochs at T = 1, then 3 at T = 2, then 2
# at T = 4, the weights carrying over from stage to stage. At T = 1 the network with the temporal selector decoder
# is a rate-decoded network (chapter 9's P1), the strong baseline; each later stage teaches it to use more time
# steps while deciding at the first output spike.
#
# **The learning rate across stages.** One cosine decay over all epochs (`--lr-schedule cosine`, the default)
# spends most of its rate on the first stage: with `1:20,2:1,4:1`, the T = 2 and T = 4 epochs train at a few
# percent of `--lr` or less (printed below), so the later stages barely move the weights. `--lr-schedule
# stage-cosine` restarts the decay at every stage (warm restarts, as in SGDR, Loshchilov & Hutter 2017).
#
# **Stepped per batch.** A cosine that changes once per epoch never anneals a short stage: a stage of $L = 2$
# epochs would train its second epoch at $\tfrac12(1 + \cos(\pi/2)) = 0.5$ of `--lr`, so the network that ends
# it has not settled, while a network under one long cosine has. The rate therefore changes at every batch. A span
# (the whole run for `cosine`, one stage for `stage-cosine`) of $L$ epochs of $B$ batches has $S = LB$ steps, and
# step $s = 0, \dots, S - 1$ trains at
#
# $$\eta_s = \tfrac12\,\bigl(1 + \cos(\pi s / S)\bigr)\,\eta_{\max},$$
#
# which starts every span at `--lr` and ends it at $\tfrac12(1 - \cos(\pi / S)) \approx (\pi / 2S)^2$ of it,
# whatever $L$ is. `lr_factors` with `steps_per_epoch=1` is the older once-per-epoch schedule, with which runs
# trained before this change still resume (`--lr-step epoch`).

# %%
#| export
MAX_T, MAX_EPOCHS = 1024, 10_000   # far beyond the paper (T <= 8), and a typo such as 1:1000000000 is caught at once

def parse_schedule(text: str) -> list:
    "'1:10,2:3,4:2' -> [(1, 10), (2, 3), (4, 2)]; ValueError on anything else."
    stages = []
    for part in str(text).split(','):
        try: T, epochs = (int(v) for v in part.split(':'))
        except ValueError: raise ValueError(f"malformed stage {part!r}: expected T:epochs, e.g. 1:10,2:3,4:2") from None
        if T < 1 or epochs < 1: raise ValueError(f"stage {part!r}: T and epochs must be positive")
        if T > MAX_T: raise ValueError(f"stage {part!r}: T is at most {MAX_T}")
        stages.append((T, epochs))
    if sum(epochs for _, epochs in stages) > MAX_EPOCHS: raise ValueError(f"at most {MAX_EPOCHS} epochs in all")
    return stages


def epoch_stages(schedule: list) -> list:
    "The T of every epoch, in order."
    return [T for T, epochs in schedule for _ in range(epochs)]


LR_SCHEDULES = ('cosine', 'stage-cosine')

def lr_factors(schedule: list, kind: str = 'cosine',
               steps_per_epoch: int = 1,  # batches per epoch: the rate changes at every batch; 1: once per epoch
              ) -> list:
    "Every step's learning rate as a fraction of --lr: one cosine over all epochs, or one that restarts at each stage."
    if kind not in LR_SCHEDULES: raise ValueError(f"the learning-rate schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    if steps_per_epoch < 1: raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    spans = [sum(epochs for _, epochs in schedule)] if kind == 'cosine' else [epochs for _, epochs in schedule]
    steps = [steps_per_epoch * epochs for epochs in spans]
    return [0.5 * (1 + math.cos(math.pi * s / length)) for length in steps for s in range(length)]


# %%
print(parse_schedule('1:10,2:3,4:2'), epoch_stages(parse_schedule('1:2,4:1')))
test_eq(parse_schedule('1:10,2:3,4:2'), [(1, 10), (2, 3), (4, 2)])
print({kind: [round(f, 3) for f in lr_factors(parse_schedule('1:4,2:2,4:2'), kind)] for kind in LR_SCHEDULES})
late = lr_factors(parse_schedule('1:20,2:1,4:1'))[-2:]
print(f"1:20,2:1,4:1 under one cosine: the T = 2 epoch at {late[0]:.1%} of --lr, the T = 4 epoch at {late[1]:.1%}")
test_eq([round(f, 6) for f in lr_factors([(1, 20), (2, 1), (4, 1)])][-2:], [round(0.5 * (1 + math.cos(math.pi * e / 22)), 6) for e in (20, 21)])
test_eq(lr_factors([(1, 3), (2, 2)], 'stage-cosine'), lr_factors([(1, 3)]) + lr_factors([(2, 2)]))
test_fail(lambda: lr_factors([(1, 3)], 'linear'), contains='cosine')
test_fail(lambda: lr_factors([(1, 3)], 'cosine', 0), contains='steps_per_epoch')
for bad in ['', '1:0', 'x:2', '2', '1:2:3', '0:4', '100000000:1', '1:1000000000', '1:' + '9' * 23, '1:6000,2:6000']: test_fail(lambda: parse_schedule(bad), exc=ValueError)

# %% [markdown]
# Per epoch, the 2-epoch stages of `1:6,2:2,4:2` end at half the rate; per batch (here 157 batches an epoch,
# 20,000 images in batches of 128), every span ends near 0. We expect the last factor of each stage to be below
# $10^{-4}$ with `stage-cosine` stepped per batch, and 0.5 when it is stepped per epoch:

# %%
controls = parse_schedule('1:6,2:2,4:2')
stage_ends = [sum(e for _, e in controls[:i + 1]) for i in range(len(controls))]      # epochs at each stage's end
per_epoch, per_batch = lr_factors(controls, 'stage-cosine'), lr_factors(controls, 'stage-cosine', steps_per_epoch=157)
print("per epoch, each stage's last epoch:", [round(per_epoch[e - 1], 3) for e in stage_ends])
print("per batch, each stage's last batch:", [f"{per_batch[157 * e - 1]:.1e}" for e in stage_ends])
test_eq([per_epoch[e - 1] for e in stage_ends][1:], [0.5, 0.5])
assert all(per_batch[157 * e - 1] < 1e-4 for e in stage_ends)
test_eq([per_batch[157 * e] for e in stage_ends[:-1]], [1.0, 1.0])                 # each stage restarts at --lr
test_close(lr_factors([(1, 2)], 'cosine', 3), [0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)])
test_eq(len(lr_factors(controls, 'cosine', 157)), 157 * 10)

# %% [markdown]
# Figure 12.1 draws the recipe's schedule (`1:12,2:4,4:4`, Fashion-MNIST's 938 batches of 64 an epoch) both ways,
# one point per batch. Look at the last epoch of each stage: stepped per batch, `stage-cosine` reaches zero at every
# stage boundary, where the per-epoch schedule jumps back up from a half-decayed rate.

# %%
#| code-fold: true
import matplotlib.pyplot as plt
recipe, batches = parse_schedule('1:12,2:4,4:4'), 938
fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
for ax, kind in zip(axes, LR_SCHEDULES):
    steps = torch.arange(batches * sum(e for _, e in recipe)) / batches             # in epochs
    ax.plot(steps, lr_factors(recipe, kind, batches), lw=1, label='per batch')
    ax.step(range(20), lr_factors(recipe, kind), where='post', ls='--', lw=1, label='per epoch')
    for end in [sum(e for _, e in recipe[:i + 1]) for i in range(len(recipe) - 1)]: ax.axvline(end, color='grey', ls=':')
    ax.set(title=f"--lr-schedule {kind}", xlabel='epoch', ylabel='fraction of --lr'); ax.legend(fontsize=8)
fig.suptitle("Figure 12.1: the learning rate of the recipe's schedule, stepped per batch and per epoch", fontsize=10)
fig.tight_layout(); plt.show()


# %% [markdown]
# **A threshold raised by stage.** The paper calls the decoder's threshold $V_{th}$ a *confidence parameter*: an
# output neuron fires, and the temporal selector decides, once its membrane potential has gathered $V_{th}$ worth
# of evidence. A high $V_{th}$ asks for more evidence, so it moves decisions later, where more time steps have been
# seen. At T = 1 there is no later step to wait for; a stage with more steps is one where a higher threshold can buy
# something. `--stage-thresholds 1,2,4` trains the decoder at $V_{th} = 1$ in the first stage, 2 in the second and 4
# in the third: one value per stage of the schedule. The network keeps the last one (it is its `--decoder-threshold`,
# which `pttfs-eval` reads), and each epoch trains and is evaluated at its stage's value. Chapter 13 measures
# what it gives, beside the other schedules.

# %%
#| export
def stage_thresholds(text: str,  # 'V1,V2,...', one decoder threshold per stage
                     schedule: list,  # the stages, from `parse_schedule`
                    ) -> list:
    "The decoder threshold of every epoch; ValueError unless there is one finite positive value per stage."
    try: values = [float(v) for v in str(text).split(',')]
    except ValueError: raise ValueError(f"expected one number per stage, e.g. 1,2,4; got {text!r}") from None
    if len(values) != len(schedule):
        raise ValueError(f"{len(values)} thresholds for {len(schedule)} stages: give one per stage of the schedule")
    if not all(math.isfinite(v) and v > 0 for v in values): raise ValueError(f"thresholds must be finite and positive, got {text!r}")
    return [v for v, (_, epochs) in zip(values, schedule) for _ in range(epochs)]


# %%
print(stage_thresholds('1,2,4', parse_schedule('1:3,2:2,4:1')))
test_eq(stage_thresholds('1,2,4', parse_schedule('1:3,2:2,4:1')), [1.0, 1.0, 1.0, 2.0, 2.0, 4.0])
test_eq(stage_thresholds('0.5', [(4, 2)]), [0.5, 0.5])
for bad in ['1,2', '1,2,x', '1,0,2', '1,nan,2', '1,2,4,8']:
    test_fail(lambda: stage_thresholds(bad, parse_schedule('1:3,2:2,4:1')), exc=ValueError)


# %% [markdown]
# ## One epoch, and the evaluation
#
# The training images come from chapter 10's `TensorImages` (the whole split in memory, augmented a batch at a
# time) for every dataset but `digits` and the PSN policy (`--augment psn`), which go through a `DataLoader`.
#
# Training: by default Adam on the cross-entropy of the decoder's logits (for the TSD, the output membranes at
# $t_{1st}$), with the learning-rate schedule above (`lr_factors`). Three options come from the PSN
# paper's protocol (below): label smoothing, mixing pairs of images (`mixup_or_cutmix`, whose labels become soft),
# and SGD with momentum.
#
# **bfloat16.** `--bf16` runs the convolutions and linear layers under bfloat16 autocast; the neurons always
# compute in float32 (chapter 5 casts a low-precision input up for every backend but the fused CPU kernel, which
# reads and writes bfloat16 itself and computes in float32: chapter 7). It is on by
# default on CUDA. On a CPU it pays where the CPU has bfloat16 matrix units (AVX512-BF16, AMX); elsewhere it can be
# slower than float32.
#
# Evaluation at the stage's T reports the accuracy, the **average inference time steps** (the mean of
# $t_{1st} + 1$: the steps the network needs before it may stop, Table 2), the histogram of $t_{1st}$, Table 5's
# decision table (for each step, the fraction of samples that decide there and their accuracy), and the spikes per
# sample in every neuron layer (Table 3's input), both over all T and up to each sample's $t_{1st}$: a chip that
# stops at the decision spends only the latter.

# %%
#| export
def autocast_for(device, bf16: bool = None):
    "bfloat16 autocast of convolutions and linear layers when `bf16` (None: on CUDA only); the neurons compute in float32."
    if bf16 is None: bf16 = str(device).startswith('cuda')
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bool(bf16))


def mixup_or_cutmix(classes: int):
    "The PSN paper's batch mixing: mixup (α = 0.2) or cutmix (α = 1), one of the two per batch; the labels become soft."
    from torchvision.transforms import v2
    return v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=classes), v2.CutMix(alpha=1.0, num_classes=classes)])


def train_epoch(model, loader, T: int, optimizer, device, progress=None, bf16: bool = None,
                label_smoothing: float = 0.0, mix=None,  # mix: (images, labels) -> (images, soft labels), e.g. mixup_or_cutmix
                scheduler=None,  # stepped after every batch (the per-batch cosine); None: the caller steps it per epoch
               ) -> dict:
    "One pass at T time steps: mean loss and accuracy (against the larger part of a mixed label), first and last batch's rate."
    model.train()
    total_loss, correct, seen, rates = 0.0, 0, 0, []
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        if mix is not None:
            images, targets = mix(images, labels)
            labels = targets.argmax(1)
        else: targets = labels
        with autocast_for(device, bf16):
            logits, _ = model(images, T)
            loss = nn.functional.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        value = loss.item()
        if not math.isfinite(value):                 # diverged: the next step would write NaN into every weight
            raise FloatingPointError(f"the training loss is {value}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rates.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        if scheduler is not None: scheduler.step()
        total_loss += value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        if progress: progress.update(1)
    total_loss, correct, seen = _all_sum([total_loss, correct, seen], device)    # over all processes under DDP
    return dict(train_loss=total_loss / seen, train_accuracy=correct / seen, lr_first=rates[0], lr_last=rates[-1])


def decision_table(decision: Tensor, correct: Tensor, T: int) -> list:
    "Table 5's rows: for each step t, the fraction of samples deciding at t and their accuracy (None where none does)."
    rows = []
    for t in range(T):
        at_t = decision == t
        n = int(at_t.sum())
        rows.append(dict(t=t, fraction=n / len(decision), accuracy=correct[at_t].sum().item() / n if n else None))
    return rows


# %%
#| export
def add_spike_counts(per_step: list, decision: Tensor, all_steps: dict, to_decision: dict):
    "Add one full pass's recorded spikes to per-layer totals: over all its steps, and up to each sample's decision."
    for name, counts in per_step:                     # [T, samples]; a chip that stops at t_1st spends only these
        t = torch.arange(counts.shape[0], device=counts.device).view(-1, 1)
        all_steps[name] = all_steps.get(name, 0.0) + float(counts.sum())
        to_decision[name] = to_decision.get(name, 0.0) + float((counts * (t <= decision.view(1, -1))).sum())


@torch.no_grad()
def evaluate(model, loader, T: int, device, bf16: bool = None) -> dict:
    "Accuracy, average time steps, Table 5's decision table, and spikes per sample per layer over all T and up to t_1st."
    model.eval()
    decisions, corrects, all_steps, to_decision, per_step = [], [], {}, {}, []
    hooks = spike_recorder(model, per_step)
    try:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            per_step.clear()
            with autocast_for(device, bf16):
                logits, decision = model(images, T)
            decisions.append(decision.cpu()); corrects.append((logits.argmax(1) == labels).cpu())
            add_spike_counts(per_step, decision, all_steps, to_decision)
    finally:
        for hook in hooks: hook.remove()
    decision, correct = torch.cat(decisions), torch.cat(corrects)
    seen = len(decision)
    spikes = {name: count / seen for name, count in all_steps.items()}
    spikes_to_decision = {name: count / seen for name, count in to_decision.items()}
    return dict(test_accuracy=correct.sum().item() / seen, avg_timesteps=(decision + 1).sum().item() / seen,
                t_first_histogram=torch.bincount(decision, minlength=T).tolist(), decisions=decision_table(decision, correct, T),
                spikes_per_sample=spikes, spikes_per_sample_total=sum(spikes.values()),
                spikes_per_sample_to_decision=spikes_to_decision, spikes_per_sample_to_decision_total=sum(spikes_to_decision.values()))


# %% [markdown]
# **Batch-norm statistics.** At evaluation, batch normalisation uses running averages that training keeps with
# momentum 0.1, so they mostly describe the last few dozen training batches, with their random crops. A rate
# network averages small shifts away; a TTFS network does not, since a shift that moves a membrane across $V_{th}$
# moves a spike. `recalibrate_batch_norm` ("precise BN", Wu & Johnson 2021) recomputes every running mean and
# variance as a plain average over whole passes of given images, with the weights unchanged; `pttfs-eval
# --precise-bn` uses the run's training images without augmentation. Chapter 13 measures what it changes.

# %%
#| export
@torch.no_grad()
def recalibrate_batch_norm(model, loader, T: int, device, bf16: bool = None) -> int:
    "Every BatchNorm's running statistics recomputed as the average over `loader`'s batches (weights unchanged); the layers reset."
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta, was_training = [m.momentum for m in norms], model.training
    for m in norms: m.reset_running_stats(); m.momentum = None          # None: a cumulative average, not a moving one
    model.train()
    try:
        for images, _ in loader:
            with autocast_for(device, bf16): model(images.to(device), T)
    finally:
        for m, momentum in zip(norms, momenta): m.momentum = momentum
        model.train(was_training)
    return len(norms)


def training_subset(train_set, n: int = None):
    "The fixed random choice of `n` training images that `--train-subset n` trains on (all of them for None)."
    if n is None: return train_set
    chosen = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:n]
    return train_set.subset(chosen) if isinstance(train_set, TensorImages) else torch.utils.data.Subset(train_set, chosen.tolist())


# %%
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
class Stepless(nn.Module):                      # the (images, T) call that recalibrate_batch_norm makes
    def __init__(self, net): super().__init__(); self.net = net
    def forward(self, x, T): return self.net(x)
data = [(torch.randn(50, 3) * 3 + 1, None) for _ in range(4)]
test_eq(recalibrate_batch_norm(Stepless(net).eval(), data, 1, 'cpu'), 1)
features = net[0](torch.cat([x for x, _ in data]))
test_close(net[1].running_mean, features.mean(0), eps=1e-5)          # the plain average of the four batch means
test_eq((net[1].momentum, net.training), (0.1, False))               # left as it was found
print("running mean after recalibration:", net[1].running_mean.detach().numpy().round(3))

# %% [markdown]
# Mixing, checked: each mixed batch keeps its images' shape, and every soft label is a probability vector that puts
# all its mass on at most two classes, the image's own and its partner's:

# %%
torch.manual_seed(0)
images, labels = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
mixed, soft = mixup_or_cutmix(10)(images, labels)
print(tuple(mixed.shape), tuple(soft.shape), f"label mass {soft.sum(1).min():.4f}..{soft.sum(1).max():.4f}")
test_eq(mixed.shape, images.shape)
test_close(soft.sum(1), torch.ones(8), eps=1e-6)
test_eq(bool(((soft > 0).sum(1) <= 2).all()), True)


# %% [markdown]
# ## Checkpoints that survive a kill
#
# After every epoch the run writes `last.pt` (model, optimizer, learning-rate schedule, random-number states, the
# metrics so far, the settings) to a temporary file and renames it over the old one: a rename is atomic, so at any
# moment `last.pt` is a complete checkpoint. `metrics.jsonl` is rewritten the same way from the metrics *in the
# checkpoint*, so the two never disagree: a run killed between them loses at most the epoch in flight, and
# `--resume` redoes exactly that one. The checkpoint ends with a SHA-256 of its contents: a file damaged on disk or
# in a copy is refused on `--resume` rather than resumed. A checkpoint is read back with
# `torch.load(weights_only=True)`: tensors and plain Python values only, so a planted file cannot run code when it
# is opened; its settings then go through the command line's own checks (`checked_settings`, below), and the
# network they describe must have the stored weights' names and shapes (`network_signature`): what loading needs,
# so that a module class renamed by a later version does not lock out runs made before it.

# %%
#| export
class RunError(Exception):
    "A run that cannot start (a bad --out, missing data, a bad checkpoint); the message says what to do."


def atomic_write(path: str, write):
    "Write a file through a temporary neighbour and a rename, so that readers only ever see a complete file."
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp): os.remove(tmp)


def write_metrics(out: str, history: list):
    "metrics.jsonl: one JSON object per finished epoch."
    def write(tmp):
        with open(tmp, 'w') as f:
            for row in history: f.write(json.dumps(row, allow_nan=False) + '\n')   # strict JSON: no bare NaN or Infinity
    atomic_write(os.path.join(out, 'metrics.jsonl'), write)


_CHECKSUM_TAG = b'\npttfs-checkpoint-sha256:'


def save_checkpoint(out: str, state: dict):
    "last.pt: what torch.save writes, then a SHA-256 of it, so that a damaged file is known as such."
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    def write(tmp):
        with open(tmp, 'wb') as f:
            f.write(payload + _CHECKSUM_TAG + hashlib.sha256(payload).hexdigest().encode() + b'\n')
            f.flush(); os.fsync(f.fileno())          # on disk before the rename makes it the checkpoint
    atomic_write(os.path.join(out, 'last.pt'), write)


def load_checkpoint(path: str) -> dict:
    "The state `save_checkpoint` wrote; a `RunError` if the file is not such a checkpoint or its checksum fails."
    with open(path, 'rb') as f: data = f.read()
    tail = len(_CHECKSUM_TAG) + 65                   # the tag, 64 hex digits, a newline
    payload, tag, digest = data[:-tail], data[-tail:-65], data[-65:-1]
    if len(data) < tail or tag != _CHECKSUM_TAG: raise RunError(f"{path} is not a pttfs-train checkpoint (no checksum)")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise RunError(f"{path} is damaged: its contents do not match its checksum")
    try: return torch.load(io.BytesIO(payload), map_location='cpu', weights_only=True)   # tensors and plain types: no code runs
    except Exception as e: raise RunError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None


# %%
import tempfile
with tempfile.TemporaryDirectory() as tmp:
    write_metrics(tmp, [dict(epoch=1, T=1), dict(epoch=2, T=1)])
    print(open(os.path.join(tmp, 'metrics.jsonl')).read().strip())
    test_eq(sorted(os.listdir(tmp)), ['metrics.jsonl'])                 # no temporary file left
    save_checkpoint(tmp, dict(epochs_done=2, weights=torch.arange(4.0)))
    test_eq(load_checkpoint(os.path.join(tmp, 'last.pt'))['weights'], torch.arange(4.0))
    data = bytearray(open(os.path.join(tmp, 'last.pt'), 'rb').read())
    data[len(data) // 2] ^= 0x01                                   # one flipped bit anywhere ...
    open(os.path.join(tmp, 'last.pt'), 'wb').write(bytes(data))
    test_fail(load_checkpoint, args=(os.path.join(tmp, 'last.pt'),), exc=RunError, contains='damaged')   # ... is refused

# %% [markdown]
# ## A run folder that cannot lose work
#
# A run's folder holds its results, so `pttfs-train` guards it in three ways:
#
# * **Refused, not overwritten.** Without `--resume`, a folder that already holds any run file (`last.pt`,
#   `metrics.jsonl`, `summary.json`, the figures) is refused, even if `last.pt` was deleted. There is no overwrite
#   flag: remove the folder, or choose another `--out`.
# * **One writer.** The run holds an OS lock (`flock`) on a file in its folder for as long as it runs; a second
#   `pttfs-train` on the same folder is refused at once. The kernel releases the lock when the process ends,
#   however it ends, so a killed run never leaves the folder locked.
# * **Checked before any work.** `--out` must name a folder that can be made and written (not a file, not below a
#   file); this, the data and every flag are checked before the folder is created, so a refused run leaves
#   nothing behind. The temporaries a killed run leaves (`last.pt.tmp-PID`, `metrics.jsonl.tmp-PID`, ...) are
#   removed by the next run that takes the lock, since no writer can be alive then, and only once that run is
#   allowed to write there; nothing else is removed. The lock file is opened without following links, so a
#   symbolic link planted in its place is refused rather than written through.

# %%
#| export
RUN_FILES = ('last.pt', 'metrics.jsonl', 'summary.json', 'accuracy.png', 't_first.png')   # everything a run writes
LOCK_FILE = '.pttfs-train.lock'
_TEMPORARY = '(' + '|'.join(re.escape(name) for name in RUN_FILES) + r')\.tmp-\d+'   # what atomic_write leaves when killed


def check_out_path(out: str) -> str:
    "The run folder's absolute path; a `RunError` if it cannot be a writable folder (empty, a file, below a file)."
    if not str(out).strip(): raise RunError("--out is empty: name the run's folder")
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path): raise RunError(f"--out {out}: is a file, not a folder")
    existing = path
    while not os.path.exists(existing): existing = os.path.dirname(existing)
    if not os.path.isdir(existing): raise RunError(f"--out {out}: {existing} is a file, so no folder can be made below it")
    if not os.access(existing, os.W_OK | os.X_OK): raise RunError(f"--out {out}: {existing} is not writable")
    return path


# %% [markdown]
# A single output file (`pttfs-eval`'s JSON, `pttfs-bench`'s) gets the same care as a run folder: checked before any
# work, and never replacing a file that is not an earlier output of the same command:

# %%
#| export
def _holds_keys(path: str, keys) -> bool:
    "Whether the file is a JSON object with all these keys: an earlier output of the same command."
    try:
        with open(path) as f: data = json.load(f)
    except (OSError, ValueError): return False
    return isinstance(data, dict) and all(key in data for key in keys)


def check_out_file(p, out: str,
                   overwrite: bool = False,  # --overwrite: replace an existing file, if it is `own`
                   own: tuple = ('machine', 'isolated'),  # the keys of this command's JSON: only such a file is replaced
                  ) -> str:
    "An output file's absolute path, checked before any work: new (or replaceable), not a folder, in a writable folder."
    if not out.strip(): p.error("--out is empty: name the JSON file to write")
    path = os.path.abspath(out)
    if os.path.isdir(path): p.error(f"--out {out}: is a folder; name a file in it, e.g. {os.path.join(out, 'bench.json')}")
    existing = os.path.dirname(path)
    while not os.path.lexists(existing): existing = os.path.dirname(existing)
    if not os.path.isdir(existing): p.error(f"--out {out}: {existing} is a file, so no file can be written below it")
    if os.path.lexists(path):                       # never replace a checkpoint, a metrics file, another tool's output
        if not overwrite: p.error(f"--out {out}: the file exists; choose another --out, or pass --overwrite to replace it")
        if os.path.islink(path) or not _holds_keys(path, own):
            p.error(f"--out {out}: --overwrite replaces only an earlier {p.prog} output, and this file is not one")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(path)): pass        # can a file be written there?
    except OSError as e: p.error(f"--out {out}: cannot write there ({e.strerror or e})")
    return path


# %% [markdown]
# Figures get the same rule. `save_figure` writes a PNG through a temporary neighbour and a rename, so a link
# in its place is replaced, never written through, and marks the file as ours in the PNG's `Software` field;
# `check_figure_files` refuses, before any work, a figure path that holds anything but an earlier figure of ours
# (and even that without `--overwrite`):

# %%
#| export
FIGURE_MARK = b'Software\x00pttfs'      # the PNG text chunk that `save_figure` writes: how a figure is known as ours

def save_figure(fig, path: str, dpi: int = 110):
    "Save `fig` as a PNG at `path`, atomically (a link there is replaced, not followed) and marked as pttfs's."
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format='png', metadata={'Software': 'pttfs'}))


def is_our_figure(path: str) -> bool:
    "Whether `path` is a regular file written by `save_figure` (not a link, not a reader's picture)."
    if os.path.islink(path) or not os.path.isfile(path): return False
    with open(path, 'rb') as f: head = f.read(1 << 16)          # text chunks come before the image data
    return head.startswith(b'\x89PNG') and FIGURE_MARK in head


def check_figure_files(p, paths: list, overwrite: bool = False):
    "Before any work: `p.error` unless every figure path is free, or (with `overwrite`) an earlier figure of ours."
    for path in paths:
        if not os.path.lexists(path): continue
        if not overwrite: p.error(f"{path} exists (a figure {p.prog} would write); choose another --out, or pass --overwrite")
        if not is_our_figure(path): p.error(f"{path} is not a figure {p.prog} wrote, so --overwrite does not replace it; move it away")


# %%
from matplotlib.figure import Figure
with tempfile.TemporaryDirectory() as tmp:
    fig = Figure(figsize=(1, 1)); fig.subplots().plot([0, 1])
    theirs = os.path.join(tmp, 'theirs.txt'); open(theirs, 'w').write('keep')
    os.symlink(theirs, os.path.join(tmp, 'linked.png'))
    save_figure(fig, os.path.join(tmp, 'linked.png'))                       # replaces the link ...
    test_eq(open(theirs).read(), 'keep')                                    # ... and never writes through it
    test_eq([is_our_figure(os.path.join(tmp, n)) for n in ('linked.png', 'theirs.txt', 'none.png')], [True, False, False])
    class Refusing:                            # the part of a parser these checks use
        prog = 'demo'
        def error(self, message): raise RunError(message)
    p = Refusing()
    check_figure_files(p, [os.path.join(tmp, 'none.png')])                  # free: fine
    check_figure_files(p, [os.path.join(tmp, 'linked.png')], overwrite=True) # ours: replaceable with --overwrite
    test_fail(check_figure_files, args=(p, [os.path.join(tmp, 'linked.png')]), exc=RunError, contains='--overwrite')
    test_fail(check_figure_files, args=(p, [theirs], True), exc=RunError, contains='not a figure')
    test_fail(check_out_file, args=(p, os.path.join(theirs, 'x.json')), exc=RunError, contains='is a file')


# %% [markdown]
# Every stored result records what it was measured on (`describe_machine`): the date, the CPU model, the thread
# count, the versions, and the environment variables that change threads, kernels or the allocator.

# %%
#| export
def describe_machine(device: str = 'cpu') -> dict:
    "What the numbers were measured on."
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), python=platform.python_version(),
                torch=torch.__version__, device=str(device),
                environment={k: v for k, v in os.environ.items()         # what changes threads, kernels, the allocator
                             if k in ('OMP_NUM_THREADS', 'THP_MEM_ALLOC_ENABLE', 'PTTFS_DISABLE_FUSED', 'LD_PRELOAD') or k.startswith('MALLOC_')})
    try:
        import spikingjelly; info['spikingjelly'] = getattr(spikingjelly, '__version__', 'installed')
    except ImportError: info['spikingjelly'] = None
    try:
        with open('/proc/cpuinfo') as f:
            info['cpu_model'] = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), None)
    except OSError: pass
    if str(device).startswith('cuda') and torch.cuda.is_available(): info['gpu'] = torch.cuda.get_device_name(device)
    return info


# %%
#| export
class RunFolder:
    "A run's folder, locked (an OS file lock, released on exit or kill) while one process writes it."
    def __init__(self, out: str): self.path, self.created, self.fd = os.path.abspath(out), False, None

    def open(self, resume: bool):
        "Make and lock the folder; refuse a locked one and, without `resume`, one that holds a run."
        self.created = not os.path.isdir(self.path)
        try: os.makedirs(self.path, exist_ok=True)
        except OSError as e: raise RunError(f"--out {self.path}: cannot make the folder ({e.strerror})") from None
        try:
            self._lock()
            present = [name for name in RUN_FILES if os.path.lexists(os.path.join(self.path, name))]   # a link counts too
            if present and not resume:
                raise RunError(f"{self.path} already holds a run ({', '.join(present)}); pass --resume to continue it, "
                               f"or choose another --out")
            for name in os.listdir(self.path):       # our own temporaries, left by a killed writer (none is alive now)
                if re.fullmatch(_TEMPORARY, name): os.remove(os.path.join(self.path, name))
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self):
        try: import fcntl
        except ImportError: return                   # not POSIX: no lock
        path = os.path.join(self.path, LOCK_FILE)
        while True:
            try: fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)   # never write through a planted link
            except OSError as e:
                if os.path.islink(path): raise RunError(f"{path} is a symbolic link, not pttfs-train's lock: remove it") from None
                raise RunError(f"--out {self.path}: cannot write there ({e.strerror})") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd); raise RunError(f"{path} is not a regular file, so it cannot be pttfs-train's lock: remove it")
            try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors='replace').strip() or '?'
                os.close(fd)
                raise RunError(f"{self.path} is in use by another pttfs-train (pid {holder}); wait for it, or choose another --out") from None
            try: current = os.stat(path).st_ino == os.fstat(fd).st_ino    # not removed by a holder that just finished
            except FileNotFoundError: current = False
            if current: break
            os.close(fd)
        os.ftruncate(fd, 0); os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def close(self):
        "Release the lock; remove the folder if this run made it and left nothing in it."
        if self.fd is not None:
            try: os.remove(os.path.join(self.path, LOCK_FILE))      # while still locked, so that no one locks a stale file
            except FileNotFoundError: pass
            os.close(self.fd)
            self.fd = None
        if self.created and os.path.isdir(self.path) and not os.listdir(self.path): os.rmdir(self.path)


# %%
with tempfile.TemporaryDirectory() as tmp:
    first = RunFolder(f'{tmp}/run').open(resume=False)
    test_fail(RunFolder(f'{tmp}/run').open, args=(False,), exc=RunError, contains='in use')     # a second writer
    open(f'{tmp}/run/metrics.jsonl', 'w').write('{"epoch": 1}\n')
    first.close()
    test_fail(RunFolder(f'{tmp}/run').open, args=(False,), exc=RunError, contains='already holds a run')
    open(f'{tmp}/run/last.pt.tmp-12345', 'w').write('half a checkpoint')                       # a killed writer's
    RunFolder(f'{tmp}/run').open(resume=True).close()
    print(sorted(os.listdir(f'{tmp}/run')))
    test_eq(sorted(os.listdir(f'{tmp}/run')), ['metrics.jsonl'])
    open(f'{tmp}/file', 'w').write('')
    for bad in ['', f'{tmp}/file', f'{tmp}/file/run']: test_fail(check_out_path, args=(bad,), exc=RunError)
    RunFolder(f'{tmp}/new').open(resume=False).close()                                        # made, left empty ...
    test_eq(os.path.exists(f'{tmp}/new'), False)                                              # ... and removed

# %% [markdown]
# ## More than one process
#
# Under `torchrun --nproc_per_node N -m pttfs.train ...` the run is data-parallel: every process holds the model,
# wrapped in `DistributedDataParallel` (NCCL on GPUs, gloo on the CPU), and trains on its share of each epoch
# (`DistributedSampler`), with `--batch-size` the *global* batch split evenly between processes. The training loss
# and accuracy are summed over processes; process 0 alone evaluates and writes the checkpoint, the metrics, the
# summary (with its `world_size`) and the figures, while the others wait at a barrier.
#
# ## Recipes and baselines
#
# A **recipe** fills every flag marked "(recipe)" that the command leaves out; a flag given on the command line
# always wins.
#
# | flag | `default` | `psn` (Fang et al. 2023b) |
# |---|---|---|
# | `--optimizer`, `--lr` | Adam, 3·10⁻³ | SGD, 0.1, momentum 0.9, no weight decay |
# | `--batch-size` | 64 | 128 |
# | `--schedule` | `1:12,2:4,4:4` | `4:1024` (their CIFAR runs: T = 4, 1024 epochs) |
# | `--label-smoothing` | 0 | 0.1 |
# | `--augment` | CIFAR: crop + flip; others: off | flip (CIFAR), TrivialAugmentWide, RandomErasing(0.1) |
# | `--mixup` | off | mixup (α = 0.2) or cutmix (α = 1), one per batch |
# | `--surrogate` | sigmoid (α = 4) | ATan (α = 2) |
# | `--bf16` | CUDA only | on (their runs use fp16 mixed precision with a loss scaler; bfloat16 needs none) |
#
# Both use one cosine learning-rate decay over all epochs (`--lr-schedule cosine`). The `psn` values are read
# from the PSN paper's CIFAR-10 script and its logged arguments; the AMOS paper says it followed that protocol on
# CIFAR.
#
# `--neuron lif` or `--neuron psn` trains the same body with SpikingJelly's neurons instead of AMOS LIF (chapter 11)
# and a rate read-out: Table 3's baselines. A PSN layer is built for one T, so its schedule has one stage.
# `--output-force-last` applies Eq. 7 to the output layer only (chapter 13 tests what that does to the spike-time
# decoders). `--train-subset N` trains on a fixed random choice of N training images, the same in every run, for
# quick studies.
#
# ## The command line

# %%
#| export
# Settings that define a run: a checkpoint made with other values cannot be resumed with these.
RUN_KEYS = ('dataset', 'architecture', 'decoder', 'channels', 'hidden', 'tau', 'decoder_threshold', 'schedule',
            'batch_size', 'lr', 'seed', 'augment', 'convs_per_block', 'bf16', 'neuron', 'surrogate', 'output_force_last',
            'optimizer', 'momentum', 'label_smoothing', 'mixup', 'train_subset', 'lr_schedule', 'stage_thresholds',
            'lr_step')
# Keys added later, with the value that runs saved before them had (bf16 None: on for CUDA only).
_OLDER_RUNS = dict(convs_per_block=1, bf16=None, neuron='amos', surrogate='sigmoid', output_force_last=False,
                   optimizer='adam', momentum=0.9, label_smoothing=0.0, mixup=False, train_subset=None,
                   lr_schedule='cosine', stage_thresholds=None, lr_step='epoch')

# A recipe fills every one of these flags that the command leaves out.
RECIPES = {
    'default': dict(optimizer='adam', lr=3e-3, batch_size=64, schedule='1:12,2:4,4:4', label_smoothing=0.0,
                    mixup=False, surrogate='sigmoid', augment=None, bf16=None),
    # Fang et al. 2023b (the PSN paper), whose CIFAR protocol the AMOS paper follows; 1024 epochs at T = 4 in their runs
    'psn': dict(optimizer='sgd', lr=0.1, batch_size=128, schedule='4:1024', label_smoothing=0.1,
                mixup=True, surrogate='atan', augment='psn', bf16=True),
}


def run_settings(settings: dict, device='cpu') -> dict:
    "A run's settings with every key of RUN_KEYS: a key the run predates gets the value such runs had."
    filled = {**_OLDER_RUNS, **settings}
    if filled['bf16'] is None: filled['bf16'] = str(device).startswith('cuda')
    return filled


def model_for(settings: dict, backend: str = 'auto'):
    "The network a run's settings describe."
    s = run_settings(settings)
    return build_model(s['dataset'], s['architecture'], s['decoder'], s['channels'], s['hidden'], s['tau'],
                       s['decoder_threshold'], backend=backend, convs_per_block=s['convs_per_block'], neuron=s['neuron'],
                       T=parse_schedule(s['schedule'])[-1][0], surrogate=s['surrogate'],
                       output_force_last=s['output_force_last'])


def network_signature(weights: dict) -> list:
    "Every tensor's name and shape in a state dict: what loading needs (a class a later version renames still loads)."
    return [f"{name}:{tuple(t.shape)}" for name, t in weights.items() if isinstance(t, Tensor)]


# %%
#| export
class OneLineParser(argparse.ArgumentParser):
    "argparse, but an error is one line that names the flag (no usage block), and exit code 2; or a RunError if `raising`."
    raising = False                                   # True while checking settings read from a checkpoint

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse reads '-1e30' as an unknown flag (its pattern knows '-1' and '-.5' only): a number in any float form
        self._negative_number_matcher = re.compile(r'^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$|^-inf$|^-nan$', re.I)

    hints = {}                                        # flag -> what to use instead, added to "unrecognized arguments"

    def error(self, message):
        if self.raising: raise RunError(message)
        if message.startswith('unrecognized arguments'):
            words = {w.split('=')[0] for w in message.split(':', 1)[1].split()}
            message += ''.join(f"; {hint}" for flag, hint in self.hints.items() if flag in words)
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    "Every flag's default after its help (unless the help states it, or it has none); the epilog as written."
    def _get_help_string(self, action):
        text = action.help or ''
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS: return text
        if '(default' in text or '(recipe' in text: return text
        return f"{text} (default: %(default)s)"


def default_device() -> str:
    "The one rule of every pttfs command: cuda when this machine has it, the CPU otherwise."
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def check_device(p: argparse.ArgumentParser, name: str) -> torch.device:
    "The device `--device` names, if it is the CPU or an available CUDA device; otherwise `p.error`."
    try: device = torch.device(name)
    except (RuntimeError, ValueError): p.error(f"--device {name!r} is not a device: use cpu, cuda or cuda:N")
    if device.type not in ('cpu', 'cuda'): p.error(f"--device {name}: pttfs runs on cpu or cuda")
    if device.type == 'cuda' and not torch.cuda.is_available(): p.error(f"--device {name}: CUDA is not available here")
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        p.error(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def new_run_folder(dataset: str, root: str = 'runs',
                   make: bool = False,  # make it too: taken atomically, so two runs started in one second get two folders
                  ) -> str:
    "runs/DATASET-YYYYmmdd-HHMMSS (then -2, -3, ... if taken): a second plain run never meets the first's folder."
    base = os.path.join(root, f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, n = base, 1
    while True:
        if not make and not os.path.lexists(path): return path
        if make:
            os.makedirs(root, exist_ok=True)
            try: os.mkdir(path); return path
            except FileExistsError: pass
        n, path = n + 1, f"{base}-{n + 1}"


# %%
#| export
_EXAMPLES = """examples:
  pttfs-train --dataset digits --schedule 1:4,2:2          a small run (offline data), seconds on a CPU
  pttfs-train --dataset fashion-mnist --download --convs-per-block 2 --out runs/fmnist   (downloads into ./data once)
  pttfs-train --dataset cifar10 --recipe psn --out runs/c10  the PSN paper's CIFAR protocol
  pttfs-train ... --stop-after 5                           stop after 5 epochs in all; run it again with --resume
  pttfs-train <the same flags> --resume                    continue a stopped or killed run in --out
  pttfs-eval runs/fmnist                                   evaluate it, stopping each image at its decision"""


def _recipe(key: str) -> str:
    return "(recipe: " + ', '.join(f"{name} {'auto' if values[key] is None else values[key]}" for name, values in RECIPES.items()) + ")"



# %%
#| export
def _build_parser() -> OneLineParser:
    p = OneLineParser(prog='pttfs-train', formatter_class=HelpFormatter, epilog=_EXAMPLES,
                      description="Train a TTFS SNN with AMOS LIF neurons and incremental time steps. Flags marked "
                                  "(recipe) take the recipe's value unless given.")
    stages = "T and the epochs are set together, per stage: --schedule T:EPOCHS[,T:EPOCHS...], e.g. --schedule 4:5"
    p.hints = {'--epochs': stages, '--T': stages, '--timesteps': stages, '--T_max': stages}
    p.add_argument('--recipe', default='default', choices=list(RECIPES), help="presets for the flags marked (recipe); "
                   "'psn': the PSN paper's CIFAR protocol")
    p.add_argument('--dataset', default='digits', choices=list(DATASETS), help="digits ships with scikit-learn (offline)")
    p.add_argument('--data-dir', default='data', help="torchvision's root folder for the datasets")
    p.add_argument('--download', action='store_true', help="download a missing dataset")
    p.add_argument('--augment', action=argparse.BooleanOptionalAction, default=None, help="training augmentation: "
                   "crops (and flips for CIFAR); default on for CIFAR only, not for digits " + _recipe('augment'))
    p.add_argument('--architecture', default=None, choices=['scnn', 'cifar'], help="default: cifar for CIFAR, scnn otherwise")
    p.add_argument('--neuron', default='amos', choices=list(NEURONS),
                   help="hidden neurons: AMOS LIF, or a SpikingJelly baseline (needs pttfs[baselines]): LIF with its defaults, "
                   "LIF as the PSN paper's code configures it (lif-psnpaper), or PSN")
    p.add_argument('--decoder', default=None, choices=list(DECODERS), help="default: tsd; rate for the baselines")
    p.add_argument('--output-force-last', action='store_true', help="Eq. 7 in the output layer only: silent neurons fire at T-1 "
                   "(for --decoder twd or tq-ttfs; the others read membranes, which it does not change)")
    p.add_argument('--channels', type=int, default=None, help="C: 32 for the SCNN, 256 for the CIFAR net by default")
    p.add_argument('--hidden', type=int, default=256, help="SCNN: neurons in the last hidden layer")
    p.add_argument('--convs-per-block', type=int, default=1, help="SCNN: Conv-BN-neuron layers before each of its two poolings")
    p.add_argument('--tau', type=float, default=2.0, help="the initial membrane time constant of every neuron (> 1)")
    p.add_argument('--surrogate', default=None, choices=list(SURROGATES), help="every neuron's surrogate gradient " + _recipe('surrogate'))
    p.add_argument('--decoder-threshold', type=float, default=None, help="the decoder's V_th, the confidence parameter "
                   "(default: 1.0, or the last of --stage-thresholds)")
    p.add_argument('--stage-thresholds', default=None, help="the decoder's V_th in each stage of --schedule, e.g. 1,2,4; "
                   "the network keeps the last")
    return _add_training_flags(p)


# %%
#| export
def _add_training_flags(p: OneLineParser) -> OneLineParser:
    "The flags of how the network is trained, and where: schedule, optimisation, data order, device, run folder."
    p.add_argument('--schedule', default=None, help="stages T:epochs, trained in order " + _recipe('schedule'))
    p.add_argument('--batch-size', type=int, default=None, help="images per step, over all processes " + _recipe('batch_size'))
    p.add_argument('--optimizer', default=None, choices=['adam', 'sgd'], help="with the --lr-schedule decay " + _recipe('optimizer'))
    p.add_argument('--lr', type=float, default=None, help="the initial learning rate " + _recipe('lr'))
    p.add_argument('--lr-schedule', default='cosine', choices=LR_SCHEDULES, help="cosine: one decay over all epochs; "
                   "stage-cosine: each T stage restarts at --lr and decays to about 0 by its last batch")
    p.add_argument('--lr-step', default='batch', choices=['batch', 'epoch'], help="change the rate after every batch, "
                   "or once per epoch (as runs made before --lr-step did; a 2-epoch stage then ends at half --lr)")
    p.add_argument('--momentum', type=float, default=0.9, help="SGD's momentum")
    p.add_argument('--label-smoothing', type=float, default=None, help="of the cross-entropy " + _recipe('label_smoothing'))
    p.add_argument('--mixup', action=argparse.BooleanOptionalAction, default=None,
                   help="mixup (α 0.2) or cutmix (α 1), one of the two per batch, as in the PSN paper " + _recipe('mixup'))
    p.add_argument('--train-subset', type=int, default=None,
                   help="train on this many training images, a fixed random choice (the same in every run): quick studies")
    p.add_argument('--seed', type=int, default=0, help="seeds the weights, the data order and every random draw")
    p.add_argument('--bf16', action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast of convolutions "
                   "and linear layers (neurons stay float32); default on for CUDA only " + _recipe('bf16'))
    p.add_argument('--device', default=default_device(), help="cpu, cuda or cuda:N")
    p.add_argument('--workers', type=int, default=0, help="DataLoader worker processes")
    p.add_argument('--threads', type=int, default=None, help="CPU threads (default: torch's, one per core); beside "
                   "other busy processes, 1 is faster")
    p.add_argument('--out', default=None, help="the run's folder (default: a new runs/DATASET-DATE-TIME)")
    p.add_argument('--resume', action='store_true', help="continue the run in --out from its last.pt (same flags)")
    p.add_argument('--stop-after', type=int, default=None, help="stop after this many epochs in all (resume later)")
    return p


# %%
#| export
MAX_BATCH, MAX_SEED, MAX_LR = 2**20, 2**32 - 1, 1e3    # beyond these a value is a typo, and torch would fail obscurely

def check_args(p: OneLineParser, args):
    "Fill the recipe's values, then check every flag against the others; `p.error` on the first that is wrong."
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key) is None: setattr(args, key, value)
    if args.decoder is None: args.decoder = 'tsd' if args.neuron == 'amos' else 'rate'
    try: args.stages = parse_schedule(args.schedule)
    except ValueError as e: p.error(f"--schedule: {e}")
    if not 1 <= args.batch_size <= MAX_BATCH: p.error(f"--batch-size must be in 1..{MAX_BATCH}, got {args.batch_size}")
    if not 0 <= args.seed <= MAX_SEED: p.error(f"--seed must be in 0..{MAX_SEED}, got {args.seed}")
    if not (math.isfinite(args.lr) and 0 < args.lr <= MAX_LR): p.error(f"--lr must be a number in (0, {MAX_LR:g}], got {args.lr}")
    if not (math.isfinite(args.momentum) and 0 <= args.momentum < 1): p.error(f"--momentum must be in [0, 1), got {args.momentum}")
    if not (0 <= args.label_smoothing < 1): p.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    for flag in ('channels', 'hidden', 'convs_per_block', 'train_subset', 'stop_after'):
        value = getattr(args, flag)
        if value is not None and value < 1: p.error(f"--{flag.replace('_', '-')} must be positive, got {value}")
    tau32 = torch.tensor(args.tau, dtype=torch.float32).item() if math.isfinite(args.tau) else args.tau   # the neurons' dtype
    if not (math.isfinite(tau32) and tau32 > 1): p.error(f"--tau must be a number > 1 that float32 holds (1 + 1e-6 < tau < 3e38), got {args.tau}")
    if args.stage_thresholds is not None:
        try: args.epoch_thresholds = stage_thresholds(args.stage_thresholds, args.stages)
        except ValueError as e: p.error(f"--stage-thresholds: {e}")
        if args.decoder_threshold is None: args.decoder_threshold = args.epoch_thresholds[-1]
        if args.decoder_threshold != args.epoch_thresholds[-1]:
            p.error(f"--decoder-threshold {args.decoder_threshold:g} differs from the last of --stage-thresholds "
                    f"({args.epoch_thresholds[-1]:g}), which the network keeps; leave --decoder-threshold out")
    if args.decoder_threshold is None: args.decoder_threshold = 1.0
    if not (math.isfinite(args.decoder_threshold) and args.decoder_threshold > 0):
        p.error(f"--decoder-threshold must be a finite number > 0, got {args.decoder_threshold}")
    if args.workers < 0: p.error(f"--workers must be >= 0, got {args.workers}")
    if args.threads is not None and not 1 <= args.threads <= 1024: p.error(f"--threads must be in 1..1024, got {args.threads}")
    if args.augment and args.dataset == 'digits':
        p.error("--augment: digits has no augmentation (8x8 images, no crops defined); leave --augment out")
    if args.output_force_last and args.neuron == 'amos' and args.decoder in ('tsd', 'rate') and not p.raising:    # (a stored run is not refused for it)
        p.error(f"--output-force-last changes nothing for --decoder {args.decoder}: it reads the output membranes (at t_1st, "
                f"or over all steps), which Eq. 7 does not touch; it is for the spike-time decoders twd and tq-ttfs")
    if args.neuron != 'amos':
        if args.decoder != 'rate': p.error(f"--neuron {args.neuron} fires many times, so it decodes by rate: --decoder rate, not {args.decoder}")
        if args.output_force_last: p.error(f"--output-force-last is for AMOS output neurons; --neuron {args.neuron} reads out by a linear layer")
        if args.stage_thresholds: p.error(f"--stage-thresholds: --neuron {args.neuron} reads out by a linear layer, which has no threshold")
        try: import spikingjelly  # noqa: F401
        except ImportError: p.error(f"--neuron {args.neuron} needs SpikingJelly: pip install \"pttfs[baselines]\"")
    if args.neuron == 'psn' and len(args.stages) > 1:
        p.error(f"--neuron psn: a PSN layer's weights are T×T, so the schedule must have one stage (e.g. 4:20), got {args.schedule}")
    device = check_device(p, args.device)
    if args.bf16 is None: args.bf16 = device.type == 'cuda'
    if args.architecture is None: args.architecture = 'cifar' if args.dataset.startswith('cifar') else 'scnn'
    if args.architecture == 'cifar' and DATASETS[args.dataset]['size'] != 32:
        p.error(f"--architecture cifar needs 32x32 images; --dataset {args.dataset} has {DATASETS[args.dataset]['size']}x{DATASETS[args.dataset]['size']}")
    if args.out is None:
        if args.resume: p.error("--resume needs --out: the folder of the run to continue")
        if int(os.environ.get('WORLD_SIZE', '1')) > 1: p.error("under torchrun, name the run's folder with --out")
        args.out, args.default_out = new_run_folder(args.dataset), True
    return args


# %%
#| export
def parse_args(argv=None):
    "`pttfs-train`'s flags, checked (see `check_args`); a bad one is one line and exit code 2."
    p = _build_parser()
    return check_args(p, p.parse_args(argv))


# %% [markdown]
# A recipe, checked: `--recipe psn` fills what the command leaves out and keeps what it gives:

# %%
args = parse_args(['--recipe', 'psn', '--dataset', 'cifar100', '--lr', '0.05'])
print({k: getattr(args, k) for k in ('optimizer', 'lr', 'batch_size', 'schedule', 'label_smoothing', 'augment', 'mixup', 'surrogate', 'bf16')})
test_eq((args.optimizer, args.lr, args.batch_size, args.schedule, args.surrogate), ('sgd', 0.05, 128, '4:1024', 'atan'))
test_eq((parse_args([]).optimizer, parse_args([]).lr, parse_args([]).decoder), ('adam', 3e-3, 'tsd'))
test_eq(parse_args(['--neuron', 'lif']).decoder, 'rate')                       # the baselines decode by rate

# %%
#| export
_MAY_BE_NONE = ('channels', 'augment', 'train_subset', 'stage_thresholds')      # None means "the default" for these, and only these

def _stored_type_error(action, value) -> str:
    "Why a stored value could not have come from this flag ('' if it could)."
    if action.choices is not None and value not in action.choices: return f"not one of {', '.join(map(str, action.choices))}"
    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
        return '' if isinstance(value, bool) or (action.dest == 'augment' and value == 'psn') else "not a bool"
    kind = action.type or str
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind): return f"not {kind.__name__}"
    return ''


def checked_settings(settings, path: str, device: str = 'cpu') -> dict:
    "A checkpoint's settings put through the command line's own checks; a RunError names the first that is wrong."
    if not isinstance(settings, dict): raise RunError(f"{path} is not a pttfs-train checkpoint (no settings)")
    p, filled = _build_parser(), run_settings(settings, device)
    args, actions = p.parse_args(['--device', 'cpu']), {action.dest: action for action in p._actions}
    for key in RUN_KEYS:
        value = filled.get(key)
        problem = ('missing' if value is None and key not in _MAY_BE_NONE
                   else '' if value is None else _stored_type_error(actions[key], value))
        if problem: raise RunError(f"{path}: its setting {key}={value!r} is {problem}: the file was edited or is not pttfs-train's")
        setattr(args, key, value)
    args.out, p.raising = '.', True
    try: check_args(p, args)
    except RunError as e: raise RunError(f"{path}: its settings are refused ({e}): the file was edited or is not pttfs-train's") from None
    return {key: getattr(args, key) for key in RUN_KEYS}


# %% [markdown]
# A checkpoint's settings, checked as the command line checks its flags: the settings of a real run pass unchanged,
# and an edited value is refused with its name (we expect one `RunError` per edit):

# %%
good = {key: getattr(parse_args(['--out', 'unused']), key) for key in RUN_KEYS}
test_eq(checked_settings(good, 'last.pt'), good)
for edit in [dict(schedule='abc'), dict(dataset='imagenet'), dict(tau=0.5), dict(channels='32'), dict(hidden=None)]:
    test_fail(checked_settings, args=({**good, **edit}, 'last.pt'), exc=RunError, contains=next(iter(edit)))
try: checked_settings({**good, 'channels': '32'}, 'last.pt')
except RunError as e: print(e)

# %%
#| export
_CHECKPOINT_FIELDS = dict(model=dict, optimizer=dict, scheduler=dict, history=list, settings=dict, epochs_done=int)


def _same_setting(key: str, stored, args) -> bool:
    if key == 'stage_thresholds' and stored is not None and args.stage_thresholds is not None:
        try: return stage_thresholds(stored, args.stages) == args.epoch_thresholds     # the values: '1,2' = '1.0, 2'
        except ValueError: return False
    if key != 'schedule': return stored == getattr(args, key)
    try: return parse_schedule(stored) == args.stages            # the stages, not the spelling: '1:12, 2:4' = '1:12,2:4'
    except ValueError: return False


def _load_resume_state(args) -> dict:
    path = os.path.join(args.out, 'last.pt')
    if not os.path.exists(path): raise RunError(f"--resume: no checkpoint at {path}")
    try: state = load_checkpoint(path)
    except RunError as e: raise RunError(f"--resume: {e}") from None
    if not isinstance(state, dict) or any(not isinstance(state.get(k), kind) for k, kind in _CHECKPOINT_FIELDS.items()):
        raise RunError(f"--resume: {path} is not a pttfs-train checkpoint")
    try: stored = checked_settings(state['settings'], path, args.device)
    except RunError as e: raise RunError(f"--resume: {e}") from None
    mismatched = [k for k in RUN_KEYS if not _same_setting(k, stored.get(k), args)]
    if mismatched:
        raise RunError("--resume: the checkpoint was made with other settings: " +
                       ', '.join(f"--{k.replace('_', '-')} {stored.get(k)!r} (now {getattr(args, k)!r})" for k in mismatched))
    return state


def _rng_state() -> dict:
    return dict(torch=torch.get_rng_state(), python=random.getstate())


# %%
with tempfile.TemporaryDirectory() as tmp:
    args = parse_args(['--schedule', '1:2,2:1', '--out', tmp, '--resume'])
    test_eq(_same_setting('schedule', '1:2, 2:1', args), True)     # the stages, not the spelling
    test_eq(_same_setting('schedule', '1:3', args), False)
    test_fail(lambda: _load_resume_state(args), exc=RunError, contains='no checkpoint')
print("resume checks: ok")


# %% [markdown]
# Under `torchrun` every process runs the same code; three small helpers hide the difference. Without `torchrun`
# (`WORLD_SIZE` unset) they are the identity: one process, rank 0, sums that are the numbers themselves.

# %%
#| export
def setup_distributed(device: str) -> tuple:
    "(rank, world_size, device) under torchrun (NCCL on GPUs, gloo on CPU); (0, 1, device) otherwise."
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size == 1: return 0, 1, device
    import torch.distributed as dist
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if str(device).startswith('cuda'):
        torch.cuda.set_device(local_rank); device = f'cuda:{local_rank}'
    if not dist.is_initialized(): dist.init_process_group('nccl' if str(device).startswith('cuda') else 'gloo')
    return dist.get_rank(), world_size, device


def _all_sum(values: list, device) -> list:
    "Sum numbers over all processes (identity without torch.distributed)."
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()): return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _barrier():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized(): dist.barrier()


# %%
test_eq(setup_distributed('cpu'), (0, 1, 'cpu'))
test_eq(_all_sum([1.0, 2.0], 'cpu'), [1.0, 2.0])


# %% [markdown]
# The data come before the run folder: a missing dataset is refused with a message that says what to do, and
# nothing has been created yet.

# %%
#| export
def _load_data(args) -> tuple:
    "(train set, test set), or a RunError that says what to do."
    try:
        in_memory = args.dataset != 'digits' and args.augment != 'psn'      # chapter 10's TensorImages: the same images, faster
        return (load_dataset(args.dataset, args.data_dir, train=True, download=args.download, augment=args.augment, in_memory=in_memory),
                load_dataset(args.dataset, args.data_dir, train=False, download=args.download, in_memory=in_memory))
    except (FileNotFoundError, ImportError) as e: raise RunError(str(e)) from None     # ImportError: a broken torchvision
    except Exception as e:                            # a download that failed: no network, a moved mirror ...
        if not args.download: raise
        reason = ' '.join(str(e).split())[:200]
        raise RunError(f"--download: could not fetch {args.dataset} ({type(e).__name__}: {reason}); without a network, "
                       f"put the files under {os.path.abspath(args.data_dir)} in torchvision's layout") from None


# %%
train_set, test_set = _load_data(parse_args(['--dataset', 'digits']))
print(f"digits: {len(train_set)} training and {len(test_set)} test images")
with tempfile.TemporaryDirectory() as tmp:
    test_fail(lambda: _load_data(parse_args(['--dataset', 'mnist', '--data-dir', tmp])), exc=RunError, contains='--download')


# %% [markdown]
# `train` checks everything that can be checked before any work (the batch size against the processes, `--out`, the
# data), opens the run folder in one process, and hands over to the loop over epochs, `_train_in_folder`: per epoch
# the stage's T, a seeded data order, one epoch of training, the evaluation, the checkpoint and the metrics file.
# The runs below check it: a run killed and resumed, and a training curve.

# %%
#| export
def train(args) -> dict:
    "Run (or resume) the schedule in args.out; returns the summary."
    rank, world_size, device = setup_distributed(args.device)
    if args.batch_size % world_size:
        raise RunError(f"--batch-size {args.batch_size} must be a multiple of the number of processes ({world_size})")
    check_out_path(args.out)                          # a bad --out is known before any work ...
    train_set, test_set = _load_data(args)            # ... and missing data before the folder is made
    if args.train_subset is not None and args.train_subset > len(train_set):
        raise RunError(f"--train-subset {args.train_subset}: {args.dataset} has only {len(train_set)} training images")
    train_set = training_subset(train_set, args.train_subset)
    made_here = getattr(args, 'default_out', False) and rank == 0
    if made_here:                                     # taken now, not when the flags were read: no other run can take it
        args.out = new_run_folder(args.dataset, os.path.dirname(args.out), make=True)
        print(f"pttfs-train: the run's folder is {args.out}", file=sys.stderr)
    folder, failure = RunFolder(args.out), None
    if rank == 0:                                     # one process holds the folder; all stop if it cannot
        try: folder.open(resume=args.resume); folder.created = folder.created or made_here
        except RunError as e: failure = e
    if _all_sum([float(failure is not None)], device)[0]:
        raise failure or RunError(f"process 0 could not open {args.out}")
    try: return _train_in_folder(args, rank, world_size, device, train_set, test_set)
    finally: folder.close()


# %%
#| export
def _repair_run_files(out: str, history: list, summary: dict) -> list:
    "Rewrite metrics.jsonl if it is not the checkpoint's history, and the figures if one is missing; the names rewritten."
    try:
        with open(os.path.join(out, 'metrics.jsonl')) as f: rows = [json.loads(line) for line in f]
    except (OSError, ValueError): rows = None
    repaired = []
    if rows != history:
        write_metrics(out, history); repaired.append('metrics.jsonl')
    if not all(os.path.exists(os.path.join(out, name)) for name in ('accuracy.png', 't_first.png')):
        plot_run(out, history, summary); repaired += ['accuracy.png', 't_first.png']
    return repaired


def _finished_run(args, state: dict, total: int) -> dict:
    "A resumed run with nothing left to train: its summary, after rewriting what a kill left short or missing."
    done, path = state['epochs_done'], os.path.join(args.out, 'summary.json')
    what = (f"is finished ({done} of {total} epochs)" if done == total else f"already has {done} epochs (--stop-after {args.stop_after})")
    try:
        with open(path) as f: summary = json.load(f)
    except (ValueError, IsADirectoryError):
        raise RunError(f"{path} is damaged (not JSON, or not a file): remove it and run --resume again, which writes it anew from "
                       f"last.pt ({done} epochs)") from None
    repaired = _repair_run_files(args.out, state['history'], summary)
    print(f"pttfs-train: {args.out} {what}; " + (f"rewrote {', '.join(repaired)}" if repaired else "left as it is"), file=sys.stderr)
    return summary


def _epoch_loader(args, train_set, epoch: int, rank: int, world_size: int) -> DataLoader:
    "The epoch's training batches in a seeded order: the same order when the epoch is redone after a kill."
    if world_size == 1:
        order = torch.Generator().manual_seed(args.seed * 100003 + epoch)
        if isinstance(train_set, TensorImages): return train_set.batches(args.batch_size, order)   # crops drawn from `order` too
        return DataLoader(train_set, batch_size=args.batch_size, shuffle=True, generator=order, num_workers=args.workers)
    from torch.utils.data.distributed import DistributedSampler     # each process its share; the global batch stays
    sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=args.seed)
    sampler.set_epoch(epoch)
    return DataLoader(train_set, batch_size=args.batch_size // world_size, sampler=sampler, num_workers=args.workers)


def _write_summary(out: str, summary: dict, history: list):
    "The figures, then summary.json: a run is finished when its summary exists, so nothing is written after it."
    plot_run(out, history, summary)
    def write(tmp):
        with open(tmp, 'w') as f: json.dump(summary, f, indent=1, allow_nan=False)
    atomic_write(os.path.join(out, 'summary.json'), write)


# %%
#| export
def _model_and_optimizer(args, device, epochs: int, state: dict = None) -> tuple:
    "The run's model, optimizer and learning-rate schedule (`lr_factors`), fresh (seeded) or as the checkpoint left them."
    torch.manual_seed(args.seed); random.seed(args.seed)
    model = model_for(vars(args)).to(device)
    if args.optimizer == 'sgd': optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    else: optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    if args.lr_step == 'epoch' and args.lr_schedule == 'cosine':      # as runs made before --lr-step: they resume so
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    else:
        factors = lr_factors(args.stages, args.lr_schedule, getattr(args, 'steps_per_epoch', 1) if args.lr_step == 'batch' else 1)
        def factor(step: int) -> float: return factors[min(step, len(factors) - 1)]   # the step after the last one too
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if state is not None:
        if network_signature(state['model']) != network_signature(model.state_dict()):
            raise RunError(f"--resume: {args.out}/last.pt holds another network than its settings describe")
        try:
            model.load_state_dict(state['model']); optimizer.load_state_dict(state['optimizer'])
            scheduler.load_state_dict(state['scheduler'])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"--resume: {args.out}/last.pt does not fit this model ({type(e).__name__})") from None
    return model, optimizer, scheduler


# %%
#| export
def _test_loader(args, test_set):
    "The test split in batches of at least 256, in order (in memory when the split is `TensorImages`)."
    if isinstance(test_set, TensorImages): return test_set.batches(max(args.batch_size, 256))
    return DataLoader(test_set, batch_size=max(args.batch_size, 256), num_workers=args.workers)


def _distributed(model, world_size: int, device):
    "What the optimizer steps through: the model itself, or the model in DDP under torchrun."
    if world_size == 1: return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[int(str(device).split(':')[1])] if str(device).startswith('cuda') else None)


def _build_kernel_first(device, rank: int):
    "The fused kernel's first build (once per install) before a run's clock starts: it is no epoch's time (summary: compile_seconds)."
    from pttfs.fused import load_fused_extension, fused_build_seconds
    if torch.device(device).type != 'cpu': return
    load_fused_extension()
    if fused_build_seconds() and rank == 0:
        print(f"pttfs-train: the fused kernel compiled in {fused_build_seconds():.0f} s (once per install; not counted "
              f"in the epoch times)", file=sys.stderr, flush=True)


def _checkpoint(model, optimizer, scheduler, history, settings, epochs_done: int, world_size: int, wall_seconds: float) -> dict:
    "Everything `--resume` needs to continue after `epochs_done` epochs exactly as an uninterrupted run would."
    return dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                history=history, settings=settings, epochs_done=epochs_done, rng=_rng_state(), world_size=world_size,
                wall_seconds=wall_seconds, network=network_signature(model.state_dict()))



# %%
#| export
def _train_in_folder(args, rank, world_size, device, train_set, test_set) -> dict:
    from tqdm import tqdm
    _build_kernel_first(device, rank)
    start = time.time()
    state = _load_resume_state(args) if args.resume else None
    if state is not None: args.epochs_saved = state['epochs_done']      # what an error message can say is safe
    epochs = epoch_stages(args.stages)
    last_epoch = len(epochs) if args.stop_after is None else min(len(epochs), args.stop_after)
    if state is not None and state['epochs_done'] >= last_epoch:    # nothing to train: never go back, never rewrite
        last_epoch = state['epochs_done']
        if os.path.exists(os.path.join(args.out, 'summary.json')):
            return _finished_run(args, state, len(epochs)) if rank == 0 else None
        if rank == 0: print(f"pttfs-train: {args.out} has {last_epoch} epochs; writing its missing summary.json", file=sys.stderr)
    args.steps_per_epoch = len(_epoch_loader(args, train_set, 0, rank, world_size))     # batches: the per-batch schedule's unit
    model, optimizer, scheduler = _model_and_optimizer(args, device, len(epochs), state)
    per_batch = scheduler if args.lr_step == 'batch' else None
    history, epochs_done, seconds_before = [], 0, 0.0
    if state is not None:
        history, epochs_done, seconds_before = state['history'], state['epochs_done'], state.get('wall_seconds', 0.0)
        if rank == 0: write_metrics(args.out, history)   # the checkpoint's rows: a kill may have left the file one short
    args.epochs_saved = epochs_done
    settings = {k: getattr(args, k) for k in RUN_KEYS}
    test_loader, trained = _test_loader(args, test_set), _distributed(model, world_size, device)
    mix = mixup_or_cutmix(DATASETS[args.dataset]['classes']) if args.mixup else None
    interactive, lines = sys.stderr.isatty() and rank == 0, getattr(args, 'epoch_lines', False) and rank == 0
    epoch_bar = tqdm(total=len(epochs), initial=epochs_done, desc='epochs', disable=not interactive)
    final = None
    for epoch in range(epochs_done, last_epoch):
        T = epochs[epoch]
        if args.stage_thresholds is not None: model.decoder.neuron.v_threshold = args.epoch_thresholds[epoch]
        torch.manual_seed(args.seed * 100003 + epoch); random.seed(args.seed * 100003 + epoch)   # per epoch: resumable
        train_loader = _epoch_loader(args, train_set, epoch, rank, world_size)
        with tqdm(total=len(train_loader), desc=f"epoch {epoch + 1} T={T}", leave=False, disable=not interactive) as bar:
            row = dict(epoch=epoch + 1, T=T, lr=optimizer.param_groups[0]['lr'])
            if args.stage_thresholds is not None: row['decoder_threshold'] = args.epoch_thresholds[epoch]
            try: row.update(train_epoch(trained, train_loader, T, optimizer, device, bar, args.bf16, args.label_smoothing, mix, per_batch))
            except FloatingPointError as e:
                raise RunError(f"{e} in epoch {epoch + 1} (T={T}): training diverged, so it stops here; lower --lr "
                               f"(last.pt holds {args.epochs_saved} finished epochs)") from None
        if per_batch is None: scheduler.step()
        if rank == 0:                                 # one process evaluates and writes; the others wait
            final = evaluate(model, test_loader, T, device, args.bf16)
            row.update({k: v for k, v in final.items() if k not in ('t_first_histogram', 'spikes_per_sample', 'spikes_per_sample_to_decision')})
            history.append(row)
            save_checkpoint(args.out, _checkpoint(model, optimizer, scheduler, history, settings, epoch + 1, world_size,
                                                  seconds_before + time.time() - start))
            args.epochs_saved = epoch + 1
            write_metrics(args.out, history)
            epoch_bar.set_postfix(acc=f"{row['test_accuracy']:.4f}", steps=f"{row['avg_timesteps']:.2f}")
            if lines: print(f"pttfs-train: epoch {epoch + 1}/{len(epochs)} T={T} loss {row['train_loss']:.4f} test accuracy "
                            f"{row['test_accuracy']:.4f} avg steps {row['avg_timesteps']:.2f} ({time.time() - start:.0f} s)",
                            file=sys.stderr, flush=True)
        _barrier()
        epoch_bar.update(1)
    epoch_bar.close()
    summary = None if rank != 0 else _finish(args, model, history, final, test_loader, device, epochs, last_epoch,
                                             world_size, settings, seconds_before + time.time() - start)
    _barrier()        # the ranks leave together: one that tears down gloo while another still writes can abort
    return summary


# %%
#| export
def _compile_seconds() -> float:
    from pttfs.fused import fused_build_seconds
    return fused_build_seconds()


def _finish(args, model, history, final, test_loader, device, epochs, last_epoch, world_size, settings, seconds) -> dict:
    "The run's summary (evaluating the model if no epoch was trained now), written with the figures."
    T_now = epochs[max(0, last_epoch - 1)]
    if args.stage_thresholds is not None: model.decoder.neuron.v_threshold = args.epoch_thresholds[max(0, last_epoch - 1)]
    if final is None: final = evaluate(model, test_loader, T_now, device, args.bf16)            # nothing left to train
    summary = dict(dataset=args.dataset, architecture=args.architecture, decoder=args.decoder, neuron=args.neuron,
                   recipe=args.recipe, schedule=args.schedule,
                   T=T_now, epochs=last_epoch, finished=last_epoch == len(epochs), test_accuracy=final['test_accuracy'],
                   avg_timesteps=final['avg_timesteps'], t_first_histogram=final['t_first_histogram'],
                   decisions=final['decisions'], spikes_per_sample=final['spikes_per_sample'],
                   spikes_per_sample_total=final['spikes_per_sample_total'],
                   spikes_per_sample_to_decision=final['spikes_per_sample_to_decision'],
                   spikes_per_sample_to_decision_total=final['spikes_per_sample_to_decision_total'],
                   parameters=sum(p.numel() for p in model.parameters()), world_size=world_size, device=str(device),
                   wall_seconds=seconds, compile_seconds=_compile_seconds(), seed=args.seed, settings=settings,
                   threads=torch.get_num_threads())
    _write_summary(args.out, summary, history)
    return summary


# %% [markdown]
# Each run folder also gets two figures, drawn by `plot_run` (below for a short run on `digits` with the decoder
# threshold at 2, so that the decisions spread over steps; `mark_stages` marks the stages here and in every
# learning curve of this book), and the command line wraps `train`: a `RunError`
# becomes one line and exit code 2.

# %%
#| export
def mark_stages(ax, history: list) -> float:
    "Dotted lines where T changes, each stage's T just above the axes where it starts; returns the title pad that clears them."
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))            # epochs are whole numbers
    for before, after in zip(history, history[1:]):
        if after['T'] != before['T']: ax.axvline(after['epoch'] - 0.5, color='grey', ls=':')
    left, right = ax.get_xlim()
    row, previous, rows = 0, None, 1
    for T in dict.fromkeys(r['T'] for r in history):
        x = max(next(r['epoch'] for r in history if r['T'] == T) - 0.5, left)        # the stage's left edge, inside the axes
        row = row + 1 if previous is not None and x - previous < 0.12 * (right - left) else 0   # too close: one row up
        ax.annotate(f"T={T}", (x, 1.0), xycoords=('data', 'axes fraction'), xytext=(2, 2 + 10 * row),
                    textcoords='offset points', fontsize=8, color='grey', va='bottom')
        previous, rows = x, max(rows, row + 1)
    return 6 + 10 * rows


def decision_curve(history: list) -> tuple:
    "Per epoch with a decision table: (epochs, share deciding at t = 0, accuracy of the later deciders or None)."
    epochs, at_zero, later = [], [], []
    for row in history:
        if not row.get('decisions'): continue           # rows of runs made before the table was logged per epoch
        rest = [r for r in row['decisions'][1:] if r['fraction'] > 0]
        share = sum(r['fraction'] for r in rest)
        epochs.append(row['epoch']); at_zero.append(row['decisions'][0]['fraction'])
        later.append(sum(r['fraction'] * r['accuracy'] for r in rest) / share if rest else None)
    return epochs, at_zero, later


def plot_run(out: str, history: list, summary: dict):
    "accuracy.png (accuracy and decisions per epoch, stages marked) and t_first.png (how many test images decide at each step)."
    from matplotlib.figure import Figure         # no pyplot: drawing files must not change a notebook's backend
    from matplotlib.ticker import MaxNLocator
    fig = Figure(figsize=(11, 3.5)); ax, right = fig.subplots(1, 2)
    ax.plot([r['epoch'] for r in history], [100 * r['test_accuracy'] for r in history], 'o-')
    pad = mark_stages(ax, history)
    ax.set_xlabel('epoch'); ax.set_ylabel('test accuracy (%)')
    ax.set_title(f"Test accuracy after each epoch ({summary['dataset']}, schedule {summary['schedule']})", fontsize=10, pad=pad)
    epochs, at_zero, later = decision_curve(history)
    right.plot(epochs, [100 * s for s in at_zero], 'o-', label='share deciding at t = 0')
    right.plot(epochs, [None if a is None else 100 * a for a in later], 's--', label='accuracy of those deciding later')
    right.set_ylim(-3, 103); right.set_xlabel('epoch'); right.set_ylabel('%'); right.legend(fontsize=8)
    right.set_title("Decisions after each epoch" if epochs else "Decisions per epoch were not logged by this run", fontsize=10,
                    pad=mark_stages(right, history))
    fig.tight_layout(); save_figure(fig, os.path.join(out, 'accuracy.png'))
    fig = Figure(figsize=(6, 3.5)); ax = fig.subplots()
    counts = summary['t_first_histogram']
    bars = ax.bar(range(len(counts)), counts)
    ax.bar_label(bars, labels=[f"{100 * c / sum(counts):.1f}%" if c else '' for c in counts], fontsize=8)   # rare steps stay visible
    ax.xaxis.set_major_locator(MaxNLocator(integer=True)); ax.margins(y=0.15)
    ax.set_xlabel('time step t of the decision (first output spike; t = 0 is the first step)'); ax.set_ylabel('test images')
    ax.set_title(f"When the test images decide: {summary['avg_timesteps']:.2f} steps on average, of T = {summary['T']}", fontsize=10)
    fig.tight_layout(); save_figure(fig, os.path.join(out, 't_first.png'))


# %%
rows = [dict(epoch=1, T=1, decisions=[dict(t=0, fraction=1.0, accuracy=0.8)]),
        dict(epoch=2, T=2, decisions=[dict(t=0, fraction=0.75, accuracy=0.9), dict(t=1, fraction=0.25, accuracy=0.6)]),
        dict(epoch=3, T=4, decisions=[dict(t=0, fraction=0.5, accuracy=1.0), dict(t=1, fraction=0.0, accuracy=None),
                                      dict(t=2, fraction=0.25, accuracy=0.8), dict(t=3, fraction=0.25, accuracy=0.4)])]
print(decision_curve(rows))
test_eq(decision_curve(rows), ([1, 2, 3], [1.0, 0.75, 0.5], [None, 0.6, 0.6000000000000001]))
test_eq(decision_curve([dict(epoch=1, T=4, test_accuracy=0.5)]), ([], [], []))      # a run made before the tables were logged


# %%
#| export
def _where_the_run_stands(args) -> str:
    saved = getattr(args, 'epochs_saved', None)
    if not saved: return "no epoch was finished, so nothing is saved"
    return f"{args.out}/last.pt holds {saved} finished epochs: run the same command with --resume to continue"


def main(argv=None):
    "The `pttfs-train` command."
    args = parse_args(argv)
    args.epoch_lines = not sys.stderr.isatty()       # a log file, nohup or CI: one line per epoch instead of bars
    threads_before = torch.get_num_threads()
    if args.threads: torch.set_num_threads(args.threads)   # on a shared machine, --threads 1 (benchmarks/threads.txt)
    try: summary = train(args)
    except RunError as e:
        print(f"pttfs-train: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print(f"pttfs-train: interrupted; {_where_the_run_stands(args)}", file=sys.stderr)
        raise SystemExit(130)
    except OSError as e:                              # disk full, a folder removed under the run, ...
        print(f"pttfs-train: error: {e.strerror or e}{f' ({e.filename})' if e.filename else ''}; "
              f"{_where_the_run_stands(args)}", file=sys.stderr)
        raise SystemExit(2)
    finally:
        torch.set_num_threads(threads_before)         # main() called from Python leaves the process as it found it
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized(): dist.destroy_process_group()
    if summary is None: return                        # not rank 0
    print(json.dumps({k: summary[k] for k in ('dataset', 'T', 'test_accuracy', 'avg_timesteps', 'spikes_per_sample_total', 'wall_seconds')}))


# %%
test_fail(lambda: main(['--schedule', '1:0']), exc=SystemExit)

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import Image, display
import contextlib
with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
    train(parse_args(['--dataset', 'digits', '--schedule', '1:4,2:2,4:2', '--hidden', '64', '--channels', '8',
                      '--batch-size', '32', '--lr', '0.005', '--decoder-threshold', '2', '--out', f'{tmp}/run']))
    test_eq(sorted(f for f in os.listdir(f'{tmp}/run') if f.endswith('.png')), ['accuracy.png', 't_first.png'])
    for name in ('accuracy.png', 't_first.png'): display(Image(filename=os.path.join(tmp, 'run', name), width=640 if name == 'accuracy.png' else 420))

# %%
#| export
if __name__ == '__main__' and os.path.basename(sys.argv[0]) == 'train.py': main()   # python -m pttfs.train


# %% [markdown]
# ## A run, killed and resumed
#
# A short run on `digits` in one go, and the same run stopped after two epochs (`--stop-after 2`) and resumed: we
# expect the same metrics row for row (seeds set per epoch, the same data order, optimizer and learning-rate
# schedule restored), and no row lost or doubled. (`tests/` also kills a run at a random moment.)

# %%
def run_quietly(argv):
    args = parse_args(argv)
    return train(args)

with tempfile.TemporaryDirectory() as tmp:
    common = ['--dataset', 'digits', '--schedule', '1:2,2:1', '--hidden', '64', '--channels', '8', '--batch-size', '128']
    run_quietly(common + ['--out', f'{tmp}/whole'])
    run_quietly(common + ['--out', f'{tmp}/cut', '--stop-after', '2'])      # stopped after two of three epochs
    run_quietly(common + ['--out', f'{tmp}/cut', '--resume'])
    rows_whole = [json.loads(l) for l in open(f'{tmp}/whole/metrics.jsonl')]
    rows_cut = [json.loads(l) for l in open(f'{tmp}/cut/metrics.jsonl')]
    print("epochs:", [r['epoch'] for r in rows_cut], "| identical rows:", rows_whole == rows_cut)
    test_eq([r['epoch'] for r in rows_cut], [1, 2, 3])
    test_eq(rows_whole, rows_cut)
    test_eq(sorted(os.listdir(f'{tmp}/whole')), ['accuracy.png', 'last.pt', 'metrics.jsonl', 'summary.json', 't_first.png'])

# %% [markdown]
# ## A training curve with its stages
#
# A run of ten epochs on `digits` in three stages, `1:4,2:3,4:3`, with the training loss, the test accuracy and the
# mean decision step per epoch. What to expect: accuracy climbs during the T = 1 stage (a rate network, cheap per
# epoch), each new stage starts from the last stage's weights, so the curve does not fall back to chance at a stage
# boundary, and the mean decision step never exceeds the stage's T and is mostly well below it, because the TSD decides at
# the first output spike.
# (`plot_run` draws the same accuracy curve into each run folder as `accuracy.png`.)

# %%
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
with tempfile.TemporaryDirectory() as tmp:
    curve_args = ['--dataset', 'digits', '--schedule', '1:4,2:3,4:3', '--hidden', '64', '--channels', '8',
                  '--batch-size', '32', '--lr', '0.005', '--out', f'{tmp}/curve']
    summary = run_quietly(curve_args)
    rows = [json.loads(l) for l in open(f'{tmp}/curve/metrics.jsonl')]
    trained = model_for(summary['settings'])
    trained.load_state_dict(load_checkpoint(f'{tmp}/curve/last.pt')['model'])

epochs = [r['epoch'] for r in rows]
fig, axes = plt.subplots(1, 3, figsize=(10, 3))
for ax, key, label in zip(axes, ['train_loss', 'test_accuracy', 'avg_timesteps'],
                          ['training loss', 'test accuracy', 'mean decision step + 1']):
    ax.plot(epochs, [r[key] for r in rows], 'o-')
    ax.set(xlabel='epoch')
    ax.set_title(label, pad=mark_stages(ax, rows))
fig.tight_layout(); plt.show()
print(f"test accuracy {rows[-1]['test_accuracy']:.3f} after {len(rows)} epochs, mean decision step + 1 = {rows[-1]['avg_timesteps']:.2f}")
test_eq(epochs, list(range(1, 11)))
test_eq(all(r['avg_timesteps'] <= r['T'] for r in rows), True)    # never later than the stage's last step
assert rows[-1]['test_accuracy'] > 0.5                              # ten classes: chance is 0.1

# %% [markdown]
# ### What training did to the spikes
#
# Chapter 11 left the hidden linear layer (`body.7`) and the output neurons silent at initialisation. A freshly
# initialised network and the one trained above, on the same test digit at T = 4: each dot is a neuron's one spike, at the
# step it fired (a sample of at most 150 neurons per layer, those that fire first on top). Freshly initialised, this
# small network (8 channels, 64 hidden neurons) does not fire at all on this digit;
# after training we expect spikes in every layer, most of them early, and no neuron with more than one:

# %%
# NBVAL_IGNORE_OUTPUT
from pttfs.models import record_spikes
torch.manual_seed(0)
digit = load_dataset('digits', train=False)[0][0].unsqueeze(0)
initial = model_for(summary['settings'])                     # freshly initialised, same shape
rasters = {'initial': record_spikes(initial.eval(), digit, T=4), 'trained': record_spikes(trained.eval(), digit, T=4)}
layers = list(rasters['initial'])
fig, axes = plt.subplots(2, len(layers), figsize=(11, 4.2), sharex=True)
for row, (when, spikes) in enumerate(rasters.items()):
    for col, name in enumerate(layers):
        s = spikes[name][:, 0]                                      # [T, neurons], one sample
        times = torch.where(s.sum(0) > 0, s.argmax(0).float(), torch.full((s.shape[1],), float('inf')))
        shown = times.argsort()[:150]
        fired = torch.isfinite(times[shown])
        ax = axes[row, col]
        ax.plot(times[shown][fired], torch.arange(len(shown))[fired], '.', ms=3)
        if not fired.any(): ax.text(1.5, 0.5, 'silent', ha='center', transform=ax.get_xaxis_transform()); ax.set_yticks([])
        ax.set_title(f"{when} {name}: {int(s.sum())} of {s.shape[1]} fire", fontsize=8)
        ax.set_xlim(-0.5, 3.5); ax.set_xticks(range(4)); ax.tick_params(labelsize=7)
        if col == 0: ax.set_ylabel('neuron (by spike time)', fontsize=8)
        if row == 1: ax.set_xlabel('time step', fontsize=8)
fig.tight_layout(); plt.show()
test_eq(all(float(s.sum(0).max()) <= 1 for spikes in rasters.values() for s in spikes.values()), True)
test_eq(all(float(s.sum()) > 0 for s in rasters['trained'].values()), True)

# %% [markdown]
# ## Summary
# `pttfs-train` trains with incremental T, evaluates accuracy, latency, decisions and spikes, writes
# `metrics.jsonl`, `last.pt`, `summary.json` and two figures, and resumes a killed run exactly, in one process or
# under `torchrun`. Recipes set the PSN paper's protocol in one flag, and `--neuron` swaps in the baselines of
# Table 3. Chapter 13 uses all of it for the paper's tables.

# %% [markdown]
# ## Exercises
#
# 1. Print `lr_factors` for the schedule `1:6,2:2,4:2` with `'cosine'` and with `'stage-cosine'`, and plot both. What learning rate does each give the T = 4 stage?
# 2. Train `digits` with `--schedule 1:4` and with `--schedule 1:2,2:2` and compare accuracy and the decision table of each. Is the difference larger than between two seeds of one schedule?
# 3. Stop a run with `--stop-after 1`, resume it with `--resume`, and check that its `metrics.jsonl` equals an uninterrupted run's.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
