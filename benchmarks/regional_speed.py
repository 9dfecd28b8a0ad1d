"""Seconds per 256x256 tile: latent regional denoising (LatentArtiFusion) vs pixel regional denoising (ArtiFusion-like).

Both pipelines come from `histodiff.regional` and run the same loop; weights are random (speed does not
depend on them). Two settings, each pair measured in the same run:

(a) equal UNet depth and equal steps: the same UNet layout in both (preset `--equal-preset`), the same
    scheduler and number of steps; the latent pipeline adds the VAE encode + decode (`--equal-vae`).
(b) the released sizes (SPEC 7): SD-1.5 VAE (its real config, random init) + the released latent UNet,
    50 DDPM steps; vs the pixel UNet in the ddpm-256 layout, the ArtiFusion schedule (250 steps with RePaint
    jumps of 10, 10 times: 2410 UNet calls). On a CPU that is hours, so the pixel pipeline is run for at
    most `--pixel-max-calls` UNet calls and the per-call time is extrapolated to the full schedule; the table
    says "extrapolated" on such rows.

Every number is the median of `--repeats` runs after one warm-up run. Prints a Markdown table and writes it
(atomically) to `--out` (default benchmarks/regional_speed.md).

    python benchmarks/regional_speed.py                 # CPU, ~5-10 min on 2 cores
    python benchmarks/regional_speed.py --device cuda   # full schedules on a GPU, nothing extrapolated
"""

from __future__ import annotations
import argparse, platform, statistics, time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler

from histodiff.core import atomic_path, downsample_factor
from histodiff.train import make_unet
from histodiff.autoencoder import vae_config
from histodiff.regional import RegionalLatentPipeline, PixelRegionalPipeline, repaint_levels, unet_calls


# SD-1.5 VAE config (stable-diffusion-v1-5, subfolder vae) and a small VAE of the same shape (8x downsampling)
_VAE = {
    'sd15': vae_config('sd15'),  # the real SD-1.5 VAE config (random weights)
    # a small VAE of the same shape (8x downsampling), the latent side of setting (a)
    'small': dict(vae_config('sd15'), block_out_channels=(32, 64, 64, 64), layers_per_block=1, sample_size=256),
}


def bench_vae(preset, device, dtype):  # 'small' is not a library preset (histodiff.autoencoder.make_vae)
    torch.manual_seed(0)
    return AutoencoderKL(**_VAE[preset]).to(device, dtype).eval()


def tile_and_mask(tile=256, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 220, (tile, tile, 3), dtype=np.uint8)
    m = np.zeros((tile, tile), bool)
    m[tile // 4 : tile // 2, tile // 3 : tile // 3 + tile // 4] = True
    return img, m


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def time_pipe(pipe, img, mask, steps, jumps, repeats, device):
    "Median seconds of `pipe.restore` over `repeats` runs after one warm-up."
    jl, jn = jumps
    kw = dict(num_inference_steps=steps, jump_length=jl, jump_n_sample=jn, progress=False)
    pipe.restore(img, mask, generator=0, **kw)
    sync(device)
    ts = []
    for r in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        pipe.restore(img, mask, generator=r, **kw)
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def time_vae(vae, tile, repeats, device, dtype):
    "Median seconds of one encode (posterior mean) + decode of a tile."
    x = torch.zeros(1, 3, tile, tile, device=device, dtype=dtype)

    def once():
        with torch.no_grad():
            vae.decode(vae.encode(x).latent_dist.mean).sample

    once()
    sync(device)
    ts = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        once()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--half', action='store_true', help='fp16/bf16 on cuda (default fp32, as the paper)')
    p.add_argument('--tile', type=int, default=256)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--equal-preset', default='demo', help='UNet preset of setting (a), both pipelines')
    p.add_argument('--equal-vae', default='small', choices=list(_VAE), help='VAE of the latent pipeline in (a)')
    p.add_argument('--equal-steps', type=int, default=10)
    p.add_argument('--latent-steps', type=int, default=50, help='(b) latent: DDPM steps (paper: 50)')
    p.add_argument('--pixel-steps', type=int, default=250, help='(b) pixel: steps (ArtiFusion: 250)')
    p.add_argument('--jump-length', type=int, default=10)
    p.add_argument('--jump-n-sample', type=int, default=10)
    p.add_argument(
        '--pixel-max-calls',
        type=int,
        default=None,
        help='(b) pixel: run at most this many UNet calls, extrapolate the rest (default 3 on CPU, no cap on cuda)',
    )
    p.add_argument('--skip-released', action='store_true', help='only setting (a)')
    p.add_argument('--out', default=str(Path(__file__).with_name('regional_speed.md')))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    dtype = (
        (torch.bfloat16 if device.type == 'cuda' and torch.cuda.is_bf16_supported() else torch.float16)
        if a.half and device.type != 'cpu'
        else torch.float32
    )
    if a.pixel_max_calls is None:
        a.pixel_max_calls = 3 if device.type == 'cpu' else 10**9
    img, mask = tile_and_mask(a.tile)
    rows = []

    def row(setting, name, model, steps, calls, secs, how):
        rows.append(dict(setting=setting, pipeline=name, model=model, steps=steps, calls=calls, secs=secs, how=how))
        print(f'  {setting} {name}: {secs:.3f} s/tile ({how})', flush=True)

    # (a) equal depth, equal steps
    sched = lambda: DDPMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012)
    vae = bench_vae(a.equal_vae, device, dtype)
    f = downsample_factor(vae)
    lat = RegionalLatentPipeline(make_unet(a.equal_preset, 4, a.tile // f).to(device, dtype).eval(), vae, sched())
    pix = PixelRegionalPipeline(make_unet(a.equal_preset, 3, a.tile).to(device, dtype).eval(), sched())
    row(
        'a',
        'latent',
        f'UNet {a.equal_preset} on 4x{a.tile // f}x{a.tile // f} + VAE {a.equal_vae}',
        a.equal_steps,
        a.equal_steps,
        time_pipe(lat, img, mask, a.equal_steps, (0, 1), a.repeats, device),
        'measured',
    )
    row(
        'a',
        'pixel',
        f'UNet {a.equal_preset} on 3x{a.tile}x{a.tile}',
        a.equal_steps,
        a.equal_steps,
        time_pipe(pix, img, mask, a.equal_steps, (0, 1), a.repeats, device),
        'measured',
    )
    del lat, pix, vae

    vae_secs = None
    if not a.skip_released:
        # (b) released sizes
        vae = bench_vae('sd15', device, dtype)
        vae_secs = time_vae(vae, a.tile, a.repeats, device, dtype)
        lat = RegionalLatentPipeline(
            make_unet('released', 4, a.tile // 8).to(device, dtype).eval(),
            vae,
            DDPMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012),
        )
        row(
            'b',
            'latent',
            f'SD-1.5 VAE + released UNet on 4x{a.tile // 8}x{a.tile // 8}, DDPM',
            a.latent_steps,
            a.latent_steps,
            time_pipe(lat, img, mask, a.latent_steps, (0, 1), a.repeats, device),
            'measured',
        )
        del lat, vae
        pix_unet = make_unet('ddpm-256', 3, a.tile).to(device, dtype).eval()
        pix = PixelRegionalPipeline(pix_unet, DDPMScheduler(clip_sample=True))  # pixel DDPM clips x0
        full_calls = unet_calls(repaint_levels(a.pixel_steps, a.jump_length, a.jump_n_sample))
        if full_calls <= a.pixel_max_calls:
            secs = time_pipe(pix, img, mask, a.pixel_steps, (a.jump_length, a.jump_n_sample), a.repeats, device)
            how = 'measured'
        else:
            n = a.pixel_max_calls
            part = time_pipe(pix, img, mask, n, (0, 1), a.repeats, device)
            secs = part / n * full_calls
            how = f'extrapolated: {part / n:.2f} s per call (from {n} steps) x {full_calls} calls'
        row(
            'b',
            'pixel',
            f'ddpm-256 UNet on 3x{a.tile}x{a.tile}, {a.pixel_steps} steps + RePaint {a.jump_length}x{a.jump_n_sample}',
            a.pixel_steps,
            full_calls,
            secs,
            how,
        )

    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == 'cuda'
        else f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads'
    )
    lines = [
        f'# Regional denoising speed, {a.tile}x{a.tile} tile',
        '',
        f'Device: {a.device} ({dev_name}), dtype {str(dtype).replace("torch.", "")}, random weights, '
        f'median of {a.repeats} runs after a warm-up. torch {torch.__version__}.',
        '',
        '| setting | pipeline | model | steps | UNet calls | s / tile | how | pixel / latent |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for s in ('a', 'b'):
        rs = {r['pipeline']: r for r in rows if r['setting'] == s}
        if not rs:
            continue
        ratio = rs['pixel']['secs'] / rs['latent']['secs']
        for r in (rs['latent'], rs['pixel']):
            label = {'a': '(a) equal depth + steps', 'b': '(b) released sizes'}[s]
            lines.append(
                f"| {label} | {r['pipeline']} | {r['model']} | {r['steps']} | {r['calls']} | "
                f"{r['secs']:.3f} | {r['how']} | {f'{ratio:.1f}x' if r['pipeline'] == 'pixel' else ''} |"
            )
    if vae_secs is not None:
        lines += ['', f'SD-1.5 VAE encode + decode alone: {vae_secs:.3f} s per tile (inside the (b) latent time).']
    lines += ['', 'Paper (SPEC 7, GPU): LatentArtiFusion 0.834 s, ArtiFusion 30.71 s per 256x256 tile (36.8x).']
    text = '\n'.join(lines) + '\n'
    print(text)
    with atomic_path(a.out) as tmp:
        Path(tmp).write_text(text)
    return rows


if __name__ == '__main__':
    main()
