"""The streaming neuron (step_mode 's', stateful chunks), SpikingJelly's step modes, early exit and pttfs-eval.

Any split of a sequence into chunks or single steps gives the one-call spikes, membranes within 1e-12 and input,
tau and threshold gradients within 1e-10 (float64); SpikingJelly networks built with AMOSLIF give the same outputs
step by step as in one call; early exit gives the full evaluation's decisions; pttfs-eval refuses bad input.
"""
import json, os, subprocess, sys
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st, HealthCheck
from pttfs import AMOSLIF
from pttfs.neuron import amos_lif_continued
from pttfs.models import SpikingClassifier, SequenceWise, build_model
from pttfs.decoders import DECODERS

def splits(T, cuts):
    "Chunk sizes of a split of range(T) at the given cut points."
    points = sorted({0, T, *[c % T for c in cuts]})
    return [b - a for a, b in zip(points, points[1:]) if b > a]

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 60), cuts=st.lists(st.integers(0, 10**6), max_size=8), batch=st.integers(1, 3),
       channels=st.integers(1, 4), learnable=st.sampled_from(['fixed', 'scalar', 'per-channel']),
       threshold=st.booleans(), single_steps=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_any_split_equals_one_call(T, cuts, batch, channels, learnable, threshold, single_steps, seed):
    g = torch.Generator().manual_seed(seed)
    x = 1 + 1.5 * torch.randn(T, batch, channels, generator=g, dtype=torch.float64)
    g_spikes, g_membrane = torch.randn(T, batch, channels, generator=g, dtype=torch.float64), torch.randn(T, batch, channels, generator=g, dtype=torch.float64)
    tau = 1.05 + 5 * torch.rand(channels, generator=g, dtype=torch.float64)
    sizes = [1] * T if single_steps else splits(T, cuts)
    results = []
    for how in ('one call', 'chunks'):
        neuron = AMOSLIF(tau=tau if learnable == 'per-channel' else float(tau[0]), learnable_tau=learnable != 'fixed',
                         learnable_threshold=threshold, v_threshold=1.1, stateful=how == 'chunks',
                         step_mode='s' if how == 'chunks' and single_steps else 'm').double()
        leaf = x.clone().requires_grad_()
        if how == 'chunks' and single_steps: outs = [neuron(leaf[t], return_membrane=True) for t in range(T)]; outs = [(s[None], h[None]) for s, h in outs]
        elif how == 'chunks': outs = [neuron(chunk, return_membrane=True) for chunk in leaf.split(sizes)]
        else: outs = [neuron(leaf, return_membrane=True)]
        spikes, membrane = (torch.cat(parts) for parts in zip(*outs))
        ((spikes * g_spikes).sum() + (membrane * g_membrane).sum()).backward()
        grads = [leaf.grad] + [p.grad for p in neuron.parameters()]
        results.append((spikes.detach(), membrane.detach(), grads))
    (s, h, grads), (s_ref, h_ref, grads_ref) = results[1], results[0]
    assert torch.equal(s, s_ref), sizes
    assert (h - h_ref).abs().max() <= 1e-12 * (1 + h_ref.abs().max())
    for a, b in zip(grads, grads_ref):
        assert (a - b).abs().max() <= 1e-10 * (1 + b.abs().max()), sizes

def test_continued_matches_the_loop_and_carries_fired():
    x = torch.tensor([[0.5], [3.0], [3.0], [0.0], [5.0]], dtype=torch.float64)
    s1, h1, fired = amos_lif_continued(x[:2])
    s2, h2, _ = amos_lif_continued(x[2:], membrane=h1[-1], fired=fired)
    assert torch.cat([s1, s2])[:, 0].tolist() == [0, 1, 0, 0, 0]        # fired at t = 1, then silent
    assert fired.tolist() == [1.0]

def test_stateful_errors():
    with pytest.raises(ValueError, match='force_last'): AMOSLIF(force_last=True, step_mode='s')(torch.ones(2, 3))
    neuron = AMOSLIF(step_mode='s'); neuron(torch.ones(2, 3))
    with pytest.raises(ValueError, match='reset'): neuron(torch.ones(4, 3))
    neuron.reset(); assert neuron(torch.ones(4, 3)).shape == (4, 3)
    with pytest.raises(ValueError, match='step_mode'): AMOSLIF(step_mode='x')

@pytest.mark.parametrize("factory", ['spiking_vgg11_bn', 'spiking_resnet18'])
def test_spikingjelly_model_zoo_single_step_equals_multi_step(factory):
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.model import spiking_vgg, spiking_resnet
    build = getattr(spiking_vgg if 'vgg' in factory else spiking_resnet, factory)
    torch.manual_seed(0)
    net = build(spiking_neuron=AMOSLIF, num_classes=10, tau=2.0, v_threshold=0.1).eval()   # low: spikes reach the last layer
    last = [m for m in net.modules() if isinstance(m, AMOSLIF)][-1]
    spikes = []
    last.register_forward_hook(lambda module, inputs, output: spikes.append(float(output.sum())))
    x = 3 * torch.rand(3, 2, 3, 32, 32)                                   # [T, B, C, H, W]
    with torch.no_grad():
        functional.set_step_mode(net, 'm'); functional.reset_net(net)
        once = net(x)
        functional.set_step_mode(net, 's'); functional.reset_net(net)
        stepwise = torch.stack([net(x[t]) for t in range(3)])
        functional.reset_net(net)
    assert spikes[0] > 0 and sum(spikes[1:]) == spikes[0]                # the last neuron layer fires, the same in both
    assert torch.allclose(once, stepwise, atol=1e-5, rtol=1e-5), (once - stepwise).abs().max()

def small_classifier(seed, decoder='tsd'):
    torch.manual_seed(seed)
    body = nn.Sequential(SequenceWise(nn.Flatten(), nn.Linear(64, 32)), AMOSLIF(step_mode='m'))
    model = SpikingClassifier(body, DECODERS[decoder](32, 10)).eval()
    body[0].layers[1].weight.data.normal_(0, 0.3); model.decoder.synapse.weight.data.normal_(0, 0.5)
    model.decoder.synapse.bias.data.fill_(0.8)
    return model

@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_early_exit_equals_full(seed, chunk):
    model = small_classifier(seed)
    images = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    for T in (1, 4, 9):
        full, early = model.predict(images, T, early_exit=False), model.predict(images, T, chunk=chunk)
        assert torch.equal(early.t_first, full.t_first) and torch.equal(early.logits.argmax(1), full.logits.argmax(1))
        assert (early.logits - full.logits).abs().max() <= 1e-5
        assert (early.steps_computed <= T).all() and (early.steps_computed >= early.t_first + 1).all()

def test_early_exit_refused_where_it_cannot_be_exact():
    images = torch.rand(4, 1, 8, 8)
    for decoder in ('rate', 'twd', 'tq-ttfs'):
        with pytest.raises(ValueError, match='cannot exit early'): small_classifier(0, decoder).predict(images, 4)
    with pytest.raises(ValueError, match='eval mode'): small_classifier(0).train().predict(images, 4)
    assert small_classifier(0, 'rate').predict(images, 4, early_exit=False).logits.shape == (4, 10)

def cli(*args):
    "pttfs-eval, run in this process: it only reads the run folder and writes its JSON (tests/inprocess.py)."
    from inprocess import run_main
    return run_main('pttfs.run_eval', 'eval_main', *args)

@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp('eval') / 'run'
    train = subprocess.run([sys.executable, '-c', "import sys; from pttfs.train_cli import main; main(sys.argv[1:])",
                            '--schedule', '1:2,2:1', '--hidden', '32', '--channels', '4', '--out', str(run)],
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    return run

def test_pttfs_eval_writes_the_tables(digits_run, tmp_path):
    early, full = tmp_path / 'early.json', tmp_path / 'full.json'
    assert cli(str(digits_run), '--T', '4', '--out', str(early)).returncode == 0
    assert cli(str(digits_run), '--T', '4', '--full', '--out', str(full)).returncode == 0
    e, f = json.loads(early.read_text()), json.loads(full.read_text())
    assert e['mode'] == 'early-exit' and f['mode'] == 'full'
    assert e['decisions'] == f['decisions'] and e['test_accuracy'] == f['test_accuracy']
    assert [d['t'] for d in e['decisions']] == [0, 1, 2, 3] and abs(sum(d['fraction'] for d in e['decisions']) - 1) < 1e-9
    assert all(d['accuracy'] is None or 0 <= d['accuracy'] <= 1 for d in e['decisions'])
    for key in ('avg_timesteps', 'spikes_per_sample_to_decision', 'steps_computed', 'wall_seconds', 'images_per_second', 'command'):
        assert key in e
    assert e['steps_computed'] <= f['steps_computed'] == 4
    assert f['spikes_per_sample_to_decision_total'] <= f['spikes_per_sample_all_steps_total']
    assert abs(e['spikes_per_sample_to_decision_total'] - f['spikes_per_sample_to_decision_total']) < 1e-6
    assert cli(str(digits_run)).returncode == 0 and (digits_run / 'eval.json').exists()      # the default --out

def one_line_error(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and all(w in lines[0] for w in words), result.stderr[-2000:]

def test_pttfs_eval_bad_input_writes_nothing(digits_run, tmp_path):
    one_line_error(cli(str(tmp_path / 'nowhere')), 'no such run folder')
    (tmp_path / 'empty').mkdir()
    one_line_error(cli(str(tmp_path / 'empty')), 'no checkpoint')
    bad = tmp_path / 'truncated'; bad.mkdir()
    (bad / 'last.pt').write_bytes((digits_run / 'last.pt').read_bytes()[:5000])
    one_line_error(cli(str(bad)), 'last.pt')
    one_line_error(cli(str(digits_run), '--T', '0', '--out', str(tmp_path / 'x.json')), '--T')
    from pttfs.runs import load_checkpoint, save_checkpoint
    state = load_checkpoint(str(digits_run / 'last.pt'))
    state['settings'] = dict(state['settings'], dataset='mnist', architecture='scnn')
    state['model'] = build_model('mnist', 'scnn', 'tsd', 4, 32).state_dict()
    other = tmp_path / 'mnist'; other.mkdir(); save_checkpoint(str(other), state)
    one_line_error(cli(str(other), '--data-dir', str(tmp_path / 'no-data')), '--download')
    assert sorted(os.listdir(tmp_path)) == ['empty', 'mnist', 'truncated'] and os.listdir(other) == ['last.pt']
