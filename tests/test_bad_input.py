"""Bad input gives a TypeError/ValueError that names the argument; NaN input behaves as documented."""
import pytest
import torch
from pttfs import amos_lif_parallel, amos_lif_sequential, AMOSLIF

NEURONS = [amos_lif_parallel, amos_lif_sequential]

@pytest.mark.parametrize("neuron", NEURONS)
@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(x=torch.tensor(1.0)), ValueError, "time dimension"),
    (dict(x=torch.zeros(0, 3)), ValueError, "T = 0"),
    (dict(x=torch.zeros(4, 3, dtype=torch.int32)), TypeError, "x must be a floating-point"),
    (dict(x=torch.zeros(4, 3, dtype=torch.bool)), TypeError, "x must be a floating-point"),
    (dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
    (dict(tau=1.0), ValueError, "tau"),
    (dict(tau=0.3), ValueError, "tau"),
    (dict(tau=-2.0), ValueError, "tau"),
    (dict(tau=float("nan")), ValueError, "tau"),
    (dict(tau=torch.tensor([2.0, 0.9, 2.0])), ValueError, "tau"),
    (dict(tau=torch.tensor([2, 3, 4])), TypeError, "tau"),
    (dict(tau=torch.full((4,), 2.0)), ValueError, "tau"),
    (dict(v_threshold=float("nan")), ValueError, "v_threshold"),
    (dict(v_threshold=float("-inf")), ValueError, "v_threshold"),
    (dict(v_threshold="1"), TypeError, "v_threshold"),
    (dict(surrogate=None), TypeError, "surrogate"),
    (dict(surrogate=4.0), TypeError, "surrogate"),
    (dict(force_last="yes"), TypeError, "force_last"),
])
def test_bad_arguments(neuron, kwargs, exc, words):
    args = dict(x=torch.zeros(4, 3), tau=2.0, v_threshold=1.0, force_last=False) | kwargs
    with pytest.raises(exc, match=words):
        neuron(**args)

def test_module_bad_arguments():
    with pytest.raises(ValueError, match="tau"): AMOSLIF(tau=0.5, step_mode='m')
    with pytest.raises(ValueError, match="num_channels"): AMOSLIF(num_channels=-1, step_mode='m')
    with pytest.raises(ValueError, match="backend"): AMOSLIF(backend="triton-please", step_mode='m')
    with pytest.raises(ValueError, match="num_channels=4"): AMOSLIF(num_channels=4, step_mode='m')(torch.zeros(3, 2, 5, 6))

@pytest.mark.parametrize("force_last", [False, True])
def test_nan_input_documented_behaviour(force_last):
    # a NaN at t=1: neuron 0 has not fired yet and stays silent (unless forced at T-1); neuron 1 fired at t=0
    x = torch.tensor([[0.5, 3.0], [float("nan")] * 2, [3.0, 3.0], [3.0, 3.0]], dtype=torch.float64)
    s, h = amos_lif_parallel(x, 2.0, force_last=force_last)
    s0, h0 = amos_lif_sequential(x, 2.0, force_last=force_last)
    assert torch.equal(s, s0)
    assert torch.equal(torch.isnan(h), torch.isnan(h0))
    assert torch.isnan(h[1:]).all() and not torch.isnan(h[0]).any()
    assert s[:, 1].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert s[:, 0].tolist() == ([0.0, 0.0, 0.0, 1.0] if force_last else [0.0] * 4)
