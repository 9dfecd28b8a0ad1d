"""The papers' releases on small local mirrors: download by path and by (stand-in) Drive id, find the named folders,
convert the released UNet, load it with a VAE and restore with it; hostile archives and pickles are refused without
writing outside the target folder; and nothing else in the project unpickles."""

import ast, io, json, os, re, shutil, stat, tarfile, zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from histodiff.archives import UnsafeArchiveError
from histodiff.sources import GDRIVE_RELEASES, DownloadRefused, check_images, download_gdrive, find_named_dir
from histodiff.release import convert_checkpoint, fetch_released_unet, load_weights, make_release_mirrors

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # tiny models: one thread is faster


@pytest.fixture(scope='module')
def mirrors(tmp_path_factory):
    "Small trees and zips shaped like the three releases of SPEC 6 (keys of GDRIVE_RELEASES)."
    return make_release_mirrors(tmp_path_factory.mktemp('releases') / 'mirrors')


@pytest.fixture(scope='module')
def vae(tmp_path_factory):
    "A tiny VAE with the SD-1.5 VAE's interface (4 latent channels, f = 8)."
    from histodiff.autoencoder import make_vae

    path = tmp_path_factory.mktemp('vae') / 'vae'
    make_vae('tiny').save_pretrained(path)
    return path


def test_download_by_path_finds_the_named_folders(mirrors, tmp_path):
    lat = download_gdrive(str(mirrors['latentartifusion_data']), tmp_path / 'latentartifusion')
    train = find_named_dir(lat, 'Training_data/trainB')
    assert check_images(train, min_count=4, size=256) == 4
    art = download_gdrive(
        str(mirrors['artifusion_data']), tmp_path / 'artifusion'
    )  # holds histology.zip: extracted in place
    assert check_images(find_named_dir(art, 'histology'), min_count=4, size=(256, 256)) == 4
    assert not list(art.rglob('*.zip'))
    (train.parent / 'trainB').rename(
        train.parent / 'clean_tiles'
    )  # the authors rename a folder: a clear stop, not another folder
    with pytest.raises(FileNotFoundError, match="no folder named 'Training_data/trainB'.*clean_tiles"):
        find_named_dir(lat, 'Training_data/trainB')
    with pytest.raises(Exception, match='expected at least 5'):
        check_images(find_named_dir(art, 'histology'), min_count=5)


def _stand_in_gdown(monkeypatch, mirrors, calls):
    "gdown.download / download_folder replaced by copies of the mirrors, keyed by the real Drive ids."
    import gdown

    by_id = {r['id']: mirrors[k] for k, r in GDRIVE_RELEASES.items()}

    def folder(id, output, quiet, resume):
        calls.append(('folder', id, resume))
        shutil.copytree(by_id[id], output, dirs_exist_ok=True)
        return [str(p) for p in Path(output).rglob('*') if p.is_file()]

    def file(id, output, quiet, resume):
        calls.append(('file', id, resume))
        shutil.copyfile(by_id[id], output)
        return output

    monkeypatch.setattr(gdown, 'download_folder', folder)
    monkeypatch.setattr(gdown, 'download', file)


def test_download_by_drive_id(mirrors, tmp_path, monkeypatch):
    calls = []
    _stand_in_gdown(monkeypatch, mirrors, calls)
    for key, release in GDRIVE_RELEASES.items():
        download_gdrive(release['id'], tmp_path / key, quiet=True)
    assert [(c[0], c[2]) for c in calls] == [(r['kind'], True) for r in GDRIVE_RELEASES.values()]  # by kind, resumed
    assert check_images(find_named_dir(tmp_path / 'latentartifusion_data', 'Training_data/trainB'), 4, 256) == 4
    assert (tmp_path / 'latentartifusion_unet' / 'unet' / 'diffusion_pytorch_model.bin').is_file()
    model = fetch_released_unet(
        tmp_path / 'models' / 'released', quiet=True
    )  # the default source: the released file id
    assert (model / 'unet' / 'diffusion_pytorch_model.safetensors').is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*GDRIVE_RELEASES, 'models'])  # no download left behind
    assert sorted(p.name for p in (tmp_path / 'models').iterdir()) == ['released']


@pytest.mark.parametrize(
    'said, advice',
    [
        ('Too many users have viewed or downloaded this file recently.', 'wait 24 h'),
        (
            "Cannot retrieve the public link of the file. "
            "You may need to change the permission to 'Anyone with the link'",
            "'anyone with the link'",
        ),
        ('Failed to retrieve folder contents for folder ID: x (status code 404).', 'renamed, moved or deleted'),
    ],
)
def test_drive_refusals_say_what_to_do(tmp_path, monkeypatch, said, advice):
    import gdown

    def refuse(*a, **k):
        raise gdown.exceptions.FileURLRetrievalError(said)

    monkeypatch.setattr(gdown, 'download', refuse)
    monkeypatch.setattr(gdown, 'download_folder', refuse)
    for key in ('latentartifusion_unet', 'artifusion_data'):
        with pytest.raises(DownloadRefused, match=re.escape(advice)) as e:
            download_gdrive(key, tmp_path / key)
        assert 'pass the local' in str(e.value) and not (tmp_path / key).exists()
        assert (tmp_path / f'.{key}.download').is_dir()  # kept: the next run resumes


def test_convert_load_and_restore_the_released_unet(mirrors, vae, tmp_path):
    from histodiff.artifacts import synthesize, restore
    from histodiff.core import read_image
    from histodiff.metrics import psnr
    from histodiff.regional import load_regional_pipeline

    model = convert_checkpoint(mirrors['latentartifusion_unet'], tmp_path / 'released')
    with zipfile.ZipFile(mirrors['latentartifusion_unet']) as z:
        z.extractall(tmp_path / 'src')
    ref = load_weights(tmp_path / 'src' / 'unet' / 'diffusion_pytorch_model.bin')
    got = load_weights(model / 'unet' / 'diffusion_pytorch_model.safetensors')
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    pipe = load_regional_pipeline(model, vae=vae)
    art = download_gdrive(str(mirrors['artifusion_data']), tmp_path / 'artifusion')
    clean = read_image(sorted(find_named_dir(art, 'histology').glob('*.png'))[0])
    damaged, mask = synthesize(clean, 'ink', 0)
    outs = {
        keep: pipe.restore(damaged, mask, num_inference_steps=2, generator=0, keep=keep)
        for keep in ('diffused', 'clean')
    }
    outs.update({m: restore(damaged, mask, method=m) for m in ('telea', 'navier_stokes', 'biharmonic')})
    for name, out in outs.items():
        assert out.shape == clean.shape and out.dtype == np.uint8, name
        assert np.isfinite(psnr(out, clean)), name


def test_cli_convert_checkpoint(mirrors, tmp_path, capsys):
    from histodiff.cli import main

    assert main(['convert-checkpoint', str(mirrors['latentartifusion_unet']), str(tmp_path / 'released'), '-q']) == 0
    assert (tmp_path / 'released' / 'scheduler' / 'scheduler_config.json').is_file()
    assert main(['convert-checkpoint', str(mirrors['artifusion_data']), str(tmp_path / 'nope')]) == 2
    assert 'histodiff: error: no diffusers UNet' in capsys.readouterr().err and not (tmp_path / 'nope').exists()


def _zip(path, name, link=False):
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('unet/config.json', '{"_class_name": "UNet2DModel"}')
        info = zipfile.ZipInfo(name)
        if link:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, '/etc/passwd' if link else 'evil')


def _tar(path, name, kind=tarfile.REGTYPE):
    with tarfile.open(path, 'w:gz') as t:
        ok = tarfile.TarInfo('unet/config.json')
        ok.size = 2
        t.addfile(ok, io.BytesIO(b'{}'))
        m = tarfile.TarInfo(name)
        m.type = kind
        if kind == tarfile.REGTYPE:
            m.size = 4
        else:
            m.linkname = '/etc/passwd'
        t.addfile(m, io.BytesIO(b'evil') if kind == tarfile.REGTYPE else None)


HOSTILE = {
    'zip ../x': (_zip, '../x', False),
    'zip absolute': (_zip, 'ABS', False),
    'zip symlink': (_zip, 'unet/link', True),
    'tar ../x': (_tar, '../x', tarfile.REGTYPE),
    'tar absolute': (_tar, 'ABS', tarfile.REGTYPE),
    'tar symlink': (_tar, 'unet/link', tarfile.SYMTYPE),
    'tar hardlink': (_tar, 'unet/hard', tarfile.LNKTYPE),
}


@pytest.mark.parametrize('case', HOSTILE)
def test_hostile_archive_is_refused_without_writing(case, tmp_path):
    make, name, extra = HOSTILE[case]
    work = tmp_path / 'work'
    work.mkdir()
    name = str(tmp_path / 'abs_target') if name == 'ABS' else name  # an absolute path of this test's own
    archive = work / ('release.zip' if make is _zip else 'release.tar.gz')
    make(archive, name, extra)
    before = sorted(tmp_path.rglob('*'))
    with pytest.raises(UnsafeArchiveError, match='nothing was extracted'):
        download_gdrive(str(archive), work / 'out')
    with pytest.raises(ValueError, match='nothing was extracted'):
        convert_checkpoint(archive, work / 'model')
    folder = work / 'drive_folder'
    folder.mkdir()
    shutil.copy(archive, folder)  # inside a downloaded folder too
    with pytest.raises(UnsafeArchiveError):
        download_gdrive(str(folder), work / 'out')
    shutil.rmtree(folder)
    assert sorted(tmp_path.rglob('*')) == before  # nothing written anywhere, not even the target folders
    assert not (tmp_path / 'x').exists() and not (tmp_path / 'abs_target').exists()


PICKLE_MODULES = {'pickle', 'cPickle', '_pickle', 'joblib', 'dill', 'cloudpickle', 'shelve'}
# Known unpickling outside histodiff.release, to be fixed by their owners; listed so the test says when one is fixed.
KNOWN: set = set()  # unpickling outside histodiff.release still to be fixed (none)


def _name(node) -> str:
    "The dotted name of a call's function, e.g. 'torch.load'."
    return (
        f'{_name(node.value)}.{node.attr}'
        if isinstance(node, ast.Attribute)
        else node.id
        if isinstance(node, ast.Name)
        else ''
    )


def _unpickles(tree) -> list[str]:
    """What in `tree` can unpickle: torch.load, pickle/joblib/dill loads, np.load(allow_pickle=True),
    weights_only=False, their imports."""
    hits = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            hits += [f'import {a.name}' for a in n.names if a.name.split('.')[0] in PICKLE_MODULES]
        if isinstance(n, ast.ImportFrom) and (n.module or '').split('.')[0] in PICKLE_MODULES:
            hits += [f'from {n.module} import {a.name}' for a in n.names if not a.name.endswith('Error')]
        if not isinstance(n, ast.Call):
            continue
        f, kw = _name(n.func), {k.arg: k.value for k in n.keywords}
        safe = isinstance(kw.get('weights_only'), ast.Constant) and kw['weights_only'].value is True
        if f.endswith('torch.load'):
            hits.append(f"{f}({'weights_only=True' if safe else '...'}) line {n.lineno}")
        elif f.split('.')[0] in PICKLE_MODULES and f.split('.')[-1] in ('load', 'loads', 'Unpickler'):
            hits.append(f'{f} line {n.lineno}')
        elif isinstance(kw.get('allow_pickle'), ast.Constant) and kw['allow_pickle'].value is True:
            hits.append(f'{f}(allow_pickle=True) line {n.lineno}')
        elif isinstance(kw.get('weights_only'), ast.Constant) and kw['weights_only'].value is False:
            hits.append(f'{f}(weights_only=False) line {n.lineno}')
    return hits


def _sources():
    "(path, syntax tree) of every Python source and notebook code cell of the project (shell and magic lines left out)."
    for p in sorted(
        [
            *ROOT.glob('histodiff/*.py'),
            *ROOT.glob('scripts/**/*.py'),
            *ROOT.glob('benchmarks/**/*.py'),
            *ROOT.glob('tests/*.py'),
        ]
    ):
        yield p.relative_to(ROOT).as_posix(), ast.parse(p.read_text())
    for p in sorted(ROOT.glob('nbs/**/*.ipynb')):
        if '.ipynb_checkpoints' in p.parts:
            continue
        for c in json.loads(p.read_text())['cells']:
            if c['cell_type'] == 'code':
                code = ''.join(c['source'])
                lines = [
                    l[: len(l) - len(l.lstrip())] + 'pass' if l.lstrip().startswith(('!', '%')) else l
                    for l in code.splitlines()
                ]
                yield p.relative_to(ROOT).as_posix(), ast.parse('\n'.join(lines))


def test_nothing_else_unpickles():
    "Only histodiff.release unpickles (the released UNet), and only with torch.load(weights_only=True)."
    found = {}
    for path, tree in _sources():
        for hit in _unpickles(tree):
            if path in ('histodiff/release.py', 'nbs/14_release.ipynb') and hit.startswith(
                'torch.load(weights_only=True)'
            ):
                continue
            found.setdefault(path, []).append(hit)
    assert set(found) - KNOWN == set(), f'unpickling outside histodiff.release: {found}'
    assert KNOWN - set(found) == set(), f'{KNOWN - set(found)} no longer unpickles: remove it from KNOWN'
