# %% [markdown]
# # Backends
#
# > One neuron, several implementations: how `amos_lif_parallel` and `AMOSLIF` choose between the textbook code of chapters 2–4 and the compiled kernels of chapters 7 and 8, and what a new backend or a new surrogate must provide.

# %%
#| default_exp backends

# %%
#| export
import torch
from torch import Tensor
from pttfs.surrogate import Sigmoid, ATan
from pttfs.dynamics import check_neuron_args, tau_tensor
from pttfs.parallel import AMOSLIFFunction

# %%
#| hide
from fastcore.test import test_eq, test_ne, test_close, test_fail
from pttfs.dynamics import diff_bucket
from nbdev.showdoc import show_doc

# %% [markdown]
# After this chapter you will know what `backend=` means in `amos_lif_parallel(x, ..., backend=...)` and
# `AMOSLIF(backend=...)`, how `'auto'` picks one, and where to add a backend or a surrogate.
#
# ## Why more than one
#
# Chapter 4's `AMOSLIFFunction` is the textbook implementation, the `'torch'` backend: every equation is its own
# PyTorch operation, easy to read and to check against the loop, but each one is a pass over `[T, *]` memory. The
# later chapters write the same equations as compiled kernels that make one pass forward and one backward:
# `'cpu-fused'` (C++, chapter 7) and `'triton'` (CUDA, chapter 8). They are checked against the same reference;
# they differ only in speed and in what they accept (dtypes, surrogates, devices).
#
# A backend is a function
# `(x, tau, v_threshold, surrogate, force_last, return_membrane) -> (spikes, membrane or None)` (for `'torch'`, chapter 4's
# `AMOSLIFFunction` behind that signature), plus a `supports`
# function that says why it cannot run a call ('' if it can), and the device types on which `'auto'` may choose it.

# %%
#| export
PARALLEL_BACKENDS = {}  # name -> (function, supports, devices); 'auto' tries them newest first
_remembered_choices = {}  # for a float τ: (device type, dtype, T ≥ 2^31, surrogate type, backend) -> backend name
BFLOAT16_BACKENDS = set()  # backends that read and write bfloat16 themselves (computing in float32) for spikes-only calls

def register_backend(name: str,  # the name users pass as `backend=`
                     function,  # (x, tau, v_threshold, surrogate, force_last, return_membrane) -> (spikes, membrane or None); tau a float or a tensor
                     supports=lambda x, tau, surrogate: '',  # '' if it can run this call, else why not ("unavailable: ..." if it failed to load); with a float τ, remembered per x device, dtype, T ≥ 2^31 and surrogate type
                     devices=None,  # device types ('cpu', 'cuda') on which 'auto' may choose it; None: all
                     reads_bfloat16: bool = False,  # it also takes bfloat16 x (spikes only, τ fixed), giving a float32 call's spikes and gradients
                    ):
    "Make `function` a backend of `amos_lif_parallel`; it receives x in float32/64, τ as a float or a tensor of x's dtype, autocast off."
    # A name registered again (a chapter's notebook re-running its own registration) keeps its place in the order,
    # so 'auto' does not start preferring, say, 'torch' over the compiled kernels in that process.
    PARALLEL_BACKENDS[name] = (function, supports, devices)
    (BFLOAT16_BACKENDS.add if reads_bfloat16 else BFLOAT16_BACKENDS.discard)(name)
    _remembered_choices.clear()                 # a new backend can change what 'auto' picks


# %% [markdown]
# ## Choosing
#
# `'auto'` takes the most recently registered backend that can run the call on its own devices, so a CPU tensor
# gets the fused kernel when it built and `'torch'` otherwise. A backend asked for by name runs, or the call is an
# error that says why: a dtype it does not take, or a build that failed (no compiler). Only `'auto'` falls back, to
# the next available backend, with one warning from the backend that could not be built.
#
# With a single float τ the answer depends only on the input's device, dtype and length and on the surrogate's
# type, so it is worked out once per such combination and remembered: a neuron layer is called thousands of times
# with the same ones, and the full choice costs a few microseconds per call. Registering a backend forgets
# the remembered choices.

# %%
#| export
def choose_backend(x: Tensor, tau, surrogate, backend: str = 'auto') -> str:
    "The backend that runs this call: the newest that supports it for 'auto'; `backend` itself if it can run it."
    key = None if isinstance(tau, Tensor) else (x.device.type, x.dtype, x.shape[0] >= 2**31, type(surrogate), backend)
    name = _remembered_choices.get(key)
    if name is None or name not in PARALLEL_BACKENDS:
        name = _choose_backend(x, tau, surrogate, backend)
        devices = PARALLEL_BACKENDS[name][2]
        # A backend run off its own devices (Triton on the CPU under TRITON_INTERPRET, for tests) is not remembered.
        if key is not None and (devices is None or x.device.type in devices): _remembered_choices[key] = name
    return name

def _choose_backend(x: Tensor, tau, surrogate, backend: str) -> str:
    if backend != 'auto' and backend not in PARALLEL_BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {list(PARALLEL_BACKENDS)}, got {backend!r}")
    if backend != 'auto':
        reason = PARALLEL_BACKENDS[backend][1](x, tau, surrogate)
        if not reason: return backend
        if not reason.startswith('unavailable'): raise ValueError(f"backend {backend!r} cannot run this call: {reason}")
        raise RuntimeError(f"backend {backend!r} was asked for by name and is {reason}; pass backend='auto' to fall "
                           f"back to the next available backend")
    for name in reversed(PARALLEL_BACKENDS):
        _, supports, devices = PARALLEL_BACKENDS[name]
        if (devices is None or x.device.type in devices) and not supports(x, tau, surrogate): return name
    return 'torch'


def backend_function(x: Tensor,  # the input, already in float32/64
                     tau,  # a float, or a tensor
                     v_threshold,  # a float, or a tensor (per neuron, or learnable)
                     surrogate, backend: str = 'auto'):
    "The function that runs this call of `amos_lif_parallel`: a threshold tensor runs on 'torch', the only backend that takes one."
    if isinstance(v_threshold, Tensor):
        if backend not in ('auto', 'torch'):
            raise ValueError(f"backend {backend!r} takes one fixed threshold; a threshold tensor (per neuron, or one that "
                             f"requires grad) runs on backend 'torch' (or 'auto')")
        return PARALLEL_BACKENDS['torch'][0]
    return PARALLEL_BACKENDS[choose_backend(x, tau, surrogate, backend)][0]


def reads_bfloat16(function) -> bool:
    "Whether a function from `backend_function` belongs to a backend registered with `reads_bfloat16=True`."
    return any(PARALLEL_BACKENDS[name][0] is function for name in BFLOAT16_BACKENDS)


# %%
show_doc(register_backend)

# %% [markdown]
# Remembering the choice must not make it stale. Expected: the newest backend that runs on the CPU (`'cpu-fused'`
# where it builds, else `'torch'`); then a stand-in backend that claims every call is picked as soon as it is
# registered; once removed, the first answer again. A backend asked for by name that cannot run the call is an
# error that says why:

# %%
# The registry the package fills on import ('torch' below, then the compiled backends), not this notebook's empty copy:
from pttfs.backends import PARALLEL_BACKENDS, _remembered_choices, register_backend, choose_backend, backend_function
x = torch.randn(4, 3)
before = choose_backend(x, 2.0, Sigmoid())
register_backend('claims-all', lambda *args: None)           # never called here: only chosen
test_eq(choose_backend(x, 2.0, Sigmoid()), 'claims-all')
PARALLEL_BACKENDS.pop('claims-all'); _remembered_choices.clear()
test_eq(choose_backend(x, 2.0, Sigmoid()), before)
test_eq(before in ('cpu-fused', 'torch'), True)
register_backend('torch', *PARALLEL_BACKENDS['torch'])       # what this notebook does when it runs again
test_eq(choose_backend(x, 2.0, Sigmoid()), before)           # a name registered again keeps its place
test_fail(lambda: choose_backend(x, 2.0, lambda u: (u >= 0).float(), backend='cpu-fused'), exc=ValueError, contains='surrogate')
test_fail(lambda: backend_function(x, 2.0, torch.tensor(1.0), Sigmoid(), 'cpu-fused'), exc=ValueError, contains='threshold')
print("registered:", list(PARALLEL_BACKENDS), "| auto on a CPU float32 tensor:", before in ('cpu-fused', 'torch'))


# %% [markdown]
# ## The front door: `amos_lif_parallel`
#
# The public function checks its arguments (chapter 1), computes in at least float32 (float16 and bfloat16
# inputs, e.g. under `torch.autocast`, are promoted: the charge needs the range and precision, and a spike
# decision should not depend on half-precision rounding), and returns outputs in the input's dtype. Its
# `backend` argument chooses the implementation as above: chapter 4's `AMOSLIFFunction` is `'torch'`, registered
# here, the first backend; the compiled ones register themselves in their own chapters.

# %%
#| export
# The textbook backend, 'torch': AMOSLIFFunction behind the signature every backend has (above).
def _torch_backend(x, tau, v_threshold, surrogate, force_last, return_membrane=True):
    return AMOSLIFFunction.apply(x, tau_tensor(tau, x), v_threshold, surrogate, force_last)

register_backend('torch', _torch_backend)

# %%
#| export
_LOW_PRECISION = (torch.float16, torch.bfloat16)

def _threshold_argument(v_threshold, x: Tensor):
    "V_th as backends take it: a float, unless it is a tensor with one value per neuron or one that needs a gradient."
    if not isinstance(v_threshold, Tensor): return float(v_threshold)
    if v_threshold.numel() == 1 and not (v_threshold.requires_grad and torch.is_grad_enabled()): return v_threshold.item()
    return v_threshold.to(dtype=x.dtype, device=x.device)

def _memory_order(x: Tensor):
    "The order of x's dimensions in memory, time first, when x is dense but not contiguous (channels-last); else None."
    if not isinstance(x, Tensor) or x.dim() < 3 or x.is_contiguous(): return None    # (a bad x: checked below)
    order = [0] + sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    return order if x.permute(order).is_contiguous() else None

def _one_value(value) -> bool: return not isinstance(value, Tensor) or value.numel() == 1

def amos_lif_parallel(x: Tensor,  # input current X, shape [T, *] (time first)
                      tau=2.0,  # membrane time constant τ_m > 1: a number, or a tensor broadcasting to x.shape[1:]
                      v_threshold=1.0,  # V_th: a number, or a tensor broadcasting to x.shape[1:] (per neuron or learnable; backend 'torch')
                      surrogate=Sigmoid(),  # Θ with a surrogate gradient (`pttfs.surrogate`), or any such callable
                      force_last: bool = False,  # Eq. 7: force a spike at T-1 in neurons that have not fired
                      backend: str = 'auto',  # 'auto', or a name in `PARALLEL_BACKENDS` ('torch', 'cpu-fused', ...)
                      return_membrane: bool = True,  # False: return (spikes, None), and let a backend skip writing H
                     ) -> tuple:  # (spikes S, membrane H), both shaped like x
    "AMOS LIF neuron computed in parallel over time (Eqs. 5–20); same results and gradients as `amos_lif_sequential`."
    order = _memory_order(x)
    if order is not None and _one_value(tau) and _one_value(v_threshold):    # channels-last: the memory's own order
        inverse = [order.index(d) for d in range(x.dim())]
        spikes, membrane = amos_lif_parallel(x.permute(order), tau, v_threshold, surrogate, force_last, backend, return_membrane)
        return spikes.permute(inverse), (membrane.permute(inverse) if membrane is not None else None)
    check_neuron_args(x, tau, v_threshold, surrogate, force_last)
    low = x.dtype in _LOW_PRECISION                # computed in float32: the backend is chosen as for a float32 x ...
    like = x.new_empty((1,) * x.dim(), dtype=torch.float32).expand(x.shape) if low else x
    if isinstance(tau, Tensor): tau = tau.to(dtype=like.dtype, device=x.device)
    else: tau = float(tau)
    v_threshold = _threshold_argument(v_threshold, like)
    function = backend_function(like, tau, v_threshold, surrogate, backend)   # 'torch': AMOSLIFFunction (chapter 4)
    uncast = (x.dtype == torch.bfloat16 and not return_membrane and reads_bfloat16(function)    # ... and one that reads
              and not (isinstance(tau, Tensor) and tau.requires_grad and torch.is_grad_enabled()))  # bfloat16 gets x as it is
    compute = x.to(torch.float32) if low and not uncast else x
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            spikes, membrane = function(compute, tau, v_threshold, surrogate, force_last, return_membrane)
    else: spikes, membrane = function(compute, tau, v_threshold, surrogate, force_last, return_membrane)
    if spikes.dtype == x.dtype: return spikes, (membrane if return_membrane else None)   # no no-op casts: ~1 µs
    return spikes.to(x.dtype), (membrane.to(x.dtype) if return_membrane else None)


# %%
show_doc(amos_lif_parallel)

# %% [markdown]
# A threshold tensor (one value per neuron, or one that requires grad) goes to `'torch'`, the only backend that
# takes one; asked of another backend by name, it is an error:

# %%
threshold = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)           # one per neuron
amos_lif_parallel(torch.rand(8, 2, 3) * 2, 2.0, threshold)[0].sum().backward()
test_eq(threshold.grad.shape, (3,))
test_fail(amos_lif_parallel, args=(torch.rand(8, 3), 2.0, threshold), kwargs=dict(backend='no-such'), contains='threshold')

# %% [markdown]
# The front door must compute what the loop of chapter 1 computes. Figure 5.1 draws it for 2,000 random neurons over
# 64 steps in float64, through `amos_lif_parallel` (the textbook backend) and through autograd on the loop: each
# neuron's spike time (we expect every point on the diagonal, never-firing neurons at −1) and the size of the
# differences in $\partial\mathcal L/\partial X$ for a random upstream gradient (we expect rounding only, far below
# $10^{-10}$):

# %%
#| fig-cap: `amos_lif_parallel` against the loop of chapter 1, 2,000 neurons, T = 64, float64: spike times on the diagonal (left), and every difference in dL/dX at the level of float64 rounding (right).
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
from pttfs.dynamics import amos_lif_sequential
g = torch.Generator().manual_seed(5)
x = (0.3 + 0.8 * torch.randn(64, 2000, generator=g, dtype=torch.float64)).requires_grad_()
upstream = torch.randn(64, 2000, generator=g, dtype=torch.float64)
def spike_times_and_grad(function):
    spikes = function(x, 2.0)[0]
    grad, = torch.autograd.grad((spikes * upstream).sum(), x)
    fired = spikes.sum(0) > 0
    return torch.where(fired, spikes.argmax(0), torch.full_like(fired, -1, dtype=torch.long)), grad
times_front, grad_front = spike_times_and_grad(lambda x, tau: amos_lif_parallel(x, tau, backend='torch'))
times_loop, grad_loop = spike_times_and_grad(amos_lif_sequential)
difference = (grad_front - grad_loop).abs().flatten()
fig, (ax_t, ax_g) = plt.subplots(1, 2, figsize=(9, 3.2))
ax_t.plot(times_loop, times_front, '.', ms=3); ax_t.set(xlabel='spike time, loop', ylabel='spike time, amos_lif_parallel')
ax_g.hist(torch.log10(difference[difference > 0]).numpy(), bins=40)
ax_g.set(xlabel='log10 |difference in dL/dX| (nonzero ones)', ylabel='elements')
fig.tight_layout(); plt.show()
test_eq(times_front, times_loop)
test_eq(difference.max().item() < 1e-10, True)

# %% [markdown]
# Under `torch.autocast` on the CPU, a linear layer hands the neuron bfloat16; the neuron computes in float32 and
# returns bfloat16 outputs that are finite, with spikes equal to a float32 run on the same (bfloat16) input:

# %%
torch.manual_seed(0)
layer = torch.nn.Linear(32, 64)
inp = torch.randn(300, 8, 32)
with torch.autocast('cpu', dtype=torch.bfloat16):
    current = layer(inp)
    spikes, membrane = amos_lif_parallel(current, 2.0, 0.2)
    (spikes.float().sum() + membrane.float().sum()).backward()
print(current.dtype, spikes.dtype, membrane.dtype, "| finite:", torch.isfinite(membrane).all().item(),
      "| weight grad finite:", torch.isfinite(layer.weight.grad).all().item())
test_eq(torch.isfinite(membrane.float()).all().item(), True)
test_eq(spikes.detach().float(), amos_lif_parallel(current.detach().float(), 2.0, 0.2)[0])

# %% [markdown]
# ## Layouts: channels-last without a copy
#
# Every neuron is computed on its own (Eqs. 5–20 never mix neurons), so the order in which one time step's neurons
# lie in memory cannot change a result. That matters after a convolution in PyTorch's channels-last layout
# (`torch.channels_last`, the layout CPU convolution libraries prefer): it hands the neuron a `[T, B, C, H, W]`
# tensor whose memory runs `[T, B, H, W, C]`. A kernel that asks for a contiguous input would copy it to `C, H, W`
# order, and the next convolution would copy it back. So when x's memory is some order of its dimensions with time
# first, `amos_lif_parallel` computes on the view in that order, which is contiguous, and permutes the outputs back:
# no copy, and the outputs keep the input's layout. (A τ or threshold with one value per neuron would have to be
# permuted too; those calls take the contiguous path.) Expected: spikes, membrane and gradients equal to the
# contiguous call's, and output strides equal to the input's:
#

# %%
torch.manual_seed(0)
conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(memory_format=torch.channels_last)
current = conv(torch.randn(4 * 2, 3, 6, 6)).view(4, 2, 8, 6, 6).detach()     # T = 4, B = 2; memory [T, B, H, W, C]
test_eq((current.is_contiguous(), current.permute(0, 1, 3, 4, 2).is_contiguous()), (False, True))
rows = []
for backend in ('torch', 'auto'):
    leaf, flat = current.clone().requires_grad_(), current.contiguous().requires_grad_()
    test_eq(leaf.stride(), current.stride())                                    # clone keeps the layout
    (s1, m1), (s2, m2) = amos_lif_parallel(leaf, 2.0, 0.5, backend=backend), amos_lif_parallel(flat, 2.0, 0.5, backend=backend)
    weights = torch.randn(current.shape)
    ((s1 + m1) * weights).sum().backward(); ((s2 + m2) * weights).sum().backward()
    test_eq((s1.stride(), m1.stride()), (current.stride(), current.stride()))  # outputs in the input's layout
    test_eq((torch.equal(s1, s2), torch.equal(m1, m2), torch.equal(leaf.grad, flat.grad)), (True, True, True))
    rows.append(f"{backend:5} spikes {diff_bucket(s1, s2)}, membrane {diff_bucket(m1, m2)}, input gradient {diff_bucket(leaf.grad, flat.grad)}")
print('\n'.join(rows))

# %% [markdown]
# ## What the compiled kernels share
#
# Both compiled backends take the same inputs in the same form: `[T, N]` views of contiguous tensors, τ as one number
# or one value per neuron, the upstream gradient of a sum read as one number, and a surrogate they know by a small
# integer. These helpers are shared by chapter 7's C++ and chapter 8's Triton backends:

# %%
#| export
_SURROGATE_KIND = {Sigmoid: 0, ATan: 1}     # the surrogates whose Θ' the kernels compute themselves
_EMPTY_OF = {torch.float32: torch.empty(0), torch.float64: torch.empty(0, dtype=torch.float64)}  # "none" / "one τ"

def kernel_limits(x: Tensor, surrogate) -> str:
    "'' if a compiled kernel (C++ or Triton) can take x and the surrogate, else why not."
    if x.dtype not in (torch.float32, torch.float64): return f"dtype {x.dtype} (float32 and float64 only)"
    if type(surrogate) not in _SURROGATE_KIND: return f"surrogate {surrogate!r} (only Sigmoid and ATan have a fused derivative)"
    if x.shape[0] >= 2**31: return "T >= 2^31"
    return ''

def flat_tau(tau, x: Tensor) -> tuple:
    "τ for a kernel: (a contiguous [N] tensor, 0.0) for one τ per neuron, or (None, the number) for a single τ."
    if isinstance(tau, Tensor) and tau.numel() > 1: return tau.expand(x.shape[1:]).reshape(-1).contiguous(), 0.0
    return None, float(tau)

def compact_grad(grad: Tensor) -> Tensor:
    "The upstream gradient for a kernel: a 1-element view if it is one number broadcast (the gradient of a sum), else contiguous."
    if grad.numel() == 1 or all(stride == 0 for stride in grad.stride()): return grad.as_strided((1,), (1,))
    return grad.contiguous()

def reduce_tau_grad(per_neuron_grad: Tensor, step_shape, tau_shape) -> Tensor:
    "Sum a kernel's per-neuron τ gradient down to τ's own shape."
    return per_neuron_grad.view(step_shape).sum_to_size(tau_shape) if len(tau_shape) else per_neuron_grad.sum()


# %%
x = torch.randn(5, 2, 3)
test_eq(kernel_limits(x, Sigmoid()), '')
test_eq('dtype' in kernel_limits(x.half(), Sigmoid()), True)
test_eq(flat_tau(2.0, x), (None, 2.0))
test_eq(flat_tau(torch.tensor([2.0, 3.0, 4.0]), x)[0], torch.tensor([2.0, 3.0, 4.0]).repeat(2))
test_eq(compact_grad(torch.ones(()).expand(5, 2, 3)).shape, (1,))
test_eq(reduce_tau_grad(torch.ones(6), (2, 3), (3,)), torch.full((3,), 2.0))

# %% [markdown]
# ## Adding a backend, adding a surrogate
#
# A **backend** is one `register_backend(name, function, supports, devices)` call in the module that defines it; the
# last one registered is tried first by `'auto'`, and chapter 1's `compare_with_reference(partial(amos_lif_parallel,
# backend=name), ...)` tells whether it is exact.
#
# A **surrogate** (chapter 0: a class with `__call__` and `derivative`) works at once on the `'torch'` backend, which
# calls `surrogate_derivative`. The compiled backends compute $\Theta'$ themselves, so for them it takes one place per
# backend:
#
# | backend | where | what |
# |---|---|---|
# | all compiled ones | `_SURROGATE_KIND` above | the class and its number |
# | `'cpu-fused'` | `theta_prime` in `pttfs/csrc/amos_lif.cpp` (chapter 7) | a branch for the new number |
# | `'triton'` | `_backward_kernel` in `pttfs/triton_kernels.py` (chapter 8) | the `KIND` branch that computes `theta_prime` |
#
# A surrogate missing from `_SURROGATE_KIND` is not an error: `kernel_limits` says so, and `'auto'` runs it on
# `'torch'`.
#
# ## Summary
# `register_backend` adds an implementation of the neuron, `choose_backend` picks one per call (remembered for a
# float τ), and `amos_lif_parallel`, the front door, checks its arguments, computes in at least float32 and calls
# the chosen backend through `backend_function`. The compiled backends share the helpers above, and a new surrogate
# needs one entry in `_SURROGATE_KIND` and one branch in each kernel.

# %% [markdown]
# ## Exercises
#
# 1. Register a backend that calls chapter 1's loop and run `compare_with_reference(partial(amos_lif_parallel, backend=...), ...)` on it. Which columns of the table must be exact, and why?
# 2. Make a surrogate that is not in `_SURROGATE_KIND` and check, with `choose_backend`, which backend `'auto'` picks for it on the CPU.
# 3. `amos_lif_parallel` computes in at least float32. Call it on a bfloat16 input and compare with the float32 result: where would bfloat16 arithmetic inside the scan lose the spike times?

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
