"""The library is what the notebooks export, and the pipeline notebooks keep their Papermill parameters."""
import filecmp, json, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
PIPELINE = sorted((NBS/'pipeline').glob('*.ipynb'))


def test_export_leaves_no_diff(tmp_path):
    "nbdev-export in a scratch copy of the project gives exactly the committed histodiff/*.py."
    for name in ('nbs', 'histodiff'): shutil.copytree(ROOT/name, tmp_path/name, ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(ROOT/'pyproject.toml', tmp_path/'pyproject.toml')
    subprocess.run([str(Path(sys.executable).parent/'nbdev-export')], check=True, cwd=tmp_path)
    lib = tmp_path/'histodiff'
    exported = sorted(p.name for p in lib.glob('*.py'))
    for name in exported:
        assert (ROOT/'histodiff'/name).exists(), f'histodiff/{name} is exported but not committed: run nbdev-export'
        assert filecmp.cmp(lib/name, ROOT/'histodiff'/name, shallow=False), \
            f'histodiff/{name} differs from its notebook: edit the notebook and run nbdev-export'


@pytest.mark.parametrize('nb', PIPELINE, ids=[p.name for p in PIPELINE])
def test_parameters_tag_survives_nbdev_clean(nb, tmp_path):
    "nbdev-clean keeps Papermill's `parameters` tag (allowed_cell_metadata_keys = ['tags'] in pyproject.toml)."
    copy = tmp_path/nb.name; shutil.copy(nb, copy)
    shutil.copy(ROOT/'pyproject.toml', tmp_path/'pyproject.toml')
    subprocess.run([sys.executable, '-c', f'from nbdev.clean import nbdev_clean; nbdev_clean({str(copy)!r})'],
                   check=True, cwd=ROOT)
    cells = json.loads(copy.read_text())['cells']
    tagged = [c for c in cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1, f'{nb.name}: expected one cell tagged parameters after nbdev-clean, found {len(tagged)}'


def test_params_yaml_is_the_demo_profile():
    "params.yaml on main is generated from profiles/demo.yaml (run `make params PROFILE=demo`)."
    res = subprocess.run([sys.executable, 'scripts/params_from_profile.py', 'demo', '--check'], cwd=ROOT)
    assert res.returncode == 0, 'params.yaml differs from profiles/demo.yaml: run `make params PROFILE=demo`'
