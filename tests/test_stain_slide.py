"""Whole-slide virtual staining and cohorts (SPEC 9, issue 24 items 1 and 3): the bytes of `stain-slide` do not depend
on the batch size, and two processes (`torchrun`, as `accelerate launch` starts them) write the same bytes as one, for
a folder of slides (split between the processes) and for one slide (its tiles split); `restore-slide` too."""

import os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def tissue_tiff(path, seed, h=48, w=64):
    "A small one-level TIFF at 0.5 um/px: white glass, random H&E-like tissue on its right two thirds."
    from histodiff.wsi import write_pyramid

    img = np.full((h, w, 3), 245, np.uint8)
    rng = np.random.default_rng(seed)
    img[:, w // 3 :] = rng.integers((170, 80, 140), (220, 140, 200), (h, w - w // 3, 3), dtype=np.uint8)
    return write_pyramid(img, path, 0.5, tile=16)


@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
    "Three slides, their masks (for restore-slide), a tiny random Star-Diff on 16 px tiles, saved."
    import torch
    from histodiff.core import write_mask
    from histodiff.stardiff import StarDiffModel, StarDiffPipeline, unet_config

    root = tmp_path_factory.mktemp('cohort')
    for i in range(3):
        tissue_tiff(root / 'slides' / f's{i}.tif', i)
        m = np.zeros((48, 64), bool)
        m[10 + 5 * i : 30, 20:40] = True
        write_mask(m, root / 'masks' / f's{i}.png')
    torch.manual_seed(0)
    StarDiffPipeline(StarDiffModel(3, unet_config(16, (16, 32), 1, 8, attention=False))).save_pretrained(root / 'sd')
    return root


def stain_args(root):
    return ['--model', root / 'sd', '--steps', '2', '--batch-size', '3', '-q', '--device', 'cpu']


def one_process(*argv) -> int:
    from histodiff.cli import main

    return main([str(a) for a in argv])


def two_processes(*argv) -> subprocess.CompletedProcess:
    "The command in two CPU processes, started as `accelerate launch` starts them (torch.distributed.run)."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    return subprocess.run(
        [*cmd, '-m', 'histodiff.cli', *map(str, argv)], env=env, capture_output=True, text=True, timeout=240
    )


def test_batch_size_changes_no_byte(cohort, tmp_path):
    from histodiff.stainslide import stain_slide
    from histodiff.stardiff import StarDiffPipeline

    pipe = StarDiffPipeline.from_pretrained(cohort / 'sd')
    for b in (1, 3):
        stain_slide(cohort / 'slides' / 's0.tif', tmp_path / f'b{b}.tif', pipe, steps=2, batch_size=b, progress=False)
    assert (tmp_path / 'b1.tif').read_bytes() == (tmp_path / 'b3.tif').read_bytes()


def test_two_processes_stain_a_folder_as_one_does(cohort, tmp_path):
    assert one_process('stain-slide', cohort / 'slides', '--out', tmp_path / 'one', *stain_args(cohort)) == 0
    res = two_processes('stain-slide', cohort / 'slides', '--out', tmp_path / 'two', *stain_args(cohort))
    assert res.returncode == 0, res.stderr[-3000:]
    for i in range(3):
        for name in (f's{i}.tif', f's{i}.thumb.png'):
            assert (tmp_path / 'two' / name).read_bytes() == (tmp_path / 'one' / name).read_bytes(), name
    assert not list((tmp_path / 'two').glob('.*')), 'a lock, work folder or temporary was left'


def test_two_processes_share_one_slides_tiles(cohort, tmp_path):
    slide = cohort / 'slides' / 's1.tif'
    assert one_process('stain-slide', slide, '--out', tmp_path / 'one.tif', *stain_args(cohort)) == 0
    res = two_processes('stain-slide', slide, '--out', tmp_path / 'two.tif', *stain_args(cohort))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / 'two.tif').read_bytes() == (tmp_path / 'one.tif').read_bytes()


def test_two_processes_restore_a_folder_as_one_does(cohort, tmp_path):
    args = ['--mask', cohort / 'masks', '--method', 'telea', '--tile', '32', '--overlap', '8', '-q']
    assert one_process('restore-slide', cohort / 'slides', '--out', tmp_path / 'one', *args) == 0
    res = two_processes('restore-slide', cohort / 'slides', '--out', tmp_path / 'two', *args)
    assert res.returncode == 0, res.stderr[-3000:]
    for i in range(3):
        assert (tmp_path / 'two' / f's{i}.tif').read_bytes() == (tmp_path / 'one' / f's{i}.tif').read_bytes()


def test_a_failed_slide_is_named_and_the_others_go_on(cohort, tmp_path, capsys):
    import shutil

    shutil.copytree(cohort / 'slides', tmp_path / 'slides')
    (tmp_path / 'slides' / 'broken.tif').write_bytes(b'not a slide')
    assert one_process('stain-slide', tmp_path / 'slides', '--out', tmp_path / 'out', *stain_args(cohort)) == 2
    err = capsys.readouterr().err
    assert 'broken.tif' in err and '1 of 4 slides failed' in err and 'Traceback' not in err, err
    assert sorted(p.name for p in (tmp_path / 'out').glob('*.tif')) == ['s0.tif', 's1.tif', 's2.tif']


def test_bad_input_is_refused_and_leaves_nothing(cohort, tmp_path, capsys):
    s0 = cohort / 'slides' / 's0.tif'
    cases = [
        ([s0, '--out', tmp_path / 'x.tif', '--level', '3'], 'has levels 0..0, not 3'),
        ([s0, s0, '--out', tmp_path / 'xs'], 'would both be written'),
    ]
    (tmp_path / 'taken.tif').write_bytes(b'somebody else')
    cases.append(([s0, '--out', tmp_path / 'taken.tif'], 'not this run'))
    for argv, msg in cases:
        assert one_process('stain-slide', *argv, *stain_args(cohort)) == 2
        err = capsys.readouterr().err
        assert msg in err and 'Traceback' not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['taken.tif']
    assert (tmp_path / 'taken.tif').read_bytes() == b'somebody else'
    assert one_process('stain-slide', s0, '--out', tmp_path / 'taken.tif', '--overwrite', *stain_args(cohort)) == 0


def test_a_slide_without_tissue_gives_white_and_a_note(cohort, tmp_path, capsys):
    import tifffile
    from histodiff.wsi import write_pyramid

    write_pyramid(np.full((48, 64, 3), 245, np.uint8), tmp_path / 'glass.tif', 0.5, tile=16)
    assert one_process('stain-slide', tmp_path / 'glass.tif', '--out', tmp_path / 'o.tif', *stain_args(cohort)) == 0
    assert 'histodiff: note:' in capsys.readouterr().err
    assert (tifffile.imread(tmp_path / 'o.tif') == 255).all()


def test_an_ihc_slide_given_as_he_is_warned(cohort, tmp_path, capsys):
    from histodiff.data import demo_images
    from histodiff.wsi import write_pyramid

    ihc = next(iter(demo_images('ihc').values()))[:64, :64]  # scikit-image's IHC field: DAB, no eosin
    write_pyramid(ihc, tmp_path / 'ihc.tif', 0.5, tile=16)
    assert one_process('stain-slide', tmp_path / 'ihc.tif', '--out', tmp_path / 'o.tif', *stain_args(cohort)) == 0
    assert 'looks stained for IHC' in capsys.readouterr().err
    assert (tmp_path / 'o.tif').exists()  # a warning: the user decides
