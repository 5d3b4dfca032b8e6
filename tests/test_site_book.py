"""The website reads like a book: numbered figure captions from `#| fig-cap:`, appendices lettered, classes shown as
classes by show_doc, and no [source] links into settings.ini's placeholder repository."""
import importlib.util, pathlib
import nbformat, pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def site():
    spec = importlib.util.spec_from_file_location('site_builder', ROOT / '.ci' / 'site.py')
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return module


def figure_cell(source: str):
    cell = nbformat.v4.new_code_cell(source)
    png = dict(output_type='display_data', data={'image/png': 'iVBORw0KGgo=', 'text/plain': '<Figure>'}, metadata={})
    cell.outputs = [nbformat.from_dict(png), nbformat.from_dict(dict(png))]
    return cell


def test_figures_are_numbered_by_chapter_with_their_captions(site, tmp_path):
    nb = nbformat.v4.new_notebook(cells=[figure_cell("#| fig-cap: first `look here`\n#| fig-cap: second\nplot()"),
                                         figure_cell("# NBVAL_IGNORE_OUTPUT\nplot()")])
    nbformat.write(nb, tmp_path / '03_chapter.ipynb')
    captions = [o.metadata['book_caption'] for c in site.page_notebook(tmp_path / '03_chapter.ipynb').cells for o in c.outputs]
    assert captions == [['Figure 3.1', 'first `look here`'], ['Figure 3.2', 'second'], ['Figure 3.3', ''], ['Figure 3.4', '']]
    nbformat.write(nb, tmp_path / '16_appendix.ipynb')
    assert site.page_notebook(tmp_path / '16_appendix.ipynb').cells[0].outputs[0].metadata['book_caption'][0] == 'Figure B.1'


def test_book_numbers(site):
    assert [site.book_number(f) for f in ('00_surrogate.html', '07_fused.html', '15_runs.html', '18_bench_cli.html',
                                          'index.html')] == ['0', '7', 'A', 'D', '']


def test_show_doc_blocks(site):
    block = ('---\n\n[source](https://github.com/pttfs/pttfs/blob/main/pttfs/{module}.py#L72){{target="_blank" '
             'style="float:right; font-size:smaller"}}\n\n### {name}\n\n```python\ndef {name}(\n    x,\n)\n```')
    shown = site.show_doc_markdown(block.format(module='neuron', name='AMOSLIF'))
    assert 'class AMOSLIF(' in shown and 'def AMOSLIF(' not in shown and '[source]' not in shown and 'target=' not in shown
    shown = site.show_doc_markdown(block.format(module='backends', name='amos_lif_parallel'))
    assert 'def amos_lif_parallel(' in shown and '[source]' not in shown
