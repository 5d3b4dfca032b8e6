# %% [markdown]
# # Parallel charging
#
# > Eqs. 5–6: the membrane potential of every time step at once, with a cumulative sum instead of a loop. The literal formula overflows; we derive a chunked form that is exact and finite for any T.

# %% [markdown]
# After this chapter you can compute the membrane of all T steps at once with a cumulative sum, say where the paper's literal Eq. 5 overflows, and use `leaky_scan`, which never does.

# %%
#| default_exp charging

# %%
#| export
import math
import torch
from torch import Tensor
from pttfs.dynamics import tau_tensor

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
from pttfs.dynamics import amos_lif_sequential
from pttfs.dynamics import diff_bucket
torch.set_printoptions(precision=4, sci_mode=False)


# %% [markdown]
# ## Why charging parallelises
#
# An AMOS neuron never resets: Eq. 4 does not depend on the spikes (Eq. 2) or the mask (Eq. 3). So the whole
# membrane trajectory is a linear function of the input, and we may unroll the recursion
# $H[t] = \alpha H[t-1] + X[t]/\tau_m$:
#
# $$H[t] = \frac{1}{\tau_m}\sum_{k=0}^{t} \alpha^{t-k} X[k] = \frac{1}{\tau_m}\,\alpha^{t}\sum_{k=0}^{t} \alpha^{-k} X[k].$$
#
# Factoring $\alpha^{t-k} = \alpha^t \alpha^{-k}$ turns the sum into a prefix sum, which is the paper's Eq. 5:
#
# $$\mathbf{H} = \frac{1}{\tau_m}\,\mathbf{A} \odot \mathrm{cumsum}(\mathbf{A}^{-} \odot \mathbf{X}), \qquad
# \mathbf{A} = [\alpha^0, \dots, \alpha^{T-1}],\ \mathbf{A}^{-} = [\alpha^0, \dots, \alpha^{1-T}], \qquad (5)$$
#
# with $\mathrm{cumsum}(x)[t] = \sum_{k \le t} x[k]$ (Eq. 6). A cumsum is a parallel scan: $O(T)$ work and
# $O(\log T)$ depth on a GPU. Here it is, verbatim:

# %%
#| export
def charge_eq5(x: Tensor,  # input current X, shape [T, *]
               tau=2.0,  # τ_m > 1, a number or a tensor broadcasting to x.shape[1:]
              ) -> Tensor:  # membrane H, shaped like x
    "Eq. 5 verbatim, H = (1/τ) A ⊙ cumsum(A⁻ ⊙ X). Overflows for long T (see below): use `charge`."
    tau = tau_tensor(tau, x)
    decay = 1 - 1 / tau
    t = torch.arange(x.shape[0], device=x.device).view(-1, *([1] * (x.dim() - 1)))
    return decay ** t * torch.cumsum(decay ** (-t) * x, dim=0) / tau


# %% [markdown]
# On a short sequence it agrees with the loop of chapter 1 (we expect agreement to float64 rounding, ~1e-16):

# %%
torch.manual_seed(0)
x = torch.randn(16, 5, dtype=torch.float64)
reference = amos_lif_sequential(x, tau=2.0)[1]
print(f"max |Eq.5 - loop| = {(charge_eq5(x) - reference).abs().max().item():.0e}")
test_close(charge_eq5(x), reference, eps=1e-14)


# %% [markdown]
# ## Where Eq. 5 breaks
#
# $\mathbf{A}^{-}$ grows like $\alpha^{-t} = (1 - 1/\tau_m)^{-t}$. With the common $\tau_m = 2$ that is $2^{t}$, and
# float32 ends at $2^{128}$: from $T = 129$ on, $\alpha^{-128} = \infty$ and the membrane becomes `inf`/`nan`. In
# float16 (max 65504) it already breaks at $T = 17$. The paper's own benchmark sweeps $T$ up to $2^8$ and beyond.
# We expect the table to turn from `True` to `False` exactly at those lengths:

# %%
def finite_eq5(T, dtype, tau=2.0):
    x = torch.rand(T, 8).to(dtype)
    return torch.isfinite(charge_eq5(x, tau)).all().item()

torch.manual_seed(0)
print(f"{'dtype':9} {'T':>5}  finite")
for dtype, Ts in [(torch.float32, [64, 128, 129, 256]), (torch.float16, [16, 17, 128])]:
    for T in Ts: print(f"{str(dtype)[6:]:9} {T:5}  {finite_eq5(T, dtype)}")
test_eq(finite_eq5(128, torch.float32), True)
test_eq(finite_eq5(129, torch.float32), False)
test_eq(finite_eq5(16, torch.float16), True)
test_eq(finite_eq5(17, torch.float16), False)

# %% [markdown]
# The table holds τ = 2 fixed. For any τ the overflow comes where $\alpha^{-t}$ passes the largest number of the
# dtype, $t \ln(1/\alpha) > \ln(\text{max})$, so the longest finite run is about $T \approx \ln(\text{max}) / \ln(1/\alpha)$,
# which for large τ is $\approx \tau \ln(\text{max})$: a straight line of slope 1 on log–log axes, 11τ for float16, 89τ
# for float32 and 710τ for float64 (bfloat16 has float32's range). We measure it from `charge_eq5` itself, as the first
# step where the membrane stops being finite for a constant input of 0.5 (a larger input overflows the cumsum's
# total a step or two earlier), and draw the formula as a dashed line over it. float16 falls below its line for large τ: the
# cumsum's total is about τ times its last term (here $0.5\,\tau\,\alpha^{-t}$ against the line's $\alpha^{-t}$), which
# costs about $\ln(\tau/2)/\ln(1/\alpha)$ steps: a large share of float16's short range, a small one of float32's:

# %%
#| fig-cap: The first step where the literal Eq. 5 stops being finite, against τ, per dtype (dashed: the formula): at small τ float16 and float32 run out of range within tens to hundreds of steps, which is why this chapter scans in chunks.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt

def longest_finite_eq5(tau, dtype):
    "The number of leading steps where the literal Eq. 5 gives a finite membrane, for a constant input of 0.5."
    T = int(min(1.2 * tau * math.log(torch.finfo(dtype).max) + 20, 2_000_000))
    H = charge_eq5(torch.full((T, 1), 0.5, dtype=dtype), tau)[:, 0]
    bad = (~torch.isfinite(H)).nonzero()
    return bad[0].item() if len(bad) else T

taus = [1.05, 1.2, 1.5, 2, 3, 5, 10, 20, 50, 100, 300, 1000]
fig, ax = plt.subplots(figsize=(6, 3.6))
for dtype, colour in [(torch.float16, 'C3'), (torch.float32, 'C0'), (torch.float64, 'C2')]:
    ax.plot(taus, [longest_finite_eq5(tau, dtype) for tau in taus], 'o', color=colour, label=str(dtype)[6:])
    formula = [1 + math.log(torch.finfo(dtype).max) / -math.log(1 - 1 / tau) for tau in taus]
    ax.plot(taus, formula, '--', color=colour, lw=1)
ax.axhline(256, color='k', lw=0.8, ls=':'); ax.text(300, 290, 'T = 256', fontsize=8)
ax.set(xscale='log', yscale='log', xlabel='τ_m', ylabel='longest T with a finite membrane',
       title='Where the literal Eq. 5 overflows (below each line: finite)')
ax.legend(); plt.show()
test_eq(longest_finite_eq5(2.0, torch.float32), 128)      # the table above: T = 128 finite, T = 129 not
test_eq(longest_finite_eq5(2.0, torch.float16), 16)

# %% [markdown]
# Before it overflows, the product $\alpha^{t}\cdot\mathrm{cumsum}(\dots)$ is harmless. The cumsum adds the
# terms $\alpha^{-k}x[k]/\tau_m$, each rescaled by its own $\alpha^{-k}$, and its rounding error is at most about
# $t\,\epsilon$ times the sum of their magnitudes. Multiplying by $\alpha^{t}$ turns that bound into
# $t\,\epsilon\sum_{k\le t}\alpha^{t-k}|x[k]|/\tau_m$: the sum of the magnitudes of the loop's own terms, the decayed
# inputs $\alpha^{t-k}x[k]/\tau_m$. So the relative accuracy is the loop's, and the problem is only the *range* of
# $\alpha^{-t}$.

# %% [markdown]
# ## Chunked Eq. 5: exact and finite for any T
#
# Split time into chunks of length $L$ and apply Eq. 5 *inside* each chunk, counting exponents from the chunk's
# start. Write $t = cL + j$ ($c$ the chunk, $0 \le j < L$ the offset). Unrolling Eq. 4 back only to the end of the
# previous chunk gives
#
# $$H[cL + j] = \underbrace{\frac{1}{\tau_m}\,\alpha^{j}\sum_{i=0}^{j}\alpha^{-i} X[cL + i]}_{\text{Eq. 5 on chunk } c:\ \ \mathrm{local}[c, j]}
# \; + \; \alpha^{j+1} H[cL - 1].$$
#
# Inside a chunk the exponents only reach $\alpha^{-(L-1)}$; we choose $L$ so that $\alpha^{-(L-1)} \le 2^{64}$,
# far inside float32's range. The chunk ends $E[c] = H[cL + L - 1]$ obey the same kind of recursion, one step per
# chunk,
#
# $$E[c] = \alpha^{L} E[c-1] + \mathrm{local}[c, L-1],$$
#
# a leaky scan of $T/L$ values with decay $\beta = \alpha^L$. We solve it with a *doubling* (Hillis–Steele) scan:
# after the step with offset $d$, $y[i] \mathrel{+}= \beta^{d}\, y[i-d]$, each $y[i]$ holds the sum over a window
# of $2d$ chunks, so $\lceil\log_2(T/L)\rceil$ vectorised steps finish it. Only non-negative powers of $\beta$
# appear, and they can only underflow to 0, which is harmless.
#
# **Cost.** Three elementwise passes and one cumsum over $[T, N]$ for the chunks, plus
# $O\big(\tfrac{T}{L}\log\tfrac{T}{L}\big)$ per neuron for the chunk ends: $O(T)$ work for fixed $\tau$, and
# $O(\log T)$ depth. With $\tau = 2$, $L = 65$: $T = 4096$ is 64 chunks and 6 doubling steps. For
# $\tau = 1000$, $L$ exceeds any practical $T$ and `leaky_scan` *is* Eq. 5, one chunk. The Python loop runs over
# the doubling steps, never over $t$.
#
# **Large inputs.** The bound $2^{64}$ leaves room for inputs of moderate size only: a term $\alpha^{-i}X[i]$ must
# stay finite too, and so must a chunk's sum of up to $L$ of them. In float32 an input of $4\cdot10^{19}$ times
# $2^{64}$ is already past $2^{128}$, and the scan would return $-\infty$ where the loop has a finite membrane. So
# the budget shrinks with the largest input: we ask $T\cdot\max|X|\cdot\alpha^{-(L-1)} \le \tfrac12\,$(largest
# float), i.e. at most $\log_2\frac{\text{largest float}}{T\max|X|} - 1$ bits (`exponent_budget`), and never
# more than 64. For ordinary inputs nothing changes. At the extreme, an input near the largest float, $L = 1$:
# every step is its own chunk and the doubling scan does all the work, $O(T\log T)$ but still exact. Nothing in
# the scan divides by the input's size, so small inputs beside a huge one keep all their digits.

# %%
#| export
_EXPONENT_BUDGET_BITS = 64  # α^-(L-1) ≤ 2^64 inside a chunk; float32 overflows at 2^128

def chunk_length(decay: Tensor,  # α, a tensor (one value or one per neuron)
                 T: int,  # number of time steps
                 budget_bits: float = _EXPONENT_BUDGET_BITS,  # how far α^-(L-1) may grow, in bits (see `exponent_budget`)
                ) -> int:
    "The longest chunk L ≤ T on which Eq. 5 keeps α^-(L-1) ≤ 2^budget_bits for the smallest α."
    smallest = float(decay.detach().min())
    if smallest <= 0 or budget_bits <= 0: return 1   # α = 0 (no memory), or no room to scale: every step its own chunk
    log_inverse = -math.log(smallest)     # ln(1/α) ≥ 0
    if log_inverse == 0: return T
    return max(1, min(T, 1 + int(budget_bits * math.log(2) / log_inverse)))


def exponent_budget(x: Tensor,  # the sequence to scan, shape [T, *]
                   ) -> float:  # bits: α^-(L-1) ≤ 2^bits keeps every scaled term and every chunk sum finite
    "min(64, log2(largest float / (T · max|x|)) − 1): the room that x's own magnitude leaves for Eq. 5's growing factor."
    # max|x| over the finite values only: a NaN or inf spoils its own neuron whatever we do, but must not take
    # the guard away from a finite neighbour at 1e30.
    magnitude = x.detach().abs()
    biggest = float(torch.where(torch.isfinite(magnitude), magnitude, 0).max()) if x.numel() else 0.0
    if biggest == 0: return _EXPONENT_BUDGET_BITS                   # all zeros (or nothing finite): no scaling limit
    room = math.log2(torch.finfo(x.dtype).max) - math.log2(biggest) - math.log2(x.shape[0]) - 1
    return min(_EXPONENT_BUDGET_BITS, room)


# %%
for tau in [1.0001, 1.5, 2.0, 10.0, 1000.0]:
    print(f"tau = {tau:>9}: L = {chunk_length(torch.tensor(1 - 1 / tau), 10**6)}")
test_eq(chunk_length(torch.tensor(0.5), 10**6), 65)        # 2^64 = 0.5^-64, so L - 1 = 64
test_eq(chunk_length(torch.tensor(0.5), 10), 10)
test_eq(chunk_length(torch.tensor(0.5), 10**6, budget_bits=-3), 1)


# %%
#| export
def _doubling_scan(y: Tensor, decay: Tensor) -> Tensor:
    "Hillis–Steele scan of y[i] ← decay·y[i-1] + y[i] over dim 0, in ⌈log2 n⌉ vectorised steps."
    n, offset, power = y.shape[0], 1, decay
    while offset < n:
        y = torch.cat([y[:offset], y[offset:] + power * y[:-offset]])   # power = decay**offset
        power, offset = power * power, 2 * offset
    return y


def leaky_scan(x: Tensor,  # sequence over dim 0, shape [T, *]
               decay: Tensor,  # α in [0, 1), a tensor broadcasting to x.shape[1:]
              ) -> Tensor:  # y with y[t] = α·y[t-1] + x[t], y[-1] = 0; shaped like x
    "The linear recursion y[t] = α·y[t-1] + x[t], in parallel over t: chunked Eq. 5, exact and finite for any T."
    T, rest = x.shape[0], x.shape[1:]
    L = chunk_length(decay, T, exponent_budget(x))
    n_chunks = -(-T // L)
    if n_chunks * L > T: x = torch.cat([x, x.new_zeros((n_chunks * L - T, *rest))])
    chunks = x.reshape(n_chunks, L, *rest)
    j = torch.arange(L, device=x.device).view(L, *([1] * len(rest)))
    local = decay ** j * torch.cumsum(decay ** (-j) * chunks, dim=1)          # Eq. 5 inside every chunk
    if n_chunks > 1:
        ends = _doubling_scan(local[:, -1], decay ** L)                        # E[c] = H at each chunk's end
        previous_end = torch.cat([torch.zeros_like(ends[:1]), ends[:-1]])      # E[c-1], 0 before the first
        local = local + decay ** (j + 1) * previous_end.unsqueeze(1)          # + α^(j+1) H[cL-1]
    return local.reshape(n_chunks * L, *rest)[:T]


# %%
show_doc(leaky_scan)


# %% [markdown]
# The charge of Eq. 4 is this scan of the scaled input $X/\tau_m$ with decay $\alpha$:

# %%
#| export
def charge(x: Tensor,  # input current X, shape [T, *]
           tau=2.0,  # τ_m > 1, a number or a tensor broadcasting to x.shape[1:]
          ) -> Tensor:  # membrane H after charging, shaped like x
    "H[t] = (1 - 1/τ)·H[t-1] + X[t]/τ for every t at once (Eqs. 4–6), exact and finite for any T."
    tau = tau_tensor(tau, x)
    return leaky_scan(x / tau, 1 - 1 / tau)


# %% [markdown]
# ### The doubling scan, drawn
#
# The chunk ends are joined by a scan of their own: $E[c] = \alpha^L E[c-1] + e[c]$, where $e[c]$ is chunk $c$'s
# local end. `_doubling_scan` does it in $\lceil\log_2 n\rceil$ rounds; in round $r$ every chunk adds in the value
# $2^{r-1}$ chunks back, scaled by $\alpha^{2^{r-1}L}$, the decay over that many chunks. After the last round each
# chunk holds the sum over all chunks before it, each decayed to its end. For 8 chunks, three rounds:

# %%
#| fig-cap: The doubling scan over 8 chunk ends, three rounds: each row shows which chunk ends a value sums after that round; after the last round every chunk holds all the chunks before it.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
def draw_doubling_scan(n_chunks: int = 8):
    "The Hillis–Steele scan over chunk ends: at round r, chunk i adds α^(L·2^r) times chunk i − 2^r."
    rounds = (n_chunks - 1).bit_length()
    fig, ax = plt.subplots(figsize=(7, 1.1 * rounds + 1.2))
    for r in range(rounds + 1):
        ax.scatter(range(n_chunks), [r] * n_chunks, s=260, color='#dbe8f5', edgecolor='#1a4f8b', zorder=3)
        for i in range(n_chunks):
            span = min(i + 1, 2 ** r)               # how many chunk ends this value already sums
            ax.text(i, r, f"{i - span + 1}–{i}" if span > 1 else str(i), ha='center', va='center', fontsize=7, zorder=4)
        if r == rounds: break
        offset = 2 ** r
        for i in range(n_chunks):
            if i >= offset:
                ax.annotate('', xy=(i, r + 1), xytext=(i - offset, r),
                            arrowprops=dict(arrowstyle='->', color='#c0392b', lw=1.1, shrinkA=9, shrinkB=9))
            ax.annotate('', xy=(i, r + 1), xytext=(i, r), arrowprops=dict(arrowstyle='->', color='#999', lw=0.8, shrinkA=9, shrinkB=9))
        ax.text(n_chunks - 0.3, r + 0.5, f"offset {offset}: $\\times\\,\\alpha^{{{offset}L}}$", fontsize=8, color='#c0392b', va='center')
    ax.set_xlim(-0.6, n_chunks + 1.8); ax.set_ylim(rounds + 0.6, -0.6)
    ax.set_xticks(range(n_chunks)); ax.set_xlabel('chunk c (its end E[c])')
    ax.set_yticks(range(rounds + 1), ['input'] + [f"round {r + 1}" for r in range(rounds)])
    for side in ('top', 'right', 'left'): ax.spines[side].set_visible(False)
    ax.set_title(f"Joining {n_chunks} chunks in {rounds} rounds: each value sums the chunk ends it names", fontsize=10)
    fig.tight_layout()
    return fig
draw_doubling_scan();


# %% [markdown]
# ## Checks against the loop
#
# float64, against the membrane of `amos_lif_sequential`, across chunk boundaries ($T = 64, 65, 66, 130$ around
# $L = 65$ for $\tau = 2$), extreme time constants and $T$ up to 4096. We expect the relative difference
# (difference over $1 + |H|$) to stay at float64 rounding, $\le 10^{-14}$, everywhere:

# %% [markdown]
# `diff_bucket(a, b)` prints $\max|a - b|/(1 + |b|)$ rounded up to a power of ten, a string that stays the same from
# run to run; it and the book's other test helpers are in chapter 1.

# %%
torch.manual_seed(0)
print(f"{'tau':>8} {'T':>5} {'L':>5}  maxdiff")
for tau in [1.0001, 1.5, 2.0, 10.0, 1000.0]:
    for T in [1, 64, 65, 66, 130, 513, 4096]:
        x = 1 + torch.randn(T, 16, dtype=torch.float64)
        H, reference = charge(x, tau), amos_lif_sequential(x, tau)[1]
        L = chunk_length(torch.tensor(1 - 1 / tau), T)
        print(f"{tau:8} {T:5} {L:5}  {diff_bucket(H, reference)}")
        test_close((H - reference) / (1 + reference.abs()), 0, eps=1e-14)

# %% [markdown]
# float32 at $T = 4096$, $\tau = 2$, where Eq. 5 overflowed: finite, and within float32 rounding of the float64
# reference:

# %%
torch.manual_seed(0)
x = 1 + torch.randn(4096, 64, dtype=torch.float64)
H32 = charge(x.float(), 2.0)
print("finite:", torch.isfinite(H32).all().item(), "| maxdiff vs float64:", diff_bucket(H32, charge(x, 2.0)))
test_eq(torch.isfinite(H32).all().item(), True)
test_close(H32.double(), charge(x, 2.0), eps=1e-5)

# %% [markdown]
# One τ per channel, on a convolutional layout `[T, B, C, H, W]` with `tau` of shape `[C, 1, 1]`; the smallest
# τ sets the chunk length for all:

# %%
torch.manual_seed(0)
x = torch.randn(200, 2, 3, 4, 4, dtype=torch.float64)
tau = torch.tensor([1.01, 2.0, 500.0], dtype=torch.float64).view(3, 1, 1)
print("maxdiff:", diff_bucket(charge(x, tau), amos_lif_sequential(x, tau)[1]))
test_close(charge(x, tau), amos_lif_sequential(x, tau)[1], eps=1e-13)

# %% [markdown]
# **NaN input.** The scan only carries information forward in time, so a NaN in $X[t]$ makes $H$ NaN from $t$ on,
# and leaves earlier steps untouched, exactly as the loop does:

# %%
x = torch.ones(150, 1, dtype=torch.float64); x[100] = float('nan')
H = charge(x, 2.0)
print("NaN steps:", torch.isnan(H[:, 0]).nonzero().flatten()[[0, -1]].tolist(), "| finite before 100:", torch.isfinite(H[:100]).all().item())
test_eq(torch.isnan(H[:, 0]), torch.arange(150) >= 100)

# %% [markdown]
# **Huge finite input.** A current of $-10^{20}$ at $t = 64$, after which a constant 3 charges the neuron back
# up. The loop fires at $t = 129$, once the huge kick has decayed. With the fixed $2^{64}$ budget, Eq. 5's chunk
# term $2^{64}\cdot10^{20}$ would overflow float32 and the neuron would never fire; the budget of `exponent_budget`
# (here about 52 bits, so $L = 53$) keeps every term finite:

# %%
x = torch.full((300, 1), 3.0); x[:64] = 0; x[64, 0] = -1e20
H, (spikes, H_loop) = charge(x, 2.0), amos_lif_sequential(x, 2.0)
print(f"budget {exponent_budget(x):.1f} bits, L = {chunk_length(torch.tensor(0.5), 300, exponent_budget(x))}",
      "| finite:", torch.isfinite(H).all().item(), "| first step with H >= 1:", (H[:, 0] >= 1).nonzero()[0].item(),
      "| loop fires at:", spikes[:, 0].nonzero().item())
test_eq((H[:, 0] >= 1).nonzero()[0].item(), spikes[:, 0].nonzero().item())
for dtype, big in [(torch.float32, 3e38), (torch.float64, 1e308)]:     # the largest inputs: L = 1, still exact
    x = torch.randn(200, 4, dtype=dtype); x[7, 0], x[100, 1] = big, -big
    H, H_loop = charge(x, 2.0), amos_lif_sequential(x, 2.0)[1]
    test_eq(torch.isfinite(H), torch.isfinite(H_loop))
    test_close((H - H_loop) / (1 + H_loop.abs()), 0, eps=1e-5 if dtype == torch.float32 else 1e-13)

# %% [markdown]
# A NaN or an infinity in one neuron's input spoils that neuron, whatever the scan does; it must not spoil the
# others. So `exponent_budget` reads $\max|x|$ over the finite values only. We expect the neuron beside a NaN,
# driven at $10^{30}$, to match the loop exactly as it would without the NaN:

# %%
for bad in (math.nan, math.inf):
    x = torch.rand(300, 3); x[5, 0] = bad; x[:, 1] = 1e30                # neuron 0 non-finite, neuron 1 huge but finite
    H, H_loop = charge(x, 2.0), amos_lif_sequential(x, 2.0)[1]
    test_eq(torch.isfinite(H[:, 1:]).all(), True)
    test_close((H[:, 1:] - H_loop[:, 1:]) / H_loop[:, 1:].abs().clamp(min=1), 0, eps=1e-5)
print("budget with a NaN beside 1e30:", f"{exponent_budget(x):.1f} bits")

# %% [markdown]
# ## Summary
# Eq. 5 is the right idea, a cumsum instead of a loop, but $\alpha^{-t}$ overflows float32 from $T = 129$ (τ = 2).
# `leaky_scan` applies Eq. 5 inside chunks short enough to stay finite, for the given τ and the size of the
# input, and joins the chunks with a doubling scan: exact to float64 rounding for any $T$, τ and finite input, $O(T)$ work, $O(\log T)$ depth. `charge` is the neuron's
# Eq. 4 on top of it. The same scan, run backwards in time, will be the backward pass's Eq. 19.

# %% [markdown]
# ## Exercises
#
# 1. Find the smallest T at which the literal Eq. 5 overflows float32 for τ = 1.5 and for τ = 10, and compare each with the chunk length `leaky_scan` chooses for that τ.
# 2. Replace the doubling scan that joins the chunks by a plain loop over chunks. Check that it agrees with `leaky_scan`, and count the sequential steps of each for T = 1024.
# 3. Draw the doubling scan for 8 chunks by hand: which chunk carries add into which at each of the $\log_2 8 = 3$ rounds?

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
