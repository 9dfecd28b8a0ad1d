"""The `released` stage end to end on local mirrors shaped like the authors' releases (no network): the released UNet
zip (random weights, pickled `.bin`) is fetched by path, converted to safetensors, loaded with a VAE and run with the
corrected and the released-code regional denoising beside classical inpainting; the table and metrics are written."""

import json, shutil, sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))


def test_released_stage_on_local_mirrors(tmp_path):
    from params_from_profile import params_for
    from diffusers import AutoencoderKL
    from histodiff.autoencoder import vae_config
    from histodiff.artifacts import make_paired_set, save_paired_set
    from histodiff.release import make_release_mirrors, _tissue_tiles
    from histodiff.stage import run_stage

    shutil.copy(ROOT / 'dvc.yaml', tmp_path / 'dvc.yaml')
    shutil.copytree(ROOT / 'nbs' / 'pipeline', tmp_path / 'nbs' / 'pipeline')
    mirrors = make_release_mirrors(tmp_path / 'mirrors', n_images=2)
    AutoencoderKL(**vae_config('tiny')).save_pretrained(tmp_path / 'vae')  # f = 8, 4 latent channels, as SD-1.5's
    pairs = make_paired_set(_tissue_tiles(2, 256, 0), kinds=['ink', 'air_bubble'], seed=0, progress=False)
    save_paired_set(tmp_path / 'data' / 'synth' / 'histology', pairs)
    params = yaml.safe_load(params_for('released'))
    params['released'].update(
        unet_source=str(mirrors['latentartifusion_unet']), vae_dir=str(tmp_path / 'vae'), vae_subfolder=''
    )
    params['evaluate_restoration'].update(num_inference_steps=2, max_tiles=2, n_boot=20)
    (tmp_path / 'params.yaml').write_text(yaml.safe_dump(params))
    run_stage('released', None, tmp_path)
    model = tmp_path / 'models' / 'released'
    assert (model / 'unet' / 'diffusion_pytorch_model.safetensors').exists() and (
        model / 'scheduler' / 'scheduler_config.json'
    ).exists()
    assert not list(model.rglob('*.bin')), 'the converted folder must hold no pickle'
    table = (tmp_path / 'results' / 'released' / 'table.md').read_text()
    for method in (
        'corrected regional',
        'released-code variant',
        'telea',
        'navier_stokes',
        'biharmonic',
        'paper: LatentArtiFusion',
    ):
        assert method in table, method
    metrics = json.loads((tmp_path / 'results' / 'metrics' / 'released.json').read_text())
    assert metrics['skipped'] is False
    psnr = metrics['methods']['histology/released UNet, corrected regional']['psnr']
    assert np.isfinite(psnr) and 'seconds' not in metrics['methods']['histology/telea']  # timings live apart
    assert json.loads((tmp_path / 'results' / 'timings' / 'released.json').read_text())
