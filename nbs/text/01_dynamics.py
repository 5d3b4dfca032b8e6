# %% [markdown]
# # AMOS dynamics: the sequential reference
#
# > Eqs. 1–4 of the paper as a plain loop over time, differentiated by autograd (BPTT). Every later chapter is checked against it.

# %% [markdown]
# After this chapter you can run the AMOS LIF neuron step by step, as the paper defines it, and use it as the reference that every faster version must match.

# %%
#| default_exp dynamics

# %%
#| export
import math
import numbers
import torch
from torch import Tensor
from pttfs.surrogate import Sigmoid

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
from pttfs.surrogate import Surrogate


# %% [markdown]
# ## The model
#
# The At-Most-One-Spike (AMOS) neuron (Kheradpisheh & Masquelier 2020) is a leaky integrate-and-fire neuron that
# may fire **at most once**. With input current $X[t]$, for $t = 0, 1, \dots, T-1$:
#
# $$H[t] = f(H[t-1], X[t]) \qquad (1)$$
# $$S[t] = (1 - F[t-1])\,\Theta(H[t] - V_{th}) \qquad (2)$$
# $$F[t] = F[t-1] + S[t] \qquad (3)$$
#
# with $H[-1] = F[-1] = 0$. $H$ is the membrane potential after charging, $S$ the spike, $F$ the *firing mask*:
# once $S[i] = 1$, $F[t] = 1$ for all $t \ge i$ and Eq. 2 forbids any further spike. There is **no reset**: the
# membrane keeps charging after the spike, it just cannot fire again. For the AMOS *LIF* neuron the charging
# function is the LIF one,
#
# $$H[t] = \Big(1 - \frac{1}{\tau_m}\Big) H[t-1] + \frac{1}{\tau_m} X[t], \qquad (4)$$
#
# a leaky average of the input with decay $\alpha = 1 - 1/\tau_m$. A constant input $X$ drives $H$ towards $X$
# as $H[t] = X(1 - \alpha^{t+1})$.
#
# **Forcing the last spike.** The paper's Eq. 7 adds one rule: a neuron that has not fired by $T-1$ is forced to
# fire there, so that every neuron has a first-spike time. We offer it as `force_last`, **off by default**: with
# $T = 1$ forcing makes *every* neuron fire at $t = 0$, so the spikes carry no information at all, while the
# paper's $T = 1$ results (rate-decoder equivalence, its principle P1) need neurons that can stay silent. With
# forcing, the forced spike is a constant 1: it masks later steps like any spike, but no gradient flows through
# $\Theta$ at $t = T-1$ (it has no surrogate term).

# %% [markdown]
# ## Arguments, checked once
#
# Every neuron function in this book takes the same arguments. Bad ones should fail loudly and name themselves,
# rather than produce NaNs twenty layers later:

# %%
#| export
def check_neuron_args(x, tau, v_threshold, surrogate, force_last):
    "Raise a `TypeError`/`ValueError` naming the first bad argument of an AMOS neuron call."
    if not isinstance(x, Tensor): raise TypeError(f"x must be a torch.Tensor of shape [T, *], got {type(x).__name__}")
    if x.dim() == 0: raise ValueError("x has no time dimension: expected shape [T, *] (time first), got a 0-d tensor")
    if x.shape[0] == 0: raise ValueError(f"x has T = 0 time steps (shape {tuple(x.shape)}); T must be at least 1")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert it, e.g. x.float()")
    if isinstance(tau, Tensor):
        if not tau.dtype.is_floating_point: raise TypeError(f"tau must be a floating-point tensor, got dtype {tau.dtype}")
        try: shape = torch.broadcast_shapes(tau.shape, x.shape[1:])
        except RuntimeError: shape = None
        if shape != x.shape[1:]:
            raise ValueError(f"tau of shape {tuple(tau.shape)} does not broadcast to one time step of x, {tuple(x.shape[1:])}")
        bad = ~(torch.isfinite(tau.detach()) & (tau.detach() > 1))
        if bad.any(): raise ValueError(f"tau must be finite and > 1 (so that alpha = 1 - 1/tau lies in (0, 1)); got {tau.detach()[bad].flatten()[0].item()}")
    elif isinstance(tau, numbers.Real) and not isinstance(tau, bool):
        if not (math.isfinite(tau) and tau > 1):
            raise ValueError(f"tau must be finite and > 1 (so that alpha = 1 - 1/tau lies in (0, 1)); got {tau}")
    else: raise TypeError(f"tau must be a real number or a tensor, got {type(tau).__name__}")
    if isinstance(v_threshold, Tensor):      # one threshold, or one per neuron; may be learnable
        if not v_threshold.dtype.is_floating_point:
            raise TypeError(f"v_threshold must be a floating-point tensor, got dtype {v_threshold.dtype}")
        try: shape = torch.broadcast_shapes(v_threshold.shape, x.shape[1:])
        except RuntimeError: shape = None
        if shape != x.shape[1:]:
            raise ValueError(f"v_threshold of shape {tuple(v_threshold.shape)} does not broadcast to one time step of x, {tuple(x.shape[1:])}")
        bad = ~torch.isfinite(v_threshold.detach())
        if bad.any(): raise ValueError(f"v_threshold must be finite, got {v_threshold.detach()[bad].flatten()[0].item()}")
    elif not isinstance(v_threshold, numbers.Real) or isinstance(v_threshold, bool):
        raise TypeError(f"v_threshold must be a real number or a tensor, got {type(v_threshold).__name__}")
    elif not math.isfinite(v_threshold): raise ValueError(f"v_threshold must be finite, got {v_threshold}")
    if not callable(surrogate):
        raise TypeError(f"surrogate must be callable (e.g. pttfs.surrogate.Sigmoid()), got {type(surrogate).__name__}")
    if not isinstance(force_last, bool): raise TypeError(f"force_last must be a bool, got {type(force_last).__name__}")


# %% [markdown]
# Each bad argument gets an error that names it:

# %%
x = torch.zeros(4, 3)
for kwargs, err, name in [
    (dict(x=torch.tensor(1.0)), ValueError, 'time dimension'),
    (dict(x=torch.zeros(0, 3)), ValueError, 'T = 0'),
    (dict(x=torch.zeros(4, 3, dtype=torch.int64)), TypeError, 'floating-point'),
    (dict(x=torch.zeros(4, 3, dtype=torch.bool)), TypeError, 'floating-point'),
    (dict(x=[[0.0]]), TypeError, 'x must be'),
    (dict(tau=1.0), ValueError, 'tau'),
    (dict(tau=0.5), ValueError, 'tau'),
    (dict(tau=float('inf')), ValueError, 'tau'),
    (dict(tau=torch.tensor([2.0, 1.0, 3.0])), ValueError, 'tau'),
    (dict(tau=torch.full((5,), 2.0)), ValueError, 'broadcast'),
    (dict(tau='2'), TypeError, 'tau'),
    (dict(v_threshold=float('nan')), ValueError, 'v_threshold'),
    (dict(v_threshold=float('inf')), ValueError, 'v_threshold'),
    (dict(v_threshold=torch.tensor([1.0, float('nan'), 1.0])), ValueError, 'v_threshold'),
    (dict(v_threshold=torch.ones(2)), ValueError, 'broadcast'),
    (dict(surrogate='sigmoid'), TypeError, 'surrogate'),
    (dict(force_last=1), TypeError, 'force_last'),
]:
    args = dict(x=x, tau=2.0, v_threshold=1.0, surrogate=Sigmoid(), force_last=False) | kwargs
    test_fail(check_neuron_args, kwargs=args, exc=err, contains=name)
    print(f"{err.__name__:10} {name}")
check_neuron_args(x, torch.tensor([2.0, 3.0, 4.0]), 1.0, Sigmoid(), True)   # a per-neuron tau is fine
check_neuron_args(x, 2.0, torch.tensor([0.5, 1.0, 2.0]), Sigmoid(), True)   # and so is a per-neuron threshold


# %% [markdown]
# The time constant may be a number or a tensor that broadcasts over one time step (one τ per channel, say). For
# the arithmetic we always want a tensor on the input's device and in its dtype:

# %%
#| export
def tau_tensor(tau, x: Tensor) -> Tensor:
    "τ as a tensor of `x`'s dtype and device (keeps the autograd graph of a learnable τ)."
    if isinstance(tau, Tensor): return tau.to(dtype=x.dtype, device=x.device)
    return torch.tensor(float(tau), dtype=x.dtype, device=x.device)


# %% [markdown]
# ## The reference: a loop over time
#
# The implementation is a line-by-line transcription of Eqs. 2–4. The spike uses the surrogate's
# Heaviside (forward: the exact step; backward: the surrogate), so autograd through this loop is exactly
# backpropagation through time with the firing mask $F$ in the graph: the *mask gradient* that chapter 4 derives
# by hand is what autograd computes here automatically.
#
# One detail keeps the loop usable for long $T$: how it takes the slices $X[t]$. Each `x[t]` is an autograd node
# of its own whose backward writes the slice's gradient into a zero tensor of the *whole* input $[T, *]$, so BPTT
# costs $O(T^2)$. `x.unbind(0)` is one node with $T$ outputs, but PyTorch's backward spends time quadratic in one
# node's number of outputs. Slicing in two levels, blocks of 256 steps and then the steps of each block, keeps
# every node's fan-out small, and the backward linear in $T$ in practice (benchmarks/README.md has the timings).

# %%
#| export
def amos_lif_sequential(x: Tensor,  # input current X, shape [T, *] (time first)
                        tau=2.0,  # membrane time constant τ_m > 1: a number, or a tensor broadcasting to x.shape[1:]
                        v_threshold=1.0,  # firing threshold V_th: a number, or a tensor broadcasting to x.shape[1:] (may be learnable)
                        surrogate=Sigmoid(),  # Θ with a surrogate gradient (`pttfs.surrogate`), or any such callable
                        force_last: bool = False,  # Eq. 7: force a spike at T-1 in neurons that have not fired
                       ) -> tuple:  # (spikes S, membrane H), both shaped like x
    "AMOS LIF neuron (Eqs. 1–4), one time step after the other; differentiable by autograd (BPTT)."
    check_neuron_args(x, tau, v_threshold, surrogate, force_last)
    tau = tau_tensor(tau, x)
    if isinstance(v_threshold, Tensor): v_threshold = v_threshold.to(dtype=x.dtype, device=x.device)
    decay = 1 - 1 / tau                                  # α in Eq. 4
    h = torch.zeros_like(x[0])                           # H[-1] = 0
    fired = torch.zeros_like(x[0])                       # F[-1] = 0
    spikes, membrane = [], []
    T = x.shape[0]
    steps = [s for block in x.split(256) for s in block.unbind(0)]   # x[t], sliced in two levels (see below)
    for t in range(T):
        h = decay * h + steps[t] / tau                   # Eq. 4
        if force_last and t == T - 1:
            theta = torch.ones_like(h)                   # Eq. 7: a constant spike, no surrogate term
        else:
            theta = surrogate(h - v_threshold)           # Θ(H[t] - V_th)
        s = (1 - fired) * theta                          # Eq. 2
        fired = fired + s                                # Eq. 3
        spikes.append(s)
        membrane.append(h)
    return torch.stack(spikes), torch.stack(membrane)


# %%
show_doc(amos_lif_sequential)

# %% [markdown]
# ## A worked example
#
# Four neurons, $T = 6$, $\tau = 2$ ($\alpha = \tfrac12$), $V_{th} = 1$, constant inputs $X \in \{0.5, 1.5, 2.5, 4\}$.
# From $H[t] = X(1 - 2^{-(t+1)})$ we expect: $X = 0.5$ never reaches 1; $X = 1.5$ needs $1 - 2^{-(t+1)} \ge 2/3$,
# i.e. $t = 1$ ($H = 1.125$); $X = 2.5$ and $X = 4$ fire at once, $t = 0$ ($H[0] = 1.25$ and $2$). And all four membranes keep charging after their spike.

# %%
torch.set_printoptions(precision=4, sci_mode=False)
x = torch.tensor([0.5, 1.5, 2.5, 4.0], dtype=torch.float64).expand(6, 4)
spikes, membrane = amos_lif_sequential(x, tau=2.0)
print("membrane H (rows: t, columns: neurons)\n", membrane)
print("spikes S\n", spikes)
test_eq(spikes.argmax(0), torch.tensor([0, 1, 0, 0]))            # first index of the max: neuron 0 never fires
test_eq(spikes.sum(0), torch.tensor([0., 1., 1., 1.], dtype=torch.float64))   # at most one spike each
test_close(membrane[:, 1], 1.5 * (1 - 0.5 ** torch.arange(1, 7, dtype=torch.float64)), eps=1e-15)

# %% [markdown]
# With `force_last=True` the silent neuron 0 is forced to fire at $t = T-1 = 5$; the others are unchanged:

# %%
forced, _ = amos_lif_sequential(x, tau=2.0, force_last=True)
print(forced)
test_eq(forced[:, 0], torch.tensor([0., 0., 0., 0., 0., 1.], dtype=torch.float64))
test_eq(forced[:, 1:], spikes[:, 1:])

# %% [markdown]
# ...and at $T = 1$ forcing makes every neuron fire, whatever its input; without it only the inputs with
# $X/\tau \ge V_{th}$ do. This is why `force_last` is off by default:

# %%
one_step = x[:1]
print("T=1, force_last=False:", amos_lif_sequential(one_step)[0])
print("T=1, force_last=True: ", amos_lif_sequential(one_step, force_last=True)[0])
test_eq(amos_lif_sequential(one_step, force_last=True)[0], torch.ones(1, 4, dtype=torch.float64))

# %% [markdown]
# ## Membrane traces
#
# Random inputs for five neurons over 32 steps: each trace crosses the threshold at most once *with a spike*
# (the dot). The neuron does not reset, so after it the membrane may stay at or above the threshold, or fall and
# rise again: every such step has $\tilde S[t] = \Theta(H[t] - V_{th}) = 1$ without a spike. These are the *fake
# spikes* (the crosses) that chapters 3 and 4 are about.

# %%
#| fig-cap: Membrane traces of five AMOS LIF neurons (τ = 4): each fires at most once (dot), at its first crossing of V_th; the crosses after it are fake spikes, threshold crossings without a spike, because nothing resets the membrane.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
torch.manual_seed(0)
T = 32
x = 1.2 + 0.8 * torch.randn(T, 5, dtype=torch.float64)
spikes, membrane = amos_lif_sequential(x, tau=4.0)
fig, ax = plt.subplots(figsize=(8, 3.5))
t = torch.arange(T)
for i in range(5):
    line, = ax.plot(t, membrane[:, i], lw=1.2, label=f'neuron {i}')
    fake = (membrane[:, i] >= 1.0) & (spikes[:, i] == 0)
    ax.plot(t[fake], membrane[fake, i], 'x', color=line.get_color(), ms=5)
    fired = spikes[:, i] == 1
    ax.plot(t[fired], membrane[fired, i], 'o', color=line.get_color(), ms=8)
ax.axhline(1.0, color='k', ls='--', lw=1, label='$V_{th}$')
ax.set_xlabel('time step t'); ax.set_ylabel('H[t]'); ax.set_title('AMOS LIF, τ = 4: first spike (●), fake spikes (×)')
ax.legend(ncol=3, fontsize=8); plt.show()

# %% [markdown]
# The same run as numbers (first-spike time per neuron, `-1` for never):

# %%
first = torch.where(spikes.sum(0) > 0, spikes.argmax(0), torch.tensor(-1))
print("first spike t_f:", first.tolist())
print("fake spikes after t_f:", ((membrane >= 1.0).sum(0) - spikes.sum(0)).long().tolist())
test_eq(spikes.sum(0) <= 1, torch.ones(5, dtype=torch.bool))

# %% [markdown]
# ## Gradients by BPTT
#
# Because every step is a differentiable PyTorch operation, `backward()` through the loop gives the gradients
# that the parallel backward (chapter 4) must reproduce, with respect to the input and to a learnable τ:

# %%
torch.manual_seed(0)
x = (1.2 + 0.8 * torch.randn(8, 3, dtype=torch.float64)).requires_grad_()
tau = torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64, requires_grad=True)
spikes, membrane = amos_lif_sequential(x, tau)
weights = torch.arange(8, dtype=torch.float64)[:, None]        # L = Σ t·S[t]: minimising it penalises late spikes
(spikes * weights).sum().backward()
print("dL/dX\n", x.grad)
print("dL/dtau", tau.grad)
test_eq(torch.isfinite(x.grad).all(), True)


# %% [markdown]
# ## Checking an implementation against the loop
#
# Every later chapter computes the same neuron faster and must match this loop. Two helpers do the comparing.
# A stored output is a test (nbval compares it on every run), so a printed difference must not change with the last
# bits of rounding: `bucket` prints it rounded *up* to a power of ten, `1e-15` rather than `3.1e-16`.

# %%
#| export
def bucket(d: float) -> str:
    "A non-negative difference rounded up to a power of ten ('1e-15'), '0' for none: stable in stored outputs."
    if d == 0: return "0"
    if not math.isfinite(d): return str(d)
    return f"1e{math.ceil(math.log10(d)):+03d}"


def diff_bucket(a: Tensor, b: Tensor, relative: bool = True) -> str:
    "max |a − b| (over 1 + |b| if `relative`), rounded up to a power of ten: a stable string for stored outputs."
    a, b = a.detach().double(), b.detach().double()
    both_nan = torch.isnan(a) & torch.isnan(b)
    d = (a - b).abs() / ((1 + b.abs()) if relative else 1)
    return bucket(torch.where(both_nan, torch.zeros_like(d), d).max().item())


# %% [markdown]
# We expect `1e-15` for a difference of $3\cdot10^{-16}$, `1e+00` for exactly 1, and `0` for none; NaN in the same
# places of both tensors counts as equal:

# %%
test_eq([bucket(3e-16), bucket(1.0), bucket(0.0), bucket(float('inf'))], ['1e-15', '1e+00', '0', 'inf'])
a = torch.tensor([1.0, float('nan'), 3.0], dtype=torch.float64)
test_eq(diff_bucket(a, a), '0')
test_eq(diff_bucket(a + 3e-13, a, relative=False), '1e-12')
print(diff_bucket(a + 3e-13, a), diff_bucket(a + 3e-13, a, relative=False))


# %% [markdown]
# `compare_with_reference` runs an implementation and the loop on one random problem: float64 by default, a
# learnable τ (one, or one per neuron), random upstream gradients on both outputs, a threshold near the median
# membrane so that first spikes, later crossings and silent neurons all occur; optionally a learnable threshold and
# a huge input per neuron. It takes the implementation as a function, so it needs nothing from later chapters, and
# returns whether the spikes agree and the largest difference of every output and gradient.

# %%
#| export
def compare_with_reference(neuron,  # the implementation: (x, tau, v_threshold, surrogate, force_last) -> (spikes, membrane)
                           T: int, tau: float, force_last: bool, trailing=(64,), tau_per_neuron: bool = False,
                           surrogate=Sigmoid(), seed: int = 0, dtype=torch.float64, device: str = 'cpu',
                           learnable_threshold: bool = False,  # V_th a 0-d tensor that requires grad
                           huge: float = 0.0,  # > 0: one input per neuron becomes ±huge, at a random step
                          ) -> dict:
    "Run `neuron` and `amos_lif_sequential` on one random problem; whether the spikes agree, and max |difference| of every output and gradient."
    generator = torch.Generator().manual_seed(seed)                         # drawn on the CPU: the same problem on any device
    randn = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype).to(device)
    x = 1.0 + 1.5 * randn(T, *trailing)
    tau_value = torch.full(trailing[-1:] if tau_per_neuron else (), tau, dtype=dtype)
    if tau_per_neuron: tau_value = tau_value * (1 + torch.rand(trailing[-1], generator=generator, dtype=dtype))
    tau_value = tau_value.to(device)
    never = torch.finfo(dtype).max                                          # a threshold no membrane reaches: H alone
    v_threshold = round(amos_lif_sequential(x, tau_value, never)[1].median().item(), 3) + 1e-4   # off any tie with a membrane value
    g_spikes, g_membrane = randn(T, *trailing), randn(T, *trailing)
    if huge > 0:                                                            # after the threshold: it stays ordinary
        when = torch.randint(T, tuple(trailing), generator=generator).to(device).unsqueeze(0)
        sign = torch.randint(2, tuple(trailing), generator=generator, dtype=dtype).to(device).unsqueeze(0) * 2 - 1
        x = x.scatter(0, when, (sign * huge).expand_as(when))
    results = []
    for implementation in (neuron, amos_lif_sequential):
        x_ = x.clone().requires_grad_()
        tau_ = tau_value.clone().requires_grad_()
        threshold = torch.tensor(v_threshold, dtype=dtype, device=device, requires_grad=True) if learnable_threshold else v_threshold
        spikes, membrane = implementation(x_, tau_, threshold, surrogate, force_last)
        ((spikes * g_spikes).sum() + (membrane * g_membrane).sum()).backward()
        results.append((spikes.detach(), membrane.detach(), x_.grad, tau_.grad,
                        threshold.grad if learnable_threshold and threshold.grad is not None else torch.zeros(())))   # None: V_th unused
    (s, h, gx, gt, gv), (s_ref, h_ref, gx_ref, gt_ref, gv_ref) = results
    maxdiff = lambda a, b: (a - b).abs().max().item()
    finite_alike = lambda a, b: torch.equal(torch.isfinite(a), torch.isfinite(b))
    return dict(spikes_equal=torch.equal(s, s_ref), fired=s.sum().item() / s[0].numel(),
                membrane=maxdiff(h, h_ref), grad_x=maxdiff(gx, gx_ref), grad_tau=maxdiff(gt, gt_ref),
                grad_threshold=maxdiff(gv, gv_ref), grad_x_scale=gx_ref.abs().max().item(),
                finite_alike=all(finite_alike(a, b) for a, b in zip(results[0], results[1])))


# %% [markdown]
# The loop against itself is exact; a neuron with a deliberate error (its membrane one part in a million too large)
# must be caught. We expect zeros for the first and a membrane difference near $10^{-6}$ for the second:

# %%
r = compare_with_reference(amos_lif_sequential, 16, 2.0, False)
print({k: (bucket(v) if isinstance(v, float) and k != 'fired' else v) for k, v in r.items()})
test_eq((r['spikes_equal'], max(r['membrane'], r['grad_x'], r['grad_tau'])), (True, 0.0))
def slightly_wrong(x, tau, v_threshold, surrogate, force_last):
    spikes, membrane = amos_lif_sequential(x, tau, v_threshold, surrogate, force_last)
    return spikes, membrane * (1 + 1e-6)
wrong = compare_with_reference(slightly_wrong, 16, 2.0, False)
print("a membrane 1e-6 too large:", bucket(wrong['membrane']))
test_eq(wrong['membrane'] > 1e-8, True)

# %% [markdown]
# ## Summary
# `amos_lif_sequential` is Eqs. 1–4 verbatim, with `force_last` (Eq. 7) as an option, off by default. It is one
# pass over time, T sequential steps each waiting for the last, and autograd through it is BPTT. The next chapters make the
# forward and the backward parallel over $t$ and check them against this loop. `bucket`, `diff_bucket` and
# `compare_with_reference` are how they are checked.

# %% [markdown]
# ## Exercises
#
# 1. Predict by hand at which step a neuron with constant input $x = 1.5$, τ = 2 and $V_{th} = 1$ first crosses the threshold (write $H[t]$ for t = 0, 1, 2, …), then check with `amos_lif_sequential`. Why does $x = 0.6$ never cross?
# 2. Find an input for which `force_last=True` changes the output and one for which it does not. Which neurons does Eq. 7 touch?
# 3. For one neuron with a rising input over T = 20 steps, count the fake spikes $\tilde S$ and the real spikes. Why can the first number exceed one while the second cannot?

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
