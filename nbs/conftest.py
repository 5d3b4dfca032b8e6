"""nbval and nbdev_clean, made to agree.

nbdev_clean empties every code cell's execution count, and nbval takes an empty count on a cell with outputs for
"never run" and fails it. The committed notebooks are clean (CI checks that nbdev_clean changes nothing), so here,
as nbval reads a notebook, each code cell that has outputs gets its position as its count: the stored outputs
stay tests.
"""
import nbformat

_read = nbformat.read


def _read_numbered(fp, as_version, **kwargs):
    nb = _read(fp, as_version, **kwargs)
    code_cells = [cell for cell in nb.cells if cell.cell_type == 'code']
    for number, cell in enumerate(code_cells, 1):
        if cell.get('execution_count') is None and cell.get('outputs'): cell.execution_count = number
    return nb


nbformat.read = _read_numbered
