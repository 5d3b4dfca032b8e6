# %% [markdown]
# # The parallel backward
#
# > Eqs. 10–20: the mask gradient, the second fake spike and a reversed scan give the exact BPTT gradient of the AMOS LIF neuron without a loop over time. The result, `AMOSLIFFunction`, computes the neuron and its exact gradient in parallel; chapter 5 puts it behind `amos_lif_parallel`, the function every later chapter calls.

# %% [markdown]
# After this chapter you can derive the exact BPTT gradient of the AMOS neuron in closed form, compute it in parallel over time, and check it against autograd through the loop.

# %%
#| default_exp parallel

# %%
#| export
import torch
from torch import Tensor
from pttfs.surrogate import surrogate_derivative
from pttfs.charging import leaky_scan
from pttfs.first_spike import fake_spikes, first_spike_index, amos_lif_forward

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
from pttfs.surrogate import ATan, Sigmoid
from pttfs.dynamics import tau_tensor
from pttfs.dynamics import amos_lif_sequential
from pttfs.charging import charge
from pttfs.first_spike import spikes_from_index
from pttfs.dynamics import diff_bucket, bucket, compare_with_reference
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown]
# ## The argmax cuts the graph
#
# The forward of chapter 3 is exact, but autograd cannot differentiate it: the spikes come out of a comparison
# and an argmax, which have no gradient. We expect spikes that do not even require grad:

# %%
x = torch.randn(5, 3, requires_grad=True)
H = charge(x, 2.0)
S = spikes_from_index(first_spike_index(fake_spikes(H, 1.0)), 5)
print("membrane requires grad:", H.requires_grad, "| spikes require grad:", S.requires_grad)
test_eq(S.requires_grad, False)


# %% [markdown]
# So we derive the backward by hand, from the BPTT of the loop in chapter 1, and then compute it in parallel.
#
# ## BPTT of the AMOS neuron (Eqs. 10–12)
#
# Let $\mathcal L$ be the loss. $H[t]$ influences the loss through its spike $S[t]$ (spatially) and through
# $H[t+1]$ (temporally):
#
# $$\frac{d\mathcal L}{dH[t]} = \frac{d\mathcal L}{dS[t]}\frac{\partial S[t]}{\partial H[t]}
#   + \frac{d\mathcal L}{dH[t+1]}\frac{\partial H[t+1]}{\partial H[t]}, \qquad (10)$$
#
# with $\partial S[t]/\partial H[t] = (1 - F[t-1])\,\Theta'(H[t] - V_{th})$ by Eq. 2. A spike also enters the loss
# through the mask $F[t]$ (Eq. 3), which suppresses every later spike:
#
# $$\frac{d\mathcal L}{dS[t]} = \frac{\partial\mathcal L}{\partial S[t]} + \frac{d\mathcal L}{dF[t]}, \qquad (11)$$
#
# $$\frac{d\mathcal L}{dF[t]} = \frac{d\mathcal L}{dF[t+1]} - \frac{d\mathcal L}{dS[t+1]}\,\Theta(H[t+1] - V_{th}). \qquad (12)$$
#
# Here $\partial\mathcal L/\partial S[t]$ is the gradient arriving from the next layer (`grad_spikes`), and
# $d\mathcal L/dF[T-1] = 0$. Eq. 12 runs backwards in time, one step at a time. Written as a loop it is our
# reference for the next derivation:

# %%
def spike_gradient_bptt(grad_spikes, theta):
    "dL/dS[t] by the recursion of Eqs. 11–12, one step at a time (theta = Θ(H − V_th), forced 1 at T-1 if forcing)."
    T = grad_spikes.shape[0]
    total = torch.empty_like(grad_spikes)
    mask_grad = torch.zeros_like(grad_spikes[0])                         # dL/dF[T-1] = 0
    for t in reversed(range(T)):
        total[t] = grad_spikes[t] + mask_grad                            # Eq. 11
        mask_grad = mask_grad - total[t] * theta[t]                      # Eq. 12, for dL/dF[t-1]
    return total


# %% [markdown]
# Before using it, check it against autograd itself. We record autograd's $d\mathcal L/d\Theta[t]$ inside the
# loop of chapter 1 with a surrogate that hooks its output; since $S[t] = (1 - F[t-1])\Theta[t]$, that equals
# $d\mathcal L/dS[t]$ for every $t \le t_f$ (after $t_f$ it is masked to 0 and nothing downstream uses it):

# %%
class RecordingSigmoid(Sigmoid):
    "Sigmoid surrogate that records dL/dΘ[t] of every call (the hooks fire in reverse time order)."
    def __init__(self): super().__init__(); self.grads = []
    def __call__(self, x):
        theta = super().__call__(x)
        theta.register_hook(lambda g: self.grads.insert(0, g.detach()))
        return theta

torch.manual_seed(0)
x = (1.2 + 1.5 * torch.randn(12, 200, dtype=torch.float64)).requires_grad_()
grad_spikes = torch.randn(12, 200, dtype=torch.float64)
recorder = RecordingSigmoid()
spikes, membrane = amos_lif_sequential(x, 2.0, surrogate=recorder)
(spikes * grad_spikes).sum().backward()
autograd_dS = torch.stack(recorder.grads)
eq12_dS = spike_gradient_bptt(grad_spikes, (membrane >= 1.0).double())
first = first_spike_index(membrane.detach() >= 1.0)
up_to_first = torch.arange(12)[:, None] <= first
print("Eqs. 11-12 loop vs autograd for t <= t_f, maxdiff:", diff_bucket(eq12_dS[up_to_first], autograd_dS[up_to_first]))
test_close(eq12_dS[up_to_first], autograd_dS[up_to_first], eps=1e-12)


# %% [markdown]
# ## The second fake spike (Eqs. 13–15)
#
# Look at one step of Eq. 12. If there is no fake spike at $t+1$, $\Theta(H[t+1] - V_{th}) = \tilde S[t+1] = 0$ and
#
# $$\frac{d\mathcal L}{dF[t]} = \frac{d\mathcal L}{dF[t+1]}. \qquad (13)$$
#
# If there is one, $\tilde S[t+1] = 1$, and Eq. 11 makes the running term cancel:
#
# $$\frac{d\mathcal L}{dF[t]} = \frac{d\mathcal L}{dF[t+1]} - \Big(\frac{\partial\mathcal L}{\partial S[t+1]}
#   + \frac{d\mathcal L}{dF[t+1]}\Big) = -\frac{\partial\mathcal L}{\partial S[t+1]}. \qquad (14)$$
#
# So $d\mathcal L/dF[t]$ is simply $-\partial\mathcal L/\partial S$ at the **next fake spike after $t$** (0 if there
# is none): the recursion forgets everything beyond the first fake spike it meets. For $t < t_f$ the next fake
# spike is the real spike $t_f$ itself; for $t = t_f$ it is the next crossing after the spike, the
# **second fake spike** $t_{sf}$. After $t_f$, Eq. 10's factor $(1 - F[t-1])$ is 0 anyway. Hence
#
# $$\frac{d\mathcal L}{dS[t]} = \begin{cases} 0, & t > t_f \\
#   \dfrac{\partial\mathcal L}{\partial S[t_f]} - \dfrac{\partial\mathcal L}{\partial S[t_{sf}]}, & t = t_f \\
#   \dfrac{\partial\mathcal L}{\partial S[t]} - \dfrac{\partial\mathcal L}{\partial S[t_f]}, & t < t_f \end{cases} \qquad (15)$$
#
# with $\partial\mathcal L/\partial S[t_{sf}] = 0$ when there is no second fake spike, and $\partial\mathcal L/\partial S[t_f] = 0$
# for a neuron that never fires ($t_f = T$ in our convention, so every $t$ is "$< t_f$"). Two gathers, no recursion.
# With `force_last`, $\tilde S[T-1] = 1$: the forced step counts as a fake spike, so it can be $t_f$ or $t_{sf}$.

# %%
#| export
def second_fake_spike_index(fake: Tensor,  # bool fake spikes S̃, shape [T, *]
                            first: Tensor,  # t_f per neuron (T for none), shape [*]
                           ) -> Tensor:  # t_sf per neuron, T where there is none
    "t_sf, the first fake spike after the first spike t_f (Eq. 15)."
    t = torch.arange(fake.shape[0], device=fake.device).view(-1, *([1] * first.dim()))
    return first_spike_index(fake & (t > first))


def _gather_time(values: Tensor, index: Tensor) -> Tensor:
    "values[index[n], n] per neuron n, and 0 where index = T (no such time step); shape [1, *]."
    T = values.shape[0]
    picked = values.gather(0, index.clamp(max=T - 1).unsqueeze(0))
    return torch.where(index.unsqueeze(0) < T, picked, torch.zeros_like(picked))


def spike_gradient(grad_spikes: Tensor,  # ∂L/∂S from the next layer, shape [T, *]
                   fake: Tensor,  # bool fake spikes S̃ (forced at T-1 if forcing), shape [T, *]
                   first: Tensor,  # t_f per neuron (T for none), shape [*]
                  ) -> Tensor:  # dL/dS, shape [T, *]
    "dL/dS[t] of Eq. 15: the mask gradient in closed form, from the first spike and the second fake spike."
    t = torch.arange(grad_spikes.shape[0], device=grad_spikes.device).view(-1, *([1] * first.dim()))
    at_first = _gather_time(grad_spikes, first)                                   # ∂L/∂S[t_f]
    at_second = _gather_time(grad_spikes, second_fake_spike_index(fake, first))   # ∂L/∂S[t_sf]
    return torch.where(t < first, grad_spikes - at_first,
                       torch.where(t == first, grad_spikes - at_second, torch.zeros_like(grad_spikes)))


# %% [markdown]
# ### A worked example
#
# The neuron of chapter 3 again: crossings at $t = 2$ (the spike, $t_f = 2$) and $t = 5$ (the second fake spike,
# $t_{sf} = 5$). With upstream gradients $\partial\mathcal L/\partial S = [1, 2, 3, 4, 5, 6, 7]$ Eq. 15 predicts
# $[1-3,\ 2-3,\ 3-6,\ 0, 0, 0, 0] = [-2, -1, -3, 0, 0, 0, 0]$:

# %%
x = torch.tensor([1.0, 1.0, 2.5, 0.0, 0.0, 3.0, 0.0], dtype=torch.float64)[:, None]
g = torch.arange(1.0, 8.0, dtype=torch.float64)[:, None]
fake = fake_spikes(charge(x, 2.0), 1.0)
first = first_spike_index(fake)
print("t_f =", first.item(), "| t_sf =", second_fake_spike_index(fake, first).item())
print("Eq. 15:        ", spike_gradient(g, fake, first)[:, 0])
print("Eqs. 11-12 loop:", spike_gradient_bptt(g, fake.double())[:, 0])
test_eq(spike_gradient(g, fake, first)[:, 0], torch.tensor([-2., -1., -3., 0., 0., 0., 0.], dtype=torch.float64))

# %% [markdown]
# (The loop's values after $t_f$ are not zero; they are multiplied by $1 - F[t-1] = 0$ in Eq. 10, which Eq. 15
# already folds in.) On random neurons, in both modes, Eq. 15 must equal the loop for every $t \le t_f$ and be 0
# after:

# %%
torch.manual_seed(0)
for force_last in [False, True]:
    x = 1.2 + 1.5 * torch.randn(40, 500, dtype=torch.float64)
    g = torch.randn(40, 500, dtype=torch.float64)
    fake = fake_spikes(charge(x, 2.0), 1.0, force_last)
    first = first_spike_index(fake)
    closed, loop = spike_gradient(g, fake, first), spike_gradient_bptt(g, fake.double())
    up_to_first = torch.arange(40)[:, None] <= first
    print(f"force_last={force_last!s:5}: maxdiff t<=t_f {diff_bucket(closed[up_to_first], loop[up_to_first])}, "
          f"nonzero after t_f: {int((closed[~up_to_first] != 0).sum())}")
    test_close(closed[up_to_first], loop[up_to_first], eps=1e-12)
    test_eq((closed[~up_to_first] == 0).all(), True)

# %% [markdown]
# ## The spatial gradient (Eqs. 16–17)
#
# Putting Eq. 15 into Eq. 10:
#
# $$\frac{d\mathcal L}{dH[t]} = \underbrace{\frac{d\mathcal L}{dS[t]}\,(1 - F[t-1])\,\Theta'[t]}_{\text{spatial}}
#   + \underbrace{\frac{d\mathcal L}{dH[t+1]}\frac{\partial f}{\partial H[t]}}_{\text{temporal}}. \qquad (16)$$
#
# $1 - F[t-1]$ is 1 for $t \le t_f$ and 0 after, a mask $\mathbf F$ computed from $t_f$; $\Theta'[t] = \Theta'(H[t] - V_{th})$
# is elementwise. So the spatial term of all steps is one product,
#
# $$\mathcal G_s = \frac{d\mathcal L}{d\mathbf S} \odot \mathbf F \odot \Theta'. \qquad (17)$$
#
# With `force_last`, the step $T-1$ is a constant spike and contributes no $\Theta'$ term (chapter 1). If the
# membrane itself is an output (the decoder of the next chapters reads it), its upstream gradient
# $\partial\mathcal L/\partial H[t]$ adds to $\mathcal G_s[t]$.
#
# ## The temporal gradient (Eqs. 18–20)
#
# For the LIF charge (Eq. 4), $\partial f/\partial H[t] = \partial H[t+1]/\partial H[t] = 1 - 1/\tau_m = \alpha$.
# (The paper's text after Eq. 16 says "$= \tau_m$"; Eq. 18 uses $\alpha$, which is right, as autograd confirms:)

# %%
h = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
tau = 4.0
next_h = (1 - 1 / tau) * h + torch.tensor(0.7, dtype=torch.float64) / tau     # Eq. 4 for one step
dnext, = torch.autograd.grad(next_h, h)
print(f"dH[t+1]/dH[t] = {dnext.item():.4f}, alpha = {1 - 1 / tau:.4f}, tau = {tau}")
test_close(dnext.item(), 1 - 1 / tau, eps=1e-15)


# %% [markdown]
# so the membrane gradient is a leaky recursion *backwards* in time,
#
# $$\delta[t] := \frac{d\mathcal L}{dH[t]} = \mathcal G_s[t] + \alpha\,\delta[t+1], \qquad \delta[T] = 0. \qquad (18)$$
#
# This is Eq. 4 with time reversed: if $\mathrm{Rev}$ reverses time (Eq. 20), $\mathrm{Rev}(\delta)$ obeys
# $y[t] = \alpha y[t-1] + \mathrm{Rev}(\mathcal G_s)[t]$, exactly the `leaky_scan` of chapter 2. Unrolled,
# $\delta[t] = \sum_{k \ge t}\alpha^{k-t}\mathcal G_s[k] = \alpha^{-t}\sum_{k\ge t}\alpha^{k}\mathcal G_s[k]$, i.e.
#
# $$\frac{d\mathcal L}{d\mathbf H} = \mathbf A^{-} \odot \mathrm{Rev}\big(\mathrm{cumsum}(\mathrm{Rev}(\mathbf A \odot \mathcal G_s))\big). \qquad (19)$$
#
# The paper prints Eq. 19 as $\mathrm{Rev}(\mathrm{cumsum}(\mathrm{Rev}(\mathbf{A}) \odot \mathcal G_s))$, without the
# outer $\mathbf A^{-}$. We check three readings against the loop of Eq. 18:
#
# - **literal**: exactly as printed, $\mathrm{Rev}$ of $\mathbf A$ only. Then entry t sums $\alpha^{T-1-k}\mathcal G_s[k]$
#   over $k \le T-1-t$: the wrong weights over the wrong range.
# - **charitable**: the inner $\mathrm{Rev}$ read as applying to the product, $\mathrm{Rev}(\mathrm{cumsum}(\mathrm{Rev}(\mathbf A
#   \odot \mathcal G_s)))$. Entry t is then $\sum_{k\ge t}\alpha^{k}\mathcal G_s[k] = \alpha^{t}\delta[t]$, right except
#   for the missing factor $\alpha^{-t}$.
# - **corrected**: Eq. 19 above, the charitable reading times $\mathbf A^{-}$.
#
# Like Eq. 5, the corrected form overflows for long $T$, because of $\mathbf A^-$; `leaky_scan` does not:

# %%
#| export
def reverse_leaky_scan(x: Tensor,  # sequence over dim 0, shape [T, *]
                       decay: Tensor,  # α, broadcasting to x.shape[1:]
                      ) -> Tensor:  # y with y[t] = x[t] + α·y[t+1], y[T] = 0
    "Eqs. 18–19: the leaky recursion backwards in time, Rev(leaky_scan(Rev(x)))."
    return leaky_scan(x.flip(0), decay).flip(0)


# %%
torch.manual_seed(0)
T, alpha = 10, torch.tensor(0.5, dtype=torch.float64)
G = torch.randn(T, 3, dtype=torch.float64)
delta_loop = torch.zeros_like(G)
for t in reversed(range(T)):                                            # Eq. 18, one step at a time
    delta_loop[t] = G[t] + alpha * (delta_loop[t + 1] if t + 1 < T else 0)
A = alpha ** torch.arange(T)[:, None]
Rev = lambda v: v.flip(0)                                               # Eq. 20
readings = {
    'literal     Rev(cumsum(Rev(A) ⊙ G))': Rev(torch.cumsum(Rev(A) * G, 0)),
    'charitable  Rev(cumsum(Rev(A ⊙ G)))': Rev(torch.cumsum(Rev(A * G), 0)),
    'corrected   A⁻ ⊙ Rev(cumsum(Rev(A ⊙ G)))': (1 / A) * Rev(torch.cumsum(Rev(A * G), 0)),
    'reverse_leaky_scan(G, α)': reverse_leaky_scan(G, alpha),
}
for name, value in readings.items(): print(f"{name:42} vs loop: {diff_bucket(value, delta_loop)}")
test_close(readings['corrected   A⁻ ⊙ Rev(cumsum(Rev(A ⊙ G)))'], delta_loop, eps=1e-13)
test_close(readings['reverse_leaky_scan(G, α)'], delta_loop, eps=1e-13)
test_close(readings['charitable  Rev(cumsum(Rev(A ⊙ G)))'], A * delta_loop, eps=1e-13)   # off by exactly α^t
assert not torch.allclose(readings['literal     Rev(cumsum(Rev(A) ⊙ G))'], delta_loop)

# %% [markdown]
# ## The gradient of τ
#
# For a learnable time constant, differentiate Eq. 4 with respect to $\tau$ directly:
# $\partial H[t]/\partial\tau = H[t-1]/\tau^2 - X[t]/\tau^2$. Eq. 4 itself gives $X[t] = \tau H[t] - (\tau - 1)H[t-1]$,
# so $\partial H[t]/\partial\tau = (H[t-1] - H[t])/\tau$, and
#
# $$\frac{d\mathcal L}{d\tau} = \frac{1}{\tau}\sum_t \delta[t]\,\big(H[t-1] - H[t]\big), \qquad H[-1] = 0,$$
#
# summed over every neuron that shares the $\tau$. It needs only the membrane, which the forward returns anyway:
# nothing else has to be stored for the backward. The input gradient is $\partial\mathcal L/\partial X[t] = \delta[t]/\tau$.
#
# ## The gradient of the threshold
#
# $V_{th}$ enters the neuron in one place, the step $\Theta(H[t] - V_{th})$ of Eq. 2, with the same coefficient as
# $H[t]$ and the opposite sign. So the spike route of $\delta[t]$, the spatial term $\epsilon[t]$ of Eq. 17 (before
# the temporal recursion adds anything), is also what $V_{th}$ receives, negated:
#
# $$\frac{d\mathcal L}{dV_{th}} = -\sum_t \epsilon[t], \qquad \epsilon[t] = \frac{d\mathcal L}{dS[t]}\,\big(1 - F[t-1]\big)\,\Theta'\big(H[t] - V_{th}\big),$$
#
# summed over every neuron that shares the threshold. A learnable threshold (one, or one per neuron) costs one
# reduction; nothing else is stored.
#
# ## All together
#
# `spatial_gradient` is Eqs. 15 and 17, `membrane_gradient` adds Eqs. 18–19; `AMOSLIFFunction` wires the parallel forward (Eqs. 5–9) to it.

# %% [markdown]
# Before the code, the whole picture: the forward of chapters 2–3 on top, the backward of this chapter below, and
# what the backward reads from the forward (dashed). Every box is one elementwise pass, one reduction or one scan
# over `[T, N]`; none loops over $t$ in Python.

# %%
#| fig-cap: The parallel neuron as a data flow: the forward (top) and the backward (bottom), and what the backward reads from the forward (dashed); no box loops over t.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
def draw_data_flow():
    "The parallel forward (top, left to right) and backward (bottom, right to left): every box is one pass over [T, N]."
    fig, ax = plt.subplots(figsize=(11, 3.8))
    def box(x, y, text, color):
        ax.text(x, y, text, ha='center', va='center', fontsize=8.5, zorder=3,
                bbox=dict(boxstyle='round,pad=0.45', facecolor=color, edgecolor='#555'))
    def arrow(x0, y0, x1, y1, label=''):
        ax.annotate('', xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle='->', color='#333', shrinkA=40, shrinkB=40))
        if label: ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, label, ha='center', fontsize=8, color='#1a4f8b')
    forward = [(0, 'input\n$X$ [T, N]'), (2, 'charging: leaky\nscan, Eqs. 4–6'), (4, 'threshold\nEq. 8'),
               (6, 'first crossing\n$t_f$ (and $t_{sf}$)\nEq. 9'), (8, 'one spike\nEq. 7')]
    for x, text in forward: box(x, 1, text, '#dbe8f5')
    for (x0, _), (x1, _), label in zip(forward, forward[1:], ['$X$', '$H$', r'$\tilde S$', '$t_f$']): arrow(x0, 1, x1, 1, label)
    backward = [(8, r'$\partial\mathcal{L}/\partial S$'), (6, 'spike gradient\nEq. 15: gathers\nat $t_f$, $t_{sf}$'),
                (4, 'spatial gradient\nEq. 17'), (2, 'reverse scan\nEqs. 19–20'), (0, r'$\partial\mathcal{L}/\partial X$' + '\n' + r'($\partial\mathcal{L}/\partial\tau$ from $H$)')]
    for x, text in backward: box(x, -1, text, '#f8e1dc')
    for (x0, _), (x1, _) in zip(backward, backward[1:]): arrow(x0, -1, x1, -1)
    # what the backward reads from the forward
    for x, what in ((6, '$t_f$, $t_{sf}$'), (4, '$H$'), (2, 'α')):
        ax.annotate('', xy=(x, -0.55), xytext=(x, 0.55), arrowprops=dict(arrowstyle='->', color='#999', ls='--'))
        ax.text(x + 0.1, 0, what, fontsize=8, color='#777', va='center')
    ax.text(-1.1, 1, 'forward', rotation=90, va='center', fontsize=9, color='#1a4f8b')
    ax.text(-1.1, -1, 'backward', rotation=90, va='center', fontsize=9, color='#c0392b')
    ax.set_xlim(-1.3, 9); ax.set_ylim(-1.7, 1.6); ax.axis('off')
    ax.set_title('The parallel AMOS LIF neuron: no loop over t, one pass over [T, N] per box', fontsize=10)
    fig.tight_layout()
    return fig
draw_data_flow();


# %%
#| export
def spatial_gradient(grad_spikes: Tensor,  # ∂L/∂S from the next layer, [T, *]
                     membrane: Tensor,  # H from the forward, [T, *]
                     v_threshold,  # V_th: a number, or a tensor broadcasting to membrane.shape[1:]
                     surrogate,  # gives Θ'
                     force_last: bool,  # Eq. 7's forced spike at T-1
                    ) -> Tensor:  # ε, [T, *]
    "ε[t] = dL/dS[t]·(1 − F[t−1])·Θ'(H[t] − V_th): Eq. 15 (spike gradient) and Eq. 17 (spatial gradient)."
    T = membrane.shape[0]
    fake = fake_spikes(membrane, v_threshold, force_last)                 # Eqs. 8–9
    first = first_spike_index(fake)
    d_spikes = spike_gradient(grad_spikes, fake, first)                   # Eq. 15
    t = torch.arange(T, device=membrane.device).view(-1, *([1] * first.dim()))
    not_yet_fired = t <= first                                            # 1 − F[t−1]
    if force_last: not_yet_fired = not_yet_fired & (t < T - 1)            # the forced spike has no Θ' term
    theta_prime = surrogate_derivative(surrogate, membrane - v_threshold)
    return torch.where(not_yet_fired, d_spikes * theta_prime, torch.zeros_like(d_spikes))   # Eq. 17


def membrane_gradient(grad_spikes: Tensor,  # ∂L/∂S from the next layer, [T, *]
                      grad_membrane: Tensor,  # ∂L/∂H from the next layer (0 if H is unused), [T, *]
                      membrane: Tensor,  # H from the forward, [T, *]
                      decay: Tensor,  # α = 1 − 1/τ
                      v_threshold,  # V_th: a number, or a tensor broadcasting to membrane.shape[1:]
                      surrogate,  # gives Θ'
                      force_last: bool,  # Eq. 7's forced spike at T-1
                     ) -> Tensor:  # δ = dL/dH, [T, *]
    "dL/dH[t] for every t: Eqs. 15 and 17 (`spatial_gradient`), then Eqs. 18–19 (reversed scan)."
    spatial = spatial_gradient(grad_spikes, membrane, v_threshold, surrogate, force_last)
    return reverse_leaky_scan(spatial + grad_membrane, decay)             # Eqs. 18–19


class AMOSLIFFunction(torch.autograd.Function):
    "The AMOS LIF neuron with the parallel forward (Eqs. 5–9) and the parallel backward (Eqs. 10–20)."
    @staticmethod
    def forward(ctx, x, tau, v_threshold, surrogate, force_last):
        # v_threshold: a float, or a tensor (per neuron, or learnable) broadcasting to one time step
        spikes, membrane, _ = amos_lif_forward(x, tau, v_threshold, force_last)  # chapter 3: Eqs. 4–9
        threshold_tensor = isinstance(v_threshold, Tensor)
        ctx.save_for_backward(membrane, tau, *([v_threshold] if threshold_tensor else []))
        ctx.v_threshold = None if threshold_tensor else v_threshold
        ctx.surrogate, ctx.force_last = surrogate, force_last
        return spikes, membrane

    @staticmethod
    def backward(ctx, grad_spikes, grad_membrane):
        membrane, tau, *saved_threshold = ctx.saved_tensors
        v_threshold = saved_threshold[0] if saved_threshold else ctx.v_threshold
        spatial = spatial_gradient(grad_spikes, membrane, v_threshold, ctx.surrogate, ctx.force_last)   # Eqs. 15, 17
        delta = reverse_leaky_scan(spatial + grad_membrane, 1 - 1 / tau)                               # Eqs. 18–19
        grad_x = delta / tau if ctx.needs_input_grad[0] else None
        grad_tau = grad_threshold = None
        if ctx.needs_input_grad[1]:
            previous = torch.cat([torch.zeros_like(membrane[:1]), membrane[:-1]])     # H[t−1], H[−1] = 0
            grad_tau = (delta * (previous - membrane) / tau).sum_to_size(tau.shape)
        if ctx.needs_input_grad[2]: grad_threshold = (-spatial).sum_to_size(v_threshold.shape)   # dL/dV_th = −Σ ε
        return grad_x, grad_tau, grad_threshold, None, None


# %% [markdown]
# ### The whole backward on one neuron (the paper's Fig. 1)
#
# Everything so far, drawn for one neuron over $T = 12$ steps with $\tau = 2$, $V_{th} = 1$ and random upstream
# gradients $\partial\mathcal L/\partial S$. What to look for: the membrane crosses the threshold at $t_f = 2$ (the
# spike) and again at $t_{sf} = 6$ (the second fake spike; $t = 3$ stays below). The mask $1 - F[t-1]$ closes after
# $t_f$, so Eq. 15's $d\mathcal L/dS$ is the upstream gradient minus $\partial\mathcal L/\partial S[t_f]$ before the spike,
# minus $\partial\mathcal L/\partial S[t_{sf}]$ at it, and 0 after. The spatial gradient $\epsilon$ (Eq. 17) lives only
# on $t \le t_f$, and the reversed scan (Eqs. 18–19) spreads it back in time as $\delta$. The dots are $\delta$ from
# autograd through the loop of chapter 1 ($\tau \cdot d\mathcal L/dX$): they must sit on the line.

# %%
#| fig-cap: The backward of one neuron, the paper's Fig. 1: the mask closes after t_f, the spatial gradient lives only on t ≤ t_f, and the reversed scan spreads it back in time; the dots (autograd through the loop) must sit on the line.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
torch.manual_seed(0)
x = torch.tensor([0.8, 1.2, 2.6, 0.2, 0.0, 1.0, 3.4, 0.0, 2.5, 0.0, 0.0, 1.5], dtype=torch.float64)[:, None]
g = torch.randn(12, 1, dtype=torch.float64)                              # ∂L/∂S from the next layer
H = charge(x, 2.0)
fake = fake_spikes(H, 1.0)
first = first_spike_index(fake)
second = second_fake_spike_index(fake, first)
d_spikes = spike_gradient(g, fake, first)                                # Eq. 15
eps = spatial_gradient(g, H, 1.0, Sigmoid(), False)                      # Eq. 17
delta = membrane_gradient(g, torch.zeros_like(g), H, torch.tensor(0.5, dtype=torch.float64), 1.0, Sigmoid(), False)
x_loop = x.clone().requires_grad_()
(amos_lif_sequential(x_loop, 2.0, 1.0)[0] * g).sum().backward()         # BPTT through the loop
delta_loop = 2.0 * x_loop.grad                                           # dL/dX = δ/τ

t = torch.arange(12)
fig, axes = plt.subplots(4, 1, figsize=(7, 7.5), sharex=True)
ax = axes[0]
ax.plot(t, H[:, 0], 'k.-', label='H[t]'); ax.axhline(1.0, color='grey', ls='--', lw=1, label='V_th')
ax.plot(t[fake[:, 0]], H[fake[:, 0], 0], 'o', mfc='none', color='C1', ms=10, label='fake spikes S̃ (H ≥ V_th)')
ax.annotate('t_f: the spike', (first.item(), H[first, 0].item()), (first.item() + 0.4, 2.2), arrowprops=dict(arrowstyle='->'))
ax.annotate('t_sf: second fake spike', (second.item(), H[second, 0].item()), (second.item() + 0.4, 2.2), arrowprops=dict(arrowstyle='->'))
ax.set_ylabel('membrane'); ax.legend(fontsize=7, loc='upper right')
ax = axes[1]
ax.step(t, (t <= first).double(), where='mid', label='1 − F[t−1] (not yet fired)')
ax.bar(t, amos_lif_sequential(x, 2.0, 1.0)[0][:, 0], width=0.3, color='C3', label='S[t]')
ax.set_ylabel('mask, spike'); ax.legend(fontsize=7, loc='upper right')
ax = axes[2]
ax.bar(t - 0.2, g[:, 0], width=0.4, label='∂L/∂S (upstream)')
ax.bar(t + 0.2, d_spikes[:, 0], width=0.4, label='dL/dS, Eq. 15')
ax.axhline(0, color='k', lw=0.5); ax.set_ylabel('spike gradient'); ax.legend(fontsize=7, loc='upper right')
ax = axes[3]
ax.bar(t, eps[:, 0], width=0.4, color='C2', label='ε, Eq. 17 (spatial)')
ax.plot(t, delta[:, 0], 'k-', label='δ = dL/dH, Eqs. 18–19')
ax.plot(t, delta_loop[:, 0], 'o', color='C3', ms=4, label='δ from BPTT (loop)')
ax.axhline(0, color='k', lw=0.5); ax.set_ylabel('membrane gradient'); ax.set_xlabel('time step t')
ax.legend(fontsize=7, loc='upper right')
fig.tight_layout(); plt.show()
test_eq((first.item(), second.item()), (2, 6))
test_close(delta, delta_loop, eps=1e-13)

# %% [markdown]
# ## The check: parallel against BPTT
#
# For every configuration below we run both implementations in float64 on the same input, with a learnable τ
# (one per neuron where marked) and random upstream gradients on **both** outputs,
# $\mathcal L = \sum \mathbf g_S \odot \mathbf S + \sum \mathbf g_H \odot \mathbf H$. The threshold is set near the
# median membrane so that first spikes, second fake spikes and silent neurons all occur. `compare_with_reference` (chapter 1) does this for one
# configuration and returns the largest differences, which `bucket` prints as powers of ten. The implementation we
# check is `AMOSLIFFunction.apply` of this chapter (chapter 5 registers it as the `'torch'` backend; chapters 7 and 8
# run the same check on the compiled backends). We expect identical
# spikes and differences at float64 rounding, far below the $10^{-10}$ we require:

# %%
textbook = AMOSLIFFunction.apply      # (x, tau, v_threshold, surrogate, force_last) -> (spikes, membrane)
print(f"{'T':>4} {'tau':>7} {'force':>5} {'tau/neuron':>10} | {'spikes':>6} {'fired':>5} | {'membrane':>8} {'dL/dX':>7} {'dL/dtau':>7}")
worst = 0.0
for T in [1, 2, 16, 65, 130, 512]:
    for tau in [1.01, 2.0, 50.0, 1000.0]:
        for force_last in [False, True]:
            r = compare_with_reference(textbook, T, tau, force_last, tau_per_neuron=(T % 2 == 0))
            print(f"{T:4} {tau:7} {force_last!s:>5} {T % 2 == 0!s:>10} | {'exact' if r['spikes_equal'] else 'DIFF':>6} "
                  f"{r['fired']:5.2f} | {bucket(r['membrane']):>8} {bucket(r['grad_x']):>7} {bucket(r['grad_tau']):>7}")
            test_eq(r['spikes_equal'], True)
            worst = max(worst, r['membrane'], r['grad_x'], r['grad_tau'])
print(f"worst difference: {worst < 1e-10 and 'below 1e-10' or worst}")
test_eq(worst < 1e-10, True)

# %% [markdown]
# The ATan surrogate, a plain-callable surrogate (autograd supplies $\Theta'$), and a convolutional shape
# `[T, B, C, H, W]` with one τ per channel:

# %%
box = lambda x: (x >= 0).to(x.dtype) + (x.clamp(-0.5, 0.5) - x.clamp(-0.5, 0.5).detach())
for name, kwargs in [("ATan", dict(surrogate=ATan())), ("box lambda", dict(surrogate=box)),
                     ("[T,B,C,H,W], tau per W", dict(trailing=(2, 3, 4, 5), tau_per_neuron=True))]:
    r = compare_with_reference(textbook, 33, 3.0, False, **kwargs)
    print(f"{name:24} spikes {'exact' if r['spikes_equal'] else 'DIFF'}, membrane {bucket(r['membrane'])}, "
          f"dL/dX {bucket(r['grad_x'])}, dL/dtau {bucket(r['grad_tau'])}")
    test_eq(r['spikes_equal'], True)
    test_eq(max(r['membrane'], r['grad_x'], r['grad_tau']) < 1e-10, True)

# %% [markdown]
# A **learnable threshold**, one shared $V_{th}$ that requires grad: its gradient $-\sum_t \epsilon[t]$ must equal
# what autograd finds through the loop, as τ's does. A per-neuron threshold tensor works the same way. Only the
# textbook backend takes a threshold tensor; the fused kernels of later chapters take one fixed number.

# %%
for T, tau, force_last in [(1, 2.0, False), (16, 2.0, True), (130, 1.01, False), (512, 50.0, True)]:
    r = compare_with_reference(textbook, T, tau, force_last, learnable_threshold=True, tau_per_neuron=True)
    print(f"T={T:3} tau={tau:5} force_last={force_last!s:5}: spikes {'exact' if r['spikes_equal'] else 'DIFF'}, "
          f"dL/dX {bucket(r['grad_x'])}, dL/dtau {bucket(r['grad_tau'])}, dL/dV_th {bucket(r['grad_threshold'])}")
    test_eq(r['spikes_equal'], True)
    test_eq(max(r['membrane'], r['grad_x'], r['grad_tau'], r['grad_threshold']) < 1e-10, True)


# %% [markdown]
# ## float32 and long sequences
#
# In float32 at $T = 4096$ everything stays finite, and the spikes agree with the float64 reference wherever the
# float64 membrane is not within float32 rounding of the threshold (a tie there may go either way):

# %%
def parallel(x, tau=2.0, v_threshold=1.0, force_last=False):
    "The autograd Function above with one τ, V_th and the Sigmoid surrogate (the next chapter's front door calls it so)."
    return AMOSLIFFunction.apply(x, tau_tensor(tau, x), v_threshold, Sigmoid(), force_last)

torch.manual_seed(0)
x64 = 1.0 + 1.5 * torch.randn(4096, 256, dtype=torch.float64)
x32 = x64.float().requires_grad_()
s32, h32 = parallel(x32)
(s32.sum() + h32.sum()).backward()
s64, h64 = parallel(x64)
near_tie = ((h64 - 1.0).abs() < 1e-5).any(0)
agree = (s32.double() == s64).all(0)
print("finite:", all(torch.isfinite(t).all().item() for t in (s32, h32, x32.grad)),
      f"| neurons near a tie: {int(near_tie.sum())} | spikes agree elsewhere: {bool(agree[~near_tie].all())}")
test_eq(torch.isfinite(x32.grad).all().item(), True)
test_eq(agree[~near_tie].all().item(), True)

# %% [markdown]
# ## Huge finite inputs
#
# "Exact for any finite input" includes inputs near the end of the float range. One input per neuron becomes
# $\pm M$ at a random step, with $M$ up to $10^{30}$ in float32 and $10^{300}$ in float64; the threshold stays
# ordinary, so after a huge negative kick a neuron charges back up and fires late, and after a huge positive one
# it fires at once. Expected: the same spikes as the loop, and a non-finite value nowhere the loop has none
# (chapter 2's `exponent_budget` shortens the chunks for such inputs).

# %%
for dtype, M in [(torch.float32, 1e20), (torch.float32, 1e30), (torch.float64, 1e100), (torch.float64, 1e300)]:
    for tau in [1.01, 2.0, 50.0]:
        r = compare_with_reference(textbook, 300, tau, False, trailing=(16,), dtype=dtype, huge=M, learnable_threshold=True)
        print(f"{str(dtype)[6:]:8} M={M:5.0e} tau={tau:5}: spikes {'exact' if r['spikes_equal'] else 'DIFF'}, "
              f"non-finite values exactly where the loop has them: {r['finite_alike']}")
        test_eq((r['spikes_equal'], r['finite_alike']), (True, True))

# %% [markdown]
# ## NaN input
#
# A NaN in $X[t]$ makes $H$ NaN from step $t$ on (chapter 2). A NaN membrane never crosses the threshold (every
# comparison with NaN is false), so a neuron that has not fired before the NaN stays silent, unless `force_last`
# fires it at $T-1$. Spikes before the NaN are unaffected. This is also what the loop does, so the two agree; the
# gradients of such a neuron are NaN and carry no meaning.

# %%
x = torch.tensor([[0.5, 3.0], [float('nan'), float('nan')], [3.0, 3.0]], dtype=torch.float64)  # [T=3, 2 neurons]
for force_last in [False, True]:
    s, h = parallel(x, force_last=force_last)
    s_ref, h_ref = amos_lif_sequential(x, 2.0, force_last=force_last)
    print(f"force_last={force_last!s:5} spikes {s.T.tolist()}  membrane {h.T.tolist()}")
    test_eq(s, s_ref)
    test_eq(torch.isnan(h), torch.isnan(h_ref))
test_eq(parallel(x)[0][:, 0], torch.tensor([0., 0., 0.], dtype=torch.float64))   # silent after the NaN
test_eq(parallel(x)[0][:, 1], torch.tensor([1., 0., 0.], dtype=torch.float64))   # fired before it

# %% [markdown]
# ## Summary
# The mask gradient of BPTT (Eqs. 11–12) only ever remembers the next fake spike, so the spike gradient has the
# closed form of Eq. 15, two gathers at $t_f$ and at the second fake spike $t_{sf}$. The spatial gradient is one
# masked product (Eq. 17) and the temporal recursion (Eq. 18, with $\partial f/\partial H = \alpha$) is the charging
# scan of chapter 2 run backwards (Eq. 19, with the $\mathbf A^-$ factor the printed equation omits). The τ gradient
# needs only the membrane. `AMOSLIFFunction` equals BPTT through the loop to float64 rounding ($< 10^{-10}$) in
# spikes, membrane, input and τ gradients, with and without forcing, for $T$ from 1 to 512 and τ from 1.01 to 1000.

# %% [markdown]
# ## Exercises
#
# 1. Take one neuron with T = 6 whose fake spikes are at t = 2, 3 and 5. Write out the mask-gradient terms of Eq. 12 by hand and say which fake spike Eq. 15 reads as $t_{sf}$.
# 2. Drop the $\mathbf A^-$ factor from Eq. 19 and compare the input gradient with BPTT through the loop. Which entries differ, and by how much?
# 3. A neuron that continues from a carried state (chapter 6) starts from $H[-1] = h_0 \ne 0$. Write the τ gradient for that case and check it against autograd through the loop started from $h_0$.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
