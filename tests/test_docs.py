"""Every notebook renders to HTML with nbconvert (the docs), and the README is the index notebook."""

import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / 'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[str(p.relative_to(ROOT / 'nbs')) for p in NOTEBOOKS])
def test_notebook_renders_to_html(nb):
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(nb, as_version=4))
    assert '<html' in body and len(body) > 1000
    first = nbformat.read(nb, as_version=4).cells[0]
    assert first.cell_type == 'markdown' and first.source.lstrip().startswith('# '), f'{nb.name} must open with a title'


PIPELINE = sorted((ROOT / 'nbs' / 'pipeline').glob('*.ipynb'))


@pytest.mark.parametrize('nb', PIPELINE, ids=[p.name for p in PIPELINE])
def test_pipeline_notebook_has_colab_badge(nb):
    import nbformat

    src = nbformat.read(nb, as_version=4).cells[0].source
    assert 'colab.research.google.com' in src, f'{nb.name} lacks its Open in Colab badge'


def test_readme_is_the_index_notebook():
    res = subprocess.run([sys.executable, 'scripts/readme_from_index.py', '--check'], cwd=ROOT)
    assert res.returncode == 0, 'README.md differs from nbs/index.ipynb: run `python scripts/readme_from_index.py`'


def test_jupyter_lab_starts(tmp_path):
    """`make install` gives a working `jupyter lab` (the notebooks are the documentation): the server starts and serves
    /lab."""
    import socket, time, urllib.request

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]  # a free port
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': str(tmp_path), 'JUPYTER_CONFIG_DIR': str(tmp_path / 'cfg')}
    log = open(tmp_path / 'lab.log', 'w')
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / 'jupyter'),
            'lab',
            '--no-browser',
            f'--port={port}',
            '--ip=127.0.0.1',
            '--IdentityProvider.token=',
            f'--notebook-dir={ROOT}',
        ]
        + (['--allow-root'] if os.geteuid() == 0 else []),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: never through a proxy
    try:
        status, t0 = None, time.time()
        while status is None and time.time() - t0 < 90 and proc.poll() is None:
            try:
                status = opener.open(f'http://127.0.0.1:{port}/lab', timeout=10).status
            except OSError:
                time.sleep(1)
        assert status == 200, f'jupyter lab did not serve /lab:\n{(tmp_path / "lab.log").read_text()[-2000:]}'
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
