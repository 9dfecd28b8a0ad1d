"""Strict image I/O, normal file modes, sizes the models cannot take, one empty-mask behaviour (issue 15).

Defects 5 (truncated PNG read as black rows), 4 (decompression bomb escapes), 11 (outputs 0600 / folders 0700),
14 (unknown suffix written as PNG), 3 (odd sizes crash in the UNet), 12 (an empty mask handled two ways).
Issue 25, item 1: a folder output replaces only a folder histodiff wrote, never an input or the current folder.
Tiny inputs and tiny random models: seconds on a CPU.
"""

import os, struct, warnings, zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from histodiff import artifacts, core
from histodiff.core import ImageError, atomic_dir, atomic_path, read_image, read_mask, write_image, write_mask
from histodiff.regional import PixelRegionalPipeline, RegionalLatentPipeline, dilate_disk, sampling_scheduler
from histodiff.autoencoder import make_vae
from histodiff.train import DenoisingDiffusionModel, make_scheduler, make_unet


def _noise(h=64, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _truncated_png(path, arr):
    "`arr` saved as PNG with its last 30% of bytes cut: the compressed data ends early."
    Image.fromarray(arr).save(path)
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * 0.7)])
    return path


# Defect 5: a truncated PNG is refused, even when some library switched PIL's LOAD_TRUNCATED_IMAGES on
@pytest.mark.parametrize('flag', [False, True])
def test_truncated_png_is_refused(tmp_path, flag):
    p = _truncated_png(tmp_path / 'cut.png', _noise())
    m = _truncated_png(
        tmp_path / 'cutmask.png', (np.random.default_rng(1).random((64, 64)) < 0.5).astype(np.uint8) * 255
    )
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = flag
    try:
        with pytest.raises(ImageError, match='truncated or corrupt') as e:
            read_image(p)
        assert str(p) in str(e.value)
        with pytest.raises(ValueError, match='truncated or corrupt') as e:
            read_mask(m)
        assert str(m) in str(e.value)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is flag  # the caller's setting is put back
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _png_claiming(path, w, h):
    "A tiny valid PNG whose IHDR claims `w x h` RGB pixels (chunks written by hand, valid CRCs)."

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    path.write_bytes(
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
        + chunk(b'IDAT', zlib.compress(b'\0' * 16))
        + chunk(b'IEND', b'')
    )
    return path


# Defect 4: PIL's DecompressionBombError becomes a ValueError naming the file, the size and what to do
def test_decompression_bomb_is_a_clear_error(tmp_path):
    p = _png_claiming(tmp_path / 'huge.png', 60000, 60000)
    for read, err in ((read_image, ImageError), (read_mask, ValueError)):
        with pytest.raises(err) as e:
            read(p)
        msg = str(e.value)
        assert str(p) in msg and '60000' in msg and 'restore-slide' in msg and 'MAX_IMAGE_PIXELS' in msg


# Defect 11: outputs get the modes a plain open() / mkdir() would give
def test_outputs_have_normal_modes(tmp_path):
    for umask, fmode, dmode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700)):
        d = tmp_path / oct(umask)
        old = os.umask(umask)
        try:
            write_image(_noise(8, 8), d / 'a.png')
            write_mask(np.eye(8, dtype=bool), d / 'm.png')
            with atomic_path(d / 'b.json') as t:
                t.write_text('{}')
            with atomic_dir(d / 'model') as t:
                (t / 'weights').write_text('w')
                (t / 'unet').mkdir()
                DenoisingDiffusionModel(make_unet('tiny', 3, 16), make_scheduler()).save_pretrained(t / 'pipe')
        finally:
            os.umask(old)
        for f in ('a.png', 'm.png', 'b.json', 'model/weights', 'model/pipe/unet/diffusion_pytorch_model.safetensors'):
            assert oct((d / f).stat().st_mode & 0o777) == oct(fmode), (f, oct(umask))  # safetensors writes 0600 itself
        for f in ('model', 'model/unet', 'model/pipe/unet'):
            assert oct((d / f).stat().st_mode & 0o777) == oct(dmode), (f, oct(umask))


def test_stale_temporaries_are_found(tmp_path):
    out = tmp_path / 'tile.png'
    stale = [tmp_path / '.tile.abcd1234.tmp.png', tmp_path / '.tile.png.x_y0z9ab.tmp']
    others = [tmp_path / '.tile.b.abcd1234.tmp.png', tmp_path / 'tile.png', tmp_path / '.other.abcd1234.tmp.png']
    stale[0].write_bytes(b'')
    stale[1].mkdir()
    for p in others:
        p.write_bytes(b'')
    assert core.stale_temporaries(out) == sorted(stale)
    # the names atomic_path / atomic_dir really use are recognised
    with atomic_path(out) as t:
        assert core.stale_temporaries(out) == sorted(stale + [t])
    with atomic_dir(tmp_path / 'model') as t:
        assert core.stale_temporaries(tmp_path / 'model') == [t]


# Defect 14: a suffix PIL cannot write is refused before anything is written
def test_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(ImageError) as e:
        write_image(_noise(8, 8), tmp_path / 'x.xyz')
    assert '.xyz' in str(e.value) and '.png' in str(e.value) and '.tif' in str(e.value)
    assert list(tmp_path.iterdir()) == []


# Defect 3: sizes the UNet cannot take are padded (reflect) and cropped back; too small ones are refused
@pytest.fixture(scope='module')
def pipes():
    pixel = PixelRegionalPipeline(make_unet('tiny', 3, 16), sampling_scheduler(make_scheduler(), 'ddim', clip=True))
    latent = RegionalLatentPipeline(
        make_unet('tiny', 4, 2), make_vae('tiny'), sampling_scheduler(make_scheduler(), 'ddim')
    )
    return pixel, latent


@pytest.mark.parametrize('which,h,w', [('pixel', 43, 59), ('pixel', 40, 57), ('latent', 43, 59), ('latent', 17, 16)])
def test_odd_sizes_are_padded_and_cropped(pipes, which, h, w):
    pipe = pipes[0] if which == 'pixel' else pipes[1]
    img = _noise(h, w, 3)
    mask = np.zeros((h, w), bool)
    mask[h // 3 : h // 3 + 5, w // 2 : w // 2 + 4] = True
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # the tiny UNets were trained at another size
        res = pipe(
            [img], [mask], num_inference_steps=2, generator=0, output_type='np', progress=False, pixel_dilation=3
        )
    out, alpha = res.images[0], res.masks[0]
    assert out.shape == img.shape and out.dtype == np.uint8 and alpha.shape == (h, w)
    outside = ~dilate_disk(torch.from_numpy(mask), 3).numpy()
    np.testing.assert_array_equal(out[outside], img[outside])
    assert (out[mask] != img[mask]).any()


def test_too_small_is_refused(pipes):
    img, mask = _noise(8, 8), np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    with pytest.raises(ValueError, match='16x16') as e:
        pipes[1].restore(img, mask, num_inference_steps=1)
    assert 'crop a larger region' in str(e.value)


# Defect 12: an all-zero mask returns the input unchanged (a copy) with an EmptyMaskWarning, everywhere
@pytest.mark.parametrize('method', ['telea', 'navier_stokes', 'biharmonic'])
def test_empty_mask_classical(method):
    img = _noise(16, 16)
    with pytest.warns(core.EmptyMaskWarning, match='no artifact pixel'):
        out = artifacts.restore(img, np.zeros((16, 16), bool), method)
    assert out.tobytes() == img.tobytes() and out is not img
    with pytest.raises(ValueError, match='all ones'):
        artifacts.restore(img, np.ones((16, 16), bool), method)


def test_empty_mask_pipeline(pipes):
    img = _noise(16, 16)
    with pytest.warns(core.EmptyMaskWarning, match='no artifact pixel'):
        out = pipes[0].restore(img, np.zeros((16, 16), bool), num_inference_steps=1)
    assert out.tobytes() == img.tobytes()
    with warnings.catch_warnings():  # the batched call stays quiet (slides have many empty tiles)
        warnings.simplefilter('error', core.EmptyMaskWarning)
        pipes[0]([img, img], [np.zeros((16, 16), bool)] * 2, num_inference_steps=1, progress=False)


# Issue 25, item 1: a command replaces only a folder it wrote itself, never one holding its input or the current folder
def test_atomic_dir_replaces_only_what_histodiff_wrote(tmp_path, monkeypatch):
    theirs = tmp_path / 'theirs'
    theirs.mkdir()
    (theirs / 'thesis.tex').write_text('years of work')
    with pytest.raises(FileExistsError) as e:
        with atomic_dir(theirs) as t:
            (t / 'weights').write_text('w')
    assert str(theirs) in str(e.value) and 'did not write' in str(e.value) and 'overwrite' in str(e.value)
    assert (theirs / 'thesis.tex').read_text() == 'years of work' and core.stale_temporaries(theirs) == []
    for _ in range(2):  # its own output (the marker) is replaced again and again
        with atomic_dir(tmp_path / 'ours') as t:
            (t / 'weights').write_text('w')
    assert sorted(p.name for p in (tmp_path / 'ours').iterdir()) == [core.OUTPUT_MARKER, 'weights']
    legacy = tmp_path / 'legacy'  # a model folder written before the marker: its card.json says histodiff wrote it
    legacy.mkdir()
    (legacy / 'card.json').write_text('{}')
    with atomic_dir(legacy) as t:
        (t / 'weights').write_text('w')
    with atomic_dir(theirs, overwrite=True) as t:  # asked for: replaced
        (t / 'weights').write_text('w')
    assert not (theirs / 'thesis.tex').exists()
    late = tmp_path / 'late'  # a folder that appears while the block runs is not replaced either
    with pytest.raises(FileExistsError, match='did not write'):
        with atomic_dir(late) as t:
            late.mkdir()
            (late / 'notes').write_text('keep')
    assert (late / 'notes').read_text() == 'keep' and core.stale_temporaries(late) == []


def test_atomic_dir_never_replaces_an_input_or_the_current_folder(tmp_path, monkeypatch):
    src = tmp_path / 'download' / 'unet' / 'weights.bin'
    src.parent.mkdir(parents=True)
    src.write_text('w')
    (tmp_path / 'link').symlink_to(tmp_path / 'download')
    for out in (src.parent, tmp_path / 'download', tmp_path, tmp_path / 'link'):
        with pytest.raises(ValueError, match='input') as e:
            with atomic_dir(out, overwrite=True, inputs=[src]):
                pass
        assert str(out) in str(e.value) and str(src) in str(e.value)
    monkeypatch.chdir(src.parent)
    for out in ('.', src.parent, tmp_path):
        with pytest.raises(ValueError, match='current folder'):
            with atomic_dir(out, overwrite=True):
                pass
    assert src.read_text() == 'w'


@pytest.fixture(scope='module')
def unet_src(tmp_path_factory):
    "A downloaded UNet folder (config.json + pickled weights) alone in its folder, as the release unpacks."
    from histodiff.release import write_released_unet

    return write_released_unet(tmp_path_factory.mktemp('download') / 'unet', (8, 8, 16, 16, 32, 32), 8)


def test_convert_checkpoint_keeps_folders_it_did_not_write(unet_src, tmp_path, monkeypatch, capsys):
    from histodiff.cli import main

    def convert(dst, *more):
        rc = main(['convert-checkpoint', str(unet_src), str(dst), '-q', *more])
        return rc, capsys.readouterr().err

    work = tmp_path / 'work'
    work.mkdir()
    (work / 'notes.txt').write_text('mine')
    monkeypatch.chdir(work)
    for more in ((), ('--overwrite',)):  # DST . : the current folder is never emptied
        rc, err = convert('.', *more)
        assert rc == 2 and 'current folder' in err and (work / 'notes.txt').read_text() == 'mine'
    other = tmp_path / 'other'  # an unrelated folder keeps its files
    other.mkdir()
    (other / 'thesis.tex').write_text('years')
    rc, err = convert(other)
    assert rc == 2 and str(other) in err and 'did not write' in err and '--overwrite' in err
    assert (other / 'thesis.tex').read_text() == 'years' and sorted(p.name for p in other.iterdir()) == ['thesis.tex']
    for dst in (unet_src.parent, unet_src):  # the folder holding SRC, or SRC itself: refused even with --overwrite
        rc, err = convert(dst, '--overwrite')
        assert rc == 2 and 'input' in err and str(unet_src) in err
    assert (unet_src / 'config.json').is_file() and (unet_src / 'diffusion_pytorch_model.bin').is_file()
    assert convert(tmp_path / 'model')[0] == 0 and convert(tmp_path / 'model')[0] == 0  # its own output: replaced
    assert convert(other, '--overwrite')[0] == 0 and (other / 'unet').is_dir() and not (other / 'thesis.tex').exists()


def test_download_and_export_keep_folders_they_did_not_write(tmp_path):
    import shutil
    from pathlib import Path
    from histodiff.checkpoints import export_checkpoint, read_card
    from histodiff.sources import download_gdrive

    src = tmp_path / 'drive' / 'histology'
    write_image(_noise(8, 8), src / 'a.png')
    for out in (tmp_path / 'drive', src):
        with pytest.raises(ValueError, match='input'):
            download_gdrive(str(src), out)
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('keep')
    with pytest.raises(FileExistsError, match='did not write'):
        download_gdrive(str(src), tmp_path / 'mine')
    assert (src / 'a.png').is_file() and (tmp_path / 'mine' / 'notes.txt').read_text() == 'keep'
    for _ in range(2):
        assert (download_gdrive(str(src), tmp_path / 'copy') / 'a.png').is_file()
    # a shipped checkpoint (card.json, no marker) is exported again over its copy; never over its own source
    shipped = Path(__file__).resolve().parents[1] / 'checkpoints' / 'vae'
    ck = tmp_path / 'checkpoints' / 'vae'
    shutil.copytree(shipped, ck)
    assert export_checkpoint(shipped, ck, read_card(shipped, 'vae')) == ck and (ck / core.OUTPUT_MARKER).is_file()
    with pytest.raises(ValueError, match='is the input'):
        export_checkpoint(ck, ck, read_card(ck, 'vae'))
    assert (ck / 'card.json').is_file()
