"""What a hostile new user broke in `histodiff restore-slide` and `restore` (issue 15), one test per defect.

Tiny slides (a few hundred pixels), classical restorers or in-process fakes: seconds each. Interruptions by signal
run the CLI in a subprocess."""

import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from histodiff.cli import main
from histodiff.core import write_image, write_mask, read_image
from histodiff.wsi import restore_slide, WorkFolder, output_lock, SlideSettings


def cli(*argv):
    "Run the CLI in-process; (status, stdout, stderr) through capsys is awkward with tqdm: use a subprocess-free call."
    import io, contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def tissue(h=200, w=260, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.resize(
        rng.integers(60, 230, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC
    )
    return np.clip(base.astype(int) + rng.integers(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def art_mask(h=200, w=260):
    m = np.zeros((h, w), bool)
    m[30:50, 40:110] = True
    m[140:170, 200:210] = True
    return m


@pytest.fixture
def slide(tmp_path):
    "A damaged plain-PNG slide and its mask image in tmp_path."
    img = tissue()
    img[art_mask()] = 0
    write_image(img, tmp_path / 'slide.png')
    write_mask(art_mask(), tmp_path / 'mask.png')
    return tmp_path


def leftovers(folder, name='out'):
    "Hidden files of an output (temporaries, work folders) other than its lock file."
    return sorted(
        p.name for p in Path(folder).iterdir() if p.name.startswith(f'.{name}') and not p.name.endswith('.lock')
    )


SLIDE_ARGS = ['--tile', 64, '--overlap', 16, '--batch-size', 2, '-q']

# a CLI run in a subprocess whose classical restorer can be made to stop (KeyboardInterrupt) or hang
RUNNER = textwrap.dedent('''
    import os, sys, time, tifffile
    import histodiff.artifacts as A
    from histodiff import cli
    mode, n = os.environ.get('HD_MODE', ''), [0]
    orig = dict(A.BASELINES)   # the classical restorers of histodiff.restorers call these, one image at a time
    def counted(name):
        def restore(image, mask, **kw):
            n[0] += 1
            if mode == 'interrupt' and n[0] > int(os.environ.get('HD_AFTER', 3)): raise KeyboardInterrupt
            return orig[name](image, mask, **kw)
        return restore
    A.BASELINES.update({k: counted(k) for k in orig})
    if mode == 'hang_writing':
        write = tifffile.TiffWriter.write
        def slow(self, *a, **k):
            r = write(self, *a, **k)
            # the output, not a check in memory
            if self._fh.path.endswith('.tif'): print('WRITING', flush=True); time.sleep(60)
            return r
        tifffile.TiffWriter.write = slow
    sys.exit(cli.main(sys.argv[1:]))
''')


def run_sub(tmp, args, mode='', after=3, **kw):
    (tmp / 'runner.py').write_text(RUNNER)
    env = dict(os.environ, HD_MODE=mode, HD_AFTER=str(after), OMP_NUM_THREADS='1')
    return subprocess.Popen(
        [sys.executable, str(tmp / 'runner.py'), *map(str, args)],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_resume_refuses_other_settings(slide):
    """(1) an interrupted telea run, then navier_stokes on the same --out: refused naming the method; --no-resume
    restarts."""
    base = ['restore-slide', slide / 'slide.png', '--mask', slide / 'mask.png', '--out', slide / 'out.tif', *SLIDE_ARGS]
    p = run_sub(slide, [*base, '--method', 'telea'], mode='interrupt')
    p.wait(60)
    assert p.returncode == 130 and not (slide / 'out.tif').exists()
    assert len(WorkFolder(slide / "out.tif").done()) == 2  # one batch of two was logged
    rc, _, err = cli(*base, '--method', 'navier_stokes')
    assert rc == 2 and "method: 'telea' -> 'navier_stokes'" in err and '--no-resume' in err, err
    assert not (slide / 'out.tif').exists() and len(WorkFolder(slide / "out.tif").done()) == 2  # nothing lost
    rc, _, err = cli(*base, '--method', 'telea', '--tile', 128)
    assert rc == 2 and 'tile: 64 -> 128' in err
    rc, _, _ = cli(*base, '--method', 'navier_stokes', '--no-resume')
    assert rc == 0 and leftovers(slide) == []
    fresh = slide / 'fresh'
    fresh.mkdir()
    rc, _, _ = cli(*base[:5], fresh / 'out.tif', *SLIDE_ARGS, '--method', 'navier_stokes')
    assert rc == 0 and (tifffile.imread(slide / 'out.tif') == tifffile.imread(fresh / 'out.tif')).all()


def test_resume_with_same_settings_gives_same_bytes(slide):
    "(1) the resumed telea run equals an uninterrupted one."
    base = [
        'restore-slide',
        slide / 'slide.png',
        '--mask',
        slide / 'mask.png',
        '--out',
        slide / 'out.tif',
        *SLIDE_ARGS,
        '--method',
        'telea',
    ]
    p = run_sub(slide, base, mode='interrupt')
    p.wait(60)
    assert p.returncode == 130
    rc, out, _ = cli(*base[:-1] + ['telea'])
    assert rc == 0
    ref = slide / 'ref'
    ref.mkdir()
    assert cli(*base[:5], ref / 'out.tif', *base[6:])[0] == 0
    assert (tifffile.imread(slide / 'out.tif') == tifffile.imread(ref / 'out.tif')).all()


def test_concurrent_run_is_refused(slide):
    "(2) a second run on an --out whose lock another process holds fails at once, naming that pid."
    code = (
        "from histodiff.wsi import output_lock\nimport time\n"
        f"with output_lock({str(slide / 'out.tif')!r}):\n    print('held', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        rc, _, err = cli(
            'restore-slide',
            slide / 'slide.png',
            '--mask',
            slide / 'mask.png',
            '--out',
            slide / 'out.tif',
            '--method',
            'telea',
            *SLIDE_ARGS,
        )
        assert rc == 2 and f'pid {holder.pid}' in err and 'another histodiff run' in err, err
        assert leftovers(slide) == [] and not (slide / 'out.tif').exists()
    finally:
        holder.kill()
        holder.wait()
    assert (
        cli(
            'restore-slide',
            slide / 'slide.png',
            '--mask',
            slide / 'mask.png',
            '--out',
            slide / 'out.tif',
            '--method',
            'telea',
            *SLIDE_ARGS,
        )[0]
        == 0
    )  # the lock dies with its holder


def test_damaged_slide_tile_is_a_clear_error(tmp_path):
    "(4) a tiled TIFF whose tile data is garbled: OpenSlide opens it, reading fails; one line naming the slide."
    img = tissue(512, 512)
    tifffile.imwrite(tmp_path / 'slide.tif', img, tile=(128, 128), compression='jpeg', photometric='rgb')
    tf = tifffile.TiffFile(tmp_path / 'slide.tif')
    off, cnt = tf.pages[0].dataoffsets, tf.pages[0].databytecounts
    tf.close()
    raw = bytearray((tmp_path / 'slide.tif').read_bytes())
    for o, c in zip(off, cnt):
        raw[o + 2 : o + c] = np.random.default_rng(0).bytes(c - 2)  # keep the SOI marker only
    (tmp_path / 'slide.tif').write_bytes(bytes(raw))
    m = np.zeros((512, 512), bool)
    m[100:140, 100:140] = True
    write_mask(m, tmp_path / 'mask.png')
    rc, _, err = cli(
        'restore-slide',
        tmp_path / 'slide.tif',
        '--mask',
        tmp_path / 'mask.png',
        '--out',
        tmp_path / 'out.tif',
        '--method',
        'telea',
        '-q',
    )
    assert rc == 2 and err.startswith('histodiff: error: ') and 'slide.tif' in err and 'Traceback' not in err, err
    assert not (tmp_path / 'out.tif').exists()


def test_options_are_checked_before_any_work(slide, monkeypatch):
    "(4, 14) a compression that cannot be written and --batch-size 0 fail before a tile is read; no work folder."
    import histodiff.wsi as W

    calls = []
    monkeypatch.setattr(W.SlideSource, 'read', lambda self, *a: calls.append(a))
    base = [
        'restore-slide',
        slide / 'slide.png',
        '--mask',
        slide / 'mask.png',
        '--out',
        slide / 'out.tif',
        '--method',
        'telea',
        '-q',
    ]
    rc, _, err = cli(*base, '--compression', 'gif')
    assert rc == 2 and "compression 'gif'" in err, err
    rc, _, err = cli(*base, '--batch-size', 0)
    assert rc == 2 and 'argument --batch-size: must be at least 1, got 0' in err, err
    assert calls == [] and leftovers(slide) == []


def test_jpeg_compressed_output(slide):
    "(4) --compression jpeg writes (imagecodecs), it does not fail with KeyError after the restoration."
    rc, _, err = cli(
        'restore-slide',
        slide / 'slide.png',
        '--mask',
        slide / 'mask.png',
        '--out',
        slide / 'out.tif',
        '--method',
        'telea',
        '--compression',
        'jpeg',
        *SLIDE_ARGS,
    )
    assert rc == 0, err
    with tifffile.TiffFile(slide / 'out.tif') as tf:
        assert tf.pages[0].compression == 7  # JPEG


def test_damaged_meta_is_named_and_no_resume_starts_clean(slide):
    "(7) a cut meta.json: the error names it; --no-resume starts clean."
    base = [
        'restore-slide',
        slide / 'slide.png',
        '--mask',
        slide / 'mask.png',
        '--out',
        slide / 'out.tif',
        '--method',
        'telea',
        *SLIDE_ARGS,
    ]
    work = WorkFolder(slide / 'out.tif')
    work.path.mkdir()
    work.meta_path.write_text('{"source": "/x", "lev')
    rc, _, err = cli(*base)
    assert rc == 2 and 'out.tif.work/meta.json is damaged' in err and '--no-resume' in err, err
    assert cli(*base, '--no-resume')[0] == 0 and leftovers(slide) == []


def test_meta_cut_while_written_does_not_block(slide, monkeypatch):
    "(7) a run killed while it writes meta.json (here: half the text, then an interrupt) does not block the next run."
    import pathlib

    real = pathlib.Path.write_text

    def cut(self, text, *a, **k):
        if self.suffix == '.json':
            real(self, text[: len(text) // 2])
            raise KeyboardInterrupt
        return real(self, text, *a, **k)

    monkeypatch.setattr(pathlib.Path, 'write_text', cut)
    with pytest.raises(KeyboardInterrupt):
        restore_slide(slide / 'slide.png', slide / 'out.tif', lambda i, m: i, mask=art_mask(), tile=64, progress=False)
    monkeypatch.setattr(pathlib.Path, 'write_text', real)
    s = restore_slide(slide / 'slide.png', slide / 'out.tif', lambda i, m: i, mask=art_mask(), tile=64, progress=False)
    assert s['restored'] > 0 and leftovers(slide) == []


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGKILL])
def test_killed_while_writing_leaves_no_temporary(slide, sig):
    "(8) SIGTERM while the TIFF is written: the temporary is removed; after SIGKILL the next run removes it."
    base = [
        'restore-slide',
        slide / 'slide.png',
        '--mask',
        slide / 'mask.png',
        '--out',
        slide / 'out.tif',
        '--method',
        'telea',
        *SLIDE_ARGS,
    ]
    p = run_sub(slide, base, mode='hang_writing')
    assert p.stdout.readline().strip() == 'WRITING'
    p.send_signal(sig)
    p.wait(30)
    tmps = [n for n in os.listdir(slide) if n.startswith('.out.') and '.tmp' in n]
    if sig == signal.SIGTERM:
        assert p.returncode == 130 and tmps == [], (p.returncode, tmps, p.stderr.read())
    else:
        assert len(tmps) == 1
    assert not (slide / 'out.tif').exists()
    assert cli(*base)[0] == 0
    assert leftovers(slide) == [] and (slide / 'out.tif').exists()


@pytest.mark.parametrize('compression', ['lzw', 'jpeg'])
def test_compressed_plain_tiff_is_read(tmp_path, compression):
    "(9) an LZW or JPEG plain (stripped) TIFF, which OpenSlide refuses, is read like `restore` reads it."
    img = tissue()
    tifffile.imwrite(tmp_path / 'slide.tif', img, compression=compression, photometric='rgb')
    write_mask(art_mask(), tmp_path / 'mask.png')
    rc, _, err = cli(
        'restore-slide',
        tmp_path / 'slide.tif',
        '--mask',
        tmp_path / 'mask.png',
        '--out',
        tmp_path / 'out.tif',
        '--method',
        'telea',
        *SLIDE_ARGS,
    )
    assert rc == 0, err
    assert tifffile.imread(tmp_path / 'out.tif').shape == img.shape


def test_empty_mask_is_a_note_everywhere(slide):
    "(12) restore and restore-slide with an all-zero mask: output = input, a note on stderr, status 0."
    write_mask(np.zeros((200, 260), bool), slide / 'empty.png')
    for method in ('telea', 'biharmonic', 'latent'):  # latent: no model is needed to copy
        rc, _, err = cli(
            'restore',
            slide / 'slide.png',
            '--mask',
            slide / 'empty.png',
            '--out',
            slide / f'{method}.png',
            '--method',
            method,
        )
        assert rc == 0 and err.startswith('histodiff: note: ') and 'no artifact pixel' in err, err
        assert (read_image(slide / f'{method}.png') == read_image(slide / 'slide.png')).all()
    rc, _, err = cli(
        'restore-slide',
        slide / 'slide.png',
        '--mask',
        slide / 'empty.png',
        '--out',
        slide / 'out.tif',
        '--method',
        'telea',
        *SLIDE_ARGS,
    )
    assert rc == 0 and 'histodiff: note: ' in err and 'no artifact pixel' in err, err
    assert (tifffile.imread(slide / 'out.tif') == read_image(slide / 'slide.png')).all()


def test_rejected_mask_leaves_no_work_folder(slide):
    "(14) a mask with grey values is refused before any work folder is made."
    write_image(np.full((200, 260, 3), 128, np.uint8), slide / 'grey.png')
    rc, _, err = cli(
        'restore-slide',
        slide / 'slide.png',
        '--mask',
        slide / 'grey.png',
        '--out',
        slide / 'out.tif',
        '--method',
        'telea',
        *SLIDE_ARGS,
    )
    assert rc == 2 and 'values' in err, err
    assert leftovers(slide) == []


def test_restore_refuses_unknown_output_suffix_before_work(slide, monkeypatch):
    "(14) --out x.xyz is refused, naming the usable suffixes, before the restorer runs."
    import histodiff.artifacts as A

    monkeypatch.setattr(A, 'restore', lambda *a, **k: pytest.fail('restored before checking --out'))
    rc, _, err = cli(
        'restore', slide / 'slide.png', '--mask', slide / 'mask.png', '--out', slide / 'x.xyz', '--method', 'telea'
    )
    assert rc == 2 and '.xyz' in err and '.png' in err, err
    assert not list(slide.glob('*.xyz')) and not list(slide.glob('.x*'))


def test_several_slides_resume_slide_by_slide(slide):
    """(issue 14) a folder of slides and a folder of masks; interrupted in the second slide, the rerun skips the first
    and resumes the second."""
    (slide / 'in').mkdir()
    (slide / 'masks').mkdir()
    one = np.zeros((200, 260), bool)
    one[10:20, 10:20] = True  # one tile: one restorer call
    for name, m in (('s1', one), ('s2', art_mask())):
        (slide / 'in' / f'{name}.png').write_bytes((slide / 'slide.png').read_bytes())
        write_mask(m, slide / 'masks' / f'{name}.png')
    base = [
        'restore-slide',
        slide / 'in',
        '--mask',
        slide / 'masks',
        '--out',
        slide / 'out',
        '--method',
        'telea',
        *SLIDE_ARGS,
    ]
    p = run_sub(slide, base, mode='interrupt', after=3)
    p.wait(60)
    assert p.returncode == 130 and (slide / 'out' / 's1.tif').exists() and not (slide / 'out' / 's2.tif').exists()
    assert len(WorkFolder(slide / 'out' / 's2.tif').done()) == 2
    rc, _, err = cli(*base)
    assert rc == 0 and 's1.png skipped' in err, err
    for name in ('s1', 's2'):
        ref = slide / f'ref_{name}.tif'
        assert (
            cli(
                'restore-slide',
                slide / 'in' / f'{name}.png',
                '--mask',
                slide / 'masks' / f'{name}.png',
                '--out',
                ref,
                '--method',
                'telea',
                *SLIDE_ARGS,
            )[0]
            == 0
        )
        assert (tifffile.imread(ref) == tifffile.imread(slide / 'out' / f'{name}.tif')).all()
    assert sorted(p.name for p in (slide / 'out').iterdir() if not p.name.endswith('.lock')) == ['s1.tif', 's2.tif']


def test_one_bad_slide_does_not_stop_the_others(slide):
    "(issue 14) a corrupt slide among good ones: the others are restored, the bad one named, status 2."
    (slide / 'in').mkdir()
    (slide / 'in' / 'a.png').write_bytes((slide / 'slide.png').read_bytes())
    (slide / 'in' / 'b.svs').write_bytes(np.random.default_rng(0).bytes(4000))
    rc, _, err = cli(
        'restore-slide',
        slide / 'in',
        '--detector',
        slide / 'nothing',
        '--out',
        slide / 'out',
        '--method',
        'telea',
        '-q',
    )
    assert rc == 2 and 'detector folder not found' in err  # checked before any slide
    masks = slide / 'masks'
    masks.mkdir()
    write_mask(art_mask(), masks / 'a.png')
    write_mask(art_mask(), masks / 'b.png')
    rc, _, err = cli(
        'restore-slide', slide / 'in', '--mask', masks, '--out', slide / 'out', '--method', 'telea', *SLIDE_ARGS
    )
    assert rc == 2 and 'b.svs' in err and '1 of 2 slides failed' in err, err
    assert (slide / 'out' / 'a.tif').exists() and not (slide / 'out' / 'b.tif').exists()


# Issue 25, item 2: an output never replaces an input (image, mask, model), through symbolic and hard links too
def test_restore_refuses_to_write_over_its_inputs(slide):
    img, mask = slide / 'slide.png', slide / 'mask.png'
    before = {p: p.read_bytes() for p in (img, mask)}
    (slide / 'link.png').symlink_to(img)
    os.link(mask, slide / 'hard.png')
    for out in (img, mask, slide / 'link.png', slide / 'hard.png', slide / '.' / 'slide.png'):
        rc, _, err = cli('restore', img, '--mask', mask, '--out', out, '--method', 'telea', '-q')
        assert rc == 2 and 'is the input' in err and str(out) in err, (out, err)
    assert {p: p.read_bytes() for p in (img, mask)} == before
    rc, _, err = cli('restore', img, '--mask', mask, '--out', slide / 'restored.png', '--method', 'telea', '-q')
    assert rc == 0 and (slide / 'restored.png').is_file(), err


def test_restore_slide_refuses_to_write_over_its_inputs(slide):
    write_mask(art_mask(), slide / 'm.tif')
    before = (slide / 'm.tif').read_bytes()
    base = ['restore-slide', slide / 'slide.png', *SLIDE_ARGS, '--method', 'telea', '--overwrite']
    rc, _, err = cli(*base, '--mask', slide / 'm.tif', '--out', slide / 'm.tif')
    assert rc == 2 and 'is the input' in err and str(slide / 'm.tif') in err, err
    assert (slide / 'm.tif').read_bytes() == before and leftovers(slide, 'm') == []


def test_stain_and_sfs_refuse_to_write_over_their_inputs(slide):
    he = slide / 'slide.png'
    before = he.read_bytes()
    rc, _, err = cli('stain', he, '--out', he, '--model', slide / 'no_model', '-q')
    assert rc == 2 and 'is the input' in err and he.read_bytes() == before, err
    (slide / 'labels.csv').write_text('name,label\nslide.png,0\n')
    sfs = ['sfs', '--real', slide, '--generated', slide, '--classifier', slide / 'no_classifier', '-q']
    rc, _, err = cli(*sfs, '--labels', slide / 'labels.csv', '--json', slide / 'labels.csv')
    assert rc == 2 and 'is the input' in err and (slide / 'labels.csv').read_text().startswith('name,label'), err


# Issue 25, item 3: a disk too full for the work files is a clear error (exit 2), not a SIGBUS; the next run recovers
def test_full_disk_is_a_clear_error_and_the_next_run_recovers(slide, monkeypatch):
    import errno, shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: real(p)._replace(free=1 << 20))
    base = ['restore-slide', slide / 'slide.png', '--mask', slide / 'mask.png', '--out', slide / 'out.tif']
    rc, _, err = cli(*base, *SLIDE_ARGS, '--method', 'telea')
    assert rc == 2 and 'not enough disk space in' in err and 'MiB needed, 1 MiB free' in err, err
    assert not (slide / 'out.tif').exists() and leftovers(slide) == [] and not (slide / '.out.tif.lock').exists()
    monkeypatch.setattr(shutil, 'disk_usage', real)
    rc, _, err = cli(*base, *SLIDE_ARGS, '--method', 'telea')
    assert rc == 0 and (slide / 'out.tif').is_file() and leftovers(slide) == [], err

    from histodiff.wsi import reserve_blocks, work_memmap

    def fallocate(errno_):  # the free-space check passed, then the disk filled up (or cannot reserve at all)
        def f(fd, offset, length):
            raise OSError(errno_, os.strerror(errno_))

        return f

    monkeypatch.setattr(os, 'posix_fallocate', fallocate(errno.ENOSPC), raising=False)
    with pytest.raises(OSError, match='not enough disk space') as e:
        work_memmap(slide / 'w.npy', np.uint8, (64, 64, 3))
    assert e.value.errno == errno.ENOSPC and not (slide / 'w.npy').exists()
    np.lib.format.open_memmap(slide / 'old.npy', 'w+', np.uint8, (64, 64, 3)).flush()  # sparse, as older runs left
    with pytest.raises(OSError, match='not enough disk space'):
        reserve_blocks(slide / 'old.npy')
    monkeypatch.setattr(os, 'posix_fallocate', fallocate(errno.EOPNOTSUPP), raising=False)
    assert work_memmap(slide / 'w.npy', np.uint8, (64, 64, 3)).shape == (64, 64, 3)
