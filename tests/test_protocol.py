"""The paper's experimental protocol in pttfs-train: SpikingJelly baselines, the PSN recipe, the output-layer Eq. 7 option."""
import hashlib, json, subprocess, sys
import pytest
import torch
from torchvision.datasets import FakeData
import pttfs.train_cli as train_module
from pttfs.data import dataset_transform
from pttfs.decoders import DECODERS
from pttfs.train_cli import parse_args, train; from pttfs.runs import RECIPES

TINY = ['--dataset', 'digits', '--hidden', '16', '--channels', '4', '--batch-size', '256']

def cli(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', 'pttfs.train_cli', *args], capture_output=True, text=True, timeout=timeout)

def one_line_error(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    for word in words: assert word in lines[0], lines[0]

def parse_error(capsys, argv, *words):
    "The same check in-process (no interpreter start): exit 2, one line on stderr, naming `words`."
    with pytest.raises(SystemExit) as exit_info: parse_args(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    for word in words: assert word in lines[0], lines[0]

@pytest.mark.parametrize("neuron", ['lif', 'psn'])
def test_baseline_trains_and_counts_its_spikes(neuron, tmp_path):
    summary = train(parse_args([*TINY, '--neuron', neuron, '--schedule', '4:1', '--out', str(tmp_path / neuron)]))
    assert summary['neuron'] == neuron and summary['decoder'] == 'rate' and summary['finished']
    assert set(summary['spikes_per_sample']) == {'body.1', 'body.4', 'body.7'}     # every hidden layer is counted
    assert summary['avg_timesteps'] == 4.0                                        # rate decoding reads all T
    assert summary['decisions'][-1]['fraction'] == 1.0

def test_unknown_recipe_or_neuron_lists_the_choices(tmp_path, capsys):
    parse_error(capsys, [*TINY, '--recipe', 'fast', '--out', str(tmp_path / 'a')], '--recipe', "'default'", "'psn'")
    parse_error(capsys, [*TINY, '--neuron', 'izhikevich', '--out', str(tmp_path / 'b')], '--neuron', "'amos'", "'lif'", "'psn'")
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()

def test_baseline_without_spikingjelly_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['spikingjelly'] = None\n"                    # as if it were not installed
            "from pttfs.train_cli import main; main(sys.argv[1:])")
    result = subprocess.run([sys.executable, '-c', code, *TINY, '--neuron', 'lif', '--out', str(tmp_path / 'run')],
                            capture_output=True, text=True, timeout=120)
    one_line_error(result, '--neuron lif', 'pttfs[baselines]')

def test_refused_baseline_leaves_a_run_folder_untouched(tmp_path, capsys):
    run = tmp_path / 'run'
    assert cli(*TINY, '--schedule', '1:1', '--out', str(run)).returncode == 0
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}
    one_line_error(cli(*TINY, '--neuron', 'psn', '--schedule', '1:1,2:1', '--out', str(run)), 'T×T')
    parse_error(capsys, [*TINY, '--neuron', 'lif', '--decoder', 'tsd', '--out', str(run)], '--decoder rate')
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()} == before

def test_recipe_fills_only_what_the_command_leaves_out():
    args = parse_args(['--recipe', 'psn', '--dataset', 'cifar10', '--lr', '0.05'])
    assert args.lr == 0.05                                                        # given: kept
    for key in ('optimizer', 'batch_size', 'schedule', 'label_smoothing', 'mixup', 'surrogate', 'augment', 'bf16'):
        assert getattr(args, key) == RECIPES['psn'][key], key
    assert (args.optimizer, args.batch_size, args.schedule, args.label_smoothing) == ('sgd', 128, '4:1024', 0.1)

def test_psn_recipe_one_epoch_on_fake_cifar(tmp_path, monkeypatch):
    "The whole recipe end to end: SGD, label smoothing, TrivialAugmentWide + RandomErasing, mixup/cutmix, bf16, ATan."
    def fake_data(args):
        return (FakeData(size=96, image_size=(3, 32, 32), num_classes=10, transform=dataset_transform('cifar10', True, args.augment)),
                FakeData(size=40, image_size=(3, 32, 32), num_classes=10, transform=dataset_transform('cifar10', False), random_offset=1))
    monkeypatch.setattr(train_module, '_load_data', fake_data)
    args = parse_args(['--recipe', 'psn', '--dataset', 'cifar10', '--channels', '4', '--schedule', '4:1',
                       '--batch-size', '32', '--out', str(tmp_path / 'run')])
    summary = train(args)
    settings = summary['settings']
    assert summary['finished'] and summary['T'] == 4 and summary['recipe'] == 'psn'
    assert (settings['optimizer'], settings['augment'], settings['surrogate'], settings['mixup'], settings['bf16']) == ('sgd', 'psn', 'atan', True, True)
    assert abs(sum(row['fraction'] for row in summary['decisions']) - 1) < 1e-12
    assert torch.isfinite(torch.tensor([json.loads(l)['train_loss'] for l in open(tmp_path / 'run' / 'metrics.jsonl')])).all()

@pytest.mark.parametrize("decoder", ['twd', 'tq-ttfs'])
def test_output_force_last_makes_spike_time_logits_constant_at_T1(decoder):
    "The hypothesis for the paper's 1 %: with Eq. 7 in the output layer, at T = 1 every output neuron fires at t = 0."
    torch.manual_seed(0)
    forced, free = (DECODERS[decoder](32, 10, force_last=force_last) for force_last in (True, False))
    with torch.no_grad(): forced.synapse.weight.normal_(0, 1.0)                 # some outputs fire by themselves, some do not
    free.load_state_dict(forced.state_dict())
    hidden = (torch.rand(4, 16, 32) < 0.5).float()                              # last hidden layer's spikes [T, B, F]
    logits, _ = forced(hidden[:1])
    assert (logits == logits[:, :1]).all()                                      # one value for every class: chance
    logits, _ = free(hidden[:1])
    assert not (logits == logits[:, :1]).all()
    logits, _ = forced(hidden)                                                  # at T > 1 the forced spikes come last
    assert not (logits == logits[:, :1]).all()

def test_train_subset_is_bounded(tmp_path):
    one_line_error(cli(*TINY, '--train-subset', '5000', '--schedule', '1:1', '--out', str(tmp_path / 'big')), '--train-subset', '1437')
    assert not (tmp_path / 'big').exists()
    summary = train(parse_args([*TINY, '--train-subset', '300', '--schedule', '1:1', '--out', str(tmp_path / 'small')]))
    assert summary['settings']['train_subset'] == 300 and summary['finished']
