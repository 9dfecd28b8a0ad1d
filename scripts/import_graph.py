"""The import graph of the histodiff library: which module imports which (top-level and lazy imports alike).

Usage: python scripts/import_graph.py [--out nbs/images/import_graph.png] [--check]
Draws the modules in layers (a module sits one layer above the highest module it imports) with an arrow to each
module it imports, and prints the layers. --check draws nothing: it exits 1 when the graph has a cycle.
Written by hand because no maintained tool draws a package's own import layers without graphviz (not installable
from PyPI alone); the parsing is Python's `ast`.
"""

import argparse, ast, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = 'histodiff'


def module_imports(path: Path, modules: set) -> set:
    "The library modules that `path` imports anywhere in its code (relative or absolute)."
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level == 1 or base == PACKAGE or base.startswith(PACKAGE + '.'):
                name = base.removeprefix(PACKAGE).lstrip('.').split('.')[0]
                names = [name] if name else [a.name for a in node.names]
                found |= {n for n in names if n in modules}
        elif isinstance(node, ast.Import):
            found |= {a.name.split('.')[1] for a in node.names if a.name.startswith(PACKAGE + '.')} & modules
    return found - {path.stem}


def import_graph(lib: Path = ROOT / PACKAGE) -> dict:
    "Module -> the library modules it imports, for every public module of `lib`."
    paths = {p.stem: p for p in sorted(lib.glob('*.py')) if not p.stem.startswith('_')}
    return {m: sorted(module_imports(p, set(paths))) for m, p in paths.items()}


def layers(graph: dict) -> dict:
    "Module -> its layer: 0 imports nothing of the project, else one above the highest module it imports."
    level, visiting = {}, set()

    def visit(m, path):
        if m in level:
            return level[m]
        if m in visiting:
            raise ValueError('import cycle: ' + ' -> '.join(path + [m]))
        visiting.add(m)
        level[m] = 1 + max((visit(d, path + [m]) for d in graph[m]), default=-1)
        visiting.discard(m)
        return level[m]

    for m in graph:
        visit(m, [])
    return level


def reduction(graph: dict) -> dict:
    "The transitive reduction: an import left out when another import of the module already reaches it."

    def reach(m, seen=None):
        seen = set() if seen is None else seen
        for d in graph[m]:
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    return {m: [d for d in deps if not any(d in reach(o) for o in deps if o != d)] for m, deps in graph.items()}


def draw(graph: dict, level: dict, out: Path):
    "The layered graph as a PNG, implied imports left out."
    graph = reduction(graph)
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = {}
    for m in sorted(graph, key=lambda m: (level[m], m)):
        rows.setdefault(level[m], []).append(m)
    width = max(map(len, rows.values()))
    pos = {m: ((i + 0.5) * width / len(ms), lv) for lv, ms in rows.items() for i, m in enumerate(ms)}
    fig, ax = plt.subplots(figsize=(1.7 * width + 2, 0.9 * len(rows) + 1.2))
    for m, deps in graph.items():
        for d in deps:
            ax.annotate(
                '',
                xy=pos[d],
                xytext=pos[m],
                arrowprops=dict(
                    arrowstyle='->', color='0.6', lw=0.7, shrinkA=12, shrinkB=12, connectionstyle='arc3,rad=0.08'
                ),
            )
    for m, (x, y) in pos.items():
        ax.text(x, y, m, ha='center', va='center', fontsize=10, bbox=dict(boxstyle='round', fc='#e8f0fa', ec='#4a78b0'))
    ax.set_xlim(-0.3, width + 0.3)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.axis('off')
    ax.set_title(
        'histodiff: each module imports only modules below it\n(an arrow points to an imported module; '
        'imports implied by a chain of arrows are not drawn)',
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={'Software': None})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default='nbs/images/import_graph.png')
    ap.add_argument('--check', action='store_true', help='only check that the graph has no cycle')
    a = ap.parse_args(argv)
    graph = import_graph()
    try:
        level = layers(graph)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    for lv in sorted(set(level.values())):
        print(lv, ' '.join(sorted(m for m in level if level[m] == lv)))
    if not a.check:
        draw(graph, level, ROOT / a.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
