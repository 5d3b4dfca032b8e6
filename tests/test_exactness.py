"""Property-based checks of the neuron contract: the parallel AMOS LIF neuron against the BPTT loop.

float64: identical spikes; membrane, input gradient, tau gradient and (learnable) threshold gradient within 1e-10,
for T in [1, 512], tau in (1, 1000], any trailing shape, both force_last modes, random upstream gradients on both
outputs. Any finite input: with inputs up to 1e30 (float32) and 1e300 (float64), identical spikes and no
non-finite value where the reference has none, on every backend.
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck

from pttfs import amos_lif_parallel, amos_lif_sequential, AMOSLIF
from functools import partial
from pttfs.dynamics import compare_with_reference
from pttfs.fused import load_fused_extension, fused_error
from pttfs.surrogate import ATan, Sigmoid

TOL = 1e-10


def compare(*args, backend: str = 'auto', **kwargs):
    "compare_with_reference (chapter 1) for `amos_lif_parallel` on one backend."
    return compare_with_reference(partial(amos_lif_parallel, backend=backend), *args, **kwargs)

# Every CPU backend must pass the same checks; the fused kernel is skipped (and says why) if it cannot be built.
BACKENDS = ['torch', pytest.param('cpu-fused', marks=pytest.mark.skipif(
    load_fused_extension() is None, reason=f"fused CPU kernel unavailable: {fused_error()}"))]

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
time_steps = st.one_of(st.integers(1, 40), st.integers(41, 512))

@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(T=time_steps, trailing=shapes, tau=st.floats(1.0, 1000.0, exclude_min=True),
       force_last=st.booleans(), tau_per_last_dim=st.booleans(), atan=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_parallel_equals_bptt(backend, T, trailing, tau, force_last, tau_per_last_dim, atan, seed):
    # compare_with_reference (chapter 4): random x, learnable tau (one per last-dim neuron if asked), a threshold near
    # the median membrane (spikes, second fake spikes and silence all occur), random upstream grads on S and H;
    # the threshold is learnable where the backend takes a tensor (the textbook one), else a fixed number
    r = compare(T, tau, force_last, trailing=trailing, tau_per_neuron=tau_per_last_dim and bool(trailing),
                               surrogate=ATan() if atan else Sigmoid(), seed=seed, backend=backend,
                               learnable_threshold=backend == 'torch')
    assert r['spikes_equal'], "spikes differ from the sequential reference"
    for what in ('membrane', 'grad_x', 'grad_tau', 'grad_threshold'):
        assert r[what] <= TOL * (1 + r['grad_x_scale']), f"{what}: max |diff| = {r[what]:.3e}"

@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(T=time_steps, width=st.integers(1, 16), tau=st.floats(1.001, 1000.0), force_last=st.booleans(),   # a tau float32 can hold
       float32=st.booleans(), exponent=st.floats(0.0, 1.0), atan=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_any_finite_input(backend, T, width, tau, force_last, float32, exponent, atan, seed):
    # one input per neuron becomes +-M at a random step, M from 1 to 1e30 (float32) or 1e300 (float64): the chunked
    # scan must not overflow where the loop stays finite, and the spikes must be the loop's
    huge = 10.0 ** (exponent * (30 if float32 else 300))
    r = compare(T, tau, force_last, trailing=(width,), surrogate=ATan() if atan else Sigmoid(), seed=seed,
                               backend=backend, dtype=torch.float32 if float32 else torch.float64, huge=huge)
    assert r['spikes_equal'], f"spikes differ from the sequential reference (M = {huge:.1e})"
    assert r['finite_alike'], f"a non-finite value where the reference has none (M = {huge:.1e})"

@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_negative_kick_fires_when_the_loop_does(backend):
    "The reproducer: -1e20 at t = 64 in float32, then a constant 3; the loop fires at t = 129."
    x = torch.full((300, 1), 3.0); x[:64] = 0; x[64, 0] = -1e20
    spikes, membrane = amos_lif_parallel(x, backend=backend)
    assert spikes[:, 0].nonzero().flatten().tolist() == [129] == amos_lif_sequential(x)[0][:, 0].nonzero().flatten().tolist()
    assert torch.isfinite(membrane).all()

def test_threshold_gradient_equals_bptt():
    "The reproducer: a threshold that requires grad got None from the parallel neuron."
    g = torch.Generator().manual_seed(6)
    x = 1 + torch.randn(30, 50, generator=g, dtype=torch.float64)
    grads = []
    for neuron in (amos_lif_parallel, amos_lif_sequential):
        threshold = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        spikes, _ = neuron(x, 2.0, threshold)
        (spikes * torch.arange(30.0, dtype=torch.float64)[:, None]).sum().backward()
        grads.append(threshold.grad)
    assert grads[0] is not None and abs(grads[1].item()) > 1
    assert (grads[0] - grads[1]).abs() <= TOL * (1 + grads[1].abs())
    per_neuron = torch.full((50,), 1.3, dtype=torch.float64, requires_grad=True)
    amos_lif_parallel(x, 2.0, per_neuron)[0].sum().backward()
    assert per_neuron.grad.shape == (50,)
    if load_fused_extension() is not None:
        with pytest.raises(ValueError, match="threshold"):
            amos_lif_parallel(x, 2.0, threshold, backend='cpu-fused')

def test_sequential_reference_reaches_long_T():
    "The loop's backward is linear in T (two-level slicing): T = 30000 in float64 against the parallel neuron."
    g = torch.Generator().manual_seed(7)
    x = 0.02 + 0.1 * torch.randn(30000, 3, generator=g, dtype=torch.float64)
    grads = []
    for neuron in (amos_lif_parallel, amos_lif_sequential):
        leaf = x.clone().requires_grad_()
        spikes, membrane = neuron(leaf, 1000.0, 1.0)
        (spikes.sum() + membrane.sum()).backward()
        grads.append((spikes.detach(), leaf.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert (grads[0][1] - grads[1][1]).abs().max() <= 1e-9 * (1 + grads[1][1].abs().max())

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("force_last", [False, True])
def test_long_float64_exact(force_last, backend):
    for tau_per_neuron in (False, True):
        r = compare(512, 2.0, force_last, trailing=(3, 7), tau_per_neuron=tau_per_neuron, seed=1, backend=backend)
        assert r['spikes_equal']
        for what in ('membrane', 'grad_x', 'grad_tau'): assert r[what] <= TOL * (1 + r['grad_x_scale']), what

@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_long_finite_and_agrees_except_ties(backend):
    g = torch.Generator().manual_seed(2)
    x64 = 1.0 + 1.5 * torch.randn(4096, 128, generator=g, dtype=torch.float64)
    x32 = x64.float().requires_grad_()
    s32, h32 = amos_lif_parallel(x32, 2.0, backend=backend)
    (s32.sum() + h32.sum()).backward()
    assert torch.isfinite(h32).all() and torch.isfinite(x32.grad).all()
    s64, h64 = amos_lif_sequential(x64, 2.0)
    near_tie = ((h64 - 1.0).abs() < 1e-5).any(0)
    assert ((s32.double() == s64).all(0) | near_tie).all()

@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_bfloat16_cpu(backend):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        current = layer(torch.randn(200, 4, 16))
        assert current.dtype == torch.bfloat16
        spikes, membrane = amos_lif_parallel(current, 2.0, 0.2, backend=backend)
    assert spikes.dtype == membrane.dtype == torch.bfloat16
    assert torch.isfinite(membrane.float()).all()
    (spikes.float().sum() + membrane.float().sum()).backward()
    assert torch.isfinite(layer.weight.grad).all()
    ref, _ = amos_lif_parallel(current.detach().float(), 2.0, 0.2)
    assert torch.equal(spikes.float(), ref)

def test_float16_long_is_finite():
    x = (1 + torch.randn(1000, 8)).half()
    spikes, membrane = amos_lif_parallel(x, 2.0)
    assert membrane.dtype == torch.float16 and torch.isfinite(membrane).all()

@pytest.mark.parametrize("backend", BACKENDS)
def test_module_conv_layout_per_channel_tau(backend):
    torch.manual_seed(0)
    x = 1 + torch.randn(10, 2, 3, 4, 4, dtype=torch.float64)
    grads = []
    for backend in (backend, 'sequential'):
        m = AMOSLIF(tau=3.0, learnable_tau=True, num_channels=3, backend=backend, step_mode='m').double()
        x_ = x.clone().requires_grad_()
        s = m(x_)
        assert s.shape == x.shape
        (s * torch.arange(10.0, dtype=torch.float64).view(10, 1, 1, 1, 1)).sum().backward()
        grads.append((s.detach(), x_.grad, m.tau_logit.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    for a, b in [(grads[0][1], grads[1][1]), (grads[0][2], grads[1][2])]:
        assert (a - b).abs().max() <= TOL * (1 + b.abs().max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_without_membrane_matches(backend):
    torch.manual_seed(3)
    x = 1 + torch.randn(50, 7, 9)
    with torch.no_grad():
        spikes, none = amos_lif_parallel(x, 2.0, backend=backend, return_membrane=False)
    assert none is None
    assert torch.equal(spikes, amos_lif_sequential(x, 2.0)[0])

def test_auto_prefers_fused_on_cpu_and_falls_back_for_custom_surrogates():
    from pttfs.backends import choose_backend
    x = torch.randn(4, 3)
    expected = 'cpu-fused' if load_fused_extension() is not None else 'torch'
    assert choose_backend(x, 2.0, Sigmoid()) == expected
    assert choose_backend(x, 2.0, lambda u: (u >= 0).float()) == 'torch'
    with pytest.raises(ValueError, match="backend"):
        choose_backend(x, 2.0, Sigmoid(), backend="nonsense")

@pytest.mark.parametrize("backend", BACKENDS)
def test_tau_gradient_alone(backend):
    "Only tau requires grad (a frozen input), spikes only: the backward must still have what it needs."
    g = torch.Generator().manual_seed(4)
    x = 1 + torch.randn(40, 6, generator=g, dtype=torch.float64)
    grads = []
    for neuron in (lambda x, t: amos_lif_parallel(x, t, backend=backend, return_membrane=False)[0],
                   lambda x, t: amos_lif_sequential(x, t)[0]):
        tau = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        (neuron(x, tau) * torch.arange(40.0, dtype=torch.float64)[:, None]).sum().backward()
        grads.append(tau.grad)
    assert (grads[0] - grads[1]).abs() <= TOL * (1 + grads[1].abs())


@pytest.mark.skipif(load_fused_extension() is None, reason=f"fused kernel unavailable: {fused_error()}")
@pytest.mark.parametrize("force_last", [False, True])
@pytest.mark.parametrize("surrogate", [Sigmoid(), ATan(2.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("per_neuron", [False, True])
def test_recompute_cpp_node_matches_bptt(force_last, surrogate, dtype, per_neuron):
    "A fixed τ (one, or one per neuron) with spikes only goes through the C++ autograd node; it must agree with BPTT."
    g = torch.Generator().manual_seed(5)
    x = (1 + 1.5 * torch.randn(40, 6, 33, generator=g, dtype=torch.float64)).to(dtype).transpose(1, 2)  # non-contiguous
    upstream = torch.randn(40, 33, 6, generator=g, dtype=torch.float64).to(dtype)
    tau = (1.2 + torch.rand(6, generator=g, dtype=torch.float64)).to(dtype) if per_neuron else 1.7
    tol = TOL if dtype == torch.float64 else 1e-4
    for weight in (upstream, torch.ones((), dtype=dtype)):     # random ∂L/∂S, and one number broadcast (a sum)
        results = []
        for neuron in (lambda x: amos_lif_parallel(x, tau, 1.1, surrogate, force_last, backend='cpu-fused', return_membrane=False)[0],
                       lambda x: amos_lif_sequential(x, tau, 1.1, surrogate, force_last)[0]):
            leaf = x.detach().requires_grad_()
            spikes = neuron(leaf)
            (spikes * weight).sum().backward()
            node = spikes.grad_fn          # a transposed (dense) x is computed in its memory order: a permute of the node
            if node.name() == 'PermuteBackward0': node = node.next_functions[0][0]
            results.append((spikes.detach(), leaf.grad, node.name()))
        (s, gx, node), (s_ref, gx_ref, _) = results
        assert 'AMOSLIFRecompute' in node
        assert torch.equal(s, s_ref)
        assert (gx - gx_ref).abs().max() <= tol * (1 + gx_ref.abs().max())


@pytest.mark.skipif(load_fused_extension() is None, reason=f"fused CPU kernel unavailable: {fused_error()}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_kernel_equals_the_loop_at_ties(dtype):
    "Where H lands exactly on V_th, the fused kernel's spike is the loop's (no fused multiply-add moves the last bit)."
    x = torch.tensor([-1.0608166785462863, 3.707211119030857], dtype=torch.float64).view(2, 1)   # the reported case
    assert amos_lif_sequential(x, 3.0)[0].flatten().tolist() == [0.0, 1.0]
    assert amos_lif_parallel(x, 3.0, backend='cpu-fused')[0].flatten().tolist() == [0.0, 1.0]
    g = torch.Generator().manual_seed(1)
    x0 = (torch.rand(5000, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    decay, tau = 1 - 1 / torch.tensor(3.0, dtype=dtype), 3.0
    x1 = (1 - decay * (x0 / tau)) * tau
    tie = decay * (x0 / tau) + x1 / tau == 1                  # exactly on V_th = 1 in the loop's arithmetic
    x = torch.stack([x0, x1])[:, tie]
    assert x.shape[1] > 1000
    reference = amos_lif_sequential(x, tau)[0]
    assert reference[1].all()
    assert torch.equal(amos_lif_parallel(x, tau, backend='cpu-fused')[0], reference)
    x.requires_grad_()                                        # the recomputing backward path reads the same spikes
    assert torch.equal(amos_lif_parallel(x, tau, backend='cpu-fused', return_membrane=False)[0], reference)


@pytest.mark.parametrize("bad", [float('nan'), float('inf'), float('-inf')])
def test_a_non_finite_input_leaves_its_neighbours_exact(bad):
    "One NaN or inf must not switch off the 'torch' scan's overflow guard for the other neurons."
    x = torch.rand(300, 3)
    x[5, 0] = bad
    x[:, 1] = 1e30
    spikes, membrane = amos_lif_parallel(x, 2.0, backend='torch')
    ref_spikes, ref_membrane = amos_lif_sequential(x, 2.0)
    assert torch.equal(spikes[:, 1:], ref_spikes[:, 1:])
    assert torch.isfinite(membrane[:, 1:]).all()
    assert ((membrane[:, 1:] - ref_membrane[:, 1:]).abs() / ref_membrane[:, 1:].abs().clamp(min=1)).max() < 1e-5
