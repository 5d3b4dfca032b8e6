# %% [markdown]
# # Appendix: test helpers
#
# > The helpers the chapters' checks use to compare two implementations and print the result in a form that stays the same from run to run.

# %% [markdown]
# After this appendix you can check a new implementation of the neuron against the reference in one call.

# %%
#| default_exp testing

# %%
#| export
import math
import torch
from torch import Tensor
from pttfs.surrogate import Sigmoid
from pttfs.dynamics import amos_lif_sequential
from pttfs.charging import charge
from pttfs.backends import amos_lif_parallel

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc


# %% [markdown]
# Every exactness check in this book compares a fast implementation with a reference and prints how far apart
# they are. A stored output is a test (nbval compares it on every run), so the printed difference must not change
# with the last bits of rounding: we print it rounded *up* to a power of ten, `1e-15` rather than `3.1e-16`.
#
# ## A difference as a power of ten

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
# ## The parallel neuron against BPTT
#
# `compare_with_reference` runs `amos_lif_parallel` (any backend) and the loop of chapter 1 on one random problem,
# as chapter 4's check describes: float64 by default, a learnable τ (one, or one per neuron), random upstream
# gradients on both outputs, a threshold near the median membrane so that first spikes, second fake spikes and
# silent neurons all occur; optionally a learnable threshold and a huge input per neuron. It returns whether the
# spikes are identical and the largest difference of every output and gradient.

# %%
#| export
def compare_with_reference(T: int, tau: float, force_last: bool, trailing=(64,), tau_per_neuron: bool = False,
                           surrogate=Sigmoid(), seed: int = 0, dtype=torch.float64, backend: str = 'auto',
                           device: str = 'cpu',
                           learnable_threshold: bool = False,  # V_th a 0-d tensor that requires grad
                           huge: float = 0.0,  # > 0: one input per neuron becomes ±huge, at a random step
                          ) -> dict:
    "Run `amos_lif_parallel` and `amos_lif_sequential` on one random problem; max |difference| of every output and gradient."
    generator = torch.Generator().manual_seed(seed)                         # drawn on the CPU: the same problem on any device
    randn = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype).to(device)
    x = 1.0 + 1.5 * randn(T, *trailing)
    tau_value = torch.full(trailing[-1:] if tau_per_neuron else (), tau, dtype=dtype)
    if tau_per_neuron: tau_value = tau_value * (1 + torch.rand(trailing[-1], generator=generator, dtype=dtype))
    tau_value = tau_value.to(device)
    v_threshold = round(charge(x, tau_value).median().item(), 3) + 1e-4     # off any tie with a membrane value
    g_spikes, g_membrane = randn(T, *trailing), randn(T, *trailing)
    if huge > 0:                                                            # after the threshold: it stays ordinary
        when = torch.randint(T, tuple(trailing), generator=generator).to(device).unsqueeze(0)
        sign = torch.randint(2, tuple(trailing), generator=generator, dtype=dtype).to(device).unsqueeze(0) * 2 - 1
        x = x.scatter(0, when, (sign * huge).expand_as(when))
    results = []
    parallel = lambda *args: amos_lif_parallel(*args, backend=backend)
    for neuron in (parallel, amos_lif_sequential):
        x_ = x.clone().requires_grad_()
        tau_ = tau_value.clone().requires_grad_()
        threshold = torch.tensor(v_threshold, dtype=dtype, device=device, requires_grad=True) if learnable_threshold else v_threshold
        spikes, membrane = neuron(x_, tau_, threshold, surrogate, force_last)
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


# %%
r = compare_with_reference(16, 2.0, False)
print({k: (bucket(v) if isinstance(v, float) and k != 'fired' else v) for k, v in r.items()})
test_eq(r['spikes_equal'], True)
test_eq(max(r['membrane'], r['grad_x'], r['grad_tau']) < 1e-12, True)

# %% [markdown]
# ## Summary
# `bucket` and `diff_bucket` print differences as powers of ten; `compare_with_reference` is the exactness check of
# chapters 4, 7 and 8, one configuration at a time.

# %% [markdown]
# ## Exercises
#
# 1. Give `compare_with_reference` a backend with a deliberate bug (drop the $\mathbf A^-$ factor of Eq. 19) and read the table it prints: which columns catch it?
# 2. Why does `diff_bucket` print powers of ten rather than the differences themselves? Think of what a notebook test compares from one run to the next.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
