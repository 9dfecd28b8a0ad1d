"""The layout of issue 22 holds: modules import only lower modules, pipeline notebooks are thin drivers with no
profile branches, and library functions stay short with few parameters."""

import ast, json, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
LIBRARY = sorted(p for p in (ROOT / 'histodiff').glob('*.py') if not p.stem.startswith('_'))
PIPELINE = sorted((ROOT / 'nbs' / 'pipeline').glob('*.ipynb'))


def test_the_import_graph_has_no_cycle():
    from import_graph import import_graph, layers

    level = layers(import_graph())  # raises on a cycle, naming it
    assert level['core'] == 0 and level['cli'] == max(level.values())


def test_pipeline_notebooks_are_thin():
    from pipeline_code_lines import code_lines

    total = sum(code_lines(nb) for nb in PIPELINE)
    assert total < 400, f'{total} lines of code in nbs/pipeline (issue 22: under 400); move the logic into the library'


@pytest.mark.parametrize('nb', PIPELINE, ids=[p.name for p in PIPELINE])
def test_no_notebook_asks_which_profile_it_runs(nb):
    src = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code')
    assert 'profile ==' not in src and 'profile in (' not in src, f'{nb.name}: make the difference a parameter'


def _functions(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _body_lines(fn) -> int:
    "Lines of the whole function, from `def` to its last line."
    return fn.end_lineno - fn.lineno + 1


def _parameters(fn) -> int:
    a = fn.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    return n - (1 if a.args and a.args[0].arg in ('self', 'cls') else 0)


@pytest.mark.parametrize('path', LIBRARY, ids=[p.name for p in LIBRARY])
def test_functions_are_short_with_few_parameters(path):
    long = [f'{fn.name} ({_body_lines(fn)} lines)' for fn in _functions(path) if _body_lines(fn) > 60]
    wide = [f'{fn.name} ({_parameters(fn)} parameters)' for fn in _functions(path) if _parameters(fn) > 8]
    assert not long and not wide, (
        f'{path.name}: over 60 lines: {long}; over 8 parameters (use a settings object): {wide}'
    )
