"""pttfs-train and pttfs-bench guard their outputs: nothing a user ran is lost, and every bad input is one line, exit 2.

Each test is a reproducer from the reliability issue: an overwrite refused with every file byte-identical, a second
writer refused while the first holds the lock (two processes), a finished run's summary preserved, a damaged
checkpoint refused, and flags that used to give tracebacks.
"""
import hashlib, json, os, signal, subprocess, sys, time
import pytest
import torch
from inprocess import run_main

SMALL = ['--dataset', 'digits', '--schedule', '1:2,2:2', '--hidden', '32', '--channels', '4', '--batch-size', '256']

def cli(*args, module='pttfs.train_cli', cwd=None, timeout=300):
    "Run a command's main() in a fresh process, as its console script does."
    code = f"import sys; from {module} import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)

def refusal(*args, module='pttfs.train_cli', cwd=None):
    "A command expected to refuse before any work, run in this process (tests/inprocess.py)."
    return run_main(module, 'main', *args, cwd=cwd)

def one_line_error(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and all(w in lines[0] for w in words), result.stderr[-2000:]

def digests(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))}

@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp('runs') / 'finished'
    assert cli(*SMALL, '--out', str(run)).returncode == 0
    return run

def copy_of(run, to):
    subprocess.run(['cp', '-r', str(run), str(to)], check=True)
    return to

def test_overwrite_refused_when_last_pt_is_missing(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path / 'p')
    (run / 'last.pt').unlink()
    before = digests(run)
    one_line_error(refusal(*SMALL, '--schedule', '1:1', '--out', str(run)), 'already holds a run', '--resume')
    assert digests(run) == before

def test_out_dot_refused_when_the_working_directory_holds_run_files(tmp_path):
    (tmp_path / 'summary.json').write_text('{"mine": true}\n')
    one_line_error(refusal(*SMALL, '--out', '.', cwd=tmp_path), 'already holds a run', 'summary.json')
    assert sorted(os.listdir(tmp_path)) == ['summary.json'] and (tmp_path / 'summary.json').read_text() == '{"mine": true}\n'

def test_second_writer_refused_while_the_first_runs(tmp_path):
    run = tmp_path / 'shared'
    first = subprocess.Popen([sys.executable, '-m', 'pttfs.train_cli', *SMALL, '--schedule', '1:500', '--out', str(run)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / 'metrics.jsonl').exists() and time.time() < deadline: time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        second = cli(*SMALL, '--out', str(run))
        one_line_error(second, 'in use', str(first.pid))
        assert first.poll() is None                               # the first goes on
    finally:
        first.send_signal(signal.SIGKILL); first.wait()
    assert cli(*SMALL, '--schedule', '1:500', '--out', str(run), '--resume', '--stop-after', '1').returncode == 0   # the kill freed the lock

def test_finished_run_left_as_it_is(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path / 'done')
    before = digests(run)
    result = cli(*SMALL, '--out', str(run), '--resume', '--stop-after', '1')
    assert result.returncode == 0 and 'finished (4 of 4 epochs); left as it is' in result.stderr
    assert digests(run) == before
    assert json.loads(result.stdout)['test_accuracy'] == json.loads((run / 'summary.json').read_text())['test_accuracy']

def test_finished_run_without_summary_gets_its_summary(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path / 'nosummary')
    expected = json.loads((run / 'summary.json').read_text())
    (run / 'summary.json').unlink()
    result = cli(*SMALL, '--out', str(run), '--resume')
    assert result.returncode == 0 and 'missing summary.json' in result.stderr
    summary = json.loads((run / 'summary.json').read_text())
    assert summary['finished'] and summary['T'] == 2 and summary['epochs'] == 4
    assert summary['test_accuracy'] == expected['test_accuracy']

def test_stopped_run_not_rewound_by_a_smaller_stop_after(tmp_path):
    run = tmp_path / 'stopped'
    assert cli(*SMALL, '--out', str(run), '--stop-after', '3').returncode == 0
    before = digests(run)
    result = cli(*SMALL, '--out', str(run), '--resume', '--stop-after', '1')
    assert result.returncode == 0 and 'already has 3 epochs' in result.stderr
    assert digests(run) == before

def test_resume_compares_stages_not_spelling(tmp_path):
    run = tmp_path / 'spelling'
    assert cli(*SMALL, '--out', str(run), '--stop-after', '1').returncode == 0
    assert cli(*SMALL[:3], '1:2, 2:2', *SMALL[4:], '--out', str(run), '--resume').returncode == 0

def test_damaged_checkpoint_refused(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path / 'flipped')
    data = bytearray((run / 'last.pt').read_bytes())
    data[len(data) // 3] ^= 0x10
    (run / 'last.pt').write_bytes(bytes(data))
    before = digests(run)
    one_line_error(refusal(*SMALL, '--out', str(run), '--resume'), 'damaged')
    assert digests(run) == before

def test_checkpoint_of_another_kind_refused(tmp_path):
    from pttfs.runs import save_checkpoint
    run = tmp_path / 'foreign'; run.mkdir()
    save_checkpoint(str(run), dict(model={}, optimizer={}, scheduler={}, history=[], settings='not a dict', epochs_done=1))
    one_line_error(refusal(*SMALL, '--out', str(run), '--resume'), 'not a pttfs-train checkpoint')

def test_stale_temporary_files_removed(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path / 'stale')
    (run / 'last.pt.tmp-4242').write_bytes(b'half')
    (run / 'metrics.jsonl.tmp-4243').write_bytes(b'half')
    assert cli(*SMALL, '--out', str(run), '--resume').returncode == 0
    assert not [n for n in os.listdir(run) if '.tmp-' in n]

@pytest.mark.parametrize("args, words", [
    (['--device', 'foo'], ['--device']), (['--device', 'mps'], ['--device']), (['--tau', 'inf'], ['--tau']),
    (['--decoder-threshold', 'nan'], ['--decoder-threshold']), (['--lr', 'inf'], ['--lr']), (['--lr', 'nan'], ['--lr']),
    (['--schedule', '100000000:1'], ['--schedule']), (['--schedule', '1:1000000000'], ['--schedule']),
    (['--schedule', '1:' + '1' + '0' * 23], ['--schedule']),
])
def test_bad_flags_one_line_and_no_folder(args, words, tmp_path):
    one_line_error(refusal(*SMALL, *args, '--out', str(tmp_path / 'run')), *words)
    assert not (tmp_path / 'run').exists()

def test_bad_out_known_before_any_work(tmp_path):
    (tmp_path / 'file').write_text('')
    for out in [str(tmp_path / 'file'), str(tmp_path / 'file' / 'run'), '', '/proc/pttfs-no-such/run']:   # /proc: unwritable even for root
        start = time.time()
        one_line_error(refusal(*SMALL, '--schedule', '1:50', '--out', out), '--out')
        assert time.time() - start < 60                           # refused before fifty epochs could train
    assert sorted(os.listdir(tmp_path)) == ['file']

@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: an unwritable folder cannot be made here")
def test_unwritable_out(tmp_path):
    locked = tmp_path / 'locked'; locked.mkdir(); locked.chmod(0o500)
    one_line_error(cli(*SMALL, '--out', str(locked / 'run')), 'not writable')

def test_missing_data_and_failed_download_leave_no_folder(tmp_path):
    for extra in ([], ['--download']):                            # no network here (or none the test relies on)
        result = cli('--dataset', 'mnist', '--data-dir', str(tmp_path / 'empty'), *extra, '--out', str(tmp_path / 'run'))
        if extra and result.returncode == 0: pytest.skip("this machine can download MNIST")
        one_line_error(result, '--download' if not extra else 'could not fetch')
        assert not (tmp_path / 'run').exists()

@pytest.mark.parametrize("args, words", [
    (['--N', '2^-1'], ['--N']), (['--N', '2^3^4'], ['--N']), (['--N', '0.5'], ['--N']), (['--T', '-4'], ['--T']),
    (['--out', ''], ['--out']), (['--out', '.'], ['--out', 'folder']), (['--out', '/proc/no/such.json'], ['--out']),
])
def test_bench_checks_before_benchmarking(args, words, tmp_path):
    start = time.time()
    one_line_error(refusal(*args, module='pttfs.bench_cli', cwd=tmp_path), *words)
    assert time.time() - start < 60 and os.listdir(tmp_path) == []

def test_learnable_tau_at_the_edge_trains():
    "w = 17 used to round τ to exactly 1 in float32 and stop training with 'tau must be > 1'."
    from pttfs import AMOSLIF
    neuron = AMOSLIF(learnable_tau=True, step_mode='m')
    neuron.tau_logit.data.fill_(17)
    assert neuron.tau.item() > 1
    neuron(torch.rand(5, 3) * 3).sum().backward()
    neuron.tau_logit.data.fill_(-1e30)
    assert torch.isfinite(neuron.tau) and neuron(torch.rand(5, 3)).shape == (5, 3)

def test_neuron_arguments_refused():
    from pttfs import AMOSLIF
    from pttfs.surrogate import Sigmoid, ATan
    for alpha in (float('nan'), float('inf'), -4.0):
        for cls in (Sigmoid, ATan):
            with pytest.raises(ValueError, match='alpha'): cls(alpha)
    with pytest.raises(TypeError, match='learnable_tau'): AMOSLIF(learnable_tau='yes', step_mode='m')
    neuron = AMOSLIF(tau=torch.tensor([2.0, 3.0]), step_mode='m')                 # one initial τ per channel, not a placeholder error
    assert neuron.num_channels == 2 and neuron.tau.tolist() == [2.0, 3.0]
