"""Shipped checkpoints (issue 12): every kind of model, trained 2 steps, exported as fp16 safetensors with a model card,
loads back in float32 and gives the same outputs within fp16 tolerance; pickles refused, leftovers skipped, the size
budget enforced; the card's facts come from the card.json its stage wrote; the CLI restores with no model named from
$HISTODIFF_CHECKPOINTS; stages fine-tune from a checkpoint.
Tiny models: seconds on a CPU."""

import json, os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from histodiff.autoencoder import make_vae, AutoencoderTrainer, image_dataset, load_vae
from histodiff.checkpoints import (
    SHIPPED,
    CheckpointError,
    ModelCard,
    check_budget,
    checkpoint_sizes,
    export_all,
    export_checkpoint,
    init_model,
    load_checkpoint,
    read_card,
)
from histodiff.modelfolder import shipped, write_card
from histodiff.cli import main as cli
from histodiff.core import OUTPUT_MARKER, write_image, write_mask
from histodiff.detect import ArtifactDetector, train_detector
from histodiff.conditional import RestorationPairs, ResidualRestorerModel
from histodiff import stardiff as sd
from histodiff.sfs import ImageClassifier, train_classifier, save_classifier
from histodiff.train import DenoisingDiffusionModel, TensorDictDataset, TrainConfig, fit, make_scheduler, make_unet

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def cfg(run, steps=2, batch=2):
    return TrainConfig(str(run), max_steps=steps, batch_size=batch, use_ema=False, progress=False, learning_rate=1e-3)


def tiles(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "models/<name> of every SHIPPED kind, each trained 2 steps with fit (tiny presets), plus the run's records."
    d = tmp_path_factory.mktemp('run')
    m, runs = d / 'models', d / 'runs'
    vae = fit(AutoencoderTrainer(make_vae('tiny')), image_dataset(tiles(4, 32)), cfg(runs / 'vae')).vae
    vae.save_pretrained(m / 'vae')
    for name, ch, size, clip in (('ldm', 4, 8, False), ('pixel', 3, 16, True)):
        model = DenoisingDiffusionModel(make_unet('tiny', ch, size), make_scheduler(clip_sample=clip), key='latents')
        fit(model, TensorDictDataset(latents=torch.randn(4, ch, size, size)), cfg(runs / name)).save_pretrained(
            m / name
        )
    train_detector(
        tiles(4, 64), cfg(runs / 'det'), block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4
    ).save_pretrained(m / 'detector')
    for v in ('both', 'residual', 'noise'):
        model = sd.StarDiffModel(3, sd.unet_config(16, (8, 16), 1, 4, False), paths=v)
        sd.StarDiffPipeline(
            fit(model, sd.PairDataset(tiles(4, 16), tiles(4, 16, 1), False), cfg(runs / v))
        ).save_pretrained(m / 'stardiff' / v)
    model = sd.StarDiffModel(4, sd.unet_config(4, (8, 16), 1, 4, False))
    fit(model, sd.PairDataset(torch.randn(4, 4, 4, 4), torch.randn(4, 4, 4, 4), False), cfg(runs / 'latent'))
    sd.latent_pipeline(model, vae).save_pretrained(m / 'stardiff' / 'latent')
    rm = ResidualRestorerModel.make('tiny', 64)
    fit(rm, RestorationPairs(tiles(4, 64), variants=1), cfg(runs / 'restorer')).save_pretrained(m / 'restorer')
    for name, k in (('sfs', 4), ('tissue', 2)):
        clf = train_classifier(tiles(8, 16), np.arange(8) % k, cfg(runs / name, batch=4), arch='tiny', num_classes=k)
        save_classifier(clf, m / 'classifier' / name)
    (d / 'download.json').write_text(json.dumps({'demo': {'ihc.png': 'f' * 64}}))
    for name, s in SHIPPED.items():  # what each training stage writes beside the weights
        write_card(
            m / s.models,
            name,
            'demo',
            steps=2,
            seconds=60,
            metrics={'psnr': 28.25} if name == 'vae' else {},
            data=d / 'download.json',
            device='cpu (stage)',
        )
    return d


@pytest.fixture(scope='module')
def exported(trained):
    out = trained / 'checkpoints'
    export_all(trained / 'models', out, 'smoke', device='cpu (test)')
    return out


def outputs(model, name):
    "A deterministic output of each kind of model on fixed inputs."
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if name == 'vae':
            return model.decode(model.encode(torch.rand(1, 3, 32, 32, generator=g) * 2 - 1).latent_dist.mean).sample
        if name in ('ldm', 'pixel'):
            c, s = model.unet.config.in_channels, model.unet.config.sample_size
            return model.unet(torch.randn(1, c, s, s, generator=g), torch.tensor([500])).sample
        if name == 'restorer':
            s = model.unet.config.sample_size
            return torch.cat(model(*torch.randn(2, 1, 3, s, s, generator=g), torch.ones(1, 1, s, s), 5))
        if name == 'detector':
            return model(torch.rand(1, 3, 16, 16, generator=g) * 2 - 1)
        if name.startswith('stardiff'):
            c, s = model.model.channels, model.model.sample_size
            x = torch.randn(1, c, s, s, generator=g)
            return torch.cat([o for o in model.model(x, x, torch.tensor([5])) if o is not None])
        return model(torch.rand(2, 3, 16, 16, generator=g) * 2 - 1)


def test_every_model_exports_to_fp16_with_a_card_and_loads_back_the_same(trained, exported):
    test_sizes = checkpoint_sizes(exported)
    assert sorted(test_sizes) == sorted(SHIPPED), 'every kind of model is exported'
    for name in SHIPPED:
        ck = exported / name
        weights = list(ck.rglob('*.safetensors'))
        assert weights and not list(ck.rglob('*.bin')), name
        for w in weights:
            assert all(t.dtype == torch.float16 for t in load_file(str(w)).values() if t.is_floating_point()), w
        card = (ck / 'README.md').read_text()
        assert card.startswith('---\nlibrary_name: ') and 'license: apache-2.0' in card and '- histopathology' in card
        assert f'| demo/ihc.png | `{"f" * 64}` |' in card and '| smoke |' in card and '| cpu (test) |' in card, name
        assert 'from_pretrained' in card or 'load_vae' in card
        original, loaded = load_checkpoint(trained / 'models' / name, name), load_checkpoint(ck, name)
        mods = loaded.components.values() if hasattr(loaded, 'components') else [loaded]
        assert all(p.dtype == torch.float32 for m in mods if isinstance(m, torch.nn.Module) for p in m.parameters()), (
            name
        )
        a, b = outputs(original, name), outputs(loaded, name)
        torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2, msg=lambda m: f'{name}: {m}')
        assert read_card(ck, name).markdown() == card, name  # card.json beside the weights renders the README
    assert '| psnr | 28.25 |' in (exported / 'vae' / 'README.md').read_text()
    assert (
        '| smoke | 2 | cpu (test) | 1 |' in (exported / 'vae' / 'README.md').read_text()
    )  # steps and minutes of card.json


def test_shipped_checkpoints_cards_render_their_readme():
    "The committed checkpoints: each card.json renders exactly the README.md beside it."
    for name in SHIPPED:
        ck = ROOT / 'checkpoints' / name
        assert read_card(ck, name).markdown() == (ck / 'README.md').read_text(), name


def test_classifier_from_fp16_weights_is_float32(exported):
    clf = ImageClassifier.from_pretrained(exported / 'classifier' / 'sfs')
    assert {p.dtype for p in clf.parameters()} == {torch.float32}
    assert (
        json.loads((exported / 'classifier' / 'sfs' / 'config.json').read_text()).get('dtype', 'float16') == 'float16'
    )


def test_pickled_weights_are_refused(trained, tmp_path):
    src = tmp_path / 'ldm'
    shutil.copytree(trained / 'models' / 'ldm', src)
    torch.save({'w': torch.zeros(1)}, src / 'unet' / 'diffusion_pytorch_model.bin')
    with pytest.raises(CheckpointError, match='pickled weights are not shipped.*histodiff convert-checkpoint'):
        export_checkpoint(src, tmp_path / 'out', ModelCard('ldm'))
    assert not (tmp_path / 'out').exists()


def test_training_leftovers_are_skipped(trained, tmp_path):
    src = tmp_path / 'detector'
    shutil.copytree(trained / 'models' / 'detector', src)
    for f in (
        'train/checkpoints/step_00000002/optimizer.bin',
        'train/dvclive/metrics.json',
        'train/final/unet/config.json',
        'runs/x/model.safetensors',
        'optimizer.pt',
        'random_states_0.pkl',
    ):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes(b'x')
    out = export_checkpoint(src, tmp_path / 'out', ModelCard('detector'))
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file()) == [
        OUTPUT_MARKER,  # histodiff wrote the folder: a later export may replace it
        'README.md',
        'card.json',
        'detector.json',
        'unet/config.json',
        'unet/diffusion_pytorch_model.safetensors',
    ]


def test_budget_check_fails_over_the_limit(trained, exported, tmp_path):
    total = check_budget(exported)
    assert 0 < total < 80
    with pytest.raises(CheckpointError, match=r'over the 0.01 MB budget \(largest: '):
        check_budget(exported, limit_mb=0.01)
    with pytest.raises(CheckpointError, match='over the'):
        export_all(trained / 'models', tmp_path / 'ck', limit_mb=0.01)


def test_export_command(trained, tmp_path):
    shutil.copytree(trained / 'models' / 'vae', tmp_path / 'models' / 'vae')
    env = {**os.environ, 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(
        [sys.executable, '-m', 'histodiff.checkpoints', 'export', '--profile', 'smoke'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert 'checkpoints/vae:' in r.stdout and 'of 100 MB' in r.stdout
    assert (tmp_path / 'checkpoints' / 'vae' / 'README.md').exists()
    r = subprocess.run(
        [sys.executable, '-m', 'histodiff.checkpoints', 'export', '--models', 'nowhere'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and 'error: no trained model under nowhere' in r.stderr


@pytest.fixture
def tile(tmp_path):
    img = tiles(1, 64)[0]
    mask = np.zeros((64, 64), bool)
    mask[20:40, 24:44] = True
    write_image(img, tmp_path / 'tile.png')
    write_mask(mask, tmp_path / 'mask.png')
    cwd = tmp_path / 'cwd'
    cwd.mkdir()  # no models/ here
    return tmp_path, img, mask, cwd


def test_cli_restore_with_no_model_uses_the_shipped_checkpoints(exported, tile, monkeypatch, capsys):
    d, img, mask, cwd = tile
    monkeypatch.chdir(cwd)
    monkeypatch.setenv('HISTODIFF_CHECKPOINTS', str(exported))
    assert shipped('ldm') == exported / 'ldm'
    assert (
        cli(
            [
                'restore',
                str(d / 'tile.png'),
                '--mask',
                str(d / 'mask.png'),
                '--out',
                str(d / 'out.png'),
                '--steps',
                '2',
                '-q',
                '--method',
                'latent',
            ]
        )
        == 0
    )
    from histodiff.core import read_image

    out = read_image(d / 'out.png')
    assert out.shape == img.shape and (out[mask] != img[mask]).any()
    far = np.ones_like(mask)
    far[8:52, 12:56] = False
    assert (out[far] == img[far]).all()


def test_cli_restore_with_no_model_anywhere_says_what_to_do(tile, monkeypatch, capsys):
    d, _, _, cwd = tile
    monkeypatch.chdir(cwd)
    monkeypatch.setenv('HISTODIFF_CHECKPOINTS', str(d / 'no_checkpoints'))
    assert shipped('ldm') is None
    argv = ['restore', str(d / 'tile.png'), '--mask', str(d / 'mask.png'), '--out', str(d / 'out.png')]
    assert cli([*argv, '--method', 'latent']) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith('histodiff: error: no ldm model: models/ldm does not exist')
        and 'run `make repro`' in err
        and '--ldm DIR' in err
    )
    assert not (d / 'out.png').exists()


def test_stages_fine_tune_from_a_checkpoint_folder(exported, tmp_path):
    "What the stages do with init_from: load the checkpoint trainable, fit it a few steps (its weights are the start)."
    start = load_file(str(exported / 'ldm' / 'unet' / 'diffusion_pytorch_model.safetensors'))
    m = init_model(exported / 'ldm', 'ldm', key='latents')
    assert m.training and all(p.requires_grad and p.dtype == torch.float32 for p in m.parameters())
    assert all(torch.equal(m.unet.state_dict()[k], v.float()) for k, v in start.items())
    fit(m, TensorDictDataset(latents=torch.randn(4, 4, 8, 8)), cfg(tmp_path / 'ldm'))
    assert any(not torch.equal(m.unet.state_dict()[k], v.float()) for k, v in start.items())
    det = train_detector(tiles(4, 64), cfg(tmp_path / 'det'), detector=init_model(exported / 'detector', 'detector'))
    assert isinstance(det, ArtifactDetector)
    assert isinstance(init_model(exported / 'stardiff' / 'latent', 'stardiff/latent'), sd.StarDiffModel)
    clf = init_model(exported / 'classifier' / 'tissue', 'classifier/tissue')
    fit(
        clf,
        TensorDictDataset(image=torch.rand(4, 3, 16, 16) * 2 - 1, label=torch.tensor([0, 1, 0, 1])),
        cfg(tmp_path / 'clf'),
    )
    with pytest.raises(FileNotFoundError, match="set init_from to '' to train from scratch"):
        init_model(tmp_path / 'absent', 'ldm')
