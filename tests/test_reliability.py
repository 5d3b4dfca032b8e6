"""Nothing lost, nothing silently wrong (round three): one reproducer per finding, each failing before its fix.

Outputs that never replace a run, a lock that follows no link, temporaries removed only by a run that may write,
run files repaired after a kill, checkpoints loaded without running code and with their settings checked,
early exit equal to the full pass, and one line (not a traceback) for every bad input, a full disk and Ctrl-C.
"""
import hashlib, json, os, signal, subprocess, sys, time
import pytest
import torch
from inprocess import run_main, TINY, train_main, eval_main, bench_main, one_line_error


def digests(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))}

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A finished two-stage TSD run on digits."
    folder = tmp_path_factory.mktemp('runs') / 'tsd'
    assert train_main(*TINY, '--schedule', '1:1,2:1', '--out', str(folder)).returncode == 0
    return folder

def copy_of(folder, to):
    subprocess.run(['cp', '-r', str(folder), str(to)], check=True)
    return to

def edited(folder, to, **changes):
    "A copy of a run whose checkpoint has other settings, with a valid checksum (as an editing user would leave it)."
    from pttfs.runs import load_checkpoint, save_checkpoint
    copy = copy_of(folder, to)
    state = load_checkpoint(str(copy / 'last.pt'))
    for key, value in changes.items():
        if value is KeyError: del state['settings'][key]
        else: state['settings'][key] = value
    save_checkpoint(str(copy), state)
    return copy

# --- 1, 14: outputs that never replace what they did not write, checked before any work
def test_eval_out_never_replaces_a_run_file(run, tmp_path):
    folder = copy_of(run, tmp_path / 'r')
    before = digests(folder)
    for name in ('last.pt', 'metrics.jsonl', 'summary.json'):
        one_line_error(eval_main(str(folder), '--out', str(folder / name)), '--out', 'exists')
        one_line_error(eval_main(str(folder), '--out', str(folder / name), '--overwrite'), 'only an earlier pttfs-eval output')
    assert digests(folder) == before

def test_a_second_eval_is_refused_and_overwrite_replaces_only_its_own(run, tmp_path):
    folder = copy_of(run, tmp_path / 'r')
    assert eval_main(str(folder)).returncode == 0
    first = (folder / 'eval.json').read_bytes()
    one_line_error(eval_main(str(folder), '--T', '1'), 'exists', '--overwrite')
    assert (folder / 'eval.json').read_bytes() == first
    assert eval_main(str(folder), '--T', '1', '--overwrite').returncode == 0
    assert json.loads((folder / 'eval.json').read_text())['T'] == 1

def test_eval_checks_out_before_evaluating(run, tmp_path, monkeypatch):
    import pttfs.run_eval
    monkeypatch.setattr(pttfs.run_eval, 'evaluate_run', lambda *a, **k: pytest.fail("evaluated before --out was checked"))
    (tmp_path / 'taken.json').write_text('{"mine": 1}')
    one_line_error(eval_main(str(run), '--out', str(tmp_path / 'taken.json')), 'exists')
    one_line_error(eval_main(str(run), '--out', str(tmp_path)), 'folder')

def test_bench_out_never_replaces_another_file(tmp_path):
    (tmp_path / 'metrics.jsonl').write_text('{"epoch": 1}\n')
    one_line_error(bench_main('--quick', '--out', str(tmp_path / 'metrics.jsonl')), 'exists')
    one_line_error(bench_main('--quick', '--out', str(tmp_path / 'metrics.jsonl'), '--overwrite'), 'only an earlier pttfs-bench output')
    assert (tmp_path / 'metrics.jsonl').read_text() == '{"epoch": 1}\n'

# --- 2, 3: the lock follows no link; a refused run deletes nothing
def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / 'precious.txt'; target.write_text('keep me\n')
    folder = tmp_path / 'run'; folder.mkdir()
    (folder / '.pttfs-train.lock').symlink_to(target)
    one_line_error(train_main(*TINY, '--schedule', '1:1', '--out', str(folder)), 'symbolic link')
    assert target.read_text() == 'keep me\n'

def test_a_refused_run_deletes_no_temporary_file(run, tmp_path):
    folder = copy_of(run, tmp_path / 'r')
    for name in ('last.pt.tmp-4242', 'notes.tmp-17'):
        (folder / name).write_text('not yours')
    one_line_error(train_main(*TINY, '--schedule', '1:1,2:1', '--out', str(folder)), 'already holds a run')
    assert (folder / 'last.pt.tmp-4242').exists() and (folder / 'notes.tmp-17').exists()

def test_resume_removes_only_its_own_temporaries(run, tmp_path):
    folder = copy_of(run, tmp_path / 'r')
    (folder / 'last.pt.tmp-4242').write_text('half'); (folder / 'notes.tmp-17').write_text('a user file')
    assert train_main(*TINY, '--schedule', '1:1,2:1', '--out', str(folder), '--resume').returncode == 0
    assert not (folder / 'last.pt.tmp-4242').exists() and (folder / 'notes.tmp-17').exists()

# --- 4: the website build keeps what a user added
def test_site_rebuild_removes_only_what_it_built(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location('site_builder', os.path.join(os.path.dirname(__file__), '..', '.ci', 'site.py'))
    site = importlib.util.module_from_spec(spec); spec.loader.exec_module(site)
    out = tmp_path / '_site'; (out / 'mathjax').mkdir(parents=True)
    for name in ('index.html', 'book.js', 'mathjax/MathJax.js'): (out / name).write_text('built')
    (out / site.MANIFEST).write_text('index.html\nbook.js\nmathjax/MathJax.js\n../outside.txt\n')
    (out / 'my-notes.txt').write_text('mine'); (tmp_path / 'outside.txt').write_text('mine too')
    site.remove_previous_build(out)
    assert sorted(os.listdir(out)) == ['my-notes.txt'] and (tmp_path / 'outside.txt').exists()

# --- 5: a kill between two writes leaves nothing short for good
def test_resume_repairs_a_short_metrics_file_and_missing_figures(run, tmp_path):
    folder = copy_of(run, tmp_path / 'r')
    rows = (folder / 'metrics.jsonl').read_text().splitlines()
    (folder / 'metrics.jsonl').write_text(rows[0] + '\n')           # killed after last.pt, before metrics.jsonl
    (folder / 't_first.png').unlink()                                # killed before the figures
    result = train_main(*TINY, '--schedule', '1:1,2:1', '--out', str(folder), '--resume')
    assert result.returncode == 0 and 'rewrote metrics.jsonl' in result.stderr
    assert (folder / 'metrics.jsonl').read_text().splitlines() == rows and (folder / 't_first.png').exists()

def test_summary_is_written_last(run):
    assert (run / 'summary.json').stat().st_mtime_ns >= max((run / n).stat().st_mtime_ns for n in ('accuracy.png', 't_first.png'))

# --- 6: SpikingJelly's conventions
def test_amoslif_defaults_to_single_step_like_spikingjelly():
    from pttfs import AMOSLIF
    assert torch.equal(AMOSLIF()(torch.full((3, 4), 5.)), torch.ones(3, 4))        # three samples, one step: all fire
    from spikingjelly.activation_based import layer, functional
    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(6, 8), AMOSLIF(), layer.Linear(8, 3), AMOSLIF())   # SpikingJelly's defaults
    x = 3 * torch.rand(5, 4, 6)
    with torch.no_grad(): stepwise = torch.stack([net(x[t]) for t in range(5)])
    functional.reset_net(net); functional.set_step_mode(net, 'm')
    with torch.no_grad(): assert torch.equal(net(x), stepwise)

def test_spikingjelly_argument_names():
    from pttfs import AMOSLIF
    from spikingjelly.activation_based import surrogate
    neuron = AMOSLIF(surrogate_function=surrogate.ATan(), store_v_seq=True, step_mode='m', backend='torch')
    neuron(torch.rand(4, 2, 3) * 3)
    assert neuron.v_seq.shape == (4, 2, 3)
    for bad in (dict(v_reset=0.0), dict(detach_reset=True), dict(decay_input=False)):
        with pytest.raises(TypeError, match='AMOSLIF'): AMOSLIF(**bad)
    with pytest.raises(ValueError, match='backend'): AMOSLIF(backend='cupy')

# --- 7: early exit equals the full pass everywhere, or is refused
def test_early_exit_equals_full_pass_of_a_bf16_run(tmp_path):
    folder = tmp_path / 'bf16'
    assert train_main(*TINY, '--schedule', '1:1,4:1', '--bf16', '--out', str(folder)).returncode == 0
    from pttfs.run_eval import evaluate_run
    early = evaluate_run(str(folder), keep_predictions=True)
    full = evaluate_run(str(folder), full=True, keep_predictions=True)
    assert early['predictions'] == full['predictions'] and early['t_first'] == full['t_first']
    assert early['test_accuracy'] == full['test_accuracy']

def test_early_exit_with_hidden_force_last_and_refusal_of_other_temporal_layers():
    from torch import nn
    from pttfs import AMOSLIF
    from pttfs.models import SpikingClassifier, SequenceWise, SpikingJellyNeuron
    from pttfs.decoders import DECODERS
    torch.manual_seed(0)
    body = nn.Sequential(SequenceWise(nn.Flatten(), nn.Linear(64, 48)), AMOSLIF(force_last=True, step_mode='m'),
                         SequenceWise(nn.Linear(48, 32)), AMOSLIF(force_last=True, step_mode='m'))
    body[0].layers[1].weight.data.normal_(0, 0.2); body[2].layers[0].weight.data.normal_(0, 0.3)
    model = SpikingClassifier(body, DECODERS['tsd'](32, 10)).eval()
    model.decoder.synapse.weight.data.normal_(0, 0.4); model.decoder.synapse.bias.data.fill_(0.3)
    images = torch.rand(120, 1, 8, 8)
    full, early = model.predict(images, 6, early_exit=False), model.predict(images, 6)
    assert (full.t_first == 5).sum() > 0                               # some decide at the forced step
    assert torch.equal(early.t_first, full.t_first) and torch.equal(early.logits.argmax(1), full.logits.argmax(1))
    lif = SpikingClassifier(nn.Sequential(SequenceWise(nn.Flatten(), nn.Linear(64, 32)), SpikingJellyNeuron('lif')),
                            DECODERS['tsd'](32, 10)).eval()
    with pytest.raises(ValueError, match='early_exit=False'): lif.predict(images, 4)

# --- 10: flags that would do nothing
def test_augment_on_digits_refused(tmp_path):
    one_line_error(train_main(*TINY, '--schedule', '1:1', '--augment', '--out', str(tmp_path / 'r')), '--augment', 'digits')
    assert not (tmp_path / 'r').exists()

@pytest.fixture(scope='module')
def psn_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp('runs') / 'psn'
    assert train_main(*TINY, '--schedule', '4:1', '--neuron', 'psn', '--out', str(folder)).returncode == 0
    return folder

def test_eval_refuses_a_threshold_and_another_T_for_a_psn_run(psn_run):
    one_line_error(eval_main(str(psn_run), '--full', '--decoder-threshold', '2', '--out', str(psn_run / 'x.json')), 'decoder threshold')
    one_line_error(eval_main(str(psn_run), '--full', '--T', '8', '--out', str(psn_run / 'x.json')), 'T=4')
    assert not (psn_run / 'x.json').exists()

# --- 11: a planted checkpoint runs no code
class _Planted:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (open, (self.marker, 'w'))

def test_a_planted_checkpoint_runs_no_code(run, tmp_path):
    from pttfs.runs import load_checkpoint, save_checkpoint
    folder = copy_of(run, tmp_path / 'r')
    state = load_checkpoint(str(folder / 'last.pt'))
    marker = tmp_path / 'code-ran'
    state['history'].append(_Planted(str(marker)))
    save_checkpoint(str(folder), state)                                  # a valid checksum over the planted object
    one_line_error(eval_main(str(folder), '--out', str(tmp_path / 'e.json')), 'not a readable checkpoint')
    one_line_error(train_main(*TINY, '--schedule', '1:1,2:1', '--out', str(folder), '--resume'), 'not a readable checkpoint')
    assert not marker.exists()

# --- 12, 13: one line instead of a traceback
def test_eval_bounds_T_and_batch_size_and_checks_the_device(run, tmp_path):
    out = ['--out', str(tmp_path / 'e.json')]
    for args, words in [(['--T', '100000000'], ['--T']), (['--full', '--T', '100000000'], ['--T']),
                        (['--batch-size', str(10**20)], ['--batch-size']), (['--device', 'foo'], ['--device']),
                        (['--device', 'meta'], ['--device']), (['--device', 'mps'], ['--device'])]:
        start = time.time()
        one_line_error(eval_main(str(run), *args, *out), *words)
        assert time.time() - start < 30
    for device in ('foo', 'meta', 'mps'):
        one_line_error(bench_main('--quick', '--device', device, '--out', str(tmp_path / 'b.json')), '--device')

@pytest.mark.parametrize("args, words", [
    (['--batch-size', str(10**20)], ['--batch-size']), (['--seed', '9' * 20], ['--seed']), (['--seed', '-1'], ['--seed']),
    (['--lr', '1e38'], ['--lr']), (['--device', 'meta'], ['--device']), (['--threads', '0'], ['--threads']),
])
def test_train_bounds_its_numbers(args, words, tmp_path):
    one_line_error(train_main(*TINY, '--schedule', '1:1', *args, '--out', str(tmp_path / 'r')), *words)
    assert not (tmp_path / 'r').exists()

def test_a_diverging_run_stops_with_one_line_and_strict_json(tmp_path, monkeypatch):
    "--lr 1e36 used to train on and write a bare Infinity into metrics.jsonl; now the first non-finite loss stops the run."
    folder = tmp_path / 'r'
    assert train_main(*TINY, '--schedule', '1:3', '--out', str(folder), '--stop-after', '1').returncode == 0
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, 'cross_entropy', lambda *a, **k: real(*a, **k) * float('inf'))   # diverged
    result = train_main(*TINY, '--schedule', '1:3', '--out', str(folder), '--resume')
    one_line_error(result, 'training loss is inf', 'epoch 2', '--lr', 'last.pt holds 1 finished epochs')
    for line in (folder / 'metrics.jsonl').read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))

def test_a_finished_run_with_a_damaged_summary(run, tmp_path):
    folder = copy_of(run, tmp_path / 'r')
    (folder / 'summary.json').write_text('{"half": ')
    one_line_error(train_main(*TINY, '--schedule', '1:1,2:1', '--out', str(folder), '--resume'), 'summary.json', 'not JSON')

@pytest.mark.parametrize("changes, words", [
    (dict(schedule='abc'), ['schedule']), (dict(dataset='imagenet'), ['dataset']), (dict(decoder='foo'), ['decoder']),
    (dict(tau=0.5), ['tau']), (dict(channels='32'), ['channels']), (dict(hidden=None), ['hidden']),
    (dict(schedule=None), ['schedule']), (dict(lr=float('nan')), ['lr']),
])
def test_edited_settings_are_refused_in_one_line(run, tmp_path, changes, words):
    folder = edited(run, tmp_path / 'r', **changes)
    one_line_error(eval_main(str(folder), '--out', str(tmp_path / 'e.json')), *words)
    one_line_error(train_main(*TINY, '--schedule', '1:1,2:1', '--out', str(folder), '--resume'), *words)

def test_settings_edited_into_another_network_are_caught(tmp_path):
    """Settings that describe weights of other shapes are refused; the check compares what loading needs (names, shapes),
    so settings that describe the same weights (tq-ttfs edited into twd: one experiment, chapter 9) load."""
    folder = tmp_path / 'tq'
    assert train_main(*TINY, '--schedule', '2:1', '--decoder', 'tq-ttfs', '--out', str(folder)).returncode == 0
    wider = edited(folder, tmp_path / 'wider', hidden=32)
    one_line_error(eval_main(str(wider), '--full', '--out', str(tmp_path / 'e.json')), 'another network')
    twd = edited(folder, tmp_path / 'twd', decoder='twd')
    assert eval_main(str(twd), '--full', '--out', str(tmp_path / 'e2.json')).returncode == 0

def test_disk_full_is_one_line_that_says_where_the_run_stands(run, tmp_path, monkeypatch):
    import errno, pttfs.train_cli
    def full(*args, **kwargs): raise OSError(errno.ENOSPC, 'No space left on device', str(tmp_path / 'r' / 'last.pt'))
    monkeypatch.setattr(pttfs.train_cli, 'save_checkpoint', full)
    one_line_error(train_main(*TINY, '--schedule', '1:1', '--out', str(tmp_path / 'r')), 'No space left on device', 'nothing is saved')

def test_ctrl_c_says_how_to_resume(tmp_path):
    folder = tmp_path / 'r'
    run = subprocess.Popen([sys.executable, '-m', 'pttfs.train_cli', *TINY, '--schedule', '1:500', '--out', str(folder)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (folder / 'metrics.jsonl').exists() and time.time() < deadline: time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    err = run.communicate(timeout=120)[1]
    assert run.returncode == 130 and 'Traceback' not in err, err[-2000:]
    assert 'interrupted' in err and '--resume' in err and 'finished epochs' in err

# --- 15, 16, 19: a new user's first hour
def test_help_shows_defaults_and_examples():
    result = train_main('--help')
    assert result.returncode == 0
    text = ' '.join(result.stdout.split())
    assert '(recipe: default 1:12,2:4,4:4, psn 4:1024)' in text and 'examples:' in text and '(default: 256)' in text

def test_two_plain_runs_do_not_collide(tmp_path):
    for _ in range(2):
        result = train_main(*TINY, '--schedule', '1:1', cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    runs = os.listdir(tmp_path / 'runs')
    assert len(runs) == 2 and all(r.startswith('digits-') for r in runs)
    one_line_error(train_main(*TINY, '--schedule', '1:1', '--resume', cwd=tmp_path), '--resume needs --out')

def test_one_line_per_epoch_when_not_on_a_terminal(tmp_path):
    result = train_main(*TINY, '--schedule', '1:1,2:1', '--out', str(tmp_path / 'r'))
    assert [l.split(' T=')[0] for l in result.stderr.splitlines() if ' epoch ' in l] == ['pttfs-train: epoch 1/2', 'pttfs-train: epoch 2/2']

def test_one_device_rule():
    from pttfs.train_cli import parse_args; from pttfs.runs import default_device
    import pttfs.run_eval, inspect
    assert parse_args(['--out', 'x']).device == default_device()
    assert 'default=default_device()' in inspect.getsource(pttfs.run_eval.eval_main)

# --- 18: figures
def test_plots_have_whole_epochs_and_readable_stage_labels(tmp_path):
    from matplotlib.figure import Figure
    from pttfs.train import mark_stages
    ax = Figure().subplots()
    history = [dict(epoch=e, T=T, test_accuracy=0.5) for e, T in [(1, 1), (2, 1), (3, 2), (4, 4)]]
    ax.plot([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])
    pad = mark_stages(ax, history)
    assert all(float(t).is_integer() for t in ax.get_xticks())
    labels = [a for a in ax.texts]
    assert [a.get_text() for a in labels] == ['T=1', 'T=2', 'T=4'] and all(a.xy[1] >= 1.0 for a in labels)   # above the data
    assert pad > 10


def test_threads_flag_is_used_and_the_process_left_as_found(tmp_path):
    before = torch.get_num_threads()
    assert train_main(*TINY, '--schedule', '1:1', '--threads', '1', '--out', str(tmp_path / 'r')).returncode == 0
    assert json.loads((tmp_path / 'r' / 'summary.json').read_text())['threads'] == 1
    assert torch.get_num_threads() == before
