"""pttfs-train: bad input exits 2 with one line naming the flag; a killed run resumes to the same metrics."""
import json, os, signal, subprocess, sys, time
import pytest
import torch
from pttfs.runs import load_checkpoint

SMALL = ['--dataset', 'digits', '--schedule', '1:2,2:2', '--hidden', '32', '--channels', '4', '--batch-size', '256']

def cli(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', 'pttfs.train_cli', *args], capture_output=True, text=True, timeout=timeout)

def here(*args):
    "pttfs-train's main() in this process (tests/inprocess.py): for refusals and short runs that no other process touches."
    from inprocess import run_main
    return run_main('pttfs.train_cli', 'main', *args)

@pytest.mark.parametrize("args, flag", [
    (['--dataset', 'imagenet'], '--dataset'),
    (['--schedule', '1:2,x'], '--schedule'),
    (['--schedule', '0:3'], '--schedule'),
    (['--batch-size', '0'], '--batch-size'),
    (['--batch-size', '-3'], '--batch-size'),
    (['--lr', '0'], '--lr'),
    (['--schedule', '1:2,2:2', '--stage-thresholds', '1'], '--stage-thresholds'),
    (['--schedule', '1:2,2:2', '--stage-thresholds', '1,-2'], '--stage-thresholds'),
    (['--schedule', '1:2,2:2', '--stage-thresholds', '1,2', '--decoder-threshold', '3'], '--decoder-threshold'),
    (['--neuron', 'lif', '--stage-thresholds', '1'], '--stage-thresholds'),
])
def test_bad_flags_exit_2_with_one_line(args, flag, tmp_path):
    result = here(*args, '--out', str(tmp_path / 'run'))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], result.stderr
    assert not (tmp_path / 'run').exists()

def test_missing_data_names_path_and_flag(tmp_path):
    result = here('--dataset', 'fashion-mnist', '--data-dir', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'run'))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr                                         # one line: the path and both routes
    for words in ('--download', 'dataset-fashion-mnist', str(tmp_path / 'nowhere' / 'FashionMNIST' / 'raw')):
        assert words in lines[0], lines[0]
    assert not (tmp_path / 'run').exists()

def test_corrupt_checkpoint_is_refused_and_nothing_overwritten(tmp_path):
    run = tmp_path / 'run'; run.mkdir()
    (run / 'last.pt').write_bytes(b'not a checkpoint')
    (run / 'metrics.jsonl').write_text('{"epoch": 1}\n')
    result = here(*SMALL, '--out', str(run), '--resume')
    assert result.returncode == 2 and 'last.pt' in result.stderr
    assert (run / 'last.pt').read_bytes() == b'not a checkpoint'
    assert (run / 'metrics.jsonl').read_text() == '{"epoch": 1}\n'

def test_mismatched_checkpoint_and_existing_run(tmp_path):
    run = tmp_path / 'run'
    assert here(*SMALL, '--out', str(run), '--stop-after', '1').returncode == 0
    before = (run / 'last.pt').read_bytes()
    other = here(*SMALL[:-1], '64', '--out', str(run), '--resume')            # another batch size
    assert other.returncode == 2 and '--batch-size' in other.stderr
    again = here(*SMALL, '--out', str(run))                                    # a fresh run into a used folder
    assert again.returncode == 2 and '--resume' in again.stderr
    assert (run / 'last.pt').read_bytes() == before

def test_killed_run_resumes_to_identical_metrics(tmp_path):
    whole = tmp_path / 'whole'
    assert cli(*SMALL, '--out', str(whole)).returncode == 0
    cut = tmp_path / 'cut'
    process = subprocess.Popen([sys.executable, '-m', 'pttfs.train_cli', *SMALL, '--out', str(cut)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / 'metrics.jsonl').exists() and time.time() < deadline: time.sleep(0.02)
    time.sleep(0.3)                                          # somewhere inside a later epoch, or a write
    process.send_signal(signal.SIGKILL); process.wait()
    state = load_checkpoint(str(cut / 'last.pt'))            # the checkpoint is complete (its checksum holds) ...
    rows = [json.loads(l) for l in open(cut / 'metrics.jsonl')]
    assert len(rows) == state['epochs_done']                  # ... and agrees with the metrics
    assert cli(*SMALL, '--out', str(cut), '--resume').returncode == 0
    assert [json.loads(l) for l in open(cut / 'metrics.jsonl')] == [json.loads(l) for l in open(whole / 'metrics.jsonl')]
    summary = json.loads((cut / 'summary.json').read_text())
    assert 0 <= summary['test_accuracy'] <= 1 and summary['world_size'] == 1 and summary['finished']

def test_stage_thresholds_train_each_stage_and_resume(tmp_path):
    """--stage-thresholds: each epoch trains and is evaluated at its stage's V_th, the network keeps the last, and a
    run stopped between stages resumes to the same metrics as the whole run."""
    args = [*SMALL, '--stage-thresholds', '1,3']
    assert here(*args, '--out', str(tmp_path / 'whole')).returncode == 0
    rows = [json.loads(l) for l in open(tmp_path / 'whole' / 'metrics.jsonl')]
    assert [r['decoder_threshold'] for r in rows] == [1.0, 1.0, 3.0, 3.0]
    assert json.loads((tmp_path / 'whole' / 'summary.json').read_text())['settings']['decoder_threshold'] == 3.0
    assert here(*args, '--out', str(tmp_path / 'cut'), '--stop-after', '2').returncode == 0
    assert here(*args, '--out', str(tmp_path / 'cut'), '--resume').returncode == 0
    assert [json.loads(l) for l in open(tmp_path / 'cut' / 'metrics.jsonl')] == rows
    other = here(*SMALL, '--stage-thresholds', '1,2', '--out', str(tmp_path / 'cut'), '--resume')
    assert other.returncode == 2 and '--stage-thresholds' in other.stderr

def test_torchrun_two_cpu_processes(tmp_path):
    "Data-parallel with gloo on two CPU processes: rank 0 alone writes, and says how many processes trained."
    torchrun = os.path.join(os.path.dirname(sys.executable), 'torchrun')
    result = subprocess.run([torchrun, '--nproc_per_node', '2', '-m', 'pttfs.train_cli', *SMALL, '--out', str(tmp_path / 'ddp')],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / 'ddp' / 'summary.json').read_text())
    assert summary['world_size'] == 2 and summary['finished']
    rows = [json.loads(l) for l in open(tmp_path / 'ddp' / 'metrics.jsonl')]
    assert [r['epoch'] for r in rows] == [1, 2, 3, 4]
    assert sorted(os.listdir(tmp_path / 'ddp')) == ['accuracy.png', 'last.pt', 'metrics.jsonl', 'summary.json', 't_first.png']
