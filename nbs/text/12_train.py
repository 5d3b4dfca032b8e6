# %% [markdown]
# # Training with incremental time steps
#
# > The schedule of stages and learning rates, one epoch, the evaluation with its decision table (accuracy, latency, spikes), and a loop of a few lines that trains incrementally and resumes exactly.

# %% [markdown]
# After this chapter you can train a TTFS network with incremental time steps, read its training curve and its decisions, and say what a checkpoint must hold for a resumed run to equal an uninterrupted one. The `pttfs-train` command, which runs this loop in a run folder, is Appendix B.

# %%
#| default_exp train

# %%
#| export
import math
import torch
from torch import nn, Tensor
from pttfs.data import TensorImages
from pttfs.models import spike_recorder

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
from pttfs.data import load_dataset
from pttfs.models import build_model
from torch.utils.data import DataLoader

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
#| fig-cap: The learning rate of the recipe's schedule `1:12,2:4,4:4`, stepped per batch and per epoch: stepped per batch, `stage-cosine` reaches zero at every stage boundary, where the per-epoch schedule jumps back from a half-decayed rate.
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
fig.suptitle("the learning rate of the recipe's schedule, stepped per batch and per epoch", fontsize=10)
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
# In `pttfs-train` (Appendix B) the training images come from chapter 10's `TensorImages` (the whole split in memory, augmented a batch at a
# time) for every dataset but `digits` and the PSN policy (`--augment psn`), which go through a `DataLoader`.
#
# Training: by default Adam on the cross-entropy of the decoder's logits (for the TSD, the output membranes at
# $t_{1st}$), with the learning-rate schedule above (`lr_factors`). Three options come from the PSN
# paper's protocol (Appendix B's `--recipe psn`): label smoothing, mixing pairs of images (`mixup_or_cutmix`, whose labels become soft),
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
def _all_sum(values: list, device) -> list:
    "Sum numbers over all processes (identity without torch.distributed)."
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()): return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


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
# ## Figures of a run
#
# `mark_stages` marks the stages in every learning curve of this book (dotted lines where T changes, each stage's T
# above the axes), and `decision_curve` reads, from the rows of a run, the share of test images deciding at t = 0 and
# the accuracy of those deciding later, epoch by epoch. A check on three hand-made rows:

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


# %%
rows = [dict(epoch=1, T=1, decisions=[dict(t=0, fraction=1.0, accuracy=0.8)]),
        dict(epoch=2, T=2, decisions=[dict(t=0, fraction=0.75, accuracy=0.9), dict(t=1, fraction=0.25, accuracy=0.6)]),
        dict(epoch=3, T=4, decisions=[dict(t=0, fraction=0.5, accuracy=1.0), dict(t=1, fraction=0.0, accuracy=None),
                                      dict(t=2, fraction=0.25, accuracy=0.8), dict(t=3, fraction=0.25, accuracy=0.4)])]
print(decision_curve(rows))
test_eq(decision_curve(rows), ([1, 2, 3], [1.0, 0.75, 0.5], [None, 0.6, 0.6000000000000001]))
test_eq(decision_curve([dict(epoch=1, T=4, test_accuracy=0.5)]), ([], [], []))      # a run made before the tables were logged


# %% [markdown]
# ## The loop
#
# The pieces above make a training loop of a few lines: for each epoch, the stage's T (`epoch_stages`), a data order
# seeded by the epoch alone, one `train_epoch` with the rate stepped per batch, and an `evaluate` at that T. The
# `pttfs-train` command (Appendix B) runs this loop in a run folder, with checkpoints, progress bars and the flags of
# a command line; here it runs in memory on `digits` (chapter 10's offline set), so that each idea can be seen on its
# own. `start` builds a seeded network, Adam and the per-batch cosine of `lr_factors`; `run_epochs` trains the epochs
# it is given and returns one row per epoch.

# %% [markdown]
# Two pieces of the loop that `pttfs-train` shares: the learning-rate schedule as an optimizer's scheduler, and
# the seed of an epoch, drawn from the run's seed and the epoch alone (so that an epoch redone after a resume
# draws the same data order):

# %%
#| export
def per_step_scheduler(optimizer, factors: list):
    "A LambdaLR that steps through `factors` (from `lr_factors`) and stays at the last one after it."
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factors[min(step, len(factors) - 1)])


def epoch_seed(seed: int, epoch: int) -> int:
    "The seed of one epoch's randomness (data order, crops): the run's seed and the epoch alone."
    return seed * 100003 + epoch


# %%
optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
scheduler = per_step_scheduler(optimizer, [1.0, 0.5, 0.25])
rates = []
for _ in range(5): rates.append(optimizer.param_groups[0]['lr']); optimizer.step(); scheduler.step()
test_eq(rates, [1.0, 0.5, 0.25, 0.25, 0.25])
test_eq((epoch_seed(0, 3), epoch_seed(1, 0) != epoch_seed(0, 1)), (3, True))

# %%
digits_train, digits_test = load_dataset('digits'), load_dataset('digits', train=False)
test_batches = DataLoader(digits_test, batch_size=256)

def start(stages, seed=0, lr=5e-3, batch_size=32):
    "A fresh seeded network (8 channels, 64 hidden neurons), Adam, and the cosine of `lr_factors` stepped per batch."
    torch.manual_seed(seed)
    model = build_model('digits', channels=8, hidden=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    factors = lr_factors(stages, 'cosine', math.ceil(len(digits_train) / batch_size))
    return model, optimizer, per_step_scheduler(optimizer, factors)

def run_epochs(model, optimizer, scheduler, stages, epochs, seed=0, batch_size=32):
    "Train these epochs of the schedule; per epoch a row: T, the training loss, and the evaluation at T."
    rows = []
    for epoch in epochs:
        T = epoch_stages(stages)[epoch]
        order = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        loader = DataLoader(digits_train, batch_size=batch_size, shuffle=True, generator=order)
        row = dict(epoch=epoch + 1, T=T, **train_epoch(model, loader, T, optimizer, 'cpu', scheduler=scheduler))
        result = evaluate(model, test_batches, T, 'cpu')
        rows.append(dict(row, **{key: result[key] for key in ('test_accuracy', 'avg_timesteps', 'decisions')}))
    return rows


# %% [markdown]
# ### A training curve with its stages
#
# Ten epochs in three stages, `1:4,2:3,4:3`. What to expect (Figure 12.2): accuracy climbs during the T = 1 stage (a
# rate network, cheap per epoch); each new stage starts from the last stage's weights, so the curve does not fall
# back to chance at a stage boundary; and the mean decision step never exceeds the stage's T and is mostly well below
# it, because the TSD decides at the first output spike.

# %%
#| fig-cap: Ten epochs on digits, schedule `1:4,2:3,4:3`, stages dotted: accuracy climbs in the T = 1 stage and does not fall back to chance when T rises, and the mean decision step stays below each stage's T.
#| code-fold: true
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
curve = parse_schedule('1:4,2:3,4:3')
trained, optimizer, scheduler = start(curve)
rows = run_epochs(trained, optimizer, scheduler, curve, range(10))
epochs = [r['epoch'] for r in rows]
fig, axes = plt.subplots(1, 3, figsize=(10, 3))
for ax, key, label in zip(axes, ['train_loss', 'test_accuracy', 'avg_timesteps'],
                          ['training loss', 'test accuracy', 'mean decision step + 1']):
    ax.plot(epochs, [r[key] for r in rows], 'o-')
    ax.set(xlabel='epoch')
    ax.set_title(label, pad=mark_stages(ax, rows))
fig.suptitle('ten epochs on digits, schedule 1:4,2:3,4:3 (stages dotted)', fontsize=10)
fig.tight_layout(); plt.show()
print(f"test accuracy {rows[-1]['test_accuracy']:.3f} after {len(rows)} epochs, mean decision step + 1 = {rows[-1]['avg_timesteps']:.2f}")
test_eq(epochs, list(range(1, 11)))
test_eq(all(r['avg_timesteps'] <= r['T'] for r in rows), True)    # never later than the stage's last step
assert rows[-1]['test_accuracy'] > 0.5                              # ten classes: chance is 0.1

# %% [markdown]
# ### Resuming: what a checkpoint must hold
#
# A run stopped after two of three epochs and continued must give the rows an uninterrupted run gives. That needs
# three states besides the weights: the optimizer's (Adam's moment estimates), the learning-rate schedule's (how
# many steps it has taken), and the data order, which `run_epochs` draws from a generator seeded by the epoch, so
# that it needs no saved random state at all. Below, the "checkpoint" is the three state dicts; the continuing
# network starts from other weights (seed 1) until it loads them. We expect identical rows, to the last bit:

# %%
import copy
stages = parse_schedule('1:2,2:1')
whole = run_epochs(*start(stages), stages, range(3))
model, optimizer, scheduler = start(stages)
first = run_epochs(model, optimizer, scheduler, stages, range(2))                      # stopped after two epochs
checkpoint = copy.deepcopy(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict()))
model, optimizer, scheduler = start(stages, seed=1)                                     # "a new process"
model.load_state_dict(checkpoint['model']); optimizer.load_state_dict(checkpoint['optimizer'])
scheduler.load_state_dict(checkpoint['scheduler'])
rest = run_epochs(model, optimizer, scheduler, stages, range(2, 3))
print("epochs:", [r['epoch'] for r in first + rest], "| identical rows:", first + rest == whole)
test_eq(first + rest, whole)

# %% [markdown]
# Leave one state out and the rows part. Without the optimizer's state the third epoch restarts Adam's moment
# estimates; without the schedule's, the rate restarts at the top of the cosine:

# %%
for left_out in ('optimizer', 'scheduler'):
    model, optimizer, scheduler = start(stages, seed=1)
    model.load_state_dict(checkpoint['model'])
    if left_out != 'optimizer': optimizer.load_state_dict(checkpoint['optimizer'])
    if left_out != 'scheduler': scheduler.load_state_dict(checkpoint['scheduler'])
    third = run_epochs(model, optimizer, scheduler, stages, range(2, 3))[0]
    print(f"without the {left_out} state: same third epoch as the whole run: {third == whole[2]}")
    test_eq(third == whole[2], False)

# %% [markdown]
# ### What training did to the spikes
#
# Chapter 11 left the hidden linear layer (`body.7`) and the output neurons silent at initialisation. A freshly
# initialised network and the one trained for Figure 12.2, on the same test digit at T = 4 (Figure 12.3): each dot is
# a neuron's one spike, at the step it fired (a sample of at most 150 neurons per layer, those that fire first on
# top). Freshly initialised, this small network (8 channels, 64 hidden neurons) does not fire at all on this digit;
# after training we expect spikes in every layer, most of them early, and no neuron with more than one:

# %%
#| fig-cap: One test digit's spikes, freshly initialised (top) and trained (bottom), a dot per neuron at the step it fired: untrained, the network is silent; trained, every layer fires, mostly early, and no neuron twice.
#| code-fold: true
# NBVAL_IGNORE_OUTPUT
from pttfs.models import record_spikes
torch.manual_seed(0)
digit = digits_test[0][0].unsqueeze(0)
initial = build_model('digits', channels=8, hidden=64)          # freshly initialised, same shape
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
fig.suptitle('one test digit, freshly initialised (top) and trained (bottom)', fontsize=10)
fig.tight_layout(); plt.show()
test_eq(all(float(s.sum(0).max()) <= 1 for spikes in rasters.values() for s in spikes.values()), True)
test_eq(all(float(s.sum()) > 0 for s in rasters['trained'].values()), True)

# %% [markdown]
# ## Summary
# Incremental T is a schedule of stages (`parse_schedule`, `epoch_stages`) with a learning rate that anneals every
# stage when it is stepped per batch (`lr_factors`); one epoch is `train_epoch`, and `evaluate` reports accuracy,
# latency, Table 5's decision table and the spikes. Batch-norm statistics can be recomputed after training
# (`recalibrate_batch_norm`). A loop of a few lines trains the network stage by stage, and a resumed run equals an
# uninterrupted one when the weights, the optimizer's and the schedule's states are restored and the data order is
# seeded by the epoch. `pttfs-train` (Appendix B) is that loop with a run folder (Appendix A); chapter 13 uses its runs
# for the paper's tables.

# %% [markdown]
# ## Exercises
#
# 1. Print `lr_factors` for the schedule `1:6,2:2,4:2` with `'cosine'` and with `'stage-cosine'`, and plot both. What learning rate does each give the T = 4 stage?
# 2. With `start` and `run_epochs`, train `digits` with the schedule `1:4` and with `1:2,2:2` and compare accuracy and the decision table of each. Is the difference larger than between two seeds of one schedule?
# 3. Resume the run above with the data order drawn from one generator for the whole run instead of one per epoch. Which rows differ, and why?

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
