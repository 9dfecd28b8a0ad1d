"""Write README.md from nbs/index.ipynb (nbdev-readme needs quarto, which this project does not require).

Markdown cells are copied; code cells become fenced Python blocks; outputs and cells tagged `hide` are left out.
Usage: python scripts/readme_from_index.py [--check]
"""

import sys
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parents[1]


def readme_text():
    nb = nbformat.read(ROOT / 'nbs' / 'index.ipynb', as_version=4)
    parts = []
    for c in nb.cells:
        src = c.source.strip()
        if not src or 'hide' in c.get('metadata', {}).get('tags', []) or src.startswith('#| hide'):
            continue
        if c.cell_type == 'markdown':
            parts.append(src)
        elif c.cell_type == 'code':
            lines = [l for l in src.splitlines() if not l.startswith('#|')]
            if lines:
                parts.append('```python\n' + '\n'.join(lines) + '\n```')
    return (
        '<!-- GENERATED from nbs/index.ipynb by scripts/readme_from_index.py: edit the notebook. -->\n\n'
        + '\n\n'.join(parts)
        + '\n'
    )


if __name__ == '__main__':
    text = readme_text()
    if '--check' in sys.argv:
        sys.exit(0 if (ROOT / 'README.md').read_text() == text else 1)
    (ROOT / 'README.md').write_text(text)
    print('README.md written')
