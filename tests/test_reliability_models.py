"""Model folders and archives a hostile user can hand over: corrupt or truncated weights, garbage settings files, a
latent Star-Diff folder without its VAE, archives that would fill the disk. Each is refused with a ValueError (exit 2
on the command line) naming the file and the cause. Tiny models and archives: seconds on a CPU."""

import io, json, shutil, struct, tarfile, zipfile
import warnings

import numpy as np
import pytest
from PIL import Image

from histodiff import cli
from histodiff.autoencoder import make_vae, load_vae
from histodiff.modelfolder import ModelFolderError
from histodiff.archives import UnsafeArchiveError, _extract, _write_zip, extract_nested
from histodiff.sources import download_gdrive
from histodiff.detect import ArtifactDetector
from histodiff.sfs import build_classifier, ImageClassifier
from histodiff.stardiff import StarDiffModel, StarDiffPipeline, unet_config, latent_pipeline

warnings.filterwarnings('ignore', category=FutureWarning)
TINY = unet_config(16, (16, 32), 1, 8, attention=False)


def _truncate(f, keep=1000):
    f.write_bytes(f.read_bytes()[:keep])


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    "Pristine tiny model folders; each test copies the one it damages."
    d = tmp_path_factory.mktemp('saved')
    build_classifier('tiny', 4, ['0', '1+', '2+', '3+']).save_pretrained(d / 'clf')
    ArtifactDetector(block_out_channels=(16, 32), norm_num_groups=8, sample_size=32).save_pretrained(d / 'det')
    make_vae('tiny').save_pretrained(d / 'vae')
    StarDiffPipeline(StarDiffModel(3, TINY)).save_pretrained(d / 'pixel')
    latent_pipeline(StarDiffModel(4, TINY), make_vae('tiny')).save_pretrained(d / 'latent')
    return d


@pytest.fixture
def copy(saved, tmp_path):
    def _copy(name):
        shutil.copytree(saved / name, tmp_path / name)
        return tmp_path / name

    return _copy


# Defect 4: corrupt weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_classifier_with_corrupt_weights_names_the_file(copy, damage):
    clf = copy('clf')
    w = clf / 'model.safetensors'
    _truncate(w) if damage == 'truncate' else w.write_bytes(b'garbage' * 10)
    with pytest.raises(ValueError) as e:
        ImageClassifier.from_pretrained(clf)
    assert f'{w}: corrupt or truncated weights' in str(e.value) and 're-download or retrain' in str(e.value)


def test_sfs_command_with_corrupt_classifier_exits_2(copy, tmp_path, capsys):
    clf = copy('clf')
    _truncate(clf / 'model.safetensors')
    for sub in ('real', 'gen'):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / sub / '00001_test_2+.png')
    rc = cli.main(
        ['sfs', '--real', str(tmp_path / 'real'), '--generated', str(tmp_path / 'gen'), '--classifier', str(clf), '-q']
    )
    err = capsys.readouterr().err
    assert rc == 2 and 'histodiff: error:' in err and 'model.safetensors: corrupt or truncated weights' in err


def test_detector_with_corrupt_weights_names_the_file(copy):
    det = copy('det')
    w = det / 'unet' / 'diffusion_pytorch_model.safetensors'
    _truncate(w)
    with pytest.raises(ValueError, match='corrupt or truncated weights') as e:
        ArtifactDetector.from_pretrained(det)
    assert str(w) in str(e.value)


def test_stardiff_with_corrupt_weights_names_the_file(copy):
    p = copy('pixel')
    w = p / 'model' / 'residual_unet' / 'diffusion_pytorch_model.safetensors'
    _truncate(w)
    for load in (StarDiffPipeline.from_pretrained, lambda p: StarDiffModel.from_pretrained(p / 'model')):
        with pytest.raises(ValueError, match='corrupt or truncated weights') as e:
            load(p)
        assert str(w) in str(e.value)


def test_stardiff_model_config_garbage_names_the_file(copy):
    p = copy('pixel')
    f = p / 'model' / 'stardiff_config.json'
    f.write_text('{garbage')
    with pytest.raises(ValueError, match=f'{f} is not valid JSON'):
        StarDiffModel.from_pretrained(p / 'model')
    f.write_text(json.dumps(dict(channels=3, paths='both')))
    with pytest.raises(ValueError, match='missing setting'):
        StarDiffModel.from_pretrained(p / 'model')
    f.write_text(json.dumps(dict(channels=3, paths='sideways', loss='l1')))
    with pytest.raises(ValueError, match=f"{f}: paths must be one of"):
        StarDiffModel.from_pretrained(p / 'model')


# Defect 14: garbage detector.json, corrupt local VAE ------------------------------------------------------------


@pytest.mark.parametrize(
    'text, msg',
    [
        ('not json', 'detector.json is not valid JSON ('),
        ('[1, 2]', 'detector.json must hold a JSON object'),
        ('{"x": 1}', "unknown setting 'x'"),
        ('{"threshold": "high"}', "setting 'threshold' must be"),
        ('{"min_size": 1.5}', "setting 'min_size' must be int"),
        ('{"threshold": 7}', 'threshold must be in [0, 1]'),
    ],
)
def test_garbage_detector_json_names_the_file_and_cause(copy, text, msg):
    det = copy('det')
    (det / 'detector.json').write_text(text)
    with pytest.raises(ValueError) as e:
        ArtifactDetector.from_pretrained(det)
    assert msg in str(e.value) and str(det / 'detector.json') in str(e.value)


@pytest.mark.parametrize('damage', ['config', 'weights'])
def test_corrupt_local_vae_never_blames_the_hub(copy, damage):
    v = copy('vae')
    if damage == 'config':
        (v / 'config.json').write_text('garbage')
    else:
        _truncate(v / 'diffusion_pytorch_model.safetensors')
    with pytest.raises(ValueError) as e:
        load_vae(v)
    msg = str(e.value)
    assert 'hub' not in msg and 'offline' not in msg
    assert (
        f"{v / 'config.json'} is not valid JSON"
        if damage == 'config'
        else f"{v / 'diffusion_pytorch_model.safetensors'}: corrupt or truncated weights"
    ) in msg


# Defect 10: stardiff_pipeline.json is parsed and checked ---------------------------------------------------------


@pytest.mark.parametrize(
    'text, msg',
    [
        ('garbage', 'is not valid JSON'),
        ('{"latent": "no", "paths": "both"}', "'latent' must be bool"),
        ('{"latent": false, "paths": "both", "x": 1}', "unknown setting 'x'"),
        ('{"latent": false}', 'missing setting(s) paths'),
        ('{"latent": false, "paths": ["both"]}', "'paths' must be str"),
    ],
)
def test_garbage_pipeline_json_is_refused(copy, text, msg):
    p = copy('pixel')
    (p / 'stardiff_pipeline.json').write_text(text)
    with pytest.raises(ValueError, match='stardiff_pipeline.json') as e:
        StarDiffPipeline.from_pretrained(p)
    assert msg in str(e.value)


def test_latent_pipeline_without_vae_is_refused_at_load(copy, tmp_path, capsys):
    p = copy('latent')
    shutil.rmtree(p / 'vae')
    with pytest.raises(ValueError, match='stardiff_pipeline.json says latent but there is no vae/ folder'):
        StarDiffPipeline.from_pretrained(p)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / 'he.png')
    rc = cli.main(['stain', str(tmp_path / 'he.png'), '--out', str(tmp_path / 'o.png'), '--model', str(p), '-q'])
    assert rc == 2 and 'says latent but there is no vae/ folder' in capsys.readouterr().err


def test_pipeline_json_must_agree_with_the_model(copy, saved):
    p = copy('pixel')
    f = p / 'stardiff_pipeline.json'
    f.write_text(json.dumps(dict(latent=False, paths='noise')))
    with pytest.raises(ValueError, match="says paths='noise'.*'both'"):
        StarDiffPipeline.from_pretrained(p)
    f.write_text(json.dumps(dict(latent=True, paths='both')))
    with pytest.raises(ValueError, match='says latent but there is no vae/ folder'):
        StarDiffPipeline.from_pretrained(p)
    shutil.copytree(saved / 'vae', p / 'vae')  # a VAE whose latents have 4 channels, the model 3
    with pytest.raises(ValueError, match='channels'):
        StarDiffPipeline.from_pretrained(p)
    f.write_text(json.dumps(dict(latent=False, paths='both')))
    with pytest.raises(ValueError, match='says latent: false but holds a vae/ folder'):
        StarDiffPipeline.from_pretrained(p)
    assert StarDiffPipeline.from_pretrained(copy('latent')).vae is not None  # the good folders still load


# Archive size bombs ----------------------------------------------------------------------------------------------


def _zip(path, n=3, size=1000):
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as z:
        for i in range(n):
            z.writestr(f'd/{i}.bin', b'\0' * size)
    return path


def _tar(path, n=3, size=1000):
    with tarfile.open(path, 'w:gz') as t:
        for i in range(n):
            m = tarfile.TarInfo(f'd/{i}.bin')
            m.size = size
            t.addfile(m, io.BytesIO(b'\0' * size))
    return path


@pytest.mark.parametrize('make', [_zip, _tar])
def test_archive_over_the_size_limit_is_refused_before_writing(make, tmp_path):
    a = make(tmp_path / 'bomb.arc')
    with pytest.raises(UnsafeArchiveError, match='3.0 kB.*max_bytes') as e:
        _extract(a, tmp_path / 'out', max_bytes=2500)
    assert 'bomb.arc is refused and nothing was extracted' in str(e.value)
    assert not (tmp_path / 'out').exists()
    with pytest.raises(UnsafeArchiveError, match='3 members.*max_members'):
        _extract(a, tmp_path / 'out', max_members=2)
    assert not (tmp_path / 'out').exists()
    assert sorted(p.name for p in _extract(a, tmp_path / 'out', max_bytes=3000).rglob('*.bin')) == [
        '0.bin',
        '1.bin',
        '2.bin',
    ]


def test_zip_whose_header_lies_is_stopped_and_cleaned(tmp_path):
    """A member declaring 10 bytes but holding 100 kB: the header check passes, the extraction must stop and leave
    nothing."""
    data = bytearray(_zip(tmp_path / 'ok.zip', n=1, size=100_000).read_bytes())
    struct.pack_into('<I', data, data.find(b'PK\x03\x04') + 22, 10)  # local header: uncompressed size
    struct.pack_into('<I', data, data.find(b'PK\x01\x02') + 24, 10)  # central directory: uncompressed size
    (tmp_path / 'lie.zip').write_bytes(bytes(data))
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'keep.txt').write_text('mine')
    with pytest.raises(UnsafeArchiveError, match="lie.zip.*'d/0.bin'"):
        _extract(tmp_path / 'lie.zip', tmp_path / 'out', max_bytes=50)
    assert [p.name for p in (tmp_path / 'out').iterdir()] == [
        'keep.txt'
    ]  # partial output removed, the folder's own files kept


def test_streaming_counter_stops_at_the_limit(tmp_path):
    "The bytes actually written are counted (a header can lie): a limit below the content stops the copy."
    with zipfile.ZipFile(_zip(tmp_path / 'a.zip', n=3, size=1000)) as z:
        with pytest.raises(UnsafeArchiveError, match='more than max_bytes=1500'):
            _write_zip(z, z.infolist(), tmp_path / 'o', tmp_path / 'a.zip', 1500)


def test_nested_archives_share_one_budget(tmp_path):
    "A zip of zips (the classic 42.zip) counts everything it extracts against one limit."
    inner = _zip(
        tmp_path / 'inner.zip', n=2, size=1500
    )  # 3 kB each, under the 5 kB limit; the outer zip and two inner ones are not
    with zipfile.ZipFile(tmp_path / 'outer.zip', 'w') as z:
        for i in range(3):
            z.write(inner, f'in{i}.zip')
    root = tmp_path / 'root'
    root.mkdir()
    shutil.copy(tmp_path / 'outer.zip', root)
    with pytest.raises(UnsafeArchiveError, match='max_bytes'):
        extract_nested(root, max_bytes=5000)
    with pytest.raises(UnsafeArchiveError, match='max_bytes'):
        download_gdrive(str(tmp_path / 'outer.zip'), tmp_path / 'dl', max_bytes=5000, quiet=True)
    assert not (tmp_path / 'dl').exists()
