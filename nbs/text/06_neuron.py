# %% [markdown]
# # The neuron module `AMOSLIF`
#
# > A drop-in `nn.Module` with SpikingJelly's step modes, one step `[*]` per call (`'s'`, the default) or a whole sequence `[T, *]` (`'m'`): fixed or learnable τ (one, or one per channel), the parallel neuron by default and the sequential reference on request.

# %% [markdown]
# After this chapter you can put `AMOSLIF` into a network like any SpikingJelly neuron: multi-step or step by step, with a fixed or learnable τ and threshold.

# %%
#| default_exp neuron

# %%
#| export
import math
import torch
from fastcore.basics import patch
from torch import nn, Tensor
from pttfs.surrogate import Sigmoid
from pttfs.dynamics import amos_lif_sequential, check_neuron_args, tau_tensor
from pttfs.charging import charge
from pttfs.first_spike import fake_spikes, first_spike_index, spikes_from_index
from pttfs.parallel import spatial_gradient, reverse_leaky_scan, _gather_time
from pttfs.backends import amos_lif_parallel
from pttfs.backends import PARALLEL_BACKENDS

# %%
#| hide
from fastcore.test import test_eq, test_ne, test_close, test_fail
from nbdev.showdoc import show_doc
from pttfs.dynamics import diff_bucket
from pttfs.surrogate import ATan
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown]
# ## Design
#
# * **Layout.** As in SpikingJelly, the step mode says what a call holds. With `step_mode='m'` it is the whole
#   sequence, time first: `[T, B, N]` after a linear layer, `[T, B, C, H, W]` after a convolution. This is the
#   layout the parallel neuron is for, and every network in this book uses it. With `step_mode='s'`,
#   SpikingJelly's default and ours, a call holds one step `[B, ...]` and the neuron carries its state until
#   `reset()` (the section on carried state below). The module returns spikes of the input's shape, and the
#   membrane too when asked: the temporal selector decoder of the next chapters reads membrane potentials.
# * **Learnable τ.** A learnable τ must stay above 1 during training, whatever the optimiser does. We
#   parametrise it like SpikingJelly's `ParametricLIFNode`: a free parameter $w$ with $1/\tau = \sigma(w)$, so
#   $\tau = 1/\sigma(w) > 1$ for every finite $w$, and $\tau = 2$ is $w = 0$. In floating point, $\sigma(w)$ rounds to exactly 1 once $e^{-w}$ is below
#   the precision $\varepsilon$ ($w \approx 17$ in float32), so $w$ is clamped to $|w| \le \ln(1/\varepsilon)$, where
#   $1 < \tau < \infty$ still holds after rounding. With `num_channels=C`, there is one
#   τ per channel, on the dimension `channel_dim` of the input (2 for both layouts above: `[T, B, C, ...]`).
# * **Learnable threshold.** `learnable_threshold=True` makes $V_{th}$ a parameter too, with the exact gradient
#   of chapter 4 (on the `'torch'` and `'sequential'` backends).
# * **Backends.** `'auto'` (default) is `amos_lif_parallel` with its automatic choice (the fused kernel of
#   chapter 7 for CPU tensors when it builds, the textbook `'torch'` backend otherwise); any name in
#   `PARALLEL_BACKENDS` forces that one; `'sequential'` is the loop of chapter 1, kept for checks and as the
#   speed baseline.
# * **Inference.** Without autograd and without `return_membrane`, the membrane is not needed, and the backends
#   may skip writing it.

# %% [markdown]
# * **SpikingJelly's names.** SpikingJelly's zoo builds neurons as `spiking_neuron(**kwargs)`, so `AMOSLIF` takes
#   its argument names where they mean something for a one-spike neuron: `surrogate_function` (our `surrogate`),
#   `store_v_seq`, `backend`, `step_mode`, with SpikingJelly's default `step_mode='s'`. Reset arguments mean nothing
#   for a neuron that never resets, and are refused with the reason:

# %%
#| export
_NO_RESET = ("AMOSLIF fires at most once and is silent afterwards, so it never resets: {name}= has no meaning here; "
             "leave it out")
SPIKINGJELLY_REFUSED = {'v_reset': _NO_RESET, 'detach_reset': _NO_RESET,
                        'decay_input': "AMOSLIF always decays its input, H = (1 - 1/τ)·H + X/τ (Eq. 4); leave decay_input out"}

def check_spikingjelly_args(unsupported: dict):
    "Refuse keyword arguments `AMOSLIF` does not take, saying why where SpikingJelly's neurons take them."
    for name in unsupported:
        if name in SPIKINGJELLY_REFUSED: raise TypeError(SPIKINGJELLY_REFUSED[name].format(name=name))
        raise TypeError(f"AMOSLIF got an unexpected keyword argument {name!r}")


# %%
test_fail(lambda: check_spikingjelly_args({'v_reset': None}), exc=TypeError, contains='never resets')
test_fail(lambda: check_spikingjelly_args({'tua': 2.0}), exc=TypeError, contains="'tua'")
check_spikingjelly_args({})


# %%
#| export
def _check_module_args(num_channels, channel_dim, backend: str, step_mode: str, learnable_threshold: bool, **flags) -> str:
    "The backend to use ('parallel' is 'auto'); a ValueError or TypeError that names the first bad argument."
    if num_channels is not None and (isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1):
        raise ValueError(f"num_channels must be a positive int or None, got {num_channels!r}")
    if not isinstance(channel_dim, int) or channel_dim < 1:
        raise ValueError(f"channel_dim must be an int >= 1 (dim 0 is time), got {channel_dim!r}")
    if backend == 'parallel': backend = 'auto'
    if backend not in ('auto', 'sequential', *PARALLEL_BACKENDS):
        raise ValueError(f"backend must be 'auto', 'sequential' or one of {list(PARALLEL_BACKENDS)}, got {backend!r}")
    if step_mode not in ('s', 'm'): raise ValueError(f"step_mode must be 's' or 'm', got {step_mode!r}")
    for name, flag in dict(flags, learnable_threshold=learnable_threshold).items():
        if not isinstance(flag, bool): raise TypeError(f"{name} must be a bool, got {flag!r}")
    if learnable_threshold and backend not in ('auto', 'torch', 'sequential'):
        raise ValueError(f"learnable_threshold=True runs on backend 'auto', 'torch' or 'sequential', not {backend!r}")
    return backend


def _initial_tau(tau, v_threshold, surrogate, force_last: bool, num_channels) -> tuple:
    "(initial τ as a tensor, num_channels, V_th): one τ, or one per channel from a 1-d tensor; checked as chapter 1 checks."
    if isinstance(tau, Tensor) and tau.numel() == 1: tau = tau.item()
    if isinstance(v_threshold, Tensor) and v_threshold.numel() == 1: v_threshold = v_threshold.item()
    if isinstance(tau, Tensor):                                  # one initial τ per channel
        if tau.dim() != 1 or num_channels not in (None, tau.numel()):
            raise ValueError(f"tau must be a number, or a 1-d tensor with one initial value per channel "
                             f"(num_channels={num_channels}); got a tensor of shape {tuple(tau.shape)}")
        num_channels = tau.numel()
        check_neuron_args(torch.zeros(1, num_channels), tau, v_threshold, surrogate, force_last)
        initial = tau.detach().to(torch.get_default_dtype()).clone()
    else:
        check_neuron_args(torch.zeros(1), tau, v_threshold, surrogate, force_last)
        initial = torch.full(() if num_channels is None else (num_channels,), float(tau), dtype=torch.float64)
        initial = initial.to(torch.get_default_dtype())                 # rounded (or overflowed) as the module stores it
    if not (torch.isfinite(initial).all() and (initial > 1).all()):      # 1e39 overflows float32, 1.00000001 rounds to 1
        raise ValueError(f"tau={tau} is not a finite number > 1 once stored in {initial.dtype} (the module's dtype): "
                         f"in float32, use 1 + 1e-6 < tau < 3e38")
    return initial, num_channels, v_threshold


# %%
#| export
class AMOSLIF(nn.Module):
    "At-Most-One-Spike LIF neurons, SpikingJelly-style: one step [*] per call by default, or [T, *] with step_mode='m'."
    def __init__(self,
                 tau: float = 2.0,  # initial membrane time constant τ_m > 1: a number, or a 1-d tensor of one per channel
                 v_threshold: float = 1.0,  # (initial) firing threshold V_th
                 surrogate=Sigmoid(),  # Θ with a surrogate gradient (`pttfs.surrogate`), or any such callable
                 force_last: bool = False,  # Eq. 7: force a spike at T-1 in neurons that have not fired
                 learnable_tau: bool = False,  # learn τ, parametrised as 1/τ = sigmoid(w) so that τ > 1 always
                 num_channels: int = None,  # one τ per channel (None: one τ for all neurons)
                 channel_dim: int = 2,  # the channel dimension of the input: 2 for [T, B, C] and [T, B, C, H, W]
                 return_membrane: bool = False,  # forward returns (spikes, membrane) instead of spikes
                 backend: str = 'auto',  # 'auto', a name in PARALLEL_BACKENDS, or 'sequential' (the BPTT reference loop)
                 learnable_threshold: bool = False,  # learn V_th too (one for all neurons; backend 'auto', 'torch' or 'sequential')
                 step_mode: str = 's',  # SpikingJelly's default 's': one step [*] per call, state kept until reset(); 'm': [T, *]
                 stateful: bool = False,  # in 'm': each call continues from the state the last one left (until reset())
                 surrogate_function=None,  # SpikingJelly's name for `surrogate`
                 store_v_seq: bool = False,  # as SpikingJelly: keep the last call's membrane [T, *] in `self.v_seq` ('m')
                 **unsupported,  # SpikingJelly arguments with no meaning for a neuron that never resets: refused
                ):
        super().__init__()
        check_spikingjelly_args(unsupported)
        if surrogate_function is not None:
            if not isinstance(surrogate, Sigmoid) or surrogate.alpha != Sigmoid().alpha:
                raise ValueError("pass the surrogate once: surrogate= or SpikingJelly's surrogate_function=, not both")
            surrogate = surrogate_function
        backend = _check_module_args(num_channels, channel_dim, backend, step_mode, learnable_threshold,
                                     learnable_tau=learnable_tau, return_membrane=return_membrane,
                                     stateful=stateful, store_v_seq=store_v_seq)
        initial, num_channels, v_threshold = _initial_tau(tau, v_threshold, surrogate, force_last, num_channels)
        self.surrogate, self.force_last = surrogate, force_last
        self.num_channels, self.channel_dim = num_channels, channel_dim
        self.return_membrane, self.backend, self.learnable_tau = return_membrane, backend, learnable_tau
        self.learnable_threshold = learnable_threshold
        self.step_mode, self.stateful = step_mode, stateful        # SpikingJelly's set_step_mode writes step_mode
        self.store_v_seq, self.v_seq = store_v_seq, None
        self.sequence_length = None    # carried state and force_last: the T whose last step is forced (predict sets it)
        self.reset()
        if learnable_threshold: self.v_threshold = nn.Parameter(torch.tensor(float(v_threshold)))
        else: self.v_threshold = float(v_threshold)
        if learnable_tau: self.tau_logit = nn.Parameter(-torch.log(initial - 1))    # σ(w) = 1/τ  ⇔  w = −ln(τ − 1)
        else: self.register_buffer('tau_fixed', initial)

    @property
    def tau(self) -> Tensor:
        "The current τ: a 0-d tensor, or one value per channel."
        if not self.learnable_tau: return self.tau_fixed
        # Beyond |w| = ln(1/ε), σ(w) rounds to 1 (τ = 1, no leak: not an AMOS LIF neuron) or 1/σ(w) overflows; clamping
        # there keeps 1 < τ < ∞ in the parameter's own precision, whatever the optimiser does to w.
        bound = -math.log(torch.finfo(self.tau_logit.dtype).eps)
        return 1 / torch.sigmoid(self.tau_logit.clamp(-bound, bound))



# %% [markdown]
# The constructor only checks and stores; the module's work is in the methods below, attached to the class with
# fastcore's `@patch` (nbdev's way to grow a class over several cells). `_tau_for` shapes τ to broadcast over the input (one number, or one value per channel along
# `channel_dim`), and `reset` forgets the state a step-by-step run carries. A fixed τ goes to the backends as a
# Python number on the CPU (they check and use a number more cheaply than a tensor), read from the buffer on every
# call: a remembered number would go stale whenever a user writes the buffer in a way no version counter sees.

# %%
#| export
@patch
def _tau_for(self: AMOSLIF, x: Tensor):
    "τ shaped to broadcast over one time step of x (a plain number when it is one fixed value on the CPU: cheaper to check)."
    if self.num_channels is None:
        if self.learnable_tau: return self.tau
        # Read afresh on every call: a cached number would miss writes through `.data` or a NumPy view. On a GPU the
        # 0-d tensor itself, since `.item()` would wait for the device.
        return self.tau_fixed.item() if self.tau_fixed.device.type == 'cpu' else self.tau_fixed
    if x.dim() <= self.channel_dim or x.shape[self.channel_dim] != self.num_channels:
        raise ValueError(f"AMOSLIF(num_channels={self.num_channels}) expects input of shape [T, B, C, ...] with "
                         f"C = {self.num_channels} at dim {self.channel_dim}, got {tuple(x.shape)}")
    return self.tau.view(-1, *([1] * (x.dim() - self.channel_dim - 1)))

@patch
def reset(self: AMOSLIF):
    "Forget the carried state (membrane and fired mask): the next call starts a new sequence. SpikingJelly's reset_net calls it."
    self.membrane_state = self.fired_state = None
    self.steps_seen = 0



# %% [markdown]
# `forward` dispatches on the step mode: one step (`'s'`) or a stateful chunk continues from the carried state
# (the section on carried state below derives it), and a whole sequence (`'m'`) calls the front door of chapter 5,
# or chapter 1's loop when `backend='sequential'`:

# %%
#| export
@patch
def forward(self: AMOSLIF, x: Tensor,  # input current: [T, *] in step mode 'm', one step [*] in 's'
            return_membrane: bool = None,  # override the constructor's `return_membrane`
           ):
    if torch.jit.is_tracing() or torch.jit.is_scripting():     # the compiled kernels are opaque to TorchScript
        raise RuntimeError("AMOSLIF cannot be traced or scripted by torch.jit (the trace would not run its kernels); "
                           "use the module as it is, or torch.compile")
    want_membrane = self.return_membrane if return_membrane is None else return_membrane
    keep_v_seq = self.store_v_seq and self.step_mode == 'm'
    if self.step_mode == 's':                                   # one step: a chunk of length 1 that carries state
        spikes, membrane = self._continue(x.unsqueeze(0))
        spikes, membrane = spikes[0], membrane[0]
    elif self.step_mode != 'm': raise ValueError(f"step_mode must be 's' or 'm', got {self.step_mode!r}")
    elif self.stateful: spikes, membrane = self._continue(x)
    elif self.backend == 'sequential':
        spikes, membrane = amos_lif_sequential(x, self._tau_for(x), self.v_threshold, self.surrogate, self.force_last)
    else:
        spikes, membrane = amos_lif_parallel(x, self._tau_for(x), self.v_threshold, self.surrogate, self.force_last,
                                             backend=self.backend, return_membrane=want_membrane or keep_v_seq)
    if keep_v_seq: self.v_seq = membrane
    return (spikes, membrane) if want_membrane else spikes

@patch
def extra_repr(self: AMOSLIF) -> str:
    tau = f"{self.tau.item():.4g}" if self.tau.dim() == 0 else f"[{self.num_channels} values]"
    v_threshold = f"{self.v_threshold.item():.4g}, learnable_threshold=True" if self.learnable_threshold else self.v_threshold
    return (f"tau={tau}, v_threshold={v_threshold}, learnable_tau={self.learnable_tau}, force_last={self.force_last}, "
            f"surrogate={self.surrogate!r}, backend='{self.backend}', step_mode='{self.step_mode}'"
            + (", stateful=True" if self.stateful else ''))



# %% [markdown]
# Every way of writing τ takes effect at the next call. Expected: fewer neurons reach the threshold once τ goes
# from 2 to 8 (the membrane charges more slowly), and after each write the neuron matches a fresh one with that τ:

# %%
torch.manual_seed(0)
x = 1 + torch.randn(16, 32)
neuron, slow = AMOSLIF(tau=2.0, step_mode='m'), AMOSLIF(tau=8.0, step_mode='m')
before = neuron(x)
neuron.load_state_dict(slow.state_dict())                   # copies 8 into the same buffer, in place
after = neuron(x)
print(f"neurons that fired in {len(x)} steps: tau=2 {before.sum():.0f} of 32, after loading tau=8 {after.sum():.0f} of 32")
test_ne(before, after); test_eq(after, slow(x))
writes = {'fill_ under no_grad': lambda t: torch.no_grad()(t.fill_)(2.0), '.data.fill_': lambda t: t.data.fill_(2.0),
          '.data = ...': lambda t: setattr(t, 'data', torch.tensor(2.0)), 'a NumPy view': lambda t: t.numpy().fill(2.0)}
for how, write in writes.items():
    neuron.load_state_dict(slow.state_dict()); test_eq(neuron(x), after)     # τ = 8, used once ...
    write(neuron.tau_fixed)                                                  # ... then written back to 2
    test_eq(neuron(x), before)
test_eq(neuron.double()(x.double()), before.double())      # .double() makes a new buffer
with torch.inference_mode(): test_eq(AMOSLIF(tau=8.0, step_mode='m')(x), after)

# %%
show_doc(AMOSLIF)

# %% [markdown]
# ## Checks
#
# The module is a thin wrapper, so the checks are that it wires everything right. First, on a linear layout it
# returns what the functions return (we expect exact equality, since it calls them):

# %%
torch.manual_seed(0)
x = 1 + torch.randn(8, 4, 16)
neuron = AMOSLIF(tau=3.0, v_threshold=0.8, return_membrane=True, step_mode='m')
print(neuron)
spikes, membrane = neuron(x)
reference = amos_lif_parallel(x, 3.0, 0.8)
test_eq(spikes, reference[0]); test_eq(membrane, reference[1])
test_eq(neuron(x, return_membrane=False), AMOSLIF(tau=3.0, v_threshold=0.8, backend='torch', step_mode='m')(x))
test_eq(neuron(x, return_membrane=False), spikes)
print("spikes per neuron <= 1:", bool((spikes.sum(0) <= 1).all()), "| fraction fired:", f"{spikes.sum(0).mean().item():.4f}")

# %% [markdown]
# The learnable τ starts where we asked ($w = -\ln(\tau - 1)$), and with `num_channels` there is one per channel:

# %%
neuron = AMOSLIF(tau=2.0, learnable_tau=True, step_mode='m')
print("scalar:", neuron.tau.item(), "| w =", neuron.tau_logit.item() + 0.0)
conv_neuron = AMOSLIF(tau=4.0, learnable_tau=True, num_channels=3, step_mode='m')
print("per channel:", conv_neuron.tau.detach())
test_close(neuron.tau.item(), 2.0, eps=1e-6)
test_close(conv_neuron.tau.detach(), torch.full((3,), 4.0), eps=1e-5)

# %% [markdown]
# On a convolutional layout `[T, B, C, H, W]` with a learnable τ per channel, the parallel module and the
# sequential one must agree in float64 in spikes, membrane and the gradients of the input and of $w$ (so the chain
# rule through $\tau = 1/\sigma(w)$ is right too); we expect differences at float64 rounding:

# %%
torch.manual_seed(0)
x = 1 + 1.5 * torch.randn(20, 2, 3, 5, 5, dtype=torch.float64)
g_spikes, g_membrane = torch.randn_like(x), torch.randn_like(x)
results = {}
for backend in ['auto', 'sequential']:
    neuron = AMOSLIF(tau=3.0, learnable_tau=True, num_channels=3, return_membrane=True, backend=backend, step_mode='m').double()
    with torch.no_grad(): neuron.tau_logit.copy_(torch.tensor([0.5, -1.0, -3.0]))   # τ ≈ 1.6, 3.7, 21
    x_ = x.clone().requires_grad_()
    spikes, membrane = neuron(x_)
    ((spikes * g_spikes).sum() + (membrane * g_membrane).sum()).backward()
    results[backend] = (spikes.detach(), membrane.detach(), x_.grad, neuron.tau_logit.grad)
(s, h, gx, gw), (s_ref, h_ref, gx_ref, gw_ref) = results['auto'], results['sequential']
print("spikes exact:", torch.equal(s, s_ref), "| membrane, dL/dX, dL/dw within 1e-12:",
      [bool(((a - b).abs() < 1e-12).all()) for a, b in [(h, h_ref), (gx, gx_ref), (gw, gw_ref)]])
test_eq(s, s_ref)
for a, b in [(h, h_ref), (gx, gx_ref), (gw, gw_ref)]: test_close(a, b, eps=1e-10)

# %% [markdown]
# Every backend gives the same spikes on the same input, and `'sequential'` is the loop itself:

# %%
torch.manual_seed(0)
x = 1 + torch.randn(30, 4, 3, 8, 8)
runnable = [b for b, (_, supports, _) in PARALLEL_BACKENDS.items() if not supports(x, 2.5, Sigmoid())]
outputs = {b: AMOSLIF(tau=2.5, backend=b, step_mode='m')(x) for b in ['auto', 'sequential', *runnable]}
print("all backends give the loop's spikes:", all(torch.equal(out, outputs['sequential']) for out in outputs.values()))
for out in outputs.values(): test_eq(out, outputs['sequential'])

# %% [markdown]
# Wrong shapes and arguments fail with the argument's name:

# %%
test_fail(lambda: AMOSLIF(num_channels=3, step_mode='m')(torch.randn(4, 2, 5)), exc=ValueError, contains='num_channels=3')
test_fail(lambda: AMOSLIF(tau=1.0, step_mode='m'), exc=ValueError, contains='tau')
test_fail(lambda: AMOSLIF(backend='cuda', step_mode='m'), exc=ValueError, contains='backend')
test_fail(lambda: AMOSLIF(num_channels=0, step_mode='m'), exc=ValueError, contains='num_channels')
test_fail(lambda: AMOSLIF(step_mode='m')(torch.ones(4, 3, dtype=torch.int32)), exc=TypeError, contains='floating-point')
test_fail(lambda: AMOSLIF(learnable_tau='yes', step_mode='m'), exc=TypeError, contains='learnable_tau')
test_fail(lambda: AMOSLIF(tau=torch.tensor([2.0, 3.0]), num_channels=3, step_mode='m'), exc=ValueError, contains='one initial value per channel')
test_fail(lambda: AMOSLIF(tau=torch.tensor([2.0, 0.5]), step_mode='m'), exc=ValueError, contains='tau')
test_fail(lambda: AMOSLIF(learnable_threshold=True, backend='sequential-please', step_mode='m'), exc=ValueError, contains='backend')
print("errors ok")

# %% [markdown]
# A tensor of initial time constants gives one τ per channel, and two extremes of the parametrisation stay
# proper time constants: $w = 17$, where $\sigma(w)$ would round to 1 in float32, and $w = -10^{30}$, where $1/\sigma(w)$
# would overflow. Expected: $1 < \tau < \infty$ in both, and the neuron runs.

# %%
neuron = AMOSLIF(tau=torch.tensor([2.0, 3.0]), learnable_tau=True, step_mode='m')
print("per-channel tau from a tensor:", neuron.tau.tolist(), "| num_channels =", neuron.num_channels)
x = 1 + torch.randn(6, 4, 2)
for w in [17.0, -1e30]:
    neuron.tau_logit.data.fill_(w)
    tau = neuron.tau
    print(f"w = {w:g}: tau - 1 = {(tau[0] - 1).item():.3g}, finite: {torch.isfinite(tau).all().item()}")
    test_eq(bool(((tau > 1) & torch.isfinite(tau)).all()), True)
    neuron(x).sum().backward()                                  # runs: no "tau must be > 1" mid-training

# %% [markdown]
# ## Learning τ
#
# A small demonstration that the τ gradient is useful: three channels with τ initialised at 2 learn to
# reproduce the membrane of neurons with τ = 1.5, 4 and 12 on the same input. We expect the loss to fall by orders
# of magnitude and τ to approach its targets (Figure 6.1):

# %%
#| fig-cap: Three channels learn τ from the membrane alone: each τ (left, solid) moves from 2 to its target (dashed) while the loss (right) falls by orders of magnitude; the slowest neuron, τ = 12, takes longest.
torch.manual_seed(0)
x = 1 + torch.randn(32, 16, 3)
target = amos_lif_parallel(x, torch.tensor([1.5, 4.0, 12.0]))[1]
neuron = AMOSLIF(tau=2.0, learnable_tau=True, num_channels=3, return_membrane=True, step_mode='m')
optimizer = torch.optim.Adam(neuron.parameters(), lr=0.1)
taus, losses = [], []
for step in range(301):
    _, membrane = neuron(x)
    loss = ((membrane - target) ** 2).mean()
    taus.append(neuron.tau.tolist()); losses.append(loss.item())
    optimizer.zero_grad(); loss.backward(); optimizer.step()
print(f"step   0: loss {losses[0]:.2f}, tau {[round(v, 2) for v in taus[0]]}")
print(f"step 300: loss < 1e-6: {losses[-1] < 1e-6}, tau {[round(v, 1) for v in neuron.tau.tolist()]}")
test_close(neuron.tau.detach(), torch.tensor([1.5, 4.0, 12.0]), eps=0.1)
import matplotlib.pyplot as plt
fig, (ax_tau, ax_loss) = plt.subplots(1, 2, figsize=(9, 3))
for channel, goal in enumerate([1.5, 4.0, 12.0]):
    line, = ax_tau.plot([t[channel] for t in taus], label=f"channel {channel}")
    ax_tau.axhline(goal, color=line.get_color(), ls='--', lw=1)
ax_tau.set(xlabel='Adam step', ylabel='τ', yscale='log'); ax_tau.legend(fontsize=8)
ax_loss.plot(losses); ax_loss.set(xlabel='Adam step', ylabel='membrane MSE', yscale='log')
fig.tight_layout(); plt.show()

# %% [markdown]
# ## Learning the threshold
#
# With `learnable_threshold=True`, $V_{th}$ is a parameter with chapter 4's exact gradient. The module must agree
# with the sequential loop in the threshold's gradient too (float64):

# %%
torch.manual_seed(0)
x = 1 + 1.5 * torch.randn(40, 3, 16, dtype=torch.float64)
grads = {}
for backend in ['auto', 'sequential']:
    learner = AMOSLIF(tau=2.0, v_threshold=1.2, learnable_threshold=True, backend=backend, step_mode='m').double()
    learner(x).mul(torch.arange(40.0, dtype=torch.float64).view(-1, 1, 1)).sum().backward()   # a loss that prefers early spikes
    grads[backend] = learner.v_threshold.grad
print(learner)
print("dL/dV_th:", f"{grads['auto'].item():.6f}", "| parallel vs loop:", diff_bucket(grads['auto'], grads['sequential']))
test_close(grads['auto'], grads['sequential'], eps=1e-10)

# %% [markdown]
# `state_dict` round-trips, and the module moves with `.to()` like any other:

# %%
clone = AMOSLIF(tau=2.0, learnable_tau=True, num_channels=3, step_mode='m')
clone.load_state_dict(neuron.state_dict())
test_eq(clone.tau.detach(), neuron.tau.detach())
print(sorted(neuron.state_dict()), sorted(AMOSLIF(step_mode='m').state_dict()))


# %% [markdown]
# ## Step by step: carrying the state
#
# A deployed network, and SpikingJelly's single-step mode, feed a neuron one step (or a few) at a time. All a neuron
# carries from one step to the next is its membrane $H[t-1]$ and whether it has fired, $F[t-1]$. Continuing a
# sequence from a carried $(h_0, F_0)$ is chapter 2's chunk formula: for the steps $j = 0, \dots, k-1$ of a new
# chunk,
#
# $$H[j] = \mathrm{charge}(X_{\text{chunk}})[j] + \alpha^{j+1} h_0 ,$$
#
# and the spike is the first crossing of the chunk, in neurons with $F_0 = 0$. The carried state afterwards is
# $H[k-1]$ and $F_k = F_0 + \sum_j S[j]$.
#
# The backward must carry the gradient through the state, as BPTT does. Three things cross a chunk boundary:
#
# * **$h_0$**, through $\alpha^{j+1}$: $\;d\mathcal L/dh_0 = \alpha\,\delta[0]$, with $\delta$ the chunk's $d\mathcal L/dH$ of Eqs. 17–19.
# * **τ**: chapter 4's formula, with $H[-1] = h_0$ instead of 0.
# * **$F_0$, the mask.** In the loop $S[t] = (1 - F[t-1])\Theta[t]$ and $F[t] = F[t-1] + S[t]$. Let $G[t]$ be the
#   gradient that reaches $F[t]$ from inside the chunk and $g[t]$ the upstream $d\mathcal L/dS[t]$. Then
#   $G[t-1] = G[t]\,(1 - \Theta[t]) - g[t]\,\Theta[t]$ with $G[k-1] = 0$: walking back, $G$ passes unchanged
#   until a step with $\Theta = 1$ (a fake spike), where it becomes $-g[t]$. So $d\mathcal L/dF_0 = -g[c]$, with
#   $c$ the first fake spike of the chunk (0 if it has none).
#
# $F_k = F_0 + \sum_j S[j]$ is computed with ordinary autograd operations, so what later chunks send back through
# it reaches every $S[j]$ and $F_0$, as in the loop. Summed over chunks, this is Eq. 15 again: a neuron that fired
# in an earlier chunk gets its $-g[t_{sf}]$ term through $F_0$ of the chunk that holds its second fake spike.
# `force_last` needs to know which step is the last, so a stream can apply it only when told the sequence's length
# (`sequence_length`, below); without it, a streamed `force_last` is refused.

# %%
#| export
class _ContinuedAMOSLIF(torch.autograd.Function):
    "Eqs. 4–9 on a chunk that continues a carried (membrane, fired) state, with the BPTT backward derived above."
    @staticmethod
    def forward(ctx, x, tau, v_threshold, membrane0, fired0, surrogate):
        T = x.shape[0]
        if T == 1: membrane = ((1 - 1 / tau) * membrane0 + x[0] / tau).unsqueeze(0)   # one step: Eq. 4 itself
        else:
            j = torch.arange(1, T + 1, device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
            membrane = charge(x, tau) + (1 - 1 / tau) ** j * membrane0        # H[j] = charge[j] + α^(j+1) h0
        crossing = first_spike_index(fake_spikes(membrane, v_threshold))     # the chunk's first fake spike
        first = torch.where(fired0 > 0, torch.full_like(crossing, T), crossing)   # fired before: silent now
        ctx.save_for_backward(membrane, tau, v_threshold, membrane0, fired0)
        ctx.surrogate = surrogate
        return spikes_from_index(first, T, x.dtype), membrane

    @staticmethod
    def backward(ctx, grad_spikes, grad_membrane):
        membrane, tau, v_threshold, membrane0, fired0 = ctx.saved_tensors
        crossing = first_spike_index(fake_spikes(membrane, v_threshold))      # the chunk's first fake spike
        spatial = spatial_gradient(grad_spikes, membrane, v_threshold, ctx.surrogate, False)   # Eqs. 15, 17 (chapter 4)
        spatial = torch.where(fired0 > 0, torch.zeros_like(spatial), spatial)  # fired before: no spike route to H
        decay = 1 - 1 / tau
        delta = reverse_leaky_scan(spatial + grad_membrane, decay)           # Eqs. 18–19
        previous = torch.cat([membrane0.expand_as(membrane[0]).unsqueeze(0), membrane[:-1]])   # H[-1] = h0
        grad_x = delta / tau
        grad_tau = (delta * (previous - membrane) / tau).sum_to_size(tau.shape)
        grad_threshold = (-spatial).sum_to_size(v_threshold.shape)
        grad_membrane0 = (decay * delta[0]).sum_to_size(membrane0.shape)                    # dL/dh0 = α δ[0]
        grad_fired0 = (-_gather_time(grad_spikes, crossing)[0]).sum_to_size(fired0.shape)     # dL/dF0 = −g[c]
        return grad_x, grad_tau, grad_threshold, grad_membrane0, grad_fired0, None


def amos_lif_continued(x: Tensor,  # input current of the next steps, [T, *]
                       tau=2.0,  # τ > 1: a number, or a tensor broadcasting to x.shape[1:]
                       v_threshold=1.0,  # V_th: a number, or a tensor broadcasting to x.shape[1:]
                       surrogate=Sigmoid(),  # Θ with a surrogate gradient
                       membrane: Tensor = None,  # the carried H[-1], shape x.shape[1:] (None: a new sequence)
                       fired: Tensor = None,  # the carried F[-1] (1 where the neuron has fired), shape x.shape[1:]
                      ) -> tuple:  # (spikes [T, *], membrane [T, *], fired after the last step [*])
    "The AMOS LIF neuron on steps that continue a sequence; chunks of any length give the one-call result and BPTT gradients."
    check_neuron_args(x, tau, v_threshold, surrogate, False)
    compute = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    tau = tau_tensor(tau, compute)
    threshold = tau_tensor(v_threshold, compute)                  # a tensor of x's dtype, keeping a learnable one's graph
    zeros = compute.new_zeros(compute.shape[1:])
    for name, state in (('membrane', membrane), ('fired', fired)):
        if state is not None and state.shape != compute.shape[1:]:
            raise ValueError(f"the carried {name} has shape {tuple(state.shape)}, one step of x has {tuple(compute.shape[1:])}")
    membrane0 = zeros if membrane is None else membrane.to(compute.dtype)
    fired0 = zeros if fired is None else fired.to(compute.dtype)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (compute, tau, threshold, membrane0, fired0))
    if compute.shape[0] == 1 and not needs_grad:                  # one step of inference: Eqs. 4 and 2 as they stand
        H = ((1 - 1 / tau) * membrane0 + compute[0] / tau).unsqueeze(0)
        spikes = ((H[0] >= threshold) & (fired0 == 0)).to(compute.dtype).unsqueeze(0)
    else:
        with torch.autocast(device_type=x.device.type, enabled=False):
            spikes, H = _ContinuedAMOSLIF.apply(compute, tau, threshold, membrane0, fired0, surrogate)
    fired_after = fired0 + spikes.sum(0)                          # F[T-1], differentiable like the loop's mask
    return spikes.to(x.dtype), H.to(x.dtype), fired_after


# %%
#| export
# The module's carried-state path (step_mode='s', or stateful=True), attached to the class defined above.
def _continue(self, x: Tensor) -> tuple:
    "Run [T, *] from the carried state and carry the new one (`amos_lif_continued`, above)."
    force_at = None
    if self.force_last:                      # Eq. 7 forces a spike at T-1: the neuron must know where T-1 is
        if self.sequence_length is None or (torch.is_grad_enabled() and x.requires_grad):
            raise ValueError("force_last=True in step_mode='s' or stateful=True needs the sequence's length "
                             "(set .sequence_length = T) and runs in inference only (torch.no_grad())")
        force_at = self.sequence_length - 1 - self.steps_seen
    if self.membrane_state is not None and self.membrane_state.shape != x.shape[1:]:
        raise ValueError(f"the carried state is for steps of shape {tuple(self.membrane_state.shape)}, this input's are "
                         f"{tuple(x.shape[1:])}: call reset() before a new sequence")
    low_precision = x.dtype in (torch.float16, torch.bfloat16)   # the carried state stays float32, as in one call
    spikes, membrane, self.fired_state = amos_lif_continued(x.float() if low_precision else x, self._tau_for(x),
                                                            self.v_threshold, self.surrogate, self.membrane_state,
                                                            self.fired_state)
    if force_at is not None and 0 <= force_at < x.shape[0]:           # Eq. 7 at the sequence's last step
        forced = (self.fired_state == 0).to(spikes.dtype)
        spikes = spikes.clone(); spikes[force_at] += forced; self.fired_state = self.fired_state + forced
    self.membrane_state, self.steps_seen = membrane[-1], self.steps_seen + x.shape[0]
    return (spikes.to(x.dtype), membrane.to(x.dtype)) if low_precision else (spikes, membrane)

def select_state(self, keep: Tensor):
    "Keep the carried state of the samples `keep` selects (an index or mask over dim 0 of a step): dropping decided samples."
    if self.membrane_state is not None:
        self.membrane_state, self.fired_state = self.membrane_state[keep], self.fired_state[keep]


AMOSLIF._continue, AMOSLIF.select_state = _continue, select_state


# %% [markdown]
# **The check.** One sequence, fed in one call, one step at a time, and in uneven chunks (float64, a learnable τ
# per channel, random upstream gradients on spikes and membranes). Expected: identical spikes, membranes equal to
# rounding, and input and τ gradients equal to the one-call neuron's within $10^{-10}$:

# %%
def run_in_chunks(sizes, x, g_spikes, g_membrane, tau_logit):
    "Feed x in chunks of the given sizes to a stateful neuron; (spikes, membrane, dL/dx, dL/dw of τ)."
    neuron = AMOSLIF(learnable_tau=True, num_channels=3, stateful=len(sizes) > 1, step_mode='m').double()   # one chunk: the plain call
    neuron.tau_logit.data.copy_(tau_logit)
    leaf = x.clone().requires_grad_()
    outputs = [neuron(chunk, return_membrane=True) for chunk in leaf.split(sizes)]
    spikes, membrane = (torch.cat(parts) for parts in zip(*outputs))
    ((spikes * g_spikes).sum() + (membrane * g_membrane).sum()).backward()
    return spikes.detach(), membrane.detach(), leaf.grad, neuron.tau_logit.grad

torch.manual_seed(0)
T = 40
x = 1 + 1.5 * torch.randn(T, 4, 3, dtype=torch.float64)
g_spikes, g_membrane, tau_logit = torch.randn_like(x), torch.randn_like(x), torch.randn(3, dtype=torch.float64)
whole = run_in_chunks([T], x, g_spikes, g_membrane, tau_logit)
for name, sizes in [("one step at a time", [1] * T), ("chunks 7, 1, 13, 19", [7, 1, 13, 19]), ("chunks 39, 1", [39, 1])]:
    parts = run_in_chunks(sizes, x, g_spikes, g_membrane, tau_logit)
    print(f"{name:20} spikes {'exact' if torch.equal(parts[0], whole[0]) else 'DIFF'}, membrane {diff_bucket(parts[1], whole[1])}, "
          f"dL/dX {diff_bucket(parts[2], whole[2])}, dL/dtau {diff_bucket(parts[3], whole[3])}")
    test_eq(parts[0], whole[0])
    test_close(parts[1], whole[1], eps=1e-12)
    for a, b in zip(parts[2:], whole[2:]): test_close(a, b, eps=1e-10)
reference = amos_lif_sequential(x, (1 / torch.sigmoid(tau_logit)).view(3), 1.0)
test_eq(whole[0], reference[0])                          # and the one call is the loop

# %% [markdown]
# Two details make a carried sequence equal to one call in every setting. **Eq. 7's forced spike** sits at the
# sequence's last step, which a neuron fed step by step cannot see; told the length (`sequence_length = T`, which
# early exit in chapter 11 sets), it forces the spike when its step comes. This path is for inference: training
# with `force_last` goes through one call. **Low precision.** One call computes a bfloat16 input's membrane in
# float32 (chapter 5) and rounds only what it returns; the carried membrane must stay float32 too, or each chunk
# would start from a rounded state. We expect both to match the one-call neuron exactly:

# %%
torch.manual_seed(0)
x = 0.7 + 0.4 * torch.randn(12, 5, 64)                       # some neurons fire, many never do: the forced spike matters
with torch.no_grad():
    once = AMOSLIF(force_last=True, step_mode='m')(x)
    forced = AMOSLIF(force_last=True, step_mode='m', stateful=True); forced.sequence_length = 12
    chunked = torch.cat([forced(part) for part in x.split([5, 6, 1])])
    low = (1 + torch.randn(40, 4, 256)).to(torch.bfloat16)
    streaming = AMOSLIF()
    stepwise = torch.stack([streaming(low[t], return_membrane=True)[1] for t in range(40)])
print("force_last in chunks:", torch.equal(once, chunked), f"({int(once[-1].sum())} forced spikes)",
      "| bfloat16 membranes step by step:", torch.equal(stepwise, AMOSLIF(step_mode='m')(low, return_membrane=True)[1]),
      "| carried dtype:", streaming.membrane_state.dtype)
test_eq(chunked, once)
test_eq(torch.equal(stepwise, AMOSLIF(step_mode='m')(low, return_membrane=True)[1]), True)
test_fail(lambda: AMOSLIF(force_last=True)(x[0]), exc=ValueError, contains='sequence_length')

# %% [markdown]
# ## In a SpikingJelly network
#
# SpikingJelly's modules run in one of two step modes: `'s'`, one step `[B, ...]` per call with the state kept
# until `functional.reset_net`, and `'m'`, the whole sequence `[T, B, ...]` at once. `AMOSLIF` speaks both: it has a
# `step_mode` attribute, which `functional.set_step_mode` sets, and a `reset()`, which `functional.reset_net` calls.
# SpikingJelly is not needed to use `AMOSLIF`; these are plain attributes.
#
# The default matters. SpikingJelly's layers start in `'s'`, and a network built from its zoo with
# `spiking_neuron=AMOSLIF` and no `set_step_mode` hands each neuron `[B, N]`. A neuron that read that as `[T, N]`
# would take the batch for time and silence every sample after the first that fires. So `AMOSLIF` starts in
# `'s'` too. We expect two identical samples to fire together at step 0 and, having fired, stay silent at step 1;
# the same input forced into `'m'` shows the mistake the default avoids:

# %%
current = torch.full((2, 3), 5.0)                      # one step of two identical samples
streaming = AMOSLIF()
print("default 's', step 0:", streaming(current).tolist(), "| step 1:", streaming(current).tolist(), "(fired already)")
print("'m' reads the batch as time:", AMOSLIF(step_mode='m')(current).tolist())
test_eq(AMOSLIF()(current), torch.ones(2, 3))
test_eq(AMOSLIF(step_mode='m')(current), torch.tensor([[1.0] * 3, [0.0] * 3]))

# %% [markdown]
# A small SpikingJelly network with two `AMOSLIF` layers, built with the defaults and fed step by step, then
# switched to `'m'` and fed the whole sequence at once: the outputs must be identical.

# %%
from spikingjelly.activation_based import functional, layer
torch.manual_seed(0)
net = nn.Sequential(layer.Linear(6, 16), AMOSLIF(), layer.Linear(16, 4), AMOSLIF())
for m in net[::2]: nn.init.uniform_(m.weight, -0.2, 0.5)   # mostly excitatory: spikes in both layers
x = 4 * torch.rand(8, 2, 6)                                 # [T, B, features]
with torch.no_grad(): stepwise = torch.stack([net(x[t]) for t in range(8)])   # the defaults: 's' everywhere
functional.reset_net(net)
functional.set_step_mode(net, 'm')
with torch.no_grad(): once = net(x)
print(f"output spikes: {int(once.sum())}, step by step identical: {torch.equal(once, stepwise)}")
test_eq(once, stepwise)
functional.set_step_mode(net, 'm')

# %% [markdown]
# SpikingJelly's argument names work where they mean something: `surrogate_function` is our `surrogate`, and
# `store_v_seq=True` keeps the last sequence's membrane in `v_seq`. Its reset arguments are refused with the
# reason. We expect SpikingJelly's own ATan surrogate to give our ATan's spikes and input gradient:

# %%
from spikingjelly.activation_based import surrogate as sj_surrogate
torch.manual_seed(0)
x = (1 + torch.randn(10, 3, 5)).requires_grad_()
theirs = AMOSLIF(surrogate_function=sj_surrogate.ATan(), step_mode='m', store_v_seq=True)
spikes = theirs(x); spikes.sum().backward(); grad_theirs = x.grad.clone(); x.grad = None
AMOSLIF(surrogate=ATan(), step_mode='m')(x).sum().backward()
print("spikes equal:", torch.equal(spikes, amos_lif_parallel(x.detach(), 2.0)[0]), "| input gradients:", diff_bucket(grad_theirs, x.grad),
      "| v_seq:", tuple(theirs.v_seq.shape))
test_close(grad_theirs, x.grad, eps=1e-6)
test_close(theirs.v_seq.detach(), amos_lif_parallel(x.detach(), 2.0)[1], eps=1e-6)   # a custom surrogate: the 'torch' scan
test_fail(lambda: AMOSLIF(v_reset=0.0), exc=TypeError, contains='never resets')
test_fail(lambda: AMOSLIF(detach_reset=True), exc=TypeError, contains='never resets')
test_fail(lambda: AMOSLIF(surrogate=ATan(), surrogate_function=sj_surrogate.ATan()), exc=ValueError, contains='once')

# %% [markdown]
# ### Reading out a network of single spikes
#
# A SpikingJelly classifier usually ends in spiking neurons read by their firing rate, trained with a mean squared
# error against the one-hot label. With AMOS neurons at the output that readout has little to work with: each
# output neuron fires at most once, so its rate is $0$ or $1/T$, the target of $1$ is out of reach for $T > 1$,
# and every neuron that fired ties with every other. Before any output neuron fires, the rate is $0$ everywhere and
# the loss sits at $1/K$ for $K$ classes. What trains is a graded readout: the output layer's *membrane* at the
# first output spike, $t_{1st}$, under the cross-entropy, which is chapter 9's temporal selector decoder
# (`SpikingClassifier(body, TemporalSelectorDecoder(features, classes))` in chapter 11 packages it). We expect the
# rate readout to stay at $1/K = 0.1$ for the first steps and end with more ties and a lower training accuracy, and
# the membrane readout to fall steadily:

# %%
torch.manual_seed(0)
T, B, K = 4, 64, 10
images = torch.rand(B, 20); labels = (images @ torch.randn(20, K)).argmax(1)     # a learnable ten-class toy task

def train_readout(readout, steps=30):
    "Train Linear-AMOSLIF-Linear-AMOSLIF (SpikingJelly layers, step mode 'm') with `readout(spikes, membrane) -> loss`."
    torch.manual_seed(1)
    net = nn.Sequential(layer.Linear(20, 32), AMOSLIF(), layer.Linear(32, K), AMOSLIF(return_membrane=True))
    functional.set_step_mode(net, 'm')
    optimizer, losses = torch.optim.Adam(net.parameters(), lr=1e-2), []
    for _ in range(steps):
        spikes, membrane = net(images.expand(T, B, 20))                    # the image at every step
        loss, logits = readout(spikes, membrane)
        optimizer.zero_grad(); loss.backward(); optimizer.step(); losses.append(loss.item())
    return losses, (logits.argmax(1) == labels).float().mean().item(), logits

def rate_mse(spikes, membrane):
    rate = spikes.mean(0)
    return nn.functional.mse_loss(rate, nn.functional.one_hot(labels, K).float()), rate

def membrane_at_first_spike(spikes, membrane):
    fired = spikes.detach().amax(-1) > 0                                   # [T, B]: did any output neuron fire?
    t_1st = torch.where(fired.any(0), fired.to(torch.uint8).argmax(0), torch.full((B,), T - 1))
    logits = membrane[t_1st, torch.arange(B)]                               # [B, K], graded
    return nn.functional.cross_entropy(logits, labels), logits

results = {name: train_readout(f) for name, f in [('rate + MSE', rate_mse), ('membrane at t_1st + CE', membrane_at_first_spike)]}
for name, (losses, accuracy, logits) in results.items():
    ties = (logits == logits.max(1, keepdim=True).values).sum(1).float().mean().item()
    print(f"{name:23} loss {losses[0]:.3f} -> {losses[9]:.3f} (step 10) -> {losses[-1]:.3f} | training accuracy "
          f"{accuracy:.2f} | classes tied at the top: {ties:.2f}")
rate_losses, membrane_losses = results['rate + MSE'][0], results['membrane at t_1st + CE'][0]
test_close(rate_losses[:5], [0.1] * 5, eps=1e-6)                              # no output spike yet: zero rate
assert membrane_losses[-1] < 0.5 * membrane_losses[0] and results['membrane at t_1st + CE'][1] > results['rate + MSE'][1]

# %% [markdown]
# ## Summary
# `AMOSLIF` wraps `amos_lif_parallel` (any backend) for `[T, *]` input: fixed or learnable τ (kept above 1 by $1/\tau = \sigma(w)$),
# one per channel if asked, a learnable threshold on request, spikes and optionally the membrane. Its parallel and sequential backends agree to
# float64 rounding, learnable τ included. It also runs step by step (`step_mode='s'`) or in chunks (`stateful=True`), carrying
# membrane and mask with the exact gradient through them, and fits SpikingJelly's `set_step_mode` and `reset_net`.

# %% [markdown]
# ## Exercises
#
# 1. Build the same two-layer network with SpikingJelly's `LIFNode` and with `AMOSLIF`, switch both with `functional.set_step_mode(net, 'm')` and run them on one `[T, B, N]` input. How many spikes does each neuron of each network emit?
# 2. Run T = 16 steps as four chunks of 4 with `stateful=True` and check that outputs and the gradients of input and τ equal one call over all 16 steps.
# 3. Train a per-channel τ on a small task and plot the learned values. Do they move away from their start, and in which direction?

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
