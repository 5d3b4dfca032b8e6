"""The notebooks as plain text, for review: nbs/text/NAME.py is jupytext's py:percent form of nbs/NAME.ipynb
(every cell's source, no outputs), so a change to a chapter reads as an ordinary diff of code and prose.

    python .ci/texts.py write     # after editing notebooks (.ci/execute.py does it too); deletes nothing
    python .ci/texts.py check     # CI: fails when a text file is missing, stale, or has no notebook
"""
import sys
from pathlib import Path
import jupytext

NBS = Path(__file__).resolve().parents[1] / 'nbs'
TEXT = NBS / 'text'


def text_of(notebook: Path) -> str:
    return jupytext.writes(jupytext.read(notebook), fmt='py:percent')


def main(command: str) -> int:
    notebooks = sorted(NBS.glob('*.ipynb'))
    expected = {TEXT / (nb.stem + '.py'): text_of(nb) for nb in notebooks}
    if command == 'write':
        TEXT.mkdir(exist_ok=True)
        for path, text in expected.items():
            if not path.exists() or path.read_text(encoding='utf-8') != text: path.write_text(text, encoding='utf-8')
        for path in sorted(set(TEXT.glob('*.py')) - set(expected)):     # not ours to delete: it may be a reader's file
            print(f"{path.relative_to(NBS.parent)} has no notebook: remove it yourself if it was a chapter's text", file=sys.stderr)
        return 0
    problems = [f"{p.relative_to(NBS.parent)} is missing" for p in expected if not p.exists()]
    problems += [f"{p.relative_to(NBS.parent)} differs from its notebook" for p, t in expected.items()
                 if p.exists() and p.read_text(encoding='utf-8') != t]
    problems += [f"{p.relative_to(NBS.parent)} has no notebook" for p in set(TEXT.glob('*.py')) - set(expected)]
    for problem in problems: print(problem, file=sys.stderr)
    if problems: print("run python .ci/texts.py write, and commit nbs/text/ with the notebooks", file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    if sys.argv[1:] not in (['write'], ['check']): sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
