"""Inputs and options a user can hand over (issue 25, items 4-9, 12, 13, 17, 18): colour models, EXIF orientation,
PNGs with rows missing, 16-bit RGB, out-of-range options, lossy outputs, sizes, devices, option checks before any
model loads, messages. Every command exits 0 (done) or 2 (refused, naming the problem), never 1 with a traceback.
Tiny images, classical restorers and tiny random models: seconds on a CPU."""

import os, struct, subprocess, sys, warnings, zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageOps

from histodiff import core
from histodiff.core import ImageError, read_image, read_mask, write_image, write_mask
from test_reliability_slides import cli  # the CLI in-process: (status, stdout, stderr)

CPU_ONLY = not torch.cuda.is_available()


def refused(rc, err, *words):
    "Status 2, a message naming the problem, no traceback."
    assert rc == 2 and 'Traceback' not in err, err
    for w in words:
        assert w in err, (w, err)


def tissue(h=64, w=64, seed=0):
    "Smooth, tissue-like RGB (every pixel different enough that a shift shows)."
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(40, 230, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), (w, h))
    return np.clip(base.astype(int) + rng.integers(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def box_mask(h=64, w=64):
    m = np.zeros((h, w), bool)
    m[10:20, 30:44] = True
    return m


@pytest.fixture
def tile(tmp_path):
    "A 64 x 64 RGB tile and its mask in tmp_path."
    write_image(tissue(), tmp_path / 'tile.png')
    write_mask(box_mask(), tmp_path / 'mask.png')
    return tmp_path


def restore(d, *more, image='tile.png', mask='mask.png', out='out.png'):
    return cli('restore', d / image, '--mask', d / mask, '--out', d / out, '--method', 'telea', '-q', *more)


SLIDE = ['--tile', 32, '--overlap', 8, '--batch-size', 2, '--method', 'telea', '-q']


def restore_slide(d, *more, image='tile.png', out='out.tif'):
    return cli('restore-slide', d / image, '--out', d / out, *SLIDE, *more)


@pytest.fixture
def no_model_loads(monkeypatch):
    "Every model loader of the commands fails the test: the options must be refused before."
    from histodiff.detect import ArtifactDetector
    from histodiff.sfs import ImageClassifier
    from histodiff.stardiff import StarDiffPipeline

    for cls in (ArtifactDetector, ImageClassifier, StarDiffPipeline):
        monkeypatch.setattr(cls, 'from_pretrained', classmethod(lambda *a, **k: pytest.fail('a model was loaded')))


# Item 13: a device this torch cannot use, --feather inf -----------------------------------------------------------


@pytest.mark.parametrize('device', ['banana', 'cuda', 'cuda:7'])
def test_unusable_device_is_refused_before_models_load(tile, no_model_loads, device):
    if device.startswith('cuda') and not CPU_ONLY:
        pytest.skip('this torch has a GPU')
    for rc, _, err in (
        restore(tile, '--device', device),
        cli('stain', tile / 'tile.png', '--out', tile / 'ihc.png', '--model', tile, '--device', device, '-q'),
        restore_slide(tile, '--detector', tile, '--device', device),
    ):
        refused(rc, err, 'histodiff: error:', f"device {device!r}" if device != 'banana' else "unknown device 'banana'")
    assert not (tile / 'out.png').exists() and not (tile / 'ihc.png').exists() and not (tile / 'out.tif').exists()


def test_feather_inf_is_refused(tile):
    for value in ('inf', 'nan', '-1'):
        refused(*restore(tile, '--feather', value)[::2], 'argument --feather', 'finite')


# Item 8: option ranges -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('value', ['5', 'nan', '-1'])
def test_threshold_is_range_checked(tile, no_model_loads, value):
    rc, _, err = restore_slide(tile, '--detector', tile, '--threshold', value)
    refused(rc, err, 'argument --threshold', '[0, 1]')


def test_threshold_with_mask_is_refused(tile):
    rc, _, err = restore_slide(tile, '--mask', tile / 'mask.png', '--threshold', 0.5)
    refused(rc, err, '--threshold', '--mask')
    assert not (tile / 'out.tif').exists()


def test_stain_eta_nan_and_slide_mpp_inf_are_refused(tile, no_model_loads):
    rc, _, err = cli('stain', tile / 'tile.png', '--out', tile / 'ihc.png', '--model', tile, '--eta', 'nan')
    refused(rc, err, 'argument --eta', 'finite')
    rc, _, err = restore_slide(tile, '--mask', tile / 'mask.png', '--mpp', 'inf')
    refused(rc, err, 'argument --mpp', 'finite')
    assert not (tile / 'ihc.png').exists() and not (tile / 'out.tif').exists()


@pytest.fixture(scope='module')
def tissue_classifier(tmp_path_factory):
    "A tiny classifier of tissue sources (the shipped checkpoints/classifier/tissue has these classes)."
    from histodiff.sfs import build_classifier

    d = tmp_path_factory.mktemp('tissue')
    build_classifier('tiny', 5, ['he', 'slide', 'prostate', 'histoqc', 'tcga']).save_pretrained(d / 'clf')
    return d / 'clf'


def test_sfs_refuses_a_classifier_of_other_classes(tmp_path, tissue_classifier):
    for sub in ('real', 'gen'):
        (tmp_path / sub).mkdir()
        write_image(tissue(32, 32), tmp_path / sub / '00001_test_2+.png')
    for more in ([], ['--labels', 'dab-score'], ['--binary']):
        rc, _, err = cli(
            'sfs', '--real', tmp_path / 'real', '--generated', tmp_path / 'gen', '--classifier', tissue_classifier,
            '--n-boot', 10, '-q', *more,
        )  # fmt: skip
        refused(rc, err, str(tissue_classifier), "'prostate'", 'HER2', "'2+'")


# Item 17: every option is checked before a model loads ----------------------------------------------------------------


def test_options_are_checked_before_models_load(tile, no_model_loads, monkeypatch):
    import histodiff.stardiff as S

    monkeypatch.setattr(S.StarDiffPipeline, 'stain', lambda *a, **k: pytest.fail('sampled'))
    rc, _, err = cli('stain', tile / 'tile.png', '--out', tile / 'ihc.xyz', '--model', tile, '-q')
    refused(rc, err, '.xyz', '.png')
    rc, _, err = restore_slide(tile, '--detector', tile, out='out.png')
    refused(rc, err, 'out.png', '.tif')
    (tile / 'real').mkdir()
    rc, _, err = cli('sfs', '--real', tile / 'real', '--generated', tile / 'real', '--classifier', tile, '--level', 2)
    refused(rc, err, 'argument --level', '(0, 1)')
    assert sorted(p.name for p in tile.iterdir()) == ['mask.png', 'real', 'tile.png']


def test_busy_slide_output_is_refused_before_models_load(tile, no_model_loads):
    out = tile / 'out.tif'
    code = (
        "from histodiff.wsi import output_lock\nimport time\n"
        f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        rc, _, err = restore_slide(tile, '--detector', tile)
        refused(rc, err, 'another histodiff run', f'pid {holder.pid}')
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()


# Item 12: sizes ------------------------------------------------------------------------------------------------------


def test_feather_and_dilation_are_bounded(tile):
    for opt in ('--feather', '--pixel-dilation'):
        refused(*restore(tile, opt, 1000000)[::2], opt, 'larger than the image (64 px)')
        refused(*restore_slide(tile, '--mask', tile / 'mask.png', opt, 100)[::2], opt, 'larger than the tile (32 px)')
    assert restore(tile, '--feather', 64, '--pixel-dilation', 64)[0] == 0


def test_restore_refuses_an_image_too_large_for_it(tmp_path, monkeypatch):
    import histodiff.artifacts as A

    monkeypatch.setitem(A.BASELINES, 'telea', lambda *a, **k: pytest.fail('restored'))
    side = 2100  # 4.4 M pixels, over restore's 2048 x 2048
    Image.new('RGB', (side, side), (200, 150, 180)).save(tmp_path / 'big.png')
    m = np.zeros((side, side), bool)
    m[:10, :10] = True
    write_mask(m, tmp_path / 'mask.png')
    rc, _, err = restore(tmp_path, image='big.png')
    refused(rc, err, f'{side}x{side}', 'histodiff restore-slide', 'big.png')
    assert not (tmp_path / 'out.png').exists()


# Item 4: colour models ----------------------------------------------------------------------------------------------


def test_cmyk_tiff_is_converted_alike_by_both_commands(tmp_path):
    from histodiff.wsi import SlideSource

    cmyk = np.random.default_rng(3).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / 'cmyk.tif', cmyk, photometric='separated')
    want = np.asarray(Image.fromarray(cmyk, 'CMYK').convert('RGB'))
    np.testing.assert_array_equal(read_image(tmp_path / 'cmyk.tif'), want)
    with SlideSource(tmp_path / 'cmyk.tif') as s:
        np.testing.assert_array_equal(s.read(0, 0, 64, 64), want)
    write_mask(box_mask(), tmp_path / 'mask.png')
    rc, _, err = restore_slide(tmp_path, '--mask', tmp_path / 'mask.png', image='cmyk.tif')
    assert rc == 0, err
    got = tifffile.imread(tmp_path / 'out.tif')
    far = ~core.as_mask(box_mask())
    far[5:25, 25:49] = False  # away from the restored tiles' blending
    np.testing.assert_array_equal(got[far], want[far])


def test_lab_images_are_refused_naming_the_mode(tmp_path):
    write_mask(box_mask(), tmp_path / 'mask.png')
    Image.fromarray(tissue()).convert('LAB').save(tmp_path / 'lab.tif')
    refused(*restore(tmp_path, image='lab.tif')[::2], 'lab.tif', 'colour model LAB')
    tifffile.imwrite(tmp_path / 'cielab.tif', tissue(), photometric='cielab')
    refused(*restore_slide(tmp_path, '--mask', tmp_path / 'mask.png', image='cielab.tif')[::2], 'colour model CIELAB')
    assert not (tmp_path / 'out.png').exists() and not (tmp_path / 'out.tif').exists()


# Item 7: 16 bits per channel ------------------------------------------------------------------------------------------


def test_16_bit_rgb_is_refused_by_both_commands(tmp_path):
    import cv2

    write_mask(box_mask(), tmp_path / 'mask.png')
    rgb16 = tissue().astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / 'rgb16.png'), rgb16[..., ::-1])
    tifffile.imwrite(tmp_path / 'rgb16.tif', rgb16, photometric='rgb')
    for name in ('rgb16.png', 'rgb16.tif'):
        refused(*restore(tmp_path, image=name)[::2], name, '16-bit')
        refused(*restore_slide(tmp_path, '--mask', tmp_path / 'mask.png', image=name)[::2], name, '16-bit')
    assert not (tmp_path / 'out.png').exists() and not (tmp_path / 'out.tif').exists()


# Item 5: EXIF orientation -------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied_to_image_and_mask(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns it 90 degrees clockwise
    Image.fromarray(tissue()).save(tmp_path / 'turned.jpg', exif=exif, quality=95)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / 'turned.jpg')).convert('RGB'))
    np.testing.assert_array_equal(read_image(tmp_path / 'turned.jpg'), shown)
    write_mask(box_mask(), tmp_path / 'mask.png')  # drawn on the image as it is shown
    rc, _, err = restore(tmp_path, image='turned.jpg')
    assert rc == 0, err
    out, m = read_image(tmp_path / 'out.png'), box_mask()
    np.testing.assert_array_equal(out[~m], shown[~m])
    assert (out[m] != shown[m]).any()
    Image.fromarray(box_mask().astype(np.uint8) * 255).save(tmp_path / 'turned_mask.png', exif=exif)
    np.testing.assert_array_equal(read_mask(tmp_path / 'turned_mask.png'), np.rot90(box_mask(), -1))
    tifffile.imwrite(tmp_path / 'turned.tif', tissue(), photometric='rgb', extratags=[(274, 3, 1, 6, True)])
    rc, _, err = restore_slide(tmp_path, '--mask', tmp_path / 'mask.png', image='turned.tif')  # tifffile: refused
    refused(rc, err, 'turned.tif', 'orientation 6')


# Item 6: a PNG whose image data ends (cleanly) before its last rows ------------------------------------------------


def _short_png(path, img, rows):
    "A well-formed PNG whose IHDR declares all of `img` but whose zlib stream holds only its first `rows` rows."

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    h, w = img.shape[:2]
    data = b''.join(b'\0' + img[y].tobytes() for y in range(rows))
    path.write_bytes(
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
        + chunk(b'IDAT', zlib.compress(data))
        + chunk(b'IEND', b'')
    )
    return path


def test_png_with_rows_missing_is_refused(tile):
    p = _short_png(tile / 'short.png', tissue(), 40)
    with Image.open(p) as im:  # PIL itself takes it: the last 24 rows black
        im.load()
        assert not np.asarray(im)[40:].any()
    with pytest.raises(ImageError, match='truncated or corrupt'):
        read_image(p)
    refused(*restore(tile, image='short.png')[::2], 'short.png', 'truncated or corrupt')
    refused(*restore_slide(tile, '--mask', tile / 'mask.png', image='short.png')[::2], 'truncated or corrupt')
    _short_png(tile / 'short_mask.png', np.repeat(box_mask()[..., None], 3, -1).astype(np.uint8) * 255, 12)
    refused(*restore(tile, mask='short_mask.png')[::2], 'short_mask.png', 'truncated or corrupt')
    assert not (tile / 'out.png').exists() and not (tile / 'out.tif').exists()


def test_interlaced_png_is_read(tmp_path):
    "The check of the rows counts an interlaced (Adam7) PNG's seven passes: a complete one is read."

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    img = tissue(37, 29)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    data = b''.join(b'\0' + row.tobytes() for x0, y0, dx, dy in passes for row in img[y0::dy, x0::dx] if row.size)
    (tmp_path / 'i.png').write_bytes(
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', struct.pack('>IIBBBBB', 29, 37, 8, 2, 0, 0, 1))
        + chunk(b'IDAT', zlib.compress(data))
        + chunk(b'IEND', b'')
    )
    np.testing.assert_array_equal(read_image(tmp_path / 'i.png'), img)


# Item 9: lossy output formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize('suffix', ['.jpg', '.gif', '.webp'])
def test_lossy_output_needs_lossy(tile, suffix):
    rc, _, err = restore(tile, out=f'out{suffix}')
    refused(rc, err, 'lossy', '--lossy', f'out{suffix}')
    assert not (tile / f'out{suffix}').exists()
    assert restore(tile, '--lossy', out=f'out{suffix}')[0] == 0 and (tile / f'out{suffix}').is_file()


# Item 18: messages ----------------------------------------------------------------------------------------------------


def test_huge_seed_is_refused_by_argparse(tile):
    for cmd in (
        lambda s: restore(tile, '--seed', s),
        lambda s: cli('stain', tile / 'tile.png', '--out', tile / 'ihc.png', '--seed', s),
        lambda s: cli('sfs', '--real', tile, '--generated', tile, '--seed', s),
    ):
        for seed in (2**64, -1):
            refused(*cmd(seed)[::2], 'argument --seed')
    assert restore(tile, '--seed', 2**64 - 1)[0] == 0


def test_symlink_loop_is_named(tile):
    (tile / 'loop.png').symlink_to(tile / 'loop.png')
    refused(*restore(tile, image='loop.png')[::2], 'loop.png', 'loop')
    refused(*restore(tile, mask='loop.png')[::2], 'loop.png', 'loop')
    refused(*restore_slide(tile, '--mask', tile / 'mask.png', image='loop.png')[::2], 'loop.png', 'loop')
    (tile / 'gone.png').symlink_to(tile / 'nowhere.png')
    refused(*restore(tile, image='gone.png')[::2], 'gone.png', 'nowhere.png')


def test_missing_checkpoints_name_the_variable(tile, monkeypatch):
    monkeypatch.setenv('HISTODIFF_CHECKPOINTS', str(tile / 'my_checkpoints'))
    monkeypatch.chdir(tile)
    rc, _, err = restore_slide(tile)  # no --mask, no --detector: models/detector, else the shipped one
    refused(rc, err, 'no detector model', f"$HISTODIFF_CHECKPOINTS={str(tile / 'my_checkpoints')!r}")


NOISY = """
import sys, warnings
import histodiff.artifacts as A
from histodiff import cli
orig = A.BASELINES['telea']  # what the restorer 'telea' calls
def noisy(*a, **k):
    warnings.warn('a raw warning of some library', UserWarning)
    return orig(*a, **k)
A.BASELINES['telea'] = noisy
sys.exit(cli.main(sys.argv[1:]))
"""


def test_quiet_silences_other_libraries_warnings(tile):
    "(a subprocess: pytest records warnings itself)"
    args = ['restore', tile / 'tile.png', '--mask', tile / 'mask.png', '--out', tile / 'o.png', '--method', 'telea']
    for quiet in (True, False):
        r = subprocess.run(
            [sys.executable, '-c', NOISY, *map(str, args), *(['-q'] if quiet else [])],
            capture_output=True,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS='1'),
        )
        assert r.returncode == 0 and ('a raw warning' in r.stderr) is not quiet, r.stderr
