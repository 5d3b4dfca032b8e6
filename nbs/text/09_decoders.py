# %% [markdown]
# # Output decoders
#
# > How a TTFS network turns its output layer into a class: the paper's temporal selector decoder (membrane potentials read at the first output spike), and the decoders it is compared with in Table 4: rate decoding, TWD and the TQ-TTFS decoder.

# %% [markdown]
# After this chapter you can turn an output layer into a class with the paper's temporal selector decoder, and with the three decoders it is compared against.

# %%
#| default_exp decoders

# %%
#| export
import torch
from torch import nn, Tensor
from pttfs.surrogate import Sigmoid
from pttfs.neuron import AMOSLIF

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
torch.set_printoptions(precision=4, sci_mode=False)


# %% [markdown]
# Every decoder here is a module from the last hidden layer's spikes `[T, B, F]` to `(logits [B, K], decision
# time [B])`: the logits go into the cross-entropy loss in training and their argmax is the class at inference;
# the decision time is the step after which the network could have stopped (its latency, Table 2 counts
# `decision time + 1` steps).
#
# ## The temporal selector decoder (TSD)
#
# The paper's decoder is a synaptic layer and a layer of AMOS LIF neurons with one learnable τ per output neuron
# (channel-wise). Per sample, $t_{1st}$ is the first step at which **any** output neuron fires ($T-1$ if none
# does), and the decoder outputs the membrane potentials of **all** output neurons at that step:
#
# $$\text{logits} = H[t_{1st}], \qquad t_{1st} = \min\{t \mid \exists k:\ S_k[t] = 1\}\ \ (\text{or } T-1).$$
#
# The threshold $V_{th}$ of these neurons is the *confidence parameter*: a higher one needs a larger membrane
# potential before the network commits, so it decides later and (the paper argues) better.
#
# **The three properties.** The paper designs the decoder to meet three properties, which the rest of the book
# refers to by name (quoted from its section on the decoder):
#
# > P1. Guarantee a strong baseline by being functionally equivalent
# > to a rate-based decoder at the minimal inference time ($T = 1$).
# >
# > P2. Preserve the primacy of early information by prioritizing the first spikes, thereby supporting adaptive
# > early stopping capabilities—a hallmark advantage of TTFS.
# >
# > P3. Promote a general trend of performance improvement as inference time (T) increases, thus making productive
# > use of additional temporal data.
#
# P1 and P2 are properties of the decoder alone, and this chapter checks both. P3 is a claim about training with
# incremental T (chapter 12), which chapter 13 tests with controls.

# %%
#| export
def first_output_time(spikes: Tensor,  # output spikes [T, B, K]
                     ) -> Tensor:  # int64 [B]
    "t_1st per sample: the first step at which any output neuron fires, T-1 if none does."
    T = spikes.shape[0]
    any_fired = spikes.detach().amax(dim=-1) > 0                        # [T, B]
    first = any_fired.to(torch.uint8).argmax(dim=0)                     # argmax: the first maximal index
    return torch.where(any_fired.any(dim=0), first, torch.full_like(first, T - 1))


def select_time(values: Tensor,  # [T, B, K]
                t: Tensor,  # a time step per sample, [B]
               ) -> Tensor:  # values[t[b], b, :], [B, K]
    "The values of each sample at its own time step (differentiable in `values`)."
    index = t.view(1, -1, 1).expand(1, values.shape[1], values.shape[2])
    return values.gather(0, index).squeeze(0)


# %% [markdown]
# Two samples, three output neurons, $T = 4$: sample 0's first output spike is at $t = 2$ (neuron 1), sample 1
# never fires, so we expect $t_{1st} = [2, 3]$:

# %%
spikes = torch.zeros(4, 2, 3); spikes[2, 0, 1] = 1; spikes[3, 0, 2] = 1
print(first_output_time(spikes))
test_eq(first_output_time(spikes), torch.tensor([2, 3]))
values = torch.arange(24.0).view(4, 2, 3)
test_eq(select_time(values, torch.tensor([2, 3])), torch.stack([values[2, 0], values[3, 1]]))


# %% [markdown]
# Every decoder of this chapter starts the same way, a synaptic layer into AMOS LIF output neurons with one
# learnable τ each; they differ only in how they read those neurons. The output neurons do not force a last spike
# (Eq. 7) unless asked with `force_last=True`: for the TSD a forced spike at T−1 changes nothing (it decides at T−1
# anyway, from the same membranes), but for decoders that read spike times it does, and chapter 13 tests what.

# %%
#| export
class OutputLayer(nn.Module):
    "Linear synapse + AMOS LIF output neurons with channel-wise learnable τ: the front every decoder shares."
    def __init__(self, in_features: int, classes: int,
                 tau: float = 2.0,  # initial τ of the output neurons (learnable, one per neuron)
                 v_threshold: float = 1.0,  # their threshold: the TSD's confidence parameter
                 surrogate=Sigmoid(), backend: str = 'auto',
                 force_last: bool = False,  # Eq. 7 in the output layer: a neuron silent until T-1 fires there
                ):
        super().__init__()
        self.synapse = nn.Linear(in_features, classes)
        self.neuron = AMOSLIF(tau, v_threshold, surrogate, force_last, learnable_tau=True, num_channels=classes, channel_dim=2,
                              return_membrane=True, backend=backend, step_mode='m')

    def outputs(self, x: Tensor) -> tuple:
        "(spikes, membrane) of the output neurons, each [T, B, K], for the last hidden layer's spikes x [T, B, F]."
        return self.neuron(self.synapse(x))


class TemporalSelectorDecoder(OutputLayer):
    "The paper's TSD: the output neurons' membrane potentials at t_1st, the first output spike of each sample."
    def forward(self, x: Tensor,  # spikes of the last hidden layer, [T, B, F]
               ) -> tuple:  # (logits [B, K], t_1st [B])
        spikes, membrane = self.outputs(x)
        t_first = first_output_time(spikes)
        return select_time(membrane, t_first), t_first


# %% [markdown]
# ## Rate decoding
#
# The rate-based reference reads the *same* output layer densely: the mean over all $T$ steps of the output
# neurons' membrane potentials (the usual SpikingJelly classifier head averages the output layer over time; we
# average its membrane so that the two decoders differ only in *when* they read). Its decision time is $T-1$.

# %%
#| export
class RateDecoder(OutputLayer):
    "Rate decoding: the output neurons' membrane potentials averaged over all T steps; decides at T-1."
    def forward(self, x: Tensor) -> tuple:
        _, membrane = self.outputs(x)
        return membrane.mean(dim=0), torch.full((x.shape[1],), x.shape[0] - 1, dtype=torch.long, device=x.device)


# %% [markdown]
# ### P1: at T = 1 the TSD *is* rate decoding
#
# With one step, $t_{1st} = 0$ for every sample, and the mean over one step is that step. Same weights, same
# input: we expect identical logits.

# %%
torch.manual_seed(0)
tsd, rate = TemporalSelectorDecoder(16, 10), RateDecoder(16, 10)
rate.load_state_dict(tsd.state_dict())
x = (torch.rand(1, 8, 16) < 0.3).float()
(tsd_logits, t_first), (rate_logits, _) = tsd(x), rate(x)
print("t_1st:", t_first.tolist(), "| identical logits:", torch.equal(tsd_logits, rate_logits))
test_eq(tsd_logits.detach(), rate_logits.detach())

# %% [markdown]
# ### P2: nothing after t_1st reaches the output
#
# Change the input everywhere *after* each sample's $t_{1st}$: the TSD's logits must not move (it could have
# stopped at $t_{1st}$), the rate decoder's do.

# %%
torch.manual_seed(1)
tsd = TemporalSelectorDecoder(16, 10, v_threshold=0.3)
rate = RateDecoder(16, 10); rate.load_state_dict(tsd.state_dict())
x = (torch.rand(12, 8, 16) < 0.3).float()
logits, t_first = tsd(x)
after = torch.arange(12).view(12, 1, 1) > t_first.view(1, 8, 1)
x_changed = torch.where(after, 1 - x, x)                       # flip every input spike after t_1st
print("t_1st:", t_first.tolist())
print("TSD unchanged:", torch.equal(tsd(x_changed)[0], logits), "| rate decoder unchanged:", torch.equal(rate(x_changed)[0], rate(x)[0]))
test_eq(tsd(x_changed)[0].detach(), logits.detach())
assert not torch.equal(rate(x_changed)[0], rate(x)[0])

# %% [markdown]
# ### Training through the TSD
#
# The loss sees the membrane at $t_{1st}$, so gradients reach the synaptic weights and the output neurons' τ
# through the membrane path of the neuron (chapter 4's $\partial\mathcal L/\partial H$); the choice of $t_{1st}$
# itself is discrete and carries no gradient:

# %%
loss = nn.functional.cross_entropy(logits, torch.arange(8) % 10)
loss.backward()
print(f"loss {loss.item():.4f} | weights get a gradient: {tsd.synapse.weight.grad.abs().sum().item() > 0} | "
      f"tau gets a gradient: {tsd.neuron.tau_logit.grad.abs().sum().item() > 0}")
test_eq(tsd.synapse.weight.grad.abs().sum().item() > 0, True)

# %% [markdown]
# ### The confidence parameter
#
# The same weights and input with a rising decoder threshold. The output membranes are the same in every run, and
# a higher threshold is crossed later or not at all, so the mean decision step can only grow:

# %%
torch.manual_seed(2)
x = (torch.rand(32, 64, 16) < 0.3).float()
base = TemporalSelectorDecoder(16, 10)
previous = -1.0
for v_threshold in [0.1, 0.2, 0.4, 0.8, 1.6]:
    decoder = TemporalSelectorDecoder(16, 10, v_threshold=v_threshold); decoder.load_state_dict(base.state_dict())
    with torch.no_grad(): mean_t = decoder(x)[1].float().mean().item()
    print(f"V_th = {v_threshold:3}: mean t_1st + 1 = {mean_t + 1:6.3f} steps")
    assert mean_t >= previous; previous = mean_t


# %% [markdown]
# ## The comparison decoders of Table 4
#
# The paper gives no formulas for these two; what follows is **our assumption**, written from the cited papers'
# descriptions, and marked as such in the code.
#
# * **TWD, temporal weighting decoding** (ETTFS, Che et al. 2024): the output spikes weighted by how early they
#   come, $o_k = \sum_t S_k[t]\,(T - t)/T$, so an earlier spike scores higher; gradients flow through the spikes'
#   surrogate. Its weakness, the paper's Fig. 2(b): two neurons firing in the same step get the same score.
# * **TQ-TTFS decoder** (Yang et al. 2024): the class is the output neuron that fires first; we use
#   $o_k = -\hat t_k/T$ with $\hat t_k = \sum_t t\,S_k[t] + T\,(1 - \sum_t S_k[t])$ (the first-spike time, $T$ if
#   silent), again differentiable through the surrogate.
#
# Both decide at the first output spike too, so their decision time is $t_{1st}$. Note that with at most one spike
# per output neuron these two assumed forms differ only by a constant ($-\hat t_k/T = o^{TWD}_k - 1$), so under
# the cross-entropy they train identically; chapter 13 shows it in the ablation.

# %%
#| export
class _SpikeTimeDecoder(OutputLayer):
    "Decoders that read the output spikes only; subclasses define `logits(spikes)`."
    def forward(self, x: Tensor) -> tuple:
        spikes, _ = self.outputs(x)
        return self.logits(spikes), first_output_time(spikes)


class TemporalWeightingDecoder(_SpikeTimeDecoder):
    "TWD (ETTFS, Che et al. 2024) -- OUR ASSUMED FORM: o_k = sum_t S_k[t] (T - t) / T."
    def logits(self, spikes: Tensor) -> Tensor:
        T = spikes.shape[0]
        weights = (T - torch.arange(T, device=spikes.device, dtype=spikes.dtype)) / T
        return (spikes * weights.view(T, 1, 1)).sum(0)


class TQTTFSDecoder(_SpikeTimeDecoder):
    "TQ-TTFS decoder (Yang et al. 2024) -- OUR ASSUMED FORM: o_k = -t_k / T with t_k the first-spike time (T if silent)."
    def logits(self, spikes: Tensor) -> Tensor:
        T = spikes.shape[0]
        t = torch.arange(T, device=spikes.device, dtype=spikes.dtype).view(T, 1, 1)
        first_time = (spikes * t).sum(0) + T * (1 - spikes.sum(0))
        return -first_time / T


# %% [markdown]
# Fig. 2(b) in numbers: two output neurons fire in the same step with different membrane potentials. TWD (and
# TQ-TTFS) cannot tell them apart; the TSD reads the potentials and can:

# %%
torch.manual_seed(0)
decoders = {name: cls(2, 2, v_threshold=0.5) for name, cls in
            [('TSD', TemporalSelectorDecoder), ('TWD', TemporalWeightingDecoder), ('TQ-TTFS', TQTTFSDecoder)]}
for d in decoders.values():
    with torch.no_grad(): d.synapse.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]])); d.synapse.bias.zero_()
x = torch.tensor([[[1.0, 1.0]], [[0.0, 0.0]]])                     # [T=2, B=1, F=2]: both neurons cross at t = 0
for name, d in decoders.items():
    logits, t = d(x)
    print(f"{name:8} logits {[round(v, 4) + 0.0 for v in logits[0].tolist()]}  decision step {t.item()}")
test_eq(decoders['TWD'](x)[0][0, 0].item(), decoders['TWD'](x)[0][0, 1].item())
assert decoders['TSD'](x)[0][0, 1] > decoders['TSD'](x)[0][0, 0]

# %% [markdown]
# **Why the two assumed forms are one experiment.** An AMOS output neuron fires at most once, at $t_k$, or never.
# Then $o^{TWD}_k = (T - t_k)/T = 1 - t_k/T$ if it fires and $0$ if it is silent, while $o^{TQ}_k = -\hat t_k/T$
# is $-t_k/T$ if it fires and $-1$ if silent: in both cases $o^{TWD}_k = o^{TQ}_k + 1$. The cross-entropy reads
# logits through the softmax, which does not change when every logit of a sample moves by the same constant:
#
# $$-\log \frac{e^{o_y + 1}}{\sum_k e^{o_k + 1}} = -\log \frac{e^{o_y}}{\sum_k e^{o_k}},$$
#
# so the loss, its gradient with respect to every weight, every step of training and the argmax at inference are
# the same. With these assumed forms, Table 4 has one row for the two, not two rows. We expect the logits to differ
# by exactly 1 on random single-spike outputs (silent neurons included), and the losses and gradients to be equal:

# %%
torch.manual_seed(0)
twd, tq = TemporalWeightingDecoder(6, 5), TQTTFSDecoder(6, 5)
with torch.no_grad(): twd.synapse.weight.mul_(6)                       # strong enough that some output neurons fire
tq.load_state_dict(twd.state_dict())                                   # one set of weights, read both ways
x = (torch.rand(4, 8, 6) < 0.5).float()                                # [T, B, F] hidden spikes
spikes, _ = twd.outputs(x)
silent = int((spikes.sum(0) == 0).sum())
print(f"output neurons silent: {silent} of {spikes[0].numel()}, firing at steps {sorted(set(spikes.argmax(0)[spikes.sum(0) > 0].tolist()))}")
assert 0 < silent < spikes[0].numel()                                  # both cases of the proof occur
test_close(twd.logits(spikes) - tq.logits(spikes), torch.ones(8, 5), eps=1e-6)
labels = torch.randint(0, 5, (8,))
losses = [nn.functional.cross_entropy(d(x)[0], labels) for d in (twd, tq)]
grads = [torch.autograd.grad(loss, d.synapse.weight) for loss, d in zip(losses, (twd, tq))]
test_close(losses[0], losses[1], eps=1e-6); test_close(grads[0][0], grads[1][0], eps=1e-6)

# %%
#| export
DECODERS = {'tsd': TemporalSelectorDecoder, 'rate': RateDecoder, 'twd': TemporalWeightingDecoder, 'tq-ttfs': TQTTFSDecoder}

# %% [markdown]
# ## What each decoder reads (the paper's Fig. 2)
#
# One sample, four output neurons over $T = 8$ steps, the same output layer under all four decoders (identity
# synapse, so the neurons see the currents we choose). Neurons 0 and 1 both fire first, at $t = 2$, neuron 1 with the
# higher membrane; neuron 2 fires late, at $t = 5$, but then charges highest; neuron 3 never fires. What to expect:
# the TSD stops at $t_{1st} = 2$ and reads the membranes there, so it picks neuron 1; rate decoding averages the
# whole run and picks the late, strong neuron 2; TWD and TQ-TTFS see two spikes in the same step and score
# neurons 0 and 1 the same, Fig. 2(b)'s tie.

# %%
#| fig-cap: Four output neurons read by each decoder: the TSD stops at the first spike (t = 2) and picks neuron 1; rate decoding picks the late, strong neuron 2; TWD and TQ-TTFS tie neurons 0 and 1, which spike in the same step (the paper's Fig. 2b).
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
T = 8
currents = torch.zeros(T, 1, 4)
currents[:, 0, 0] = 1.2                                   # steady: crosses V_th = 1 at t = 2, just
currents[2, 0, 1] = 4.0                                   # one strong kick at t = 2
currents[4:, 0, 2] = torch.tensor([1.0, 5.0, 5.0, 5.0])   # late and strong: crosses at t = 5
currents[:, 0, 3] = 0.3                                   # never reaches the threshold
reads = {}
for name, cls in DECODERS.items():
    decoder = cls(4, 4)
    with torch.no_grad(): decoder.synapse.weight.copy_(torch.eye(4)); decoder.synapse.bias.zero_()
    with torch.no_grad(): logits, decided = decoder(currents)
    reads[name] = (logits[0], decided.item())
spikes, membrane = decoder.outputs(currents)
spikes, membrane = spikes.detach()[:, 0], membrane.detach()[:, 0]
t_first = reads['tsd'][1]

fig = plt.figure(figsize=(8, 5.2))
top = fig.add_subplot(2, 1, 1)
for k in range(4):
    top.plot(range(T), membrane[:, k], '.-', color=f'C{k}', label=f'neuron {k}')
    fired = spikes[:, k].nonzero().flatten()
    top.plot(fired, membrane[fired, k], '*', color=f'C{k}', ms=14)
top.axhline(1.0, color='grey', ls='--', lw=1); top.axvline(t_first, color='k', lw=1)
top.text(t_first + 0.1, 3.2, 't_1st: the TSD decides here', fontsize=8)
top.set(xlabel='time step t', ylabel='output membrane H_k[t]', title='Same output spikes (★), four readings')
top.legend(fontsize=7, ncol=4, loc='upper left')
for i, (name, (logits, decided)) in enumerate(reads.items()):
    ax = fig.add_subplot(2, 4, 5 + i)
    best = logits == logits.max()
    ax.bar(range(4), logits, color=['C3' if b else 'lightgrey' for b in best])
    ax.set_title(f"{name}: decides at t = {decided}", fontsize=8); ax.set_xticks(range(4)); ax.tick_params(labelsize=7)
fig.tight_layout(); plt.show()
test_eq(reads['tsd'][0].argmax().item(), 1)                       # highest membrane at t_1st
test_eq(reads['rate'][0].argmax().item(), 2)                      # highest mean membrane
for name in ('twd', 'tq-ttfs'): test_eq(reads[name][0][0].item(), reads[name][0][1].item())   # the tie
test_eq([reads[n][1] for n in DECODERS], [2, T - 1, 2, 2])

# %% [markdown]
# ## Summary
# `TemporalSelectorDecoder` reads all output membranes at the first output spike: equal to rate decoding at
# T = 1 (P1), blind to everything after $t_{1st}$ (P2), with the threshold as a confidence knob. `RateDecoder`,
# `TemporalWeightingDecoder` and `TQTTFSDecoder` (the last two in forms we assumed) share its interface, so the
# training chapter can swap them for Table 4's ablation.

# %% [markdown]
# ## Exercises
#
# 1. Show P1 numerically: at T = 1 the TSD's logits equal `RateDecoder`'s for random output membranes and spikes.
# 2. Raise the decoder threshold until no output neuron spikes. Which step does the TSD read then, and what happens to the decision time of every sample?
# 3. Write a decoder that reads each output neuron's largest membrane over time and train it on `digits` with chapter 12's `train_epoch` (give a `SpikingClassifier` your decoder; `pttfs-train --decoder` offers only the four of `DECODERS`). Does it decide earlier or later than the TSD?

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
