# %% [markdown]
# # First-spike extraction
#
# > Eqs. 7–9: from the membrane of all time steps to the one spike of each neuron, with a threshold, a maximum and a comparison; no loop over t.

# %% [markdown]
# After this chapter you can turn a whole membrane trajectory into each neuron's one spike without a loop over time.

# %%
#| default_exp first_spike

# %%
#| export
import torch
from torch import Tensor
from pttfs.charging import charge

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
from pttfs.dynamics import amos_lif_sequential
torch.set_printoptions(precision=4, sci_mode=False)


# %% [markdown]
# ## From the loop to a search
#
# In the loop of chapter 1, the mask $F$ makes the neuron fire at the *first* step where $H[t] \ge V_{th}$ and
# never again. With the whole trajectory $\mathbf{H}$ known (chapter 2), that is a search for the first crossing,
# the paper's Eq. 7:
#
# $$S[t] = \begin{cases} 1, & t = t_f = \min\{\, i \mid H[i] \ge V_{th} \ \text{or}\ i = T-1 \,\} \\ 0, & t \ne t_f. \end{cases} \qquad (7)$$
#
# The "or $i = T-1$" is the forced last spike; without `force_last` the set may be empty and the neuron stays
# silent. In parallel, first ignore the one-spike rule and compute the **fake spikes**, every threshold
# crossing:
#
# $$\tilde{\mathbf{S}} = \Theta(\mathbf{H} - V_{th}). \qquad (8)$$

# %%
#| export
def fake_spikes(membrane: Tensor,  # H, shape [T, *]
                v_threshold: float = 1.0,  # V_th
                force_last: bool = False,  # Eq. 9: treat t = T-1 as a crossing in every neuron
               ) -> Tensor:  # bool, shaped like membrane
    "S̃ = Θ(H − V_th) (Eq. 8), 1 at every step at or above threshold; with `force_last`, also S̃[T-1] = 1 (Eq. 9)."
    fake = membrane >= v_threshold                     # Θ(0) = 1; a NaN membrane never crosses
    if force_last:
        fake = fake.clone()
        fake[-1] = True
    return fake


# %% [markdown]
# The first spike is the first fake spike. The paper finds it with an argmax over $\{\tilde S[0], \dots,
# \tilde S[T-2], 1\}$ (Eq. 9): `argmax` returns the *first* index of the maximum, and the appended 1 guarantees
# there is one. Without forcing, a neuron may have no crossing at all; we give it the index $T$, one past the end,
# which Eq. 7 then turns into no spike:
#
# $$t_f = \operatorname{argmax}\{\tilde S[0], \tilde S[1], \dots, \tilde S[T-2], 1\} \qquad (9)$$
#
# Written as it stands, with PyTorch's `argmax` over the time dimension:

# %%
def first_spike_argmax(fake: Tensor) -> Tensor:
    "Eq. 9 as written: t_f by argmax over time, T where S̃ has no 1."
    T = fake.shape[0]
    first = fake.to(torch.uint8).argmax(dim=0)         # argmax returns the first maximal index
    return torch.where(fake.any(dim=0), first, torch.full_like(first, T))


# %% [markdown]
# The same index needs no argmax. Weight step $t$ by $T - t$: among the steps that cross, the earliest has the
# largest weight, so
#
# $$t_f = T - \max_t\, (T - t)\,\tilde S[t],$$
#
# and a neuron that never crosses has the maximum 0, so it gets $T$ with no separate test. A maximum is a plain
# reduction, which PyTorch's CPU code vectorises along any dimension, while its `argmax` along the time dimension
# runs one element at a time: on a `[4, 2^18]` input the argmax form is tens of times slower (time both in the
# exercises). The weights fit 16-bit integers up to $T = 2^{15} - 1$; beyond that we use 32 bits.

# %%
#| export
def first_spike_index(fake: Tensor,  # bool fake spikes S̃, shape [T, *]
                     ) -> Tensor:  # int64, shape fake.shape[1:]: t_f, or T where S̃ is all 0
    "t_f, the first t with S̃[t] = 1 (Eq. 9), as T − max_t (T − t)·S̃[t]; T for a neuron without any crossing."
    T = fake.shape[0]
    kind = torch.int16 if T < 2**15 else torch.int32 if T < 2**31 else torch.int64     # T − t must fit: no wrap-around
    weight = torch.arange(T, 0, -1, dtype=kind, device=fake.device)
    return T - (fake * weight.view(T, *([1] * (fake.dim() - 1)))).amax(dim=0).long()


def spikes_from_index(first: Tensor,  # t_f per neuron (T for none), shape [*]
                      T: int,  # number of time steps
                      dtype=torch.float32,  # dtype of the spikes
                     ) -> Tensor:  # S, shape [T, *]
    "Eq. 7: S[t] = 1 at t = t_f and 0 elsewhere (all 0 where t_f = T)."
    t = torch.arange(T, device=first.device).view(T, *([1] * first.dim()))
    return (t == first).to(dtype)


# %%
show_doc(first_spike_index)

# %% [markdown]
# `argmax` picking the *first* maximum is essential to Eq. 9 and documented by PyTorch ("If there are multiple
# maximal values then the indices of the first maximal value are returned"). We check both forms on the cases
# that matter, then the weighted maximum against the argmax on random fake spikes, ties, empty neurons and a
# T too long for 16-bit weights included:

# %%
fake = torch.tensor([[0, 0, 1, 0],
                     [1, 0, 1, 0],
                     [1, 1, 1, 0],
                     [0, 1, 1, 0]], dtype=torch.bool)  # [T=4, 4 neurons]
print(first_spike_index(fake))
test_eq(first_spike_index(fake), torch.tensor([1, 2, 0, 4]))
test_eq(first_spike_argmax(fake), torch.tensor([1, 2, 0, 4]))
print(spikes_from_index(first_spike_index(fake), 4))

# %%
torch.manual_seed(0)
for T, shape, p in [(1, (7,), 0.5), (4, (3, 5), 0.3), (64, (2, 50), 0.02), (40000, (3,), 1e-4), (16, (0,), 0.5)]:
    fake = torch.rand(T, *shape) < p
    test_eq(first_spike_index(fake), first_spike_argmax(fake))
test_eq(first_spike_index(torch.zeros(40000, 2, dtype=torch.bool)), torch.tensor([40000, 40000]))   # 32-bit weights

# %% [markdown]
# ## A worked example
#
# One neuron, $\tau = 2$, $V_{th} = 1$, input chosen to cross the threshold twice: at $t = 2$ (the spike) and
# again at $t = 5$ (a fake spike that the mask suppresses). We expect $t_f = 2$ and a single spike there:

# %%
x = torch.tensor([1.0, 1.0, 2.5, 0.0, 0.0, 3.0, 0.0], dtype=torch.float64)[:, None]
H = charge(x, 2.0)
fake = fake_spikes(H, 1.0)
first = first_spike_index(fake)
S = spikes_from_index(first, 7, H.dtype)
print("t   H       fake  S")
for t in range(7): print(f"{t}   {H[t, 0].item():.4f}  {int(fake[t, 0])}     {int(S[t, 0])}")
test_eq(first.item(), 2)
test_eq(S, amos_lif_sequential(x, 2.0)[0])

# %% [markdown]
# The same neuron drawn: the membrane of every step at once (chapter 2), the threshold, the fake spikes
# $\tilde S$ where $H \ge V_{th}$, and the one real spike at the first of them. The second fake spike, at
# $t = 5$, changes nothing forward; chapter 4's backward will need it.

# %%
#| fig-cap: One neuron's membrane, threshold, fake spikes and its one spike: look at the spike, which sits at the first fake spike, and at the second fake spike at t = 5, which changes nothing forward.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(8.5, 2.8))
t = range(7)
ax.plot(t, H[:, 0], 'o-', color='#1a4f8b', label='membrane $H[t]$ (Eqs. 4–6)')
ax.axhline(1.0, color='#777', ls='--', lw=1, label='$V_{th}$')
fired = [s for s in t if fake[s, 0]]
ax.scatter(fired, [H[s, 0] for s in fired], s=160, facecolors='none', edgecolors='#c0392b', lw=1.5, label=r'fake spike $\tilde S$ (Eq. 8)')
ax.vlines(first.item(), 0, H[first.item(), 0], color='#c0392b', lw=3, label=f'spike at $t_f$ = {first.item()} (Eqs. 7, 9)')
ax.set_xlabel('t'); ax.set_ylabel('H'); ax.set_xticks(list(t)); ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))   # beside the axes: nothing hidden
ax.set_title('Eq. 9: the spike is the first fake spike', fontsize=10); fig.tight_layout()


# %% [markdown]
# ## Checks against the loop
#
# Spikes must be *identical* to the sequential reference, in both modes, for many neurons and time lengths
# (float64; the membrane differs from the loop's by rounding only, so ties at the threshold are the one way to
# disagree, and random inputs do not produce them):

# %%
#| export
def amos_lif_forward(x: Tensor, tau=2.0, v_threshold: float = 1.0, force_last: bool = False) -> tuple:
    "The parallel forward, Eqs. 5–9, without gradients: (spikes, membrane, t_f)."
    membrane = charge(x, tau)                                           # Eqs. 4–6
    first = first_spike_index(fake_spikes(membrane, v_threshold, force_last))   # Eqs. 8–9
    return spikes_from_index(first, x.shape[0], x.dtype), membrane, first        # Eq. 7


# %%
torch.manual_seed(0)
print(f"{'T':>4} {'force_last':>10}  identical  fired")
for T in [1, 2, 7, 64, 300]:
    for force_last in [False, True]:
        x = 1 + 1.5 * torch.randn(T, 1000, dtype=torch.float64)
        spikes, _, _ = amos_lif_forward(x, 3.0, 1.0, force_last)
        reference = amos_lif_sequential(x, 3.0, 1.0, force_last=force_last)[0]
        print(f"{T:4} {str(force_last):>10}  {torch.equal(spikes, reference)!s:9}  {int(spikes.sum())}/1000")
        test_eq(spikes, reference)

# %% [markdown]
# ## Summary
# Eq. 8 thresholds every step, Eq. 9 finds the first crossing (an argmax, computed as a weighted maximum), Eq. 7 writes the spike: three
# elementwise or reduction passes, identical to the loop. Without forcing, a neuron with no crossing gets
# $t_f = T$ and no spike. The fake spikes after $t_f$ are not thrown away: the backward pass needs the first of
# them, the *second fake spike*.

# %% [markdown]
# ## Exercises
#
# 1. Build a membrane in which no step crosses the threshold. What does `torch.argmax` alone return for it, and how does `first_spike_index` tell that case apart?
# 2. Time `first_spike_argmax` against `first_spike_index` on a `[4, 2**18]` and a `[256, 2**14]` input (`%timeit`), then compute $t_f$ a third way, with `cumsum`, and check it against both.
# 3. Show P2 for one neuron: change its input at steps after $t_f$ and check that its spikes do not change. What does change, and why does the backward pass of chapter 4 need it?

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
