"""Issue 25: nothing a user owns is deleted or overwritten, no silent wrong result, no traceback. One test (or a few)
per item; tiny slides, classical restorers or tiny random models: seconds each."""

import json, os, subprocess, sys
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
