"""Execute notebooks in place, top to bottom, like `jupyter nbconvert --execute --inplace`, but skip the cells
marked `#| eval: false`, as nbdev does (nbconvert runs them: chapter 13's would retrain its ablations and rewrite
benchmarks/ablation-*.json). Then clean each as `nbdev_clean` does (no execution counts, no timing metadata), so
that a committed notebook is what nbdev_clean leaves, and refresh the review texts in nbs/text/ (.ci/texts.py).
Usage: python .ci/execute.py nbs/NAME.ipynb [...]"""
import subprocess, sys, nbformat
from pathlib import Path
from nbclient import NotebookClient
class SkippingClient(NotebookClient):
    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell.cell_type == 'code' and '#| eval: false' in cell.source: return cell
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
for path in sys.argv[1:]:
    nb = nbformat.read(path, as_version=4)
    SkippingClient(nb, timeout=1800, kernel_name='python3', record_timing=False, resources={'metadata': {'path': 'nbs'}}).execute()
    nbformat.write(nb, path)
    subprocess.run(['nbdev_clean', '--fname', path], check=True)   # nbdev's own cleaning and writer: a no-op later
    print('executed', path)
subprocess.run([sys.executable, str(Path(__file__).with_name('texts.py')), 'write'], check=True)
