"""Write dvc.yaml from the stage table stages.yaml: one home for each stage's notebook, constants, deps and outputs.

Usage: python scripts/dvc_from_stages.py [--check]
With --check, exit 1 if dvc.yaml differs from what stages.yaml gives (tests/test_sync.py checks it too).

Each stage of the table names its notebook (under nbs/pipeline/, without .ipynb) and, all optional: `constants`
(key=value written after the stage's name on the command line), `deps` (data and other non-library inputs),
`params`, `outs` (cached), `uncached` (outs with cache: false), `metrics`, `plots` (both cache: false) and `executed`
(the executed notebook's name when it is not the notebook's). The generator adds the command
`python -m histodiff.stage NAME [k=v ...]`, the notebook (first of deps: histodiff.stage runs the first .ipynb),
histodiff/stage.py, every histodiff module the notebook imports directly or through other modules (`library_deps`),
and the executed notebook results/executed/<executed>.ipynb (cache: false).
"""

import json, re, sys
from pathlib import Path
import yaml

ROOT = Path(__file__).resolve().parents[1]
TABLE = 'stages.yaml'
HEADER = """\
# GENERATED from stages.yaml by scripts/dvc_from_stages.py (`make dvc-yaml`); edit the table, not this file.
# Each stage runs its notebook of nbs/pipeline (the first .ipynb of its deps) with `python -m histodiff.stage NAME`:
# the runner (histodiff/stage.py, nbs/13_stage.ipynb) passes the stage's `params:` entries from params.yaml to
# Papermill as typed values (a group: each of its keys; a nested group: one dict; a dotted entry: its last key), plus
# the key=value constants written after the stage's name. The executed notebooks in results/executed/ are the record
# of the run (kept, not cached). The histodiff/*.py deps are computed: the library modules the notebook imports,
# directly or through other modules.
"""
STAGE_KEYS = {'notebook', 'constants', 'deps', 'params', 'outs', 'uncached', 'metrics', 'plots', 'executed'}
_IMPORT = re.compile(r'(?:from histodiff\.|from \.|import histodiff\.|from histodiff import )(\w+)')


def library_sources(root=ROOT):
    "The source of each histodiff module, by name (private modules such as _modidx left out)."
    return {p.stem: p.read_text() for p in (root / 'histodiff').glob('*.py') if not p.stem.startswith('_')}


def notebook_source(path):
    "The cells of the notebook at `path`, joined into one text."
    return '\n'.join(''.join(c['source']) for c in json.loads(Path(path).read_text())['cells'])


def library_closure(src, mods):
    "The histodiff modules (names in `mods`) that the text `src` imports, directly or through other modules."

    def imports(text):
        return set(_IMPORT.findall(text)) & set(mods)

    seen, todo = set(), list(imports(src))
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += imports(mods[m])
    return seen


def library_deps(notebook, root=ROOT, mods=None):
    "The histodiff/*.py deps of the notebook at root/`notebook`, sorted, stage.py (the runner) first."
    mods = library_sources(root) if mods is None else mods
    names = sorted(library_closure(notebook_source(root / notebook), mods) - {'stage'})
    return ['histodiff/stage.py'] + [f'histodiff/{m}.py' for m in names]


def _uncached(paths):
    "DVC entries with cache: false for `paths`."
    return [{p: {'cache': False}} for p in paths]


def _command(name, constants):
    "The stage's command: the runner, the stage's name, its constants as key=value (strings, written verbatim)."
    parts = ['python', '-m', 'histodiff.stage', name]
    for key, value in (constants or {}).items():
        if not isinstance(value, str):
            raise TypeError(f"stage {name}: constant {key} must be a string, not {value!r}")
        parts.append(f'{key}={value}')
    return ' '.join(parts)


def stage_entry(name, row, root=ROOT, mods=None):
    "The dvc.yaml entry of stage `name` from its row of the table."
    unknown = set(row) - STAGE_KEYS
    if unknown:
        raise KeyError(f"stage {name}: unknown keys {sorted(unknown)} (known: {sorted(STAGE_KEYS)})")
    notebook = f"nbs/pipeline/{row['notebook']}.ipynb"
    if not (root / notebook).exists():
        raise FileNotFoundError(f"stage {name}: no notebook {notebook}")
    executed = f"results/executed/{row.get('executed', row['notebook'])}.ipynb"
    entry = {
        'cmd': _command(name, row.get('constants')),
        'deps': [notebook] + library_deps(notebook, root, mods) + list(row.get('deps', [])),
        'params': list(row.get('params', [])),
        'outs': list(row.get('outs', [])) + _uncached([*row.get('uncached', []), executed]),
    }
    for key in ('metrics', 'plots'):
        if row.get(key):
            entry[key] = _uncached(row[key])
    if not entry['params']:
        del entry['params']
    return entry


class _Dumper(yaml.SafeDumper):
    "Block style throughout, as DVC writes its files."


def dvc_yaml(root=ROOT):
    "The text of dvc.yaml that root/stages.yaml gives."
    table = yaml.safe_load((root / TABLE).read_text())
    mods = library_sources(root)
    doc = {'stages': {name: stage_entry(name, row, root, mods) for name, row in table['stages'].items()}}
    for key in ('metrics', 'plots'):
        if key in table:
            doc[key] = table[key]
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=10**6)
    return HEADER + body


def main(argv):
    "Write dvc.yaml, or with --check exit 1 when it differs from what the table gives."
    text = dvc_yaml()
    target = ROOT / 'dvc.yaml'
    if '--check' in argv:
        same = target.exists() and target.read_text() == text
        if not same:
            print("dvc.yaml differs from stages.yaml: run `make dvc-yaml`", file=sys.stderr)
        return 0 if same else 1
    target.write_text(text)
    print(f"dvc.yaml <- {TABLE} ({len(text.splitlines())} lines)")
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
