# %% [markdown]
# # Triton kernels for the GPU
#
# > The fused kernel of chapter 7 written in Triton: one GPU thread per neuron, coalesced over neurons, the same forward and exact backward. The `'triton'` backend, chosen automatically for CUDA tensors; tested on the CPU with Triton's interpreter.

# %% [markdown]
# After this chapter you can run the neuron on a CUDA GPU through Triton, and test the same kernels without one.

# %%
#| default_exp triton_kernels

# %%
#| export
import os
import torch
from torch import Tensor
from pttfs.backends import register_backend, _SURROGATE_KIND, kernel_limits, flat_tau, compact_grad, reduce_tau_grad

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
from pttfs.surrogate import Sigmoid, ATan

# %% [markdown]
# ## Design
#
# A GPU has tens of thousands of lanes; with `N` neurons of `T` steps each, `N` is the parallel dimension and
# every lane walks its neuron down the time axis, exactly as a SIMD lane does in the CPU kernel. Adjacent lanes
# read adjacent neurons of the same time step, so every load and store is coalesced, and each element of each
# `[T, N]` tensor is touched once per pass: the kernels are bound by memory bandwidth, which is the floor for
# this neuron (chapter 7's table: 12 bytes per element forward, 12 backward in float32). Like chapter 7's kernel,
# this is not the paper's time-parallel scan: each lane computes the same closed forms (the second fake spike, the
# reversed recursion of Eq. 18) sequentially over $t$.
#
# * `_forward_kernel`: Eq. 4, the first crossing (Eqs. 7–9), the second fake spike; writes spikes, the membrane
#   (when needed) and $t_f$, $t_{sf}$ per neuron.
# * `_backward_kernel`: gathers $\partial\mathcal L/\partial S$ at $t_f$ and $t_{sf}$, then runs $t = T-1 \dots 0$:
#   Eq. 15, the masked spatial term (Eq. 17), the recursion of Eq. 18, $\partial\mathcal L/\partial X = \delta/\tau$,
#   and the τ gradient.
#
# When `N` is small and `T` large (the left column of the paper's Fig. 3), a lane per neuron leaves most of the GPU
# idle; the chunked scan of chapter 2 (the `'torch'` backend) parallelises over time as well, and should be the
# better choice there. Where the two cross on a GPU is what `benchmarks/gpu.sh` measures, with both backends in
# one sweep.
#
# Triton is imported on first use only, so `import pttfs` works without it. Without a GPU, setting
# `TRITON_INTERPRET=1` *before* Triton is imported runs the same kernels on CPU tensors through Triton's
# interpreter: slow, but exact enough to test them, which is what this chapter and `tests/` do.

# %%
#| export
_kernels = {}

def triton_kernels():
    "Compile-on-first-use Triton kernels: {'forward': ..., 'backward': ...}; raises ImportError without Triton."
    if _kernels: return _kernels
    import triton
    import triton.language as tl

    @triton.jit
    def _forward_kernel(x_ptr, tau_ptr, tau_scalar, spikes_ptr, membrane_ptr, first_ptr, second_ptr, T, N, v_threshold,
                        FORCE_LAST: tl.constexpr, PER_NEURON: tl.constexpr, STORE: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < N
        if PER_NEURON: tau = tl.load(tau_ptr + offsets, mask=mask, other=2.0)
        else: tau = tl.full([BLOCK], tau_scalar, dtype=x_ptr.dtype.element_ty)
        decay = 1.0 - 1.0 / tau
        h = tl.zeros([BLOCK], dtype=x_ptr.dtype.element_ty)
        first = tl.full([BLOCK], T, dtype=tl.int32)
        second = tl.full([BLOCK], T, dtype=tl.int32)
        row = offsets                                                                  # int64: t·N + n without overflow
        for t in range(0, T):
            h = decay * h + tl.load(x_ptr + row, mask=mask, other=0.0) / tau           # Eq. 4
            if STORE: tl.store(membrane_ptr + row, h, mask=mask)
            cross = h >= v_threshold                                                  # Eq. 8
            if FORCE_LAST: cross = cross | (t == T - 1)                               # Eq. 9
            fire = cross & (first == T)                                               # Eq. 2: the first crossing
            tl.store(spikes_ptr + row, fire.to(x_ptr.dtype.element_ty), mask=mask)
            second = tl.where(cross & (first < t) & (second == T), t, second)          # the second fake spike
            first = tl.where(fire, t, first)
            row += N
        tl.store(first_ptr + offsets, first, mask=mask)
        tl.store(second_ptr + offsets, second, mask=mask)

    @triton.jit
    def _backward_kernel(gs_ptr, gh_ptr, membrane_ptr, tau_ptr, tau_scalar, first_ptr, second_ptr, gx_ptr, gtau_ptr,
                         T, N, v_threshold, alpha, KIND: tl.constexpr, FORCE_LAST: tl.constexpr, PER_NEURON: tl.constexpr,
                         HAS_GH: tl.constexpr, WANT_TAU: tl.constexpr, GS_SCALAR: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < N
        if PER_NEURON: tau = tl.load(tau_ptr + offsets, mask=mask, other=2.0)
        else: tau = tl.full([BLOCK], tau_scalar, dtype=membrane_ptr.dtype.element_ty)
        decay = 1.0 - 1.0 / tau
        first = tl.load(first_ptr + offsets, mask=mask, other=0)
        second = tl.load(second_ptr + offsets, mask=mask, other=0)
        if GS_SCALAR:
            g0 = tl.load(gs_ptr)
            g_first = tl.where(first < T, g0, 0.0)
            g_second = tl.where(second < T, g0, 0.0)
        else:
            g_first = tl.load(gs_ptr + first.to(tl.int64) * N + offsets, mask=mask & (first < T), other=0.0)     # dL/dS[t_f]
            g_second = tl.load(gs_ptr + second.to(tl.int64) * N + offsets, mask=mask & (second < T), other=0.0)  # dL/dS[t_sf]
        delta = tl.zeros([BLOCK], dtype=membrane_ptr.dtype.element_ty)
        acc = tl.zeros([BLOCK], dtype=membrane_ptr.dtype.element_ty)
        row = offsets + (tl.zeros_like(offsets) + (T - 1)) * N                           # the last time step, in int64
        for step in range(0, T):
            t = T - 1 - step
            h = tl.load(membrane_ptr + row, mask=mask, other=0.0)
            if GS_SCALAR: g = g0
            else: g = tl.load(gs_ptr + row, mask=mask, other=0.0)
            d_spike = g - tl.where(t < first, g_first, g_second)                         # Eq. 15
            u = alpha * (h - v_threshold)
            if KIND == 0:
                e = tl.exp(-tl.abs(u))
                theta_prime = alpha * e / ((1.0 + e) * (1.0 + e))                          # Sigmoid: α σ(αx)(1 − σ(αx))
            else:
                z = 1.5707963267948966 * u
                theta_prime = (alpha / 2) / (1.0 + z * z)                                  # ATan
            d = decay * delta                                                            # Eq. 18
            if HAS_GH: d += tl.load(gh_ptr + row, mask=mask, other=0.0)
            active = t <= first                                                          # 1 − F[t−1]
            if FORCE_LAST: active = active & (t != T - 1)                                # no Θ' for the forced spike
            d = d + tl.where(active, d_spike * theta_prime, 0.0)                         # Eq. 17
            delta = d
            tl.store(gx_ptr + row, d / tau, mask=mask)
            if WANT_TAU:
                previous = tl.load(membrane_ptr + row - N, mask=mask & (t > 0), other=0.0)
                acc += d * (previous - h)
            row -= N
        if WANT_TAU: tl.store(gtau_ptr + offsets, acc / tau, mask=mask)

    _kernels.update(forward=_forward_kernel, backward=_backward_kernel)
    return _kernels


# %% [markdown]
# ## The autograd function
#
# The same contract as `FusedAMOSLIFFunction`: `[T, N]` views, τ as one number or one per neuron, the membrane
# and the two indices saved for the backward, a broadcast upstream gradient (the gradient of a sum) read without
# being materialised.

# %%
#| export
BLOCK = 128     # neurons per Triton program

class TritonAMOSLIFFunction(torch.autograd.Function):
    "AMOS LIF with Triton kernels: forward Eqs. 4, 7–9; backward Eqs. 15–18 and the τ gradient."
    @staticmethod
    def forward(ctx, x, tau, v_threshold, surrogate, force_last, return_membrane):
        kernels = triton_kernels()
        x = x.contiguous()
        T, N = x.shape[0], x[0].numel()
        tau_flat, tau_scalar = flat_tau(tau, x)
        per_neuron = tau_flat is not None
        if not per_neuron: tau_flat = x                   # a placeholder pointer the kernel never reads
        need_membrane = return_membrane or any(ctx.needs_input_grad[:2])
        spikes = torch.empty_like(x)
        membrane = torch.empty_like(x) if need_membrane else spikes
        first = torch.empty(N, dtype=torch.int32, device=x.device)
        second = torch.empty(N, dtype=torch.int32, device=x.device)
        grid = (max(1, -(-N // BLOCK)),)
        kernels['forward'][grid](x, tau_flat, tau_scalar, spikes, membrane, first, second, T, N, float(v_threshold),
                                 FORCE_LAST=force_last, PER_NEURON=per_neuron, STORE=need_membrane, BLOCK=BLOCK)
        ctx.save_for_backward(membrane if need_membrane else None, tau_flat if per_neuron else None, first, second)
        ctx.tau_scalar, ctx.v_threshold, ctx.force_last, ctx.per_neuron = tau_scalar, float(v_threshold), force_last, per_neuron
        ctx.tau_shape = tau.shape if isinstance(tau, Tensor) else None
        ctx.kind, ctx.alpha = _SURROGATE_KIND[type(surrogate)], float(surrogate.alpha)
        ctx.set_materialize_grads(False)
        return spikes, (membrane if return_membrane else None)

    @staticmethod
    def backward(ctx, grad_spikes, grad_membrane):
        membrane, tau_flat, first, second = ctx.saved_tensors
        T, N = membrane.shape[0], membrane[0].numel()
        grad_spikes = (torch.zeros(1, dtype=membrane.dtype, device=membrane.device) if grad_spikes is None
                       else compact_grad(grad_spikes))
        gs_scalar = grad_spikes.numel() == 1
        has_gh = grad_membrane is not None
        grad_membrane = grad_membrane.contiguous() if has_gh else membrane
        need_tau = ctx.needs_input_grad[1]
        grad_x = torch.empty_like(membrane)
        grad_tau = torch.empty(N, dtype=membrane.dtype, device=membrane.device) if need_tau else grad_x
        grid = (max(1, -(-N // BLOCK)),)
        triton_kernels()['backward'][grid](
            grad_spikes, grad_membrane, membrane, tau_flat if ctx.per_neuron else membrane, ctx.tau_scalar, first, second,
            grad_x, grad_tau, T, N, ctx.v_threshold, ctx.alpha, KIND=ctx.kind, FORCE_LAST=ctx.force_last,
            PER_NEURON=ctx.per_neuron, HAS_GH=has_gh, WANT_TAU=need_tau, GS_SCALAR=gs_scalar, BLOCK=BLOCK)
        if need_tau: grad_tau = reduce_tau_grad(grad_tau, membrane.shape[1:], ctx.tau_shape)
        return grad_x, (grad_tau if need_tau else None), None, None, None, None


# %% [markdown]
# How a call is split, drawn from the launch above for a small layer (Figure 8.1): the grid has one program per
# `BLOCK` neurons, `-(-N // BLOCK)` of them, the last one masked where it runs past `N`; inside a program every lane
# is one neuron, and all lanes of the program step down $t$ together. Nothing is split along time:

# %%
#| fig-cap: The launch grid for N = 300 neurons and T = 6 steps: three programs of BLOCK neurons each (colours), the last partly masked (hatched, beyond N), every lane walking its neuron from t = 0 down to t = T − 1 (arrows); adjacent lanes touch adjacent memory at each step.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle
N, T = 300, 6
programs = max(1, -(-N // BLOCK))                   # the grid of TritonAMOSLIFFunction.forward
fig, ax = plt.subplots(figsize=(8, 2.6))
for p in range(programs):
    start, end = p * BLOCK, (p + 1) * BLOCK
    ax.add_patch(Rectangle((start, 0), min(end, N) - start, T, color=f"C{p}", alpha=0.35))
    if end > N: ax.add_patch(Rectangle((N, 0), end - N, T, fill=False, hatch='//', edgecolor='grey'))
    ax.text((start + min(end, N)) / 2, -0.25, f"program {p}\nneurons {start}–{min(end, N) - 1}", ha='center', fontsize=7)
    for lane in range(start + 8, min(end, N), 40):
        ax.annotate('', (lane, T - 0.2), (lane, 0.2), arrowprops=dict(arrowstyle='->', lw=0.8, color='k'))
ax.set(xlim=(0, programs * BLOCK), ylim=(T + 0.2, -1.6), xlabel='neuron n (one lane each)', ylabel='time step t')
ax.axvline(N, color='k', lw=1)
fig.tight_layout(); plt.show()
test_eq(programs, 3)


# %% [markdown]
# It is the `'triton'` backend for CUDA tensors with a `Sigmoid` or `ATan` surrogate; 'auto' chooses it on CUDA
# only. On the CPU it runs only when asked for by name under `TRITON_INTERPRET=1` (for tests).

# %%
#| export
def _triton_available() -> str:
    try: triton_kernels()
    except Exception as e: return f"unavailable: Triton could not be loaded ({type(e).__name__}: {e})"
    return ''

def _triton_supports(x: Tensor, tau, surrogate) -> str:
    interpreting = os.environ.get('TRITON_INTERPRET', '') == '1'
    if x.device.type != 'cuda' and not (interpreting and x.device.type == 'cpu'):
        return f"x is on {x.device}; Triton needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tests)"
    return kernel_limits(x, surrogate) or _triton_available()

def _triton_backend(x, tau, v_threshold, surrogate, force_last, return_membrane=True):
    return TritonAMOSLIFFunction.apply(x, tau, v_threshold, surrogate, force_last, return_membrane)

register_backend('triton', _triton_backend, _triton_supports, devices=('cuda',))

# %% [markdown]
# ## The checks
#
# On a machine with a GPU these run on CUDA; without one, under Triton's interpreter on the CPU (the interpreter
# must be switched on before Triton is first imported, so this cell sets it only if Triton is not loaded yet). The
# same comparison with the BPTT reference as in chapters 4 and 7, at sizes the interpreter runs quickly:

# %%
import sys
device = 'cuda' if torch.cuda.is_available() else 'cpu'
if device == 'cpu' and 'triton' not in sys.modules: os.environ['TRITON_INTERPRET'] = '1'
runs = device == 'cuda' or os.environ.get('TRITON_INTERPRET') == '1'
print("Triton runs here:", runs)

# %%
from functools import partial
from pttfs.dynamics import compare_with_reference
from pttfs.backends import amos_lif_parallel
triton = partial(amos_lif_parallel, backend='triton')           # the implementation compare_with_reference checks
if runs:
    worst = 0.0
    for T, tau, force_last, per_neuron in [(1, 2.0, False, False), (1, 2.0, True, False), (7, 1.01, False, True),
                                           (7, 3.0, True, True), (40, 2.0, False, False), (40, 1000.0, True, True)]:
        r = compare_with_reference(triton, T, tau, force_last, trailing=(3, 8), tau_per_neuron=per_neuron)
        worst = max(worst, r['membrane'], r['grad_x'], r['grad_tau'])
        print(f"T={T:3} tau={tau:7} force_last={force_last!s:5} tau/neuron={per_neuron!s:5}: spikes "
              f"{'exact' if r['spikes_equal'] else 'DIFF'}, within 1e-10: {max(r['membrane'], r['grad_x'], r['grad_tau']) < 1e-10}")
        test_eq(r['spikes_equal'], True)
    test_eq(worst < 1e-10, True)
    r = compare_with_reference(triton, 20, 2.0, False, trailing=(16,), surrogate=ATan())
    test_eq(r['spikes_equal'] and max(r['membrane'], r['grad_x'], r['grad_tau']) < 1e-10, True)

# %% [markdown]
# ## On a GPU
#
# `benchmarks/gpu.sh` is the prepared device check: the tests with CUDA, then `pttfs-bench` on the GPU (isolated
# neuron and full network) writing `benchmarks/gpu-<device>.json`. Its results, where a GPU was available, are
# committed with the device name in the file.
#
# ## Summary
# The Triton kernels are the CPU kernel's algorithm with one GPU lane per neuron: coalesced, one pass forward and
# one backward, exact against BPTT (checked here through the interpreter). 'auto' uses them for CUDA tensors.

# %% [markdown]
# ## Exercises
#
# 1. Run this chapter's checks in Triton's interpreter for T = 1 and T = 300. Which of the kernels' loops run over time, and which over neurons?
# 2. Put the CPU kernel and the Triton kernel side by side: what takes the place of the SIMD lane, and of the OpenMP block?
# 3. On a machine with a GPU, time `'triton'` against `'torch'` for N = 2^20 and T from 8 to 256, training mode, and plot the ratio against T.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
