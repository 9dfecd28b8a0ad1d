"""More open tissue (SPEC 6, issue 12): the sdist registry's hashes, sources of several images split by image, blank
tiles dropped, and the staining pairs of both IHC fields split by region."""

import os
from pathlib import Path

import numpy as np
import pytest

import histodiff.data as data
from histodiff.core import sha256sum
from histodiff.sources import SDIST_SOURCES, default_cache_dir, demo_cache_files, fetch_demo_data, _find_dist
from histodiff.data import split_columns, split_images, image_tiles, tissue_fraction, demo_staining_pairs

SDIST_DIRS = [Path(p) for p in (os.environ.get('HISTODIFF_DIST_DIR', ''), '/tmp/sd') if p]


def _tissue(rng, h=64, w=64):
    "A saturated pink-purple field: tissue for `tissue_fraction`."
    return np.stack(
        [rng.integers(150, 220, (h, w)), rng.integers(60, 120, (h, w)), rng.integers(150, 220, (h, w))], -1
    ).astype(np.uint8)


@pytest.mark.parametrize('name', list(SDIST_SOURCES))
def test_registry_sha256_of_the_real_files(name, tmp_path):
    "Each registered file, from the demo cache or read out of a local copy of its sdist, has the registry's sha256."
    spec = SDIST_SOURCES[name]
    cached = demo_cache_files(name, default_cache_dir() / 'demo')
    if all(p.exists() for p in cached):
        for p, h in cached.items():
            assert sha256sum(p) == h, p
        return
    folder = next(
        (d for d in SDIST_DIRS if d.is_dir() and _find_dist(d, spec['package'], spec['version'], 'sdist')), None
    )
    if folder is None:
        pytest.skip(f"no local {spec['package']}=={spec['version']} sdist nor cached files")
    got = fetch_demo_data(tmp_path, names=[name], sdist_dir=folder)[name]  # refuses any file whose hash differs
    files = demo_cache_files(name, tmp_path)
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in files)
    for p, h in files.items():
        assert sha256sum(p) == h, p


def test_sources_of_several_images_are_split_by_image():
    "Whole images go to test: no tile of a test image in training; a group of overlapping images stays on one side."
    rng = np.random.default_rng(1)
    images = {f'{i}.png': _tissue(rng) for i in range(7)} | {
        'tissue-level0-a.png': _tissue(rng),
        'tissue-level2-b.png': _tissue(rng),
    }
    tr, o_tr = image_tiles(images, 'train', tile=32, test_fraction=0.3, groups=['tissue-level'])
    te, o_te = image_tiles(images, 'test', tile=32, test_fraction=0.3, groups=['tissue-level'])
    assert o_tr and o_te and not set(o_tr) & set(o_te)
    assert {'tissue-level0-a.png', 'tissue-level2-b.png'} <= set(o_tr) or {
        'tissue-level0-a.png',
        'tissue-level2-b.png',
    } <= set(o_te)
    assert len(set(o_tr)) + len(set(o_te)) == len(images)
    for t, name in zip(te, o_te):  # each test tile is a crop of its own (test) image
        assert any((images[name][y : y + 32, x : x + 32] == t).all() for y in (0, 32) for x in (0, 32))
    # the registry's sources of several images: histolab's overlapping tissue tiles stay together,
    # HistoQC holds out a template
    tc = SDIST_SOURCES['tcga']
    side = split_images([m for m in tc['files'] if m not in tc['exclude']], groups=list(tc['groups']))
    assert len({v for k, v in side.items() if Path(k).name.startswith('tissue-level')}) == 1
    assert set(side.values()) == {'train', 'test'}
    assert list(split_images(list(SDIST_SOURCES['histoqc']['files'])).values()).count('test') == 1


def test_blank_tiles_are_dropped():
    "Blank images and the glass of partly blank images give no tiles; every kept tile passes the tissue test."
    rng = np.random.default_rng(2)
    half = _tissue(rng)
    half[:, 32:] = 240
    images = {
        'a.png': _tissue(rng),
        'b.png': _tissue(rng),
        'blank.png': np.full((64, 64, 3), 245, np.uint8),
        'half.png': half,
    }
    tiles, origin = zip(*[(t, o) for s in ('train', 'test') for t, o in zip(*image_tiles(images, s, tile=32))])
    assert 'blank.png' not in origin and origin.count('half.png') == 2 and len(tiles) == 4 + 4 + 2
    assert all(tissue_fraction(t) >= 0.5 for t in tiles)


def test_staining_pairs_of_both_ihc_fields_are_split_by_region(monkeypatch):
    "Both IHC fields give pairs, each field split by columns: train tiles left of its boundary, test tiles right of it."
    fields = {}
    for name, w in (('ihc', 512), ('sana', 1073)):  # column index written in the red channel: where each tile came from
        img = np.zeros((256, w, 3), np.uint8)
        img[..., 0] = (np.arange(w) * 255 // (w - 1))[None]
        img[..., 1] = 40
        img[..., 2] = 140
        fields[name] = img
    monkeypatch.setattr(data, 'demo_images', lambda source, cache_dir=None: {f'{source}.png': fields[source]})
    for split in ('train', 'test'):
        p = demo_staining_pairs(split, tile=64, sources=('ihc', 'sana'))
        assert {'ihc', 'sana'} == set(p['source'].tolist()) and len(p['he']) == len(p['ihc']) == len(p['label'])
        for name, w in (('ihc', 512), ('sana', 1073)):
            cols = p['ihc'][p['source'] == name][..., 0].astype(int) * (w - 1) / 255
            b, tol = split_columns(w), (w - 1) / 255 + 1  # tol: the red channel's quantisation
            assert (cols.max() <= b + tol) if split == 'train' else (cols.min() >= b - tol)
    assert (p['source'] == 'sana').sum() < 2 * (p['source'] == 'ihc').sum() * 1073 / 512  # sana at a one-tile stride


def test_staining_pairs_of_the_real_fields():
    "With the real fields (cached or from a local sdist): pairs from both, in both splits."
    folder = next((d for d in SDIST_DIRS if d.is_dir() and _find_dist(d, 'pdnl-sana', '1.0.7', 'sdist')), None)
    if folder is None and not all(p.exists() for p in demo_cache_files('sana', default_cache_dir() / 'demo')):
        pytest.skip('no local pdnl-sana sdist nor cached example.tif')
    fetch_demo_data(names=['ihc', 'sana'], sdist_dir=folder)
    for split in ('train', 'test'):
        p = demo_staining_pairs(split, tile=64, sources=('ihc', 'sana'))
        assert (p['source'] == 'ihc').sum() > 0 and (p['source'] == 'sana').sum() > 0
