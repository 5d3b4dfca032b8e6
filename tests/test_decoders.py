"""The decoders' defining properties: P1 (T = 1 equals rate decoding) and P2 (nothing after t_1st reaches the TSD)."""
import pytest
import torch
from pttfs.decoders import DECODERS, TemporalSelectorDecoder, RateDecoder, first_output_time

@pytest.mark.parametrize("seed", range(5))
def test_p1_tsd_equals_rate_at_one_step(seed):
    torch.manual_seed(seed)
    tsd, rate = TemporalSelectorDecoder(20, 7), RateDecoder(20, 7)
    rate.load_state_dict(tsd.state_dict())
    x = (torch.rand(1, 5, 20) < 0.4).float()
    assert torch.equal(tsd(x)[0], rate(x)[0])

@pytest.mark.parametrize("seed", range(5))
def test_p2_input_after_first_output_spike_is_ignored(seed):
    torch.manual_seed(seed)
    tsd = TemporalSelectorDecoder(20, 7, v_threshold=0.3)
    x = (torch.rand(15, 6, 20) < 0.4).float()
    logits, t_first = tsd(x)
    after = torch.arange(15).view(15, 1, 1) > t_first.view(1, 6, 1)
    assert torch.equal(tsd(torch.where(after, torch.rand_like(x), x))[0], logits)

def test_first_output_time_defaults_to_last_step():
    assert first_output_time(torch.zeros(6, 3, 4)).tolist() == [5, 5, 5]

@pytest.mark.parametrize("name", sorted(DECODERS))
def test_every_decoder_trains(name):
    torch.manual_seed(0)
    decoder = DECODERS[name](12, 4, v_threshold=0.3)
    x = (torch.rand(8, 16, 12) < 0.5).float()
    target = torch.randint(0, 4, (16,))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        logits, t = decoder(x)
        assert logits.shape == (16, 4) and t.shape == (16,) and ((0 <= t) & (t < 8)).all()
        loss = torch.nn.functional.cross_entropy(logits, target)
        first = loss.item() if first is None else first
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    assert loss.item() < first
