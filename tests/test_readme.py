"""The README works as written: its Python blocks run from the repository root, and the package's long
description links to the repository instead of relative paths."""
import re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_readme_python_blocks_run_from_the_repository_root():
    blocks = re.findall(r'```python\n(.*?)```', (ROOT / 'README.md').read_text(encoding='utf-8'), re.S)
    assert len(blocks) >= 3
    result = subprocess.run([sys.executable, '-c', '\n'.join(blocks)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'MNIST recipe' in result.stdout and 'sj-lif' in result.stdout

def test_long_description_has_no_relative_links():
    code = ("import setuptools, sys; captured = {}\nsetuptools.setup = lambda **kw: captured.update(kw)\n"
            "exec(open('setup.py').read()); print(captured['long_description'])")
    text = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    links = re.findall(r'\]\(([^)\s]+)\)', text)
    assert links and all(l.startswith(('https://', 'http://', '#', 'mailto:')) for l in links), [l for l in links if not l.startswith('http')]
