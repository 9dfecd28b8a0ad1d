"""Every notebook renders to HTML with nbconvert (the docs), and the README is the index notebook."""
import subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[str(p.relative_to(ROOT/'nbs')) for p in NOTEBOOKS])
def test_notebook_renders_to_html(nb):
    import nbformat
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(nb, as_version=4))
    assert '<html' in body and len(body) > 1000
    first = nbformat.read(nb, as_version=4).cells[0]
    assert first.cell_type == 'markdown' and first.source.lstrip().startswith('# '), f'{nb.name} must open with a title'


PIPELINE = sorted((ROOT/'nbs'/'pipeline').glob('*.ipynb'))

@pytest.mark.parametrize('nb', PIPELINE, ids=[p.name for p in PIPELINE])
def test_pipeline_notebook_has_colab_badge(nb):
    import nbformat
    src = nbformat.read(nb, as_version=4).cells[0].source
    assert 'colab.research.google.com' in src, f'{nb.name} lacks its Open in Colab badge'


def test_readme_is_the_index_notebook():
    res = subprocess.run([sys.executable, 'scripts/readme_from_index.py', '--check'], cwd=ROOT)
    assert res.returncode == 0, 'README.md differs from nbs/index.ipynb: run `python scripts/readme_from_index.py`'
