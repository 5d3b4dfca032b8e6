# %% [markdown]
# # Surrogate gradients
#
# > The Heaviside step Θ and the smooth derivatives that stand in for its gradient.

# %% [markdown]
# After this chapter you can write a spike as an exact step forward and a smooth bump backward: the surrogate gradient every network in this book trains with.

# %%
#| default_exp surrogate

# %% [markdown]
# A spiking neuron fires when its membrane potential reaches the threshold: $S = \Theta(H - V_{th})$ with the
# Heaviside step $\Theta(x) = 1$ for $x \ge 0$ and $0$ for $x < 0$ (the paper's definition, below Eq. 3; note
# $\Theta(0) = 1$). Its true derivative is zero almost everywhere, so training replaces $\Theta'(x)$ in the
# backward pass by a smooth bump, the *surrogate gradient* (Neftci, Mostafa & Zenke 2019), while the forward
# pass keeps the exact step.
#
# Both neuron implementations of this book need the surrogate in two forms:
#
# * the sequential reference (chapter 1) calls it as a function, `surrogate(h - v_threshold)`, and lets
#   autograd use its custom backward;
# * the parallel backward (chapter 4) needs $\Theta'(x)$ itself, as a tensor, to build Eq. 17.
#
# A `Surrogate` therefore offers both: `__call__` and `derivative`.

# %%
#| export
import math
import torch
from torch import Tensor

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc


# %%
#| export
class _HeavisideWithSurrogate(torch.autograd.Function):
    "Forward: the exact step Θ(x) (Θ(0) = 1). Backward: `surrogate.derivative(x)`."
    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        x, = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x), None


class Surrogate:
    "A Heaviside step whose backward pass uses `derivative`; subclasses define `derivative`."
    def derivative(self, x: Tensor) -> Tensor: raise NotImplementedError
    def __call__(self, x: Tensor) -> Tensor: return _HeavisideWithSurrogate.apply(x, self)

    @staticmethod
    def steepness(alpha) -> float:
        "α as a float, or a ValueError/TypeError: a NaN, infinite, zero or negative α gives NaN or sign-flipped gradients."
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
        if not (math.isfinite(alpha) and alpha > 0): raise ValueError(f"alpha must be finite and > 0, got {alpha}")
        return float(alpha)


# %%
#| export
class Sigmoid(Surrogate):
    "Θ'(x) ≈ α·σ(αx)·(1 − σ(αx)), the derivative of σ(αx); SpikingJelly's default (α = 4)."
    def __init__(self, alpha: float = 4.0  # steepness: larger α is closer to the true step
                ):
        self.alpha = self.steepness(alpha)
    def derivative(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)
    def __repr__(self): return f"Sigmoid(alpha={self.alpha})"


# %%
show_doc(Sigmoid)

# %% [markdown]
# The forward pass is the exact step, with $\Theta(0) = 1$:

# %%
x = torch.tensor([-1.0, -1e-7, 0.0, 1e-7, 1.0], dtype=torch.float64, requires_grad=True)
spikes = Sigmoid()(x)
print(spikes.detach())
test_eq(spikes.detach(), torch.tensor([0., 0., 1., 1., 1.], dtype=torch.float64))

# %% [markdown]
# The backward pass must be the derivative of the smooth sigmoid $\sigma(\alpha x)$. We expect, at $x = 0$,
# $\alpha \cdot \tfrac12 \cdot \tfrac12 = 1$ for $\alpha = 4$. Check against autograd through `torch.sigmoid`:

# %%
spikes.backward(torch.ones_like(spikes))
x_ = x.detach().clone().requires_grad_()
torch.sigmoid(4.0 * x_).sum().backward()
print(x.grad)
test_close(x.grad, x_.grad, eps=1e-12)
test_close(x.grad[2], 1.0, eps=1e-12)


# %%
#| export
class ATan(Surrogate):
    "Θ'(x) ≈ (α/2) / (1 + (π/2·α·x)²), the derivative of atan(π/2·α·x)/π + 1/2; SpikingJelly's ATan (α = 2)."
    def __init__(self, alpha: float = 2.0  # steepness: larger α is closer to the true step
                ):
        self.alpha = self.steepness(alpha)
    def derivative(self, x: Tensor) -> Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)
    def __repr__(self): return f"ATan(alpha={self.alpha})"


# %%
for bad in [float('nan'), float('inf'), -4.0, 0]:
    for cls in (Sigmoid, ATan): test_fail(cls, args=(bad,), exc=ValueError, contains='alpha')
test_fail(Sigmoid, args=('4',), exc=TypeError, contains='alpha')

# %%
show_doc(ATan)

# %%
x = torch.linspace(-2, 2, 9, dtype=torch.float64, requires_grad=True)
ATan()(x).sum().backward()
x_ = x.detach().clone().requires_grad_()
(torch.atan(math.pi / 2 * 2.0 * x_) / math.pi + 0.5).sum().backward()
print(x.grad)
test_close(x.grad, x_.grad, eps=1e-12)


# %% [markdown]
# ## Any callable as a surrogate
#
# Users bring their own surrogates (SpikingJelly's `surrogate.*` objects, a lambda with a straight-through
# trick, …). The only requirement is the one every spiking framework makes: the callable's *forward* is the
# step $\Theta$, and it acts elementwise. For the parallel backward we still need $\Theta'(x)$ as a tensor:
# `surrogate_derivative` uses `derivative` when there is one, and otherwise differentiates the callable with
# autograd (one extra elementwise pass).

# %%
#| export
def surrogate_derivative(surrogate,  # a `Surrogate`, or any elementwise callable whose forward is Θ
                         x: Tensor,  # where to evaluate Θ'
                        ) -> Tensor:
    "Θ'(x) as the surrogate defines it."
    if isinstance(surrogate, Surrogate): return surrogate.derivative(x)
    with torch.enable_grad():
        leaf = x.detach().requires_grad_()
        out = surrogate(leaf)
        grad, = torch.autograd.grad(out, leaf, torch.ones_like(out), allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


# %%
show_doc(surrogate_derivative)

# %% [markdown]
# A straight-through "box" surrogate written as a plain lambda: forward $\Theta(x)$, backward
# $\mathbb{1}[|x| < \tfrac12]$. We expect the derivative `[0, 1, 1, 1, 0]` at `[-1, -0.25, 0, 0.25, 1]`:

# %%
box = lambda x: (x >= 0).to(x.dtype) + (x.clamp(-0.5, 0.5) - x.clamp(-0.5, 0.5).detach())
x = torch.tensor([-1.0, -0.25, 0.0, 0.25, 1.0])
print(surrogate_derivative(box, x))
test_eq(surrogate_derivative(box, x), torch.tensor([0., 1., 1., 1., 0.]))
test_eq(surrogate_derivative(Sigmoid(), x), Sigmoid().derivative(x))

# %% [markdown]
# The derivatives of the two built-in surrogates, with the step they stand in for:

# %%
#| fig-cap: The step Θ (forward) and the derivatives of the two built-in surrogates (backward): smooth bumps centred on the threshold stand in for Θ's derivative, which is zero everywhere except at 0.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
x = torch.linspace(-2, 2, 401)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(x, (x >= 0).float(), 'k', lw=1, label='Θ(x) (forward)')
for s in (Sigmoid(), ATan()): ax.plot(x, s.derivative(x), label=f"{s!r}.derivative")
ax.set_xlabel('x = H − V_th'); ax.legend(); plt.show()

# %% [markdown]
# ## Summary
# `Sigmoid` (default, α = 4) and `ATan` are exact steps forward and smooth bumps backward; `surrogate_derivative`
# gives $\Theta'$ of any surrogate, which the parallel backward of chapter 4 needs.

# %% [markdown]
# ## Exercises
#
# 1. Write a `FastSigmoid` surrogate, $\Theta'(x) \approx 1/(1+\alpha|x|)^2$, with `__call__` and `derivative` as `Sigmoid` has them, and check its `derivative` against autograd through the smooth function it stands for, as this chapter checks `Sigmoid`.
# 2. Plot `Sigmoid().derivative` for α = 1, 4 and 16. Before you plot: how does the gradient that reaches an input far below the threshold change as α grows?
# 3. Why must the forward pass stay an exact step whatever the surrogate? Say what chapter 1's loop would compute if `__call__` returned the smooth function instead.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
