"""The first hour of a new user (issue 30): one line for a broken torchvision, hints for the flags people try first,
pttfs-eval saying where a second evaluation can go, and readouts a SpikingJelly user can train."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from inprocess import run_main, TINY, train_main, eval_main, bench_main, one_line_error

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def broken_torchvision(tmp_path_factory):
    "A folder whose torchvision fails as a CPU torch beside the CUDA build's torchvision does."
    folder = tmp_path_factory.mktemp('broken')
    (folder / 'torchvision').mkdir()
    (folder / 'torchvision' / '__init__.py').write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    return folder

@pytest.mark.parametrize('flags', [['--dataset', 'fashion-mnist'], ['--dataset', 'mnist', '--data-dir', '/nonexistent/dir']])
def test_a_broken_torchvision_is_one_line(flags, broken_torchvision, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(broken_torchvision))
    code = f"from pttfs.train_cli import main; main({[*flags, '--out', str(tmp_path / 'r')]!r})"
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    one_line_error(result, 'torchvision cannot be loaded', 'pip install')
    assert not (tmp_path / 'r').exists()


@pytest.mark.parametrize('flags', [['--epochs', '5'], ['--T', '4'], ['--epochs=5']])
def test_epochs_and_T_point_at_schedule(flags):
    one_line_error(train_main(*flags), 'unrecognized arguments', '--schedule T:EPOCHS')


def test_a_second_evaluation_is_told_where_to_go(tmp_path):
    folder = tmp_path / 'run'
    assert train_main(*TINY, '--schedule', '1:1,2:1', '--out', str(folder)).returncode == 0
    assert eval_main(str(folder)).returncode == 0
    one_line_error(eval_main(str(folder), '--T', '1'), 'eval.json exists', f"--out {folder / 'eval-T1.json'}")
    assert eval_main(str(folder), '--T', '1', '--out', str(folder / 'eval-T1.json')).returncode == 0


def test_the_default_data_folder_is_ignored_by_git():
    for path in ('data/MNIST/raw/x', 'runs/digits-1/last.pt'):           # pttfs-train's default --data-dir and folders
        assert subprocess.run(['git', 'check-ignore', '-q', path], cwd=ROOT).returncode == 0, path
