# %% [markdown]
# # A fused CPU kernel
#
# > The same equations in one pass over memory: a C++ kernel, compiled at first use, that computes the forward (Eqs. 4, 7–9) and the parallel backward (Eqs. 15–18) of the AMOS LIF neuron; the `'cpu-fused'` backend, chosen automatically for CPU tensors.

# %% [markdown]
# After this chapter you can say why the textbook backend is slow on a CPU, read the C++ kernel that computes the same equations in one pass, and know what happens where it cannot be built.

# %%
#| default_exp fused

# %%
#| export
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from importlib.resources import files
from pathlib import Path
import torch
from torch import Tensor
from pttfs.backends import register_backend, kernel_limits, flat_tau, compact_grad, reduce_tau_grad, _SURROGATE_KIND, _EMPTY_OF

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
from IPython.display import Markdown
from pttfs.surrogate import Sigmoid, ATan
from pttfs.backends import amos_lif_parallel, PARALLEL_BACKENDS
from pttfs.dynamics import compare_with_reference, diff_bucket
from pttfs.dynamics import amos_lif_sequential
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown]
# ## Why the textbook path is slow
#
# `AMOSLIFFunction` (chapter 4) spends one PyTorch operation per equation, and each operation is a full pass over
# `[T, N]` memory with a temporary of its own: the scaled input, the powers $\alpha^{\pm j}$, the cumsum, the
# rescaling, the comparison, the argmax, the spike tensor; in the backward the gathers, two `where`s, the
# surrogate (itself four elementwise operations), the mask, the reversed scan (five more), the division and the τ
# reduction. That is some thirty passes where the data needs three or four, and on a CPU every pass pays for the
# memory traffic, the allocation and the Python dispatch. The method itself is not the problem; the number of
# passes is.
#
# What the neuron *needs* to move, per element of `[T, N]`, in float32:
#
# | pass | reads | writes | bytes per element |
# |---|---|---|---|
# | forward | $X$ | $S$, $H$ | 12 |
# | backward | $\partial\mathcal L/\partial S$, $H$ (and $\partial\mathcal L/\partial H$ if used) | $\partial\mathcal L/\partial X$ | 12 (16) |
# | forward, spikes only | $X$ | $S$ | 8 |
# | backward recomputing $H$ | $X$, $\partial\mathcal L/\partial S$ | $\partial\mathcal L/\partial X$ | 12 |
#
# (The last two rows are the path taken when τ is fixed and nothing downstream reads the membrane, described
# below; a gradient of a sum, one number broadcast, is read once rather than per element.)
#
# plus a few numbers per neuron ($h$, $t_f$, $t_{sf}$, $\delta$). A kernel that moves only this is bound by memory
# bandwidth, and that is the best any implementation of the neuron can do.
#
# ## The kernel: one lane per neuron, time in a loop
#
# Be clear about what kind of parallelism this is. The kernel does **not** run the paper's time-parallel form (the
# cumsum of Eq. 5 and the reversed cumsum of Eq. 19, $O(\log T)$ deep); it runs one neuron per SIMD lane and walks
# **sequentially** over $t$, computing the same closed forms that chapters 2–4 derived: the linear charge, the first
# spike, the second fake spike and the reversed recursion of Eq. 18. That is the right shape when there are many
# more neurons than time steps ($N \gg T$, every layer of the networks in this book: $N$ in the thousands to
# millions, $T \le 8$ in the paper's experiments), because the neurons alone fill every lane of every core and a
# sequential pass touches each element once, while the time-parallel form makes several passes over the same memory
# for the same result. The time-parallel form, the `'torch'` backend, should be the better one when $N$ is too small
# to fill the machine and $T$ is long (a few neurons over thousands of steps, especially on a GPU with thousands of
# threads to fill): then only time offers the parallelism. Chapter 14 races the two there. So the CPU speed-ups of chapter 14 measure fusion (one pass instead of about thirty)
# and the closed-form backward (no step-by-step mask recursion), not a time-parallel scan.
#
# On a CPU the parallel dimension is the neurons: each SIMD lane is one neuron, and a block of neurons walks down
# the time axis together. That loop over $t$ inside the kernel costs nothing extra: there is no reset, so the
# forward is the linear recursion of Eq. 4 (whose every step is one multiply-add), and the backward needs no
# step-by-step mask recursion because Eq. 15 gives the spike gradient in closed form from just two indices per
# neuron, $t_f$ and $t_{sf}$. So:
#
# * **forward**: for each $t$, $H = \alpha H + X[t]/\tau$ (Eq. 4); a crossing (Eq. 8, forced at $T-1$ per Eq. 9)
#   in a neuron that has not fired is its spike (Eqs. 2, 7); a crossing after that, the first one, is its second
#   fake spike. The kernel records $t_f$ and $t_{sf}$ per neuron, so the backward needs no search.
# * **backward**: gather $\partial\mathcal L/\partial S[t_f]$ and $\partial\mathcal L/\partial S[t_{sf}]$ once per
#   neuron, then for $t = T-1, \dots, 0$: $\delta = \alpha\delta + \partial\mathcal L/\partial H[t] + [t \le t_f]\,
#   \frac{d\mathcal L}{dS[t]}\,\Theta'[t]$ (Eqs. 15, 17, 18), $\partial\mathcal L/\partial X[t] = \delta/\tau$, and the τ
#   gradient accumulates $\delta\,(H[t-1] - H[t])$ (chapter 4).
#
# Two details make the inner loops vectorise (GCC turns each into 8 or 16 lanes per instruction): the loops are
# branch-free (selects instead of `if`), and the sigmoid surrogate's exponential is a short polynomial written
# for the purpose, since a call to `exp` would stop the vectoriser. The surrogate derivative is written as
# $\alpha e/(1+e)^2$ with $e = \exp(-|\alpha u|) \le 1$, which equals $\alpha\sigma(1-\sigma)$ and never overflows.
#
# The C++ lives in its own file, `pttfs/csrc/amos_lif.cpp`, shipped with the package. Here are its two core loops,
# read from that file. The forward step, Eqs. 4 and 7–9 for a block of neurons at one $t$:

# %%
#| export
CSRC = Path(str(files('pttfs').joinpath('csrc')))      # package data, next to this module
KERNEL_FILE = CSRC / 'amos_lif.cpp'                     # the kernels: the equations on plain pointers
BUILD_FILES = (KERNEL_FILE, CSRC / 'amos_lif_python.cpp', CSRC / 'amos_lif.h')   # + tensors, autograd node, module
CPP_SOURCE = KERNEL_FILE.read_text()

def kernel_excerpt(name: str,  # a function (or struct) defined at the top level of the kernel file
                  ) -> str:  # its definition, with the `template` line before it, through its closing brace
    "The definition of `name` in pttfs/csrc/amos_lif.cpp, as it stands in the file."
    lines = CPP_SOURCE.splitlines()
    start = next((i for i, line in enumerate(lines) if not line.startswith((' ', '/', '#')) and f' {name}(' in line), None)
    if start is None: raise ValueError(f"{name!r} is not defined at the top level of {KERNEL_FILE.name}")
    if start > 0 and lines[start - 1].startswith('template'): start -= 1
    end = next(i for i in range(start, len(lines)) if lines[i] in ('}', '};'))
    return '\n'.join(lines[start:end + 1])


# %%
Markdown(f"```cpp\n{kernel_excerpt('forward_step')}\n```")

# %% [markdown]
# and the backward step, for $t$ descending: Eq. 15's spike gradient from the two gathered values, Eq. 17's masked
# spatial term, Eq. 18's recursion, $\partial\mathcal L/\partial X = \delta/\tau$ and the τ gradient:

# %%
Markdown(f"```cpp\n{kernel_excerpt('backward_step')}\n```")

# %% [markdown]
# Around them, `forward_kernel` and `backward_kernel` split the neurons into blocks over the cores and run the
# step for $t = 0, \dots, T-1$ (forward) or $t = T-1, \dots, 0$ (backward); the rest of the file is the branch-free
# exponential, $\Theta'$ for each surrogate (`theta_prime`: adding a surrogate means a new `kind` there), the
# bfloat16 conversions and three entry points that take plain pointers. The tensors, the C++ autograd node described
# below and the Python module are in a second file, `pttfs/csrc/amos_lif_python.cpp`, and the two share only a small
# header of those entry points, `amos_lif.h`. The excerpts are read, not copied: asking for a name the file does not
# define is an error.

# %%
test_eq(kernel_excerpt('theta_prime').splitlines()[0], 'template <typename scalar_t>')
test_eq(kernel_excerpt('forward_step').rstrip().endswith('}'), True)
test_fail(lambda: kernel_excerpt('no_such_function'), exc=ValueError, contains='no_such_function')

# %% [markdown]
# ## Building it, or not
#
# The two files are compiled with `torch.utils.cpp_extension.load` the first time a CPU neuron runs (about
# once per install, then cached in `~/.cache/torch_extensions`; `pttfs-train` reports how long it took, apart from its
# epochs), so `pip install pttfs` needs no compiler.
#
# Why two files: a first build's time is mostly the compiler reading PyTorch's C++ headers, which only the side that
# handles tensors and Python needs. The kernels include two small headers (ATen's `parallel_for` and c10's bfloat16),
# the Python side a handful rather than all of `<torch/extension.h>`, and `ninja` compiles the two files side by side,
# one per core. The cell after the build below reads the includes from the files. It is built for the
# machine it runs on (`-march=native`); the build's name includes a hash of the file's contents, the flags, the torch
# version and the CPU's feature flags, so a cache shared between different machines never hands one a binary
# built for another. It is built with OpenMP (`-fopenmp`), because the kernels split the neurons into blocks with
# ATen's `at::parallel_for`, which is an OpenMP pragma in a header: compiled without the flag, it silently runs
# every block on one thread (we measured exactly that: before the flag, two threads were no faster than one).
# A compiler without OpenMP gets the next flag set, and one thread. If the build fails (no compiler, no `ninja`, an unsupported platform), or the environment sets
# `PTTFS_DISABLE_FUSED=1`, the neuron falls back to the `'torch'` backend and says so once, as a warning.

# %%
#| export
# OpenMP first: without -fopenmp, ATen's at::parallel_for (an OpenMP pragma in a header) runs on one thread.
# -ffp-contract=off: GCC would fuse (1 - 1/τ)·h + x/τ into one multiply-add, whose single rounding differs from
# the loop's two; where H lands exactly on V_th, that last bit decides the spike.
_FLAG_SETS = tuple([*flags, '-ffp-contract=off'] for flags in (['-O3', '-march=native', '-fopenmp'], ['-O3', '-fopenmp'], ['-O3']))
_state = {'extension': None, 'error': None, 'build_seconds': 0.0}

def _cpu_signature() -> str:
    "The machine and its CPU feature flags: part of the build's name."
    flags = ''
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith(('flags', 'Features'))), '')
    except OSError: pass
    return platform.machine() + flags


def _compiler_problem() -> str:
    "'' if the C++ compiler the build would use runs, else why not: a build that cannot start is not announced."
    command = shlex.split(os.environ.get('CXX', 'c++')) or ['c++']
    try: ran = subprocess.run([*command, '--version'], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e: return f"no C++ compiler ({' '.join(command)}: {type(e).__name__})"
    return '' if ran.returncode == 0 else f"the C++ compiler {' '.join(command)} does not run (its --version failed)"


def _announce_build(name: str):
    "One line on stderr when this build is not on disk yet: the first call waits for the compiler (said once per process)."
    if _state.get('announced'): return
    try:
        from torch.utils.cpp_extension import _get_build_directory
        folder = _get_build_directory(name, False)
        if any(f.endswith('.so') for f in os.listdir(folder)): return
    except Exception: folder = 'torch extensions folder'
    _state['announced'] = True
    print(f"pttfs: compiling the fused CPU kernel ({', '.join(f.name for f in BUILD_FILES[:2])}) into {folder}; this happens once per install "
          f"(README: Quick start gives the time measured)", file=sys.stderr, flush=True)


# %%
#| export
def load_fused_extension():
    "The compiled fused kernel (built on first call), or None if it cannot be built; the reason is in `fused_error()`."
    if _state['extension'] is not None or _state['error'] is not None: return _state['extension']
    if os.environ.get('PTTFS_DISABLE_FUSED', '') not in ('', '0'):
        _state['error'] = 'disabled by PTTFS_DISABLE_FUSED'
        return None
    problem = _compiler_problem()
    if problem:
        _state['error'] = f'build impossible: {problem}'
        warnings.warn(f"pttfs: the fused CPU kernel cannot be built ({problem}); 'auto' uses the 'torch' backend "
                      f"instead (set PTTFS_DISABLE_FUSED=1 to skip the build)")
        return None
    logger = logging.getLogger('torch.utils.cpp_extension')
    level = logger.level
    logger.setLevel(logging.ERROR)          # silence "No CUDA runtime is found": this build is CPU-only
    errors = []
    try:
        from torch.utils.cpp_extension import load
        for flags in _FLAG_SETS:
            # The source's path is part of the name: two installs (a clone and a wheel) never share a build folder,
            # so neither makes the other rebuild.
            key = '\n'.join([*(f.read_text() for f in BUILD_FILES), str(KERNEL_FILE), ' '.join(flags), torch.__version__,
                             _cpu_signature()])
            name = 'pttfs_fused_' + hashlib.sha256(key.encode()).hexdigest()[:16]
            _announce_build(name)
            start = time.perf_counter()
            try:
                _state['extension'] = load(name=name, sources=[str(f) for f in BUILD_FILES[:2]], extra_cflags=flags,
                                           extra_ldflags=[f for f in flags if f == '-fopenmp'], verbose=False)
                return _state['extension']
            except Exception as e:
                lines = [l for l in str(e).splitlines() if 'error' in l.lower()] or str(e).splitlines() or ['']
                errors.append(f"{type(e).__name__}: {lines[-1].strip()[:300]}")   # the compiler's own error line
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        logger.setLevel(level)
        if _state.get('announced'): _state['build_seconds'] = time.perf_counter() - start    # a compile, not a cache hit
    _state['error'] = 'build failed: ' + ' | '.join(errors)
    warnings.warn(f"pttfs: the fused CPU kernel could not be built ({_state['error']}); the 'torch' backend is used "
                  f"instead (set PTTFS_DISABLE_FUSED=1 to skip the build)")
    return None


def fused_error():
    "Why the fused kernel is not available (None if it is, or has not been tried yet)."
    return _state['error']


def fused_build_seconds() -> float:
    "Seconds this process spent compiling the kernel (0 when it was loaded from the cache, or not loaded)."
    return _state['build_seconds']


# %% [markdown]
# Build it now (this cell's output is not compared: the first run on a machine compiles, later runs find the
# cache):

# %%
# NBVAL_IGNORE_OUTPUT
import time
start = time.perf_counter()
extension = load_fused_extension()
print(f"fused kernel: {'built/loaded' if extension is not None else 'unavailable: ' + str(fused_error())} "
      f"in {time.perf_counter() - start:.1f} s")


# %% [markdown]
# What each file asks the compiler to read: the kernels nothing of PyTorch's tensor or autograd API, the Python side
# no `<torch/extension.h>` (which pulls in all of it):

# %%
def includes(path) -> list:
    "The #include lines of a source file, as written."
    return [line.split(None, 1)[1] for line in path.read_text().splitlines() if line.startswith('#include')]

for f in BUILD_FILES: print(f"{f.name:20} {' '.join(includes(f))}")
test_eq([h for h in includes(KERNEL_FILE) if h.startswith('<torch/')], [])
test_eq('<torch/extension.h>' in includes(BUILD_FILES[1]), False)


# %% [markdown]
# ## The autograd function
#
# The kernel sees `x` as `[T, N]` (the trailing dimensions flattened, which is free for a contiguous tensor) and τ
# either as one number or as one value per neuron (`flat_tau`, `compact_grad` and the other helpers it shares with
# the Triton backend are in chapter 5). There are two ways to give the backward what it needs:
#
# * **recompute** (τ fixed, only the spikes used downstream: every hidden layer of a fixed-τ network): the backward
#   keeps the two index vectors and the input, nothing else; it recomputes the membrane from the input in a first
#   backward sweep, which costs one more read of $X$ but no `[T, N]` tensor written, stored and read back. This
#   path is `AMOSLIFRecompute`, a C++ `torch::autograd::Function` at the end of the kernel file, because the
#   cost there is overhead, not arithmetic: at $2^{10}$–$2^{14}$ neurons the kernels take microseconds, and the
#   Python around them (the context object, saving tensors, the Python backward and its argument handling) took as
#   long. In C++ that overhead mostly goes; the bare cost of a Python `autograd.Function` alone is some
#   microseconds (measured at the end of this chapter). In inference it skips the graph and does not even allocate $t_f$, $t_{sf}$.
# * **store** (a learnable τ, or the membrane as an output): the forward stores $H$, which the τ gradient and
#   $\partial\mathcal L/\partial H$ need, and the backward reads it. This path is the Python class below.

# %%
#| export
class FusedAMOSLIFFunction(torch.autograd.Function):
    "AMOS LIF with the fused C++ kernels, H stored: forward Eqs. 4, 7–9; backward Eqs. 15–18 and the τ gradient."
    @staticmethod
    def forward(ctx, x, tau, v_threshold, surrogate, force_last, return_membrane):
        extension = load_fused_extension()
        x = x.contiguous()
        tau_flat, tau_scalar = flat_tau(tau, x)                 # one τ: a number, no [N] tensor to read
        if tau_flat is None: tau_flat = _EMPTY_OF[x.dtype]
        store = return_membrane or any(ctx.needs_input_grad[:2])
        spikes, membrane, first, second = extension.amos_forward(x, tau_flat, tau_scalar, v_threshold, force_last, store, True)
        ctx.save_for_backward(membrane, tau_flat, first, second)
        ctx.tau_scalar, ctx.v_threshold, ctx.force_last = tau_scalar, v_threshold, force_last
        ctx.tau_shape = tau.shape if isinstance(tau, Tensor) else None
        ctx.kind, ctx.alpha = _SURROGATE_KIND[type(surrogate)], surrogate.alpha
        ctx.set_materialize_grads(False)
        return spikes, (membrane if return_membrane else None)

    @staticmethod
    def backward(ctx, grad_spikes, grad_membrane):
        membrane, tau_flat, first, second = ctx.saved_tensors
        grad_spikes = torch.zeros(1, dtype=membrane.dtype) if grad_spikes is None else compact_grad(grad_spikes)
        grad_membrane = grad_membrane.contiguous() if grad_membrane is not None else _EMPTY_OF[membrane.dtype]
        need_tau = ctx.needs_input_grad[1]
        grad_x, grad_tau = load_fused_extension().amos_backward(
            grad_spikes, grad_membrane, membrane, tau_flat, ctx.tau_scalar, first, second,
            ctx.v_threshold, ctx.force_last, ctx.kind, ctx.alpha, need_tau)
        if need_tau: grad_tau = reduce_tau_grad(grad_tau, membrane.shape[1:], ctx.tau_shape)
        return grad_x, (grad_tau if need_tau else None), None, None, None, None



# %% [markdown]
# It becomes the `'cpu-fused'` backend of `amos_lif_parallel` for what it supports: CPU tensors in float32 or
# float64 with a `Sigmoid` or `ATan` surrogate (any other callable has no closed-form Θ' the kernel knows, so it
# goes to `'torch'`), and bfloat16 for the recomputing path described below (`reads_bfloat16=True`).

# %%
#| export
def _fused_supports(x: Tensor, tau, surrogate) -> str:
    if x.device.type != 'cpu': return f"x is on {x.device}, not the CPU"
    limits = kernel_limits(x, surrogate)
    if limits: return limits
    if load_fused_extension() is None: return f"unavailable: {fused_error()}"
    return ''

def _fused_backend(x, tau, v_threshold, surrogate, force_last, return_membrane=True):
    learns_tau = isinstance(tau, Tensor) and tau.requires_grad and torch.is_grad_enabled()
    if return_membrane or learns_tau:                      # H is an output or feeds the τ gradient: store it
        return FusedAMOSLIFFunction.apply(x, tau, v_threshold, surrogate, force_last, return_membrane)
    tau_flat, tau_scalar = flat_tau(tau, x)                # otherwise recompute it, in the C++ autograd node
    return load_fused_extension().amos_lif_recompute(x, _EMPTY_OF[torch.float32 if x.dtype == torch.bfloat16 else x.dtype] if tau_flat is None else tau_flat, tau_scalar,
                                                     v_threshold, force_last, _SURROGATE_KIND[type(surrogate)], surrogate.alpha), None

register_backend('cpu-fused', _fused_backend, _fused_supports, devices=('cpu',), reads_bfloat16=True)

# %%
from pttfs.backends import choose_backend
x = torch.randn(8, 4)
box = lambda u: (u >= 0).to(u.dtype)
print("auto, float32, Sigmoid ->", choose_backend(x, 2.0, Sigmoid()))
print("auto, float64, ATan    ->", choose_backend(x.double(), 2.0, ATan()))
print("auto, custom surrogate ->", choose_backend(x, 2.0, box))
test_fail(lambda: choose_backend(x, 2.0, box, backend='cpu-fused'), exc=ValueError, contains='surrogate')
test_fail(lambda: choose_backend(x, 2.0, Sigmoid(), backend='gpu'), exc=ValueError, contains='backend')

# %% [markdown]
# ## The checks
#
# Everything chapter 4 checked, now for this backend: float64, learnable τ (one, or one per neuron), random
# upstream gradients on spikes and membrane, both `force_last` modes, T from 1 to 512. We expect identical spikes
# and differences at float64 rounding (the forward performs exactly the loop's arithmetic, so its membrane is
# bit-identical):

# %%
from functools import partial
fused = partial(amos_lif_parallel, backend='cpu-fused')        # the implementation compare_with_reference checks
worst = 0.0
print(f"{'T':>4} {'tau':>7} {'force':>5} {'tau/neuron':>10} | {'spikes':>6} | {'within 1e-12':>12}")
for T in [1, 2, 16, 65, 512]:
    for tau in [1.01, 2.0, 1000.0]:
        for force_last in [False, True]:
            r = compare_with_reference(fused, T, tau, force_last, tau_per_neuron=(T % 2 == 0))
            diff = max(r['membrane'], r['grad_x'], r['grad_tau'])
            print(f"{T:4} {tau:7} {force_last!s:>5} {T % 2 == 0!s:>10} | {'exact' if r['spikes_equal'] else 'DIFF':>6} | {diff < 1e-12!s:>12}")
            test_eq(r['spikes_equal'], True)
            worst = max(worst, diff)
test_eq(worst < 1e-10, True)

# %%
for name, kwargs in [("ATan", dict(surrogate=ATan())), ("[T,B,C,H,W], tau per W", dict(trailing=(2, 3, 4, 5), tau_per_neuron=True)),
                     ("float32", dict(dtype=torch.float32))]:
    r = compare_with_reference(fused, 40, 3.0, False, **kwargs)
    tolerance = 1e-10 if kwargs.get('dtype') != torch.float32 else 1e-4 * max(1.0, r['grad_x_scale'])
    ok = max(r['membrane'], r['grad_x']) < tolerance
    print(f"{name:24} spikes {'exact' if r['spikes_equal'] else 'DIFF'}, within tolerance: {ok}")
    test_eq(ok, True)

# %% [markdown]
# `compare_with_reference` always asks for the τ gradient and the membrane, so it exercises the stored-membrane
# path. The recomputing path (fixed τ, one or one per neuron, spikes only: the C++ node `AMOSLIFRecompute`),
# against the loop's gradient in float64:

# %%
worst = 0.0
for T, tau, force_last in [(1, 2.0, False), (2, 2.0, True), (30, 1.01, False), (300, 2.0, True), (300, 1000.0, False)]:
    for per_neuron in [False, True]:
        g = torch.Generator().manual_seed(T)
        x = 1 + 1.5 * torch.randn(T, 3, 50, generator=g, dtype=torch.float64)
        tau_value = tau * (1 + torch.rand(50, generator=g, dtype=torch.float64)) if per_neuron else tau
        upstream = torch.randn(T, 3, 50, generator=g, dtype=torch.float64)
        grads = []
        for neuron in (lambda x: amos_lif_parallel(x, tau_value, 1.2, force_last=force_last, backend='cpu-fused', return_membrane=False)[0],
                       lambda x: amos_lif_sequential(x, tau_value, 1.2, force_last=force_last)[0]):
            x_ = x.clone().requires_grad_()
            (neuron(x_) * upstream).sum().backward()
            grads.append(x_.grad)
        worst = max(worst, (grads[0] - grads[1]).abs().max().item())
x_ = torch.randn(5, 3, requires_grad=True)
learnable = torch.full((3,), 2.0, requires_grad=True)
for what, tau_value, membrane in [("one fixed tau", 2.0, False), ("fixed tau per neuron", torch.full((3,), 2.0), False),
                                  ("learnable tau", learnable, False), ("membrane returned", 2.0, True)]:
    print(f"grad_fn, {what + ':':22}", amos_lif_parallel(x_, tau_value, return_membrane=membrane)[0].grad_fn.name())
print("recomputing backward vs BPTT, worst |dL/dX| difference below 1e-12:", worst < 1e-12)
test_eq(worst < 1e-10, True)

# %% [markdown]
# ### Fewer bytes: bfloat16 currents and 8-bit spike times
#
# A hidden layer's call is memory traffic more than arithmetic: at $T = 1$ the kernel does a few dozen operations
# per neuron and moves every byte of $x$, $S$, $t_f$, $t_{sf}$ and the gradients once. Two changes cut those bytes
# without changing a single result:
#
# * **8-bit spike times.** The recomputing node keeps $t_f$ and $t_{sf}$ for the backward. Their values are
#   $0, \dots, T-1$ and "none" ($T$), so for $T \le 255$ they fit in a byte: a quarter of int32's traffic.
# * **bfloat16 in and out.** Under bfloat16 autocast (`pttfs-train --bf16`) the convolution hands the neuron a
#   bfloat16 current. Casting it to float32, calling the float32 kernel and casting the spikes back costs two extra
#   passes forward and two backward. The kernel can instead read bfloat16 and write bfloat16, computing in float32
#   in between: widening bfloat16 to float32 is exact (the upper 16 bits of a float32), spikes are 0 or 1 in either
#   type, and the gradient is rounded to bfloat16 once, to the nearest even, as PyTorch's cast rounds it. So the
#   spikes and $\partial\mathcal L/\partial X$ must equal the cast path's bit for bit. (The backward keeps its
#   float32 spatial terms in a scratch block between its two sweeps, rather than in the bfloat16 output.)
#
# Checked, for $T = 1$ and $3$ (8-bit times) and $300$ (int32), one τ and one per neuron, a random upstream gradient
# and the gradient of a sum (one number broadcast, which the kernel reads without materialising it):

# %%
rows = []
for T in (1, 3, 300):
    for per_neuron in (False, True):
        g = torch.Generator().manual_seed(T)
        x = (1 + 1.5 * torch.randn(T, 4, 300, generator=g)).to(torch.bfloat16)
        tau_value = 2 * (1 + torch.rand(300, generator=g)) if per_neuron else 2.0
        upstream = torch.randn(T, 4, 300, generator=g).to(torch.bfloat16)
        for how in ('random', 'sum'):
            results = []
            for uncast in (True, False):
                x_ = x.clone().requires_grad_()
                spikes = amos_lif_parallel(x_ if uncast else x_.float(), tau_value, 1.2, return_membrane=False)[0]
                spikes = spikes.to(torch.bfloat16)                        # a no-op for the uncast call
                (spikes * upstream if how == 'random' else spikes).sum().backward()
                results.append((spikes.detach(), x_.grad))
            (s_native, g_native), (s_cast, g_cast) = results
            test_eq(g_native.dtype, torch.bfloat16)
            test_eq((torch.equal(s_native, s_cast), torch.equal(g_native, g_cast)), (True, True))   # bit for bit
            rows.append(f"T={T:3} τ {'per neuron' if per_neuron else 'one       '} {how:6} | spikes {diff_bucket(s_native.float(), s_cast.float()):6} | dL/dX {diff_bucket(g_native.float(), g_cast.float())}")
print('\n'.join(rows))

# %% [markdown]
# `return_membrane=False` skips writing $H$ when nothing needs it (inference), and gives the same spikes:

# %%
torch.manual_seed(0)
x = 1 + torch.randn(64, 1000)
with torch.no_grad():
    spikes_only, none = amos_lif_parallel(x, 2.0, backend='cpu-fused', return_membrane=False)
test_eq(none, None)
test_eq(spikes_only, amos_lif_parallel(x, 2.0, backend='torch')[0])
print("spikes without membrane: identical to the torch backend")


# %% [markdown]
# ### Ties
#
# "Exactly the loop's arithmetic" includes its rounding. Where $H[t]$ lands exactly on $V_{th}$, the spike hangs on
# the last bit, and a compiler that fuses $(1-1/\tau)\,h + x/\tau$ into one multiply-add (one rounding instead of
# two) would move it. The kernel is compiled with `-ffp-contract=off` for that reason. To check, we craft inputs
# whose second membrane is exactly $V_{th} = 1$ in the loop's own arithmetic: the loop fires at $t = 1$ in every one
# of them, and we expect the fused kernel to agree on every one. The time-parallel `'torch'` scan sums in another
# order (chunked Eq. 5), so at an exact tie its $H$ may sit one rounding below $V_{th}$: it agrees with the loop
# wherever $|H - V_{th}|$ exceeds that rounding, and not always at a tie.

# %%
def crafted_ties(n: int, tau: float, dtype, seed: int = 0) -> Tensor:
    "Two-step inputs [2, n] whose second membrane lands exactly on V_th = 1 in the loop's own arithmetic."
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    decay = 1 - 1 / torch.tensor(tau, dtype=dtype)
    h0 = decay * 0 + x0 / tau
    x1 = (1 - decay * h0) * tau                       # solve decay·h0 + x1/τ = 1 ...
    tie = decay * h0 + x1 / tau == 1                   # ... and keep the inputs where rounding lands exactly on it
    return torch.stack([x0, x1])[:, tie]

for dtype in (torch.float64, torch.float32):
    x = crafted_ties(20000, 3.0, dtype)
    reference = amos_lif_sequential(x, 3.0)[0]
    fused = amos_lif_parallel(x, 3.0, backend='cpu-fused')[0]
    scan = amos_lif_parallel(x, 3.0, backend='torch')[0]
    print(f"{str(dtype):14} {x.shape[1]:6} ties | loop fires at t=1: {int(reference[1].sum()):6} | cpu-fused differs: "
          f"{int((fused != reference).any(0).sum()):3} | torch scan differs: {int((scan != reference).any(0).sum()):5}")
    test_eq(fused, reference)

# %% [markdown]
# ### Long T: a rounding can move a spike by several steps
#
# Ties are not the only place the `'torch'` scan and the loop part. With a slow neuron (large $\tau$) and a long
# sequence, the membrane can creep along $V_{th}$ for many steps, each within a few roundings of it; the scan's
# membrane differs from the loop's by a few tens of float32 roundings at $T = 4096$, and a neuron on such a plateau
# may cross it some steps earlier or later. Ordinary random input, no crafted ties: we expect the fused kernel to
# agree with the loop on every neuron, and the scan to move the first spike of a few neurons in thousands (which
# ones depends on the CPU's vector width), possibly by several steps. For float32 work at long T where every spike must be the loop's, use `'cpu-fused'`
# (`'auto'` picks it on the CPU) or float64.

# %%
# NBVAL_IGNORE_OUTPUT
torch.manual_seed(2)                # (the scan's roundings depend on the CPU's vector width: output not compared)
x = torch.rand(4096, 2000)                                            # T = 4096 steps, 2000 neurons, float32
reference, ref_membrane = amos_lif_sequential(x, 1000.0, 0.3911)
first = lambda s: torch.where(s.sum(0) > 0, s.argmax(0), -1)
fused = amos_lif_parallel(x, 1000.0, 0.3911, backend='cpu-fused')[0]
scan, scan_membrane = amos_lif_parallel(x, 1000.0, 0.3911, backend='torch', return_membrane=True)
shift = (first(scan) - first(reference)).abs()
roundings = ((scan_membrane - ref_membrane).abs() / (torch.finfo(torch.float32).eps * ref_membrane.abs())).max()
print(f"cpu-fused: {int((first(fused) != first(reference)).sum())} of 2000 first spikes moved | torch scan: "
      f"{int((shift > 0).sum())} moved, the largest by {int(shift.max())} steps; membrane within {roundings:.0f} roundings")
test_eq(fused, reference)
assert roundings < 100                             # close in value; the spikes it moves are on such plateaus


# %% [markdown]
# ## How fast, and why
#
# A single measurement here, at $N = 2^{14}$ neurons, float32, training mode (forward and backward of the sum of
# the spikes, only the spikes returned: the path a hidden layer takes), against the textbook backend and the
# bandwidth bound: the bytes the fused kernels must move (the table above: 8 bytes per element forward, 8 backward
# since the gradient of a sum is one number) divided by the copy bandwidth measured for the same size. The full sweep,
# against SpikingJelly's LIF and PSN neurons, is chapter 14. (Timings vary from run to run; this cell's
# output is not compared.) Most of the remaining gap to the bound is not arithmetic: the bound's copy writes into
# memory already touched, while a fresh output pays, on its first touch, a page fault per 4 KiB (slow on many
# virtual machines), which is why the kernel asks Linux for huge pages on large outputs (`advise_huge_pages`, in the
# kernel file).

# %%
#| fig-cap: One training step of a hidden layer's neuron (N = 2^14, float32, timed on the machine that ran this page): the textbook backend, the fused kernel, and the bandwidth bound, the time to move the bytes the kernels must move. Look at the gap between the first two bars, and how close the second comes to the third.
# NBVAL_IGNORE_OUTPUT
def median_ms(fn, repeats=21):
    for _ in range(3): fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]

def train_step(backend, x):
    x = x.clone().requires_grad_()
    amos_lif_parallel(x, 2.0, backend=backend, return_membrane=False)[0].sum().backward()

torch.manual_seed(0)
measured = []
print(f"{'T':>4} | {'torch ms':>9} {'fused ms':>9} {'speed-up':>8} | {'bound ms':>8} {'fused/bound':>11}")
for T in [16, 64, 256]:
    x = torch.randn(T, 2**14)
    copy_ms = median_ms(lambda: x.clone())                       # reads 4 B and writes 4 B per element
    bound = copy_ms * 16 / 8
    textbook, fused = median_ms(lambda: train_step('torch', x)), median_ms(lambda: train_step('cpu-fused', x))
    print(f"{T:4} | {textbook:9.3f} {fused:9.3f} {textbook / fused:7.1f}x | {bound:8.3f} {fused / bound:10.1f}x")
    measured.append((T, textbook, fused, bound))
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6.5, 3))
for k, (label, column) in enumerate([("'torch' (textbook)", 1), ("'cpu-fused'", 2), ('bandwidth bound', 3)]):
    ax.bar([i + 0.27 * (k - 1) for i in range(len(measured))], [row[column] for row in measured], 0.27, label=label)
ax.set(xticks=range(len(measured)), xticklabels=[f"T = {row[0]}" for row in measured], ylabel='ms per training step', yscale='log')
ax.legend(fontsize=8); fig.tight_layout(); plt.show()

# %% [markdown]
# Two claims of this chapter, measured here rather than asserted (timings, not compared). The kernels split the
# neurons over the cores, so with two *free* cores two threads take less time than one at a size where the work
# dominates (at best half: where memory bandwidth, shared by the cores, is the limit, less is gained); where
# another process keeps a core busy, the second thread waits for it and the step takes longer instead, which is
# why `pttfs-train --threads 1` is the choice beside other work. The cell prints both for the machine as it is when
# the chapter runs, whichever of the two that is. The second claim: the fixed per-call cost of a Python `autograd.Function`, which `AMOSLIFRecompute` avoids, is the
# difference between a training step through a Python function that does nothing and the same step through a C++
# operation that does as little (`view_as`):

# %%
# NBVAL_IGNORE_OUTPUT
x, threads = torch.randn(16, 2**18), torch.get_num_threads()
for n in sorted({1, threads}):
    torch.set_num_threads(n)
    print(f"T=16, N=2^18, {n} thread(s): {median_ms(lambda: train_step('cpu-fused', x)):.2f} ms per training step")
torch.set_num_threads(threads)

class DoNothing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x.view_as(x)
    @staticmethod
    def backward(ctx, grad): return grad

def step(function, x):
    x = x.clone().requires_grad_()
    function(x).sum().backward()

small = torch.randn(16, 2**10)
python_ms = median_ms(lambda: step(DoNothing.apply, small), repeats=201)
cpp_ms = median_ms(lambda: step(lambda x: x.view_as(x), small), repeats=201)
print(f"a Python autograd.Function costs {1e3 * (python_ms - cpp_ms):.1f} us more per training step than a C++ op")

# %% [markdown]
# ## Summary
# The fused kernel computes the neuron's forward and its exact parallel backward in one pass each, reading and
# writing only what the equations need: one neuron per SIMD lane, time in the loop, $t_f$ and $t_{sf}$ recorded
# on the way forward so that Eq. 15 costs two gathers on the way back; blocks of neurons spread over the cores
# with OpenMP, and the common fixed-τ call is a single C++ autograd node. It agrees with BPTT to float64 rounding,
# compiles at first use, and falls back to the textbook backend, with one warning, where it cannot be built.

# %% [markdown]
# ## Exercises
#
# 1. Time a training step of `AMOSLIF` for N = 2^16, T = 16 with the kernel and with `PTTFS_DISABLE_FUSED=1` (a fresh process each). Predict the ratio first from the number of passes over memory each makes.
# 2. Add the `FastSigmoid` of exercise 0.1 to the kernel: a number in `_SURROGATE_KIND` and a branch in `theta_prime`; check it with `compare_with_reference(partial(amos_lif_parallel, backend='cpu-fused'), ...)`.
# 3. The kernel stores $t_f$ and $t_{sf}$ in 8 bits when T ≤ 255. Why 255 and not 256? What would a 16-bit variant cost and save?

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
