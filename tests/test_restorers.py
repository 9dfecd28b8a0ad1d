"""A restorer registered from outside histodiff (an entry point) reaches the CLI with no other file edited:
`--help` lists it and `restore --method` runs it. (The evaluation table of the smoke profile:
tests/test_pipeline.py.)"""

import os, subprocess, sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import plugin_env

BIN = Path(sys.executable).parent


def histodiff(*argv, env):
    return subprocess.run([str(BIN / 'histodiff'), *map(str, argv)], capture_output=True, text=True, env=env)


def test_plugin_restorer_is_listed_in_help(throwaway_plugin):
    res = histodiff('restore', '--help', env=plugin_env(throwaway_plugin))
    assert res.returncode == 0, res.stderr
    assert 'throwaway' in res.stdout and 'registered through an entry point' in res.stdout
    res = histodiff('restore-slide', '--help', env=plugin_env(throwaway_plugin))
    assert 'throwaway' in res.stdout


def test_plugin_restorer_runs_from_restore(throwaway_plugin, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    mask = np.zeros((48, 48), bool)
    mask[10:20, 12:30] = True
    Image.fromarray(image).save(tmp_path / 'tile.png')
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / 'mask.png')
    res = histodiff(
        'restore',
        tmp_path / 'tile.png',
        '--mask',
        tmp_path / 'mask.png',
        '--out',
        tmp_path / 'out.png',
        '--method',
        'throwaway',
        env=plugin_env(throwaway_plugin),
    )
    assert res.returncode == 0, res.stderr
    out = np.asarray(Image.open(tmp_path / 'out.png'))
    assert (out[~mask] == image[~mask]).all()
    assert (out[mask] == image.reshape(-1, 3).mean(0).round().astype(np.uint8)).all()


def test_unknown_method_is_refused_without_the_plugin(tmp_path):
    res = histodiff(
        'restore',
        tmp_path / 'tile.png',
        '--mask',
        tmp_path / 'mask.png',
        '--out',
        tmp_path / 'out.png',
        '--method',
        'throwaway',
        env=plugin_env(tmp_path),
    )
    assert res.returncode == 2 and "invalid choice: 'throwaway'" in res.stderr


def test_default_method_is_the_shipped_conditional_restorer(tmp_path):
    """`restore` with no --method runs the conditional residual restorer of checkpoints/restorer (issue 23), and keeps
    every pixel outside its paste-back ring."""
    import skimage.data
    from histodiff.artifacts import synthesize
    from histodiff.regional import dilate_disk
    from histodiff.restorers import DEFAULT_RESTORER, ConditionalResidual
    import torch

    assert DEFAULT_RESTORER == 'residual'
    clean = np.ascontiguousarray(skimage.data.immunohistochemistry()[:64, :64])
    damaged, mask = synthesize(clean, 'ink', 3)
    Image.fromarray(damaged).save(tmp_path / 'tile.png')
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / 'mask.png')
    env = {**os.environ, 'HISTODIFF_CHECKPOINTS': str(Path(__file__).parents[1] / 'checkpoints')}
    res = histodiff(
        'restore', tmp_path / 'tile.png', '--mask', tmp_path / 'mask.png', '--out', tmp_path / 'o.png', env=env
    )
    assert res.returncode == 0, res.stderr
    out = np.asarray(Image.open(tmp_path / 'o.png'))
    ring = dilate_disk(torch.from_numpy(mask), ConditionalResidual.default_pixel_dilation).numpy()
    assert (out[~ring] == damaged[~ring]).all()
    assert (out[mask] != damaged[mask]).any()


def test_shipped_restorer_is_gated_and_no_gate_turns_it_off(tmp_path):
    """The shipped restorer folder holds its kind gate (checkpoints/restorer/gate, histodiff.gate): the registry's
    `residual` applies it, `gate=False` and the CLI's --no-gate do not, and the gate only ever returns the damaged tile
    or the restorer's output (its fitted actions are 'none' and 'full')."""
    import skimage.data
    from histodiff.artifacts import synthesize
    from histodiff.gate import GATE_FOLDER, load_gate
    from histodiff.restorers import make_restorer

    ck = Path(__file__).parents[1] / 'checkpoints' / 'restorer'
    gate = load_gate(ck / GATE_FOLDER)
    assert set(gate.actions.values()) <= {'none', 'full'} and gate.actions['ink'] == 'full'
    gated, plain = make_restorer('residual', model=str(ck)), make_restorer('residual', model=str(ck), gate=False)
    assert gated.gate is not None and gated.label.endswith(', gated') and plain.gate is None
    clean = np.ascontiguousarray(skimage.data.immunohistochemistry()[:64, :64])
    damaged, mask = synthesize(clean, 'ink', 3)
    a, b = gated.restore(damaged, mask)[0], plain.restore(damaged, mask)[0]
    assert (a == b).all() or (a == damaged).all()
    Image.fromarray(damaged).save(tmp_path / 'tile.png')
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / 'mask.png')
    args = ('restore', tmp_path / 'tile.png', '--mask', tmp_path / 'mask.png', '--out', tmp_path / 'o.png')
    res = histodiff(*args, '--no-gate', '--model', ck, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert (np.asarray(Image.open(tmp_path / 'o.png')) == b).all()
