"""Lines of code in the pipeline notebooks, the parameters and Colab install cells left out (issue 22: under 400).

Usage: python scripts/pipeline_code_lines.py [--max N]   (exit 1 when the total is over N)
A line of code is a non-blank line that is not only a comment.
"""

import argparse, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_lines(nb: Path) -> int:
    "Non-blank, non-comment lines of the code cells of `nb`, the parameters and Colab install cells excepted."
    cells = json.loads(nb.read_text())['cells']
    n = 0
    for c in cells:
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or 'parameters' in c.get('metadata', {}).get('tags', []) or 'google.colab' in src:
            continue
        n += sum(1 for line in src.splitlines() if line.strip() and not line.strip().startswith('#'))
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--max', type=int, default=None)
    a = ap.parse_args(argv)
    counts = {p.name: code_lines(p) for p in sorted((ROOT / 'nbs' / 'pipeline').glob('*.ipynb'))}
    for name, n in counts.items():
        print(f'{n:5d}  {name}')
    total = sum(counts.values())
    print(f'{total:5d}  in all')
    return 1 if a.max is not None and total > a.max else 0


if __name__ == '__main__':
    sys.exit(main())
