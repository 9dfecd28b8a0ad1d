"""Samplers built for regional restoration: trailing timesteps, the saved noise schedule (never a default one),
x0 clipped in pixel space only; latents of augmented images. Tiny random models: runs in seconds on a CPU."""

import warnings

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from histodiff.core import dihedral, DIHEDRAL
from histodiff.autoencoder import make_vae, encode, encode_dataset
from histodiff.core import to_tensor
from histodiff.regional import load_regional_pipeline, sampling_scheduler, clips_x0, SAMPLERS
from histodiff.train import DenoisingDiffusionModel, make_scheduler, make_unet


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """A pixel model folder (saved with clip_sample=True), a latent one (saved the way the train_ldm stage does) and a
    VAE."""
    d = tmp_path_factory.mktemp('models')
    DenoisingDiffusionModel(make_unet('tiny', 3, 16), make_scheduler(clip_sample=True)).save_pretrained(d / 'pixel')
    DenoisingDiffusionModel(make_unet('tiny', 4, 2), make_scheduler()).save_pretrained(d / 'ldm')
    make_vae('tiny').save_pretrained(d / 'vae')
    return d


@pytest.mark.parametrize('name', ['ddim', 'dpm'])
def test_few_step_samplers_start_at_pure_noise(name, models):
    s = sampling_scheduler(make_scheduler(), name)
    s.set_timesteps(20)
    assert s.timesteps[0].item() == 999 and len(s.timesteps) == 20
    assert s.config.timestep_spacing == 'trailing'
    for pipe in (
        load_regional_pipeline(models / 'pixel', scheduler=name),
        load_regional_pipeline(models / 'ldm', vae=models / 'vae', scheduler=name),
    ):
        pipe.scheduler.set_timesteps(20)
        assert pipe.scheduler.timesteps[0].item() == 999


def test_sampler_keeps_the_training_schedule(models):
    train = make_scheduler()
    for name in SAMPLERS:
        s = load_regional_pipeline(models / 'ldm', vae=models / 'vae', scheduler=name).scheduler
        assert torch.allclose(s.alphas_cumprod, train.alphas_cumprod)
        assert s.config.prediction_type == 'epsilon'
    assert (
        load_regional_pipeline(models / 'ldm', vae=models / 'vae', scheduler='dpm').scheduler.config.algorithm_type
        == 'dpmsolver++'
    )


def test_missing_scheduler_folder_is_an_error(models, tmp_path):
    (tmp_path / 'm').mkdir()
    make_unet('tiny', 3, 16).save_pretrained(tmp_path / 'm' / 'unet')
    with pytest.raises(FileNotFoundError) as e:
        load_regional_pipeline(tmp_path / 'm')
    msg = str(e.value)
    assert str(tmp_path / 'm' / 'scheduler') in msg and 'make_scheduler' in msg and 're-run the training stage' in msg


@pytest.mark.parametrize('name', [None, 'ddpm', 'ddim', 'dpm'])
def test_pixel_sampling_clips_latent_sampling_does_not(name, models):
    pixel = load_regional_pipeline(models / 'pixel', scheduler=name).scheduler
    latent = load_regional_pipeline(models / 'ldm', vae=models / 'vae', scheduler=name).scheduler
    assert clips_x0(pixel) and not clips_x0(latent)
    # the clipping really happens in `step`: an output implying x0 around 8
    x_t, eps = torch.full((1, 3, 4, 4), 2.0), torch.full((1, 3, 4, 4), -3.0)
    for s, clipped in ((pixel, True), (latent, False)):
        s.set_timesteps(10)
        t = s.timesteps[3]
        out = s.step(eps, t, x_t)
        x0 = s.model_outputs[-1] if hasattr(s, 'model_outputs') else out.pred_original_sample
        assert (x0.abs().max().item() <= 1.0) == clipped


def test_saved_pixel_config_clips_and_latent_config_does_not(models):
    assert DDPMScheduler.from_pretrained(models / 'pixel' / 'scheduler').config.clip_sample is True
    assert DDPMScheduler.from_pretrained(models / 'ldm' / 'scheduler').config.clip_sample is False
    # a latent model saved with diffusers' clipping default is still sampled without clipping
    DDPMScheduler().save_pretrained(models / 'ldm2' / 'scheduler')
    make_unet('tiny', 4, 2).save_pretrained(models / 'ldm2' / 'unet')
    assert not clips_x0(load_regional_pipeline(models / 'ldm2', vae=models / 'vae', scheduler='ddim').scheduler)


def test_wrong_clipping_warns(models):
    pipe = load_regional_pipeline(models / 'ldm', vae=models / 'vae', scheduler='ddim')
    img = np.random.default_rng(0).integers(60, 200, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:10, 4:10] = True
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        pipe.restore(img, mask, num_inference_steps=2)
    pipe.scheduler = SAMPLERS['ddim'].from_config(pipe.scheduler.config, clip_sample=True)
    with pytest.warns(UserWarning, match='clips the predicted x0'):
        pipe.restore(img, mask, num_inference_steps=2)


def test_augmented_latents_are_encodings_of_augmented_images():
    vae = make_vae('tiny').eval()
    tiles = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    z = encode_dataset(vae, tiles, batch_size=2, progress=False, augment=True).tensors['latents']
    assert z.shape == (DIHEDRAL * 3, 4, 2, 2)
    for v in range(DIHEDRAL):
        want = encode(vae, to_tensor(np.stack([dihedral(t, v) for t in tiles])))
        torch.testing.assert_close(z[v * 3 : (v + 1) * 3], want, atol=1e-5, rtol=1e-5)
    z1 = encode_dataset(vae, tiles, progress=False).tensors['latents']
    torch.testing.assert_close(z[:3], z1)
