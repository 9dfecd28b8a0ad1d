"""Issue 25: nothing a user owns is deleted or overwritten, no silent wrong result, no traceback. One test (or a few)
per item; tiny slides, classical restorers or tiny random models: seconds each."""

import json, os, re, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from histodiff.core import write_image, write_mask
from test_reliability_slides import cli, tissue, art_mask, slide, SLIDE_ARGS  # noqa: F401 (slide is a fixture)

TELEA = [*SLIDE_ARGS, '--method', 'telea']


# --- 16: restore-slide skips only what it wrote itself -------------------------------------------------------------


def test_unrelated_file_at_the_output_is_refused_not_skipped(slide):
    out = slide / 'out.tif'
    out.write_bytes(b'my thesis')
    rc, _, err = cli('restore-slide', slide / 'slide.png', '--mask', slide / 'mask.png', '--out', out, *TELEA)
    assert rc == 2 and 'not written by histodiff' in err and '--overwrite' in err, err
    assert out.read_bytes() == b'my thesis'
    rc, _, err = cli(
        'restore-slide', slide / 'slide.png', '--mask', slide / 'mask.png', '--out', out, *TELEA, '--overwrite'
    )
    assert rc == 0 and tifffile.imread(out).shape == (200, 260, 3), err


def test_output_of_other_settings_is_refused_naming_them(slide):
    base = ['restore-slide', slide / 'slide.png', '--mask', slide / 'mask.png', '--out', slide / 'out.tif']
    assert cli(*base, *TELEA)[0] == 0
    before = (slide / 'out.tif').read_bytes()
    rc, _, err = cli(*base, *SLIDE_ARGS, '--method', 'navier_stokes')
    assert rc == 2 and 'telea' in err and 'navier_stokes' in err, err
    assert (slide / 'out.tif').read_bytes() == before


def test_out_in_the_slides_folder_skips_its_outputs(slide):
    (slide / 'in').mkdir()
    (slide / 'masks').mkdir()
    img = tissue()
    img[art_mask()] = 0
    for n in ('s1', 's2'):
        write_image(img, slide / 'in' / f'{n}.png')
        write_mask(art_mask(), slide / 'masks' / f'{n}.png')
    args = ['restore-slide', slide / 'in', '--mask', slide / 'masks', '--out', slide / 'in', *TELEA]
    assert cli(*args)[0] == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (slide / 'in').glob('*.tif')}
    assert sorted(stamps) == ['s1.tif', 's2.tif']
    rc, _, err = cli(*args)
    assert rc == 0 and 's1.png skipped' in err and 's2.png skipped' in err, err
    assert {p.name: p.stat().st_mtime_ns for p in (slide / 'in').glob('*.tif')} == stamps


def test_keep_work_then_rerun_is_done_not_unfinished(slide):
    out = slide / 'out.tif'
    args = ['restore-slide', slide / 'slide.png', '--mask', slide / 'mask.png', '--out', out, *TELEA]
    assert cli(*args, '--keep-work')[0] == 0
    ino = out.stat().st_ino, out.stat().st_mtime_ns
    rc, _, err = cli(*args)
    assert rc == 0 and 'skipped' in err and 'unfinished' not in err, err
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == ino  # not rewritten
    rc, _, err = cli(*args[:-1], 'navier_stokes', '--overwrite')  # other settings, asked for: a fresh run
    assert rc == 0 and 'unfinished' not in err, err


# --- 15, 13, 17: the stage runner ----------------------------------------------------------------------------------


def toy_pipeline(root, cells=("import json; json.dump(steps, open('seen.json', 'w'))",)):
    "A dvc.yaml, params.yaml and a notebook with `steps = 3`, `lr = 0.1`, `sources = ['a']` in `root`."
    import nbformat, yaml

    (root / 'nbs').mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("steps = 3\nlr = 0.1\nsources = ['a']", metadata={'tags': ['parameters']}),
        *map(nbformat.v4.new_code_cell, cells),
    ]
    nbformat.write(nb, root / 'nbs' / 'toy.ipynb')
    stage = dict(cmd='python -m histodiff.stage toy', deps=['nbs/toy.ipynb'], params=['toy'])
    stage['outs'] = [{'results/executed/toy.ipynb': {'cache': False}}]
    (root / 'dvc.yaml').write_text(yaml.safe_dump({'stages': {'toy': stage}}))
    (root / 'params.yaml').write_text(yaml.safe_dump({'toy': {'steps': 3, 'lr': 0.1, 'sources': ['a']}}))
    return root


def stage_main(root, monkeypatch, capsys, *argv):
    from histodiff.stage import main

    monkeypatch.chdir(root)
    rc = main(['toy', *argv])
    return rc, capsys.readouterr().err


def test_failed_stage_keeps_the_tracked_executed_notebook(tmp_path, monkeypatch, capsys):
    root = toy_pipeline(tmp_path, ["raise RuntimeError('boom')"])
    tracked = root / 'results' / 'executed' / 'toy.ipynb'
    tracked.parent.mkdir(parents=True)
    tracked.write_text('the last good run')
    rc, err = stage_main(root, monkeypatch, capsys)
    failed = tracked.with_name('toy.failed.tmp.ipynb')
    assert rc == 2 and 'RuntimeError: boom' in err and 'results/executed/toy.failed.tmp.ipynb' in err, err
    assert tracked.read_text() == 'the last good run' and 'boom' in failed.read_text()
    git = subprocess.run(
        ['git', 'check-ignore', '-q', 'results/executed/toy.failed.tmp.ipynb'], cwd=Path(__file__).parent
    )
    assert git.returncode == 0  # untracked: ignored by the repository's .gitignore


@pytest.mark.parametrize(
    'params, msg', [('toy: {steps: [1\n', 'params.yaml is not valid YAML'), ('- a\n- b\n', 'mapping')]
)
def test_broken_params_yaml_is_refused_naming_it(tmp_path, monkeypatch, capsys, params, msg):
    root = toy_pipeline(tmp_path)
    (root / 'params.yaml').write_text(params)
    rc, err = stage_main(root, monkeypatch, capsys)
    assert rc == 2 and msg in err and 'Traceback' not in err, err


def test_bad_override_is_refused(tmp_path, monkeypatch, capsys):
    rc, err = stage_main(toy_pipeline(tmp_path), monkeypatch, capsys, 'steps=[1')
    assert rc == 2 and "'steps=[1'" in err and 'not valid YAML' in err, err


@pytest.mark.parametrize(
    'value, msg',
    [
        (None, "steps=None (null, the notebook's default is int)"),
        (-3, 'steps=-3 (negative'),
        (['x', 'y'], None),
    ],
)
def test_stage_type_check(value, msg):
    from histodiff.stage import check_types, StageError

    defaults = {'steps': 3, 'lr': 0.1, 'sources': ['a']}
    if msg is None:  # a list of the wrong element type
        with pytest.raises(StageError, match=r"sources=\[1, 2\] \(list of int"):
            check_types({'sources': [1, 2]}, defaults)
        check_types({'sources': value, 'lr': 1}, defaults)
        return
    with pytest.raises(StageError, match=re.escape(msg)):
        check_types({'steps': value}, defaults)


# --- 14: checkpoints export checks the budget before it replaces anything -----------------------------------------


def test_export_over_budget_replaces_nothing(tmp_path, capsys):
    from histodiff.autoencoder import make_vae
    from histodiff.checkpoints import main

    make_vae('tiny').save_pretrained(tmp_path / 'models' / 'vae')
    args = ['export', '--models', tmp_path / 'models', '--out', tmp_path / 'ck', '--profile', 'smoke']
    assert main([str(a) for a in args]) == 0
    stamp = lambda: {p.relative_to(tmp_path / 'ck'): p.stat().st_mtime_ns for p in (tmp_path / 'ck').rglob('*')}
    before = stamp()
    capsys.readouterr()
    assert main([str(a) for a in args] + ['--limit-mb', '0.001']) == 2
    err = capsys.readouterr().err
    assert 'budget' in err and 'nothing was replaced' in err, err
    assert stamp() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no staging folder left


# --- 10: a mask of another aspect ratio; a slide edited in the middle ---------------------------------------------


def test_mask_of_another_aspect_ratio_is_refused(slide):
    write_mask(np.zeros((100, 100), bool) | art_mask()[:100, :100], slide / 'square.png')
    out = slide / 'out.tif'
    rc, _, err = cli('restore-slide', slide / 'slide.png', '--mask', slide / 'square.png', '--out', out, *TELEA)
    assert rc == 2 and 'aspect 1.000' in err and 'aspect 1.300' in err and not out.exists(), err
    write_mask(art_mask()[::4, ::4], slide / 'thumb.png')  # 50x65: a thumbnail of the slide is fine
    assert cli('restore-slide', slide / 'slide.png', '--mask', slide / 'thumb.png', '--out', out, *TELEA)[0] == 0


def test_slide_edited_in_the_middle_is_not_resumed(tmp_path):
    from histodiff.artifacts import restore_telea
    from histodiff.wsi import restore_slide, ResumeMismatchError

    img = np.tile(tissue(128, 128), (8, 8, 1))  # 1024 x 1024, uncompressed: 3 MiB
    tifffile.imwrite(tmp_path / 's.tif', img, photometric='rgb')
    mask = np.zeros((1024, 1024), bool)
    mask[500:520, 100:900] = True
    calls = []

    def crash_after_one(image, m):  # the same restorer both times: only the slide differs
        if len(calls) == 1 and not crash_after_one.fixed:
            raise RuntimeError('crash')
        calls.append(1)
        return restore_telea(image, m)

    crash_after_one.fixed = False
    kw = dict(mask=mask, tile=64, overlap=16, batch_size=1, progress=False, prefetch=0)
    with pytest.raises(RuntimeError):
        restore_slide(tmp_path / 's.tif', tmp_path / 'o.tif', crash_after_one, **kw)
    size = (tmp_path / 's.tif').stat().st_size
    img[512, 512] = 255 - img[512, 512]  # an edit in the middle: same size, same first and last MiB
    tifffile.imwrite(tmp_path / 's.tif', img, photometric='rgb')
    assert (tmp_path / 's.tif').stat().st_size == size
    crash_after_one.fixed = True
    with pytest.raises(ResumeMismatchError, match='source_digest'):
        restore_slide(tmp_path / 's.tif', tmp_path / 'o.tif', crash_after_one, **kw)


# --- 13: tracebacks: params_from_profile, model folders -----------------------------------------------------------


@pytest.mark.parametrize(
    'name, text, msg',
    [
        ('typo', 'train_ldmm: {max_steps: 3}\n', "'train_ldmm' does not exist"),
        ('bad', 'train_ldm: {max_steps: [1\n', 'not valid YAML'),
        ('alist', '- a\n- b\n', 'must be a mapping'),
        ('../params', None, 'not a profile name'),
    ],
)
def test_params_from_profile_refuses_without_traceback(tmp_path, name, text, msg):
    import shutil

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / 'scripts').mkdir()
    shutil.copy(repo / 'scripts' / 'params_from_profile.py', tmp_path / 'scripts')
    shutil.copytree(repo / 'profiles', tmp_path / 'profiles')
    (tmp_path / 'params.yaml').write_text('mine')
    if text is not None:
        (tmp_path / 'profiles' / f'{name}.yaml').write_text(text)
    else:
        (tmp_path / 'params.yaml').write_text('stage: {}\n')  # ../params would read this as a profile
    before = (tmp_path / 'params.yaml').read_text()
    res = subprocess.run(
        [sys.executable, 'scripts/params_from_profile.py', name], cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode == 2 and msg in res.stderr and 'Traceback' not in res.stderr, res.stderr
    assert (tmp_path / 'params.yaml').read_text() == before


@pytest.fixture(scope='module')
def ldm_folders(tmp_path_factory):
    "A tiny random latent model folder (unet/, scheduler/) and its VAE."
    from diffusers import UNet2DModel
    from histodiff.autoencoder import make_vae
    from histodiff.train import DenoisingDiffusionModel, make_scheduler, unet_config

    d = tmp_path_factory.mktemp('ldm')
    make_vae('tiny').save_pretrained(d / 'vae')
    DenoisingDiffusionModel(UNet2DModel(**unet_config('tiny', 4, 16)), make_scheduler()).save_pretrained(d / 'ldm')
    return d


@pytest.mark.parametrize(
    'damage, msg',
    [
        (('unet/config.json', '[1, 2]'), 'must hold a JSON object'),
        (('unet/config.json', '{"in_channels": 4, "blo'), 'not valid JSON'),
        (('scheduler/scheduler_config.json', '{"num_train_timesteps": "many"}'), 'scheduler'),
        (('scheduler/scheduler_config.json', '"ddpm"'), 'must hold a JSON object'),
        (None, 'holds a UNet2DModel, not a VAE'),  # the UNet folder given as --vae
    ],
)
def test_bad_model_folder_is_refused_without_traceback(ldm_folders, tmp_path, slide, damage, msg):
    import shutil
    from histodiff.regional import load_regional_pipeline
    from histodiff.modelfolder import ModelFolderError

    model, vae = tmp_path / 'ldm', ldm_folders / 'vae'
    shutil.copytree(ldm_folders / 'ldm', model)
    if damage is None:
        vae = model / 'unet'
    else:
        (model / damage[0]).write_text(damage[1])
    with pytest.raises(ModelFolderError, match=re.escape(msg)):
        load_regional_pipeline(model, vae)
    rc, _, err = cli(
        'restore', slide / 'slide.png', '--mask', slide / 'mask.png', '--out', tmp_path / 'o.png',
        '--method', 'latent', '--ldm', model, '--vae', vae, '--steps', 2, '-q',
    )  # fmt: skip
    assert rc == 2 and msg in err, err


# --- 11: library arguments that were silently wrong ----------------------------------------------------------------


@pytest.fixture(scope='module')
def pixel_pipe():
    from histodiff.regional import PixelRegionalPipeline, sampling_scheduler
    from histodiff.train import make_scheduler, make_unet

    return PixelRegionalPipeline(make_unet('tiny', 3, 16), sampling_scheduler(make_scheduler(), 'ddim', clip=True))


def _tile_and_mask(h=32, w=32):
    img = tissue(h, w)
    m = np.zeros((h, w), np.float32)
    m[8:16, 8:20] = 1.0
    return img, m


def test_nan_in_a_float_mask_is_refused(pixel_pipe):
    from histodiff.core import as_mask, MaskError

    img, m = _tile_and_mask()
    m[:] = np.nan
    with pytest.raises(MaskError, match='NaN'):
        as_mask(m)
    with pytest.raises(ValueError, match='NaN'):
        pixel_pipe.restore(img, m, num_inference_steps=1)


def test_nan_in_an_input_tensor_is_refused(pixel_pipe):
    import torch

    img, m = _tile_and_mask()
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 3, 3] = float('nan')
    with pytest.raises(ValueError, match='NaN'):
        pixel_pipe(x, [m > 0], num_inference_steps=1, output_type='pt', progress=False)


@pytest.mark.parametrize('seed', [0.9, 1.0, '3', True])
def test_non_integer_seed_is_refused(pixel_pipe, seed):
    from histodiff.restorers import RestorerSettings

    img, m = _tile_and_mask()
    with pytest.raises(ValueError, match='seed must be an integer'):
        RestorerSettings(seed=seed)
    with pytest.raises(ValueError, match='seed must be an integer'):
        pixel_pipe.restore(img, m > 0, num_inference_steps=1, generator=seed)


@pytest.mark.parametrize(
    'change, msg', [({'latent_dilation': -1}, 'latent_dilation'), ({'pixel_dilation': 2.5}, 'pixel_dilation')]
)
def test_bad_dilations_are_a_clear_value_error(pixel_pipe, change, msg):
    from histodiff.restorers import RestorerSettings

    img, m = _tile_and_mask()
    with pytest.raises(ValueError, match=f'{msg} must be a whole number of pixels >= 0'):
        pixel_pipe.restore(img, m > 0, num_inference_steps=1, **change)
    if 'pixel_dilation' in change:
        with pytest.raises(ValueError, match='pixel_dilation must be an integer >= 0'):
            RestorerSettings(**change)


# --- 18: slide messages ------------------------------------------------------------------------------------------


def test_all_slides_failing_does_not_say_the_others_are_restored(slide):
    (slide / 'in').mkdir()
    (slide / 'masks').mkdir()
    img = tissue()
    for n in ('s1', 's2'):
        write_image(img, slide / 'in' / f'{n}.png')
        write_image(np.full((200, 260, 3), 7, np.uint8), slide / 'masks' / f'{n}.png')  # not a mask
    rc, _, err = cli('restore-slide', slide / 'in', '--mask', slide / 'masks', '--out', slide / 'out', *TELEA)
    assert rc == 2 and '2 of 2 slides failed' in err and 'others are restored' not in err, err
    assert '0 restored' in err


def test_one_slide_with_a_folder_out_takes_one_mask_file(slide):
    rc, _, err = cli('restore-slide', slide / 'slide.png', '--mask', slide / 'mask.png', '--out', slide / 'res', *TELEA)
    assert rc == 0 and (slide / 'res' / 'slide.tif').is_file(), err


def test_subifd_pyramid_levels_are_seen(tmp_path):
    from histodiff.wsi import SlideSource

    a = tissue(512, 512)
    with tifffile.TiffWriter(tmp_path / 'sub.tif') as t:
        t.write(a, tile=(256, 256), photometric='rgb', subifds=1)
        t.write(a[::2, ::2], tile=(256, 256), photometric='rgb', subfiletype=1)
    with SlideSource(tmp_path / 'sub.tif', level=1) as s:
        assert s.shape == (256, 256) and (s.read(0, 0, 256, 256) == a[::2, ::2]).all()


def test_palette_tiff_is_read_as_rgb(tmp_path):
    from histodiff.wsi import SlideSource

    idx = np.random.default_rng(0).integers(0, 4, (64, 64), np.uint8)
    cmap = np.random.default_rng(1).integers(0, 256, (3, 256), np.uint16) * 257  # 16-bit colormap
    tifffile.imwrite(tmp_path / 'pal.tif', idx, photometric='palette', colormap=cmap)
    with SlideSource(tmp_path / 'pal.tif') as s:
        np.testing.assert_array_equal(s.read(0, 0, 64, 64), np.moveaxis((cmap >> 8).astype(np.uint8)[:, idx], 0, -1))


def test_thin_slide_is_not_called_a_square_image(tmp_path):
    from histodiff.core import ImageError
    from histodiff.wsi import restore_slide

    write_image(np.tile(tissue(12, 64), (1, 16, 1)), tmp_path / 'thin.png')  # 12 x 1024

    def needs_16(images, masks):  # as a diffusion pipeline refuses an image below its size multiple
        h, w = images.shape[1:3]
        if min(h, w) < 16:
            raise ImageError(f"image {h}x{w} is smaller than 16x16, the smallest the model takes")
        return images

    mask = np.zeros((12, 1024), bool)
    mask[4:8, 100:200] = True
    with pytest.raises(ImageError, match='is 12x1024 px, so its tiles are 12x12') as e:
        restore_slide(tmp_path / 'thin.png', tmp_path / 'o.tif', needs_16, mask=mask, batched=True, progress=False)
    assert 'image 12x12 is smaller than 16x16' in str(e.value)
