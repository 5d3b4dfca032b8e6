"""Nothing lost, nothing silently wrong (round four): one reproducer per finding, each failing before its fix.

Files the program did not write stay untouched, a cache follows every write, a flag that changes nothing is
refused, stored networks load across renamed classes, and every notebook cell is a test.
"""
import json, os, shutil, subprocess, sys
from pathlib import Path
import nbformat
import pytest
import torch
from inprocess import run_main, TINY, train_main, eval_main, bench_main, one_line_error

ROOT = Path(__file__).resolve().parents[1]


# 14. nbval compares every code cell, the ones that print nothing too
def _nbval(tmp_path, cells):
    "Run nbval with nbs/conftest.py on a notebook of (source, stored stdout or None) code cells, as nbdev_clean leaves it."
    shutil.copy(ROOT / 'nbs' / 'conftest.py', tmp_path / 'conftest.py')
    nb = nbformat.v4.new_notebook()
    for source, stored in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.outputs = [] if stored is None else [nbformat.v4.new_output('stream', name='stdout', text=stored)]
        nb.cells.append(cell)
    nb.metadata['kernelspec'] = dict(name='python3', display_name='Python 3', language='python')
    nbformat.write(nb, tmp_path / 'check.ipynb')
    return subprocess.run([sys.executable, '-m', 'pytest', '-q', '--nbval', 'check.ipynb', '-p', 'no:cacheprovider'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)

def test_a_lost_output_fails_nbval(tmp_path):
    result = _nbval(tmp_path, [("x = 1", None), ("print('tensor([0.0707, 1.0000])')", None)])      # the output was emptied
    assert result.returncode == 1 and '1 failed' in result.stdout, result.stdout[-2000:]

def test_a_silent_cell_must_stay_silent(tmp_path):
    result = _nbval(tmp_path, [("x = 1", None), ("print(x)", '1\n')])
    assert result.returncode == 0 and '2 passed' in result.stdout, result.stdout[-2000:]
    result = _nbval(tmp_path, [("x = 1; print('late')", None)])
    assert result.returncode == 1, result.stdout[-2000:]

def test_eval_false_cells_are_neither_run_nor_compared(tmp_path):
    result = _nbval(tmp_path, [("#| eval: false\n# NBVAL_SKIP\nraise SystemExit('must not run')", None), ("print(2)", '2\n')])
    assert result.returncode == 0, result.stdout[-2000:]


# 1. the site build removes only what it wrote: a reader's files and folders survive every rebuild
def _site_builder(tmp_path, monkeypatch):
    import importlib.util
    mathjax = tmp_path / 'mathjax-src'; (mathjax / 'config').mkdir(parents=True)
    (mathjax / 'MathJax.js').write_text('//'); (mathjax / 'config' / 'TeX-AMS_CHTML-full.js').write_text('//')
    monkeypatch.setenv('MATHJAX_DIR', str(mathjax))
    spec = importlib.util.spec_from_file_location('site_builder', ROOT / '.ci' / 'site.py')
    site = importlib.util.module_from_spec(spec); spec.loader.exec_module(site)
    monkeypatch.setattr(site, 'chapters', lambda: [(ROOT / 'CONTRIBUTING.md', 'CONTRIBUTING.html')])   # one small page
    return site

def test_site_rebuilds_keep_a_readers_files_and_folders(tmp_path, monkeypatch):
    site, out = _site_builder(tmp_path, monkeypatch), tmp_path / '_site'
    site.build(out)
    (out / 'my-notes.txt').write_text('mine'); (out / 'drafts').mkdir(); (out / 'mathjax' / 'mine').mkdir()
    site.build(out); site.build(out)
    assert (out / 'my-notes.txt').read_text() == 'mine' and (out / 'drafts').is_dir() and (out / 'mathjax' / 'mine').is_dir()
    assert 'my-notes.txt' not in (out / site.MANIFEST).read_text()
    assert (out / 'CONTRIBUTING.html').exists() and (out / 'mathjax' / 'MathJax.js').exists()

def test_a_site_build_that_failed_partway_is_rebuilt(tmp_path, monkeypatch):
    site, out = _site_builder(tmp_path, monkeypatch), tmp_path / '_site'
    original = site.write_file
    def failing(out_, name, write):
        if name.endswith('.html'): raise OSError('disk full')
        original(out_, name, write)
    monkeypatch.setattr(site, 'write_file', failing)
    with pytest.raises(OSError): site.build(out)
    monkeypatch.setattr(site, 'write_file', original)
    site.build(out)                                         # not refused as "not a site this script built"
    assert (out / 'CONTRIBUTING.html').exists()

def test_the_site_writes_through_no_link(tmp_path, monkeypatch):
    site, out = _site_builder(tmp_path, monkeypatch), tmp_path / '_site'
    site.build(out)
    target = tmp_path / 'elsewhere.txt'; target.write_text('keep')
    (out / 'book.css').unlink(); (out / 'book.css').symlink_to(target)     # a link where the build will write
    manifest = (out / site.MANIFEST).read_text()
    (out / site.MANIFEST).write_text(manifest.replace('book.css\n', ''))    # ... that the last build did not write
    with pytest.raises(SystemExit, match='link'): site.build(out)
    assert target.read_text() == 'keep'


# 4. the review texts' writer deletes nothing it did not write
def test_texts_write_keeps_a_file_without_a_notebook():
    stray = ROOT / 'nbs' / 'text' / 'zz_my_notes.py'
    stray.write_text('# my notes\n')
    try:
        result = subprocess.run([sys.executable, str(ROOT / '.ci' / 'texts.py'), 'write'], capture_output=True, text=True)
        assert result.returncode == 0 and stray.read_text() == '# my notes\n' and 'zz_my_notes.py' in result.stderr
        check = subprocess.run([sys.executable, str(ROOT / '.ci' / 'texts.py'), 'check'], capture_output=True, text=True)
        assert check.returncode == 1 and 'has no notebook' in check.stderr
    finally: stray.unlink(missing_ok=True)


# 2. a run writes no figure through a link
def test_a_dangling_link_named_like_a_figure_refuses_the_run(tmp_path):
    out, target = tmp_path / 'run', tmp_path / 'outside.png'
    out.mkdir(); (out / 'accuracy.png').symlink_to(target)
    result = train_main(*TINY, '--schedule', '1:1', '--out', str(out))
    one_line_error(result, 'already holds a run', 'accuracy.png')
    assert not target.exists()

def test_figures_replace_a_link_instead_of_following_it(tmp_path):
    from pttfs.runs import plot_run
    target = tmp_path / 'outside.png'
    (tmp_path / 't_first.png').symlink_to(target)
    history = [dict(epoch=1, T=1, test_accuracy=0.5, decisions=[dict(t=0, fraction=1.0, accuracy=0.5)])]
    plot_run(str(tmp_path), history, dict(dataset='digits', schedule='1:1', t_first_histogram=[10], avg_timesteps=1.0, T=1))
    assert not target.exists() and not (tmp_path / 't_first.png').is_symlink()


# 3. pttfs-bench replaces no figure it did not write, and none without --overwrite
def test_bench_refuses_existing_figures_before_any_work(tmp_path):
    (tmp_path / 'b-train.png').write_bytes(b'\x89PNG a reader picture')
    result = bench_main('--quick', '--no-network', '--modes', 'train', '--neurons', 'amos', '--out', str(tmp_path / 'b.json'))
    one_line_error(result, 'b-train.png', 'exists')
    result = bench_main('--quick', '--no-network', '--modes', 'train', '--neurons', 'amos', '--out', str(tmp_path / 'b.json'), '--overwrite')
    one_line_error(result, 'b-train.png', 'not a figure')
    assert (tmp_path / 'b-train.png').read_bytes() == b'\x89PNG a reader picture' and not (tmp_path / 'b.json').exists()


# 13. small ones
def test_eval_out_below_a_file_says_so(tmp_path):
    (tmp_path / 'afile').write_text('x')
    result = eval_main(str(tmp_path), '--out', str(tmp_path / 'afile' / 'x.json'))
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'File exists' not in result.stderr and 'is a file' in result.stderr.strip().splitlines()[-1], result.stderr


# 5. τ written in any way, eager or compiled, is the τ the next call uses
def test_tau_written_through_data_and_numpy_takes_effect():
    from pttfs import AMOSLIF
    torch.manual_seed(0); x = 1 + torch.randn(12, 3)
    fresh = AMOSLIF(tau=100.0, step_mode='m')(x)
    for write in (lambda t: t.data.fill_(100.0), lambda t: setattr(t, 'data', torch.tensor(100.0)), lambda t: t.numpy().fill(100.0)):
        m = AMOSLIF(tau=2.0, step_mode='m'); m(x)
        write(m.tau_fixed)
        assert torch.equal(m(x), fresh)

def test_tau_written_after_a_compiled_call_takes_effect():
    from pttfs import AMOSLIF
    torch.manual_seed(0); x = 1 + torch.randn(12, 3)
    m = AMOSLIF(tau=2.0, step_mode='m'); m(x)                 # one eager call first, as in the report
    compiled = torch.compile(m)
    compiled(x)
    with torch.no_grad(): m.tau_fixed.fill_(100.0)
    assert torch.equal(compiled(x), AMOSLIF(tau=100.0, step_mode='m')(x))


# 6. torch.jit.trace refuses in one line instead of returning uninitialised memory
def test_jit_trace_refuses():
    from pttfs import AMOSLIF
    with pytest.raises(RuntimeError, match='cannot be traced'): torch.jit.trace(AMOSLIF(step_mode='m'), torch.rand(4, 3))


# 7. a flag that changes nothing for a configuration is refused for it
@pytest.mark.parametrize('decoder', ['tsd', 'rate'])
def test_output_force_last_is_refused_where_it_changes_nothing(decoder, tmp_path):
    result = train_main(*TINY, '--schedule', '1:1', '--decoder', decoder, '--output-force-last', '--out', str(tmp_path / 'r'))
    one_line_error(result, '--output-force-last changes nothing', decoder)
    assert not (tmp_path / 'r').exists()

def test_output_force_last_changes_the_twd_run(tmp_path):
    from pttfs.train_cli import parse_args
    args = parse_args([*TINY, '--schedule', '1:1', '--decoder', 'twd', '--output-force-last', '--out', str(tmp_path / 'r')])
    assert args.output_force_last


# 9. runs made by earlier versions (a module class since renamed) still evaluate and resume
@pytest.fixture(scope='module')
def old_run(tmp_path_factory):
    "A two-epoch run stopped after one, its checkpoint as versions 135637b..c0c3c14 wrote it (AvgPool2d, not AvgPool2x2)."
    from pttfs.runs import load_checkpoint, save_checkpoint
    folder = tmp_path_factory.mktemp('old') / 'run'
    assert train_main(*TINY, '--schedule', '1:2', '--stop-after', '1', '--out', str(folder)).returncode == 0
    state = load_checkpoint(str(folder / 'last.pt'))
    from pttfs.runs import model_for
    state['network'] = [f"{name}:{type(m).__name__}".replace('AvgPool2x2', 'AvgPool2d') for name, m in model_for(state['settings']).named_modules()]
    assert any('AvgPool2d' in entry for entry in state['network'])
    save_checkpoint(str(folder), state)
    return folder

def test_an_older_run_evaluates(old_run, tmp_path):
    result = eval_main(str(old_run), '--out', str(tmp_path / 'e.json'))
    assert result.returncode == 0, result.stderr[-1500:]

def test_an_older_run_resumes(old_run, tmp_path):
    folder = tmp_path / 'r'; shutil.copytree(old_run, folder)
    result = train_main(*TINY, '--schedule', '1:2', '--out', str(folder), '--resume')
    assert result.returncode == 0, result.stderr[-1500:]

def test_a_checkpoint_with_other_shapes_is_still_refused(old_run, tmp_path):
    from pttfs.runs import load_checkpoint, save_checkpoint
    folder = tmp_path / 'r'; shutil.copytree(old_run, folder)
    state = load_checkpoint(str(folder / 'last.pt'))
    name = next(k for k in state['model'] if k.endswith('weight'))
    state['model'][name] = torch.cat([state['model'][name], state['model'][name]])
    save_checkpoint(str(folder), state)
    one_line_error(eval_main(str(folder), '--out', str(tmp_path / 'e.json')), 'another network')


# 10. two plain runs started in the same second get two folders
def test_default_folders_are_taken_atomically(tmp_path, monkeypatch):
    from pttfs.runs import new_run_folder
    monkeypatch.setattr('time.strftime', lambda fmt: '20260101-000000')       # the same second for both
    first = new_run_folder('digits', str(tmp_path / 'runs'), make=True)
    second = new_run_folder('digits', str(tmp_path / 'runs'), make=True)
    assert first != second and os.path.isdir(first) and os.path.isdir(second) and second.endswith('-2')

def test_two_plain_runs_in_one_second_both_run(tmp_path, monkeypatch):
    monkeypatch.setattr('time.strftime', lambda fmt: '20260101-000000')
    for _ in range(2):
        result = train_main(*TINY, '--schedule', '1:1', cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-1500:]
    assert sorted(os.listdir(tmp_path / 'runs')) == ['digits-20260101-000000', 'digits-20260101-000000-2']


# 11. a τ that float32 cannot hold is one line, not a traceback
@pytest.mark.parametrize('tau', ['1e39', '1.00000001'])
def test_tau_beyond_float32_is_refused(tau, tmp_path):
    one_line_error(train_main(*TINY, '--tau', tau, '--out', str(tmp_path / 'r')), '--tau')
    from pttfs import AMOSLIF
    with pytest.raises(ValueError, match='float32'): AMOSLIF(tau=float(tau))


# 12. pttfs-bench: nothing to measure, a network no machine holds, and --quick with explicit sizes are refused
@pytest.mark.parametrize('flags, words', [
    (['--T', '1073741824', '--N', '1024', '--no-network'], ['--max-elements']),
    (['--network-T', '1099511627776', '--neurons', 'amos'], ['--network-T']),
    (['--quick', '--N', '16', '--T', '4'], ['--quick', '--N', '--T'])])
def test_bench_refuses_what_it_cannot_measure(flags, words, tmp_path):
    one_line_error(bench_main(*flags, '--out', str(tmp_path / 'b.json')), *words)
    assert not os.listdir(tmp_path)

def test_bench_without_spikingjelly_refuses_the_comparison(tmp_path):
    code = ("import sys; sys.modules['spikingjelly'] = None\nfrom pttfs.bench_cli import main\n"
            f"main(['--quick', '--no-network', '--out', {str(tmp_path / 'b.json')!r}])")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    one_line_error(result, 'SpikingJelly', '--neurons amos')


# 13. the smaller ones
def test_a_summary_that_is_a_folder_is_named_not_hidden(run_dir_factory):
    folder = run_dir_factory()
    (folder / 'summary.json').unlink(); (folder / 'summary.json').mkdir()
    result = train_main(*TINY, '--schedule', '1:1', '--out', str(folder), '--resume')
    one_line_error(result, 'summary.json', 'remove it')
    assert 'nothing is saved' not in result.stderr

@pytest.fixture
def run_dir_factory(tmp_path):
    def make():
        folder = tmp_path / 'run'
        assert train_main(*TINY, '--schedule', '1:1', '--out', str(folder)).returncode == 0
        return folder
    return make

@pytest.mark.parametrize('value', ['-1e30', '-1', '0'])
def test_a_negative_decoder_threshold_is_read_as_a_number_and_refused(value, tmp_path):
    one_line_error(train_main(*TINY, '--decoder-threshold', value, '--out', str(tmp_path / 'r')), '--decoder-threshold', 'must be')
