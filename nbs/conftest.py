"""nbval and nbdev_clean, made to agree.

nbdev_clean empties every code cell's execution count, and nbval compares only the cells that have one: a cell
with no count is run but never compared, so a cell whose stored output was lost (or that prints nothing and
should) would pass whatever it prints. The committed notebooks are clean (CI checks that nbdev_clean changes
nothing), so here, as nbval reads a notebook, every code cell gets its position as its count: every stored output,
empty ones included, is a test. Cells that nbdev does not run (`#| eval: false`) are left uncounted, and carry
`# NBVAL_SKIP` so that nbval does not run them either.
"""
import nbformat

_read = nbformat.read


def number_code_cells(nb):
    "Give every code cell but `#| eval: false` ones its position among the code cells as its execution count."
    code_cells = [cell for cell in nb.cells if cell.cell_type == 'code']
    for number, cell in enumerate(code_cells, 1):
        if cell.get('execution_count') is None and '#| eval: false' not in cell.source: cell.execution_count = number
    return nb


def _read_numbered(fp, as_version, **kwargs):
    return number_code_cells(_read(fp, as_version, **kwargs))


nbformat.read = _read_numbered
