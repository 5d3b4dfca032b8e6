"""Write README.md from nbs/index.ipynb without Quarto (which nbdev_readme needs).

Hidden cells (`#| hide`) are dropped, `#|` directive lines removed, and the rest converted with nbconvert's
markdown exporter, outputs included. `python .ci/readme.py --check` exits 1 when README.md is stale.
"""
import re, sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter

root = Path(__file__).resolve().parent.parent
nb = nbformat.read(root / 'nbs' / 'index.ipynb', as_version=4)
cells = []
for cell in nb.cells:
    directives = [l for l in cell.source.splitlines() if l.startswith('#|')]
    if any(re.match(r'#\|\s*(hide|default_exp|export)\b', l) for l in directives): continue
    cell.source = '\n'.join(l for l in cell.source.splitlines() if not l.startswith('#|')).strip('\n')
    cells.append(cell)
nb.cells = cells
# nbdev_clean keeps only the kernelspec, so the code fences' language comes from there (nbconvert reads language_info).
nb.metadata.setdefault('language_info', {'name': nb.metadata.get('kernelspec', {}).get('language', 'python')})
body, _ = MarkdownExporter().from_notebook_node(nb)
text = "<!-- Generated from nbs/index.ipynb by `python .ci/readme.py`; do not edit by hand. -->\n\n" + body.strip() + "\n"
readme = root / 'README.md'
if '--check' in sys.argv:
    if not readme.exists() or readme.read_text(encoding='utf-8') != text:
        sys.exit("README.md is stale: run `python .ci/readme.py` after re-executing nbs/index.ipynb, and commit it.")
else:
    readme.write_text(text, encoding='utf-8')
