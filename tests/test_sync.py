"""The library is what the notebooks export, and the pipeline notebooks keep their Papermill parameters."""

import filecmp, json, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
PIPELINE = sorted((NBS / 'pipeline').glob('*.ipynb'))


def test_export_leaves_no_diff(tmp_path):
    "nbdev-export in a scratch copy of the project gives exactly the committed histodiff/*.py."
    for name in ('nbs', 'histodiff'):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(ROOT / 'pyproject.toml', tmp_path / 'pyproject.toml')
    subprocess.run([str(Path(sys.executable).parent / 'nbdev-export')], check=True, cwd=tmp_path)
    lib = tmp_path / 'histodiff'
    exported = sorted(p.name for p in lib.glob('*.py'))
    for name in exported:
        assert (ROOT / 'histodiff' / name).exists(), f'histodiff/{name} is exported but not committed: run nbdev-export'
        assert filecmp.cmp(lib / name, ROOT / 'histodiff' / name, shallow=False), (
            f'histodiff/{name} differs from its notebook: edit the notebook and run nbdev-export'
        )


@pytest.mark.parametrize('nb', PIPELINE, ids=[p.name for p in PIPELINE])
def test_parameters_tag_survives_nbdev_clean(nb, tmp_path):
    "nbdev-clean keeps Papermill's `parameters` tag (allowed_cell_metadata_keys = ['tags'] in pyproject.toml)."
    copy = tmp_path / nb.name
    shutil.copy(nb, copy)
    shutil.copy(ROOT / 'pyproject.toml', tmp_path / 'pyproject.toml')
    subprocess.run(
        [sys.executable, '-c', f'from nbdev.clean import nbdev_clean; nbdev_clean({str(copy)!r})'], check=True, cwd=ROOT
    )
    cells = json.loads(copy.read_text())['cells']
    tagged = [c for c in cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1, f'{nb.name}: expected one cell tagged parameters after nbdev-clean, found {len(tagged)}'


def test_params_yaml_is_the_demo_profile():
    "params.yaml on main is generated from profiles/demo.yaml (run `make params PROFILE=demo`)."
    res = subprocess.run([sys.executable, 'scripts/params_from_profile.py', 'demo', '--check'], cwd=ROOT)
    assert res.returncode == 0, 'params.yaml differs from profiles/demo.yaml: run `make params PROFILE=demo`'


def _dvc_from_stages():
    "The module scripts/dvc_from_stages.py (dvc.yaml from the stage table stages.yaml)."
    sys.path.insert(0, str(ROOT / 'scripts'))
    import dvc_from_stages

    return dvc_from_stages


def test_dvc_yaml_is_generated_from_the_stage_table():
    "dvc.yaml is what scripts/dvc_from_stages.py writes from stages.yaml (run `make dvc-yaml`)."
    assert (ROOT / 'dvc.yaml').read_text() == _dvc_from_stages().dvc_yaml(ROOT), (
        'dvc.yaml differs from stages.yaml: edit stages.yaml and run `make dvc-yaml`'
    )


def test_stage_deps_cover_the_library_modules_they_import():
    """Each stage depends on every histodiff module its notebook imports, directly or through other modules (else a
    change leaves stale results)."""
    import yaml

    gen = _dvc_from_stages()
    mods = gen.library_sources(ROOT)
    assert {'core', 'data', 'stage'} <= set(mods), 'the import scan finds no library modules'
    stages = yaml.safe_load((ROOT / 'dvc.yaml').read_text())['stages']
    for name, st in stages.items():
        nb = st['deps'][0]
        assert nb.endswith('.ipynb'), f'stage {name}: the notebook is not its first dep (histodiff.stage runs it)'
        have = {Path(d).stem for d in st['deps'] if d.startswith('histodiff/')}
        imported = gen.library_closure(gen.notebook_source(ROOT / nb), mods)
        assert imported, f'stage {name}: its notebook {nb} imports no histodiff module (the import scan is broken?)'
        missing = imported - have
        assert not missing, f'stage {name} imports histodiff.{sorted(missing)} but does not list it in deps'


def test_every_stage_runs_through_the_stage_runner():
    "No stage passes parameters on a Papermill command line (text only): each runs `python -m histodiff.stage NAME`."
    import yaml

    stages = yaml.safe_load((ROOT / 'dvc.yaml').read_text())['stages']
    for name, st in stages.items():
        assert st['cmd'].split()[:4] == ['python', '-m', 'histodiff.stage', name], f'stage {name}: {st["cmd"]}'
        assert 'histodiff/stage.py' in st['deps'], f'stage {name} does not depend on the runner'


def test_notebook_defaults_are_the_demo_profile():
    """Each pipeline notebook's `parameters` cell holds what `dvc repro` passes it under the demo profile (its first
    stage; `train_pixel` reuses train_ldm's notebook with constants), so running a notebook by hand reproduces the
    pipeline."""
    import yaml
    from histodiff.stage import stage_call, notebook_defaults, RUNNER_SET

    stages = yaml.safe_load((ROOT / 'dvc.yaml').read_text())['stages']
    seen = set()
    for name in stages:
        src, _, passed = stage_call(name, None, ROOT)  # also checks names and types against the notebook
        if src in seen:
            continue
        seen.add(src)
        defaults = notebook_defaults(src)
        diff = {k: (v, defaults[k]) for k, v in passed.items() if k not in RUNNER_SET and defaults[k] != v}
        assert not diff, f'{src.name}: parameters cell differs from the demo profile (passed, default): {diff}'
    assert seen == set(PIPELINE), 'a pipeline notebook is run by no stage'


@pytest.mark.parametrize('profile', ['demo', 'smoke', 'paper', 'released', 'pretrain'])
def test_every_profile_passes_typed_parameters(profile, tmp_path):
    """Under every profile each stage's parameters exist in its notebook with the default's type (no 'false' strings, no
    '1,2' lists)."""
    import yaml

    sys.path.insert(0, str(ROOT / 'scripts'))
    from params_from_profile import params_for
    from histodiff.stage import stage_call

    shutil.copy(ROOT / 'dvc.yaml', tmp_path / 'dvc.yaml')
    shutil.copytree(NBS / 'pipeline', tmp_path / 'nbs' / 'pipeline')
    (tmp_path / 'params.yaml').write_text(params_for(profile))
    for name, st in yaml.safe_load((ROOT / 'dvc.yaml').read_text())['stages'].items():
        from histodiff.stage import parse_overrides

        stage_call(name, parse_overrides(st['cmd'].split()[4:]), tmp_path)
