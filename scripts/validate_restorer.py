"""Compare settings of the latent regional restorer on validation tiles, never on the test tiles.

Validation tiles: every 10th training tile with one synthesized artifact each (all eight kinds round-robin, seed 123);
the test tiles of the synthesize stage are not read. The latent UNet has seen these tiles' clean content in training,
so absolute numbers are optimistic; the comparison between settings is what this is for. Prints a Markdown table of
PSNR, PSNR in the artifact and SSIM per setting and kind, beside 'no restoration' and Telea.

Usage: python scripts/validate_restorer.py --ldm checkpoints/ldm --vae checkpoints/vae --strengths 1 0.6 0.4
"""

import argparse
from dataclasses import replace
import numpy as np, pandas as pd

from histodiff.artifacts import make_paired_set
from histodiff.data import load_tile_dataset, dataset_images
from histodiff.metrics import psnr, psnr_artifact, ssim
from histodiff.restorers import RestorerSettings, make_restorer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tiles', default='data/tiles/train')
    ap.add_argument('--ldm', default='checkpoints/ldm')
    ap.add_argument('--vae', default='checkpoints/vae')
    ap.add_argument('--strengths', type=float, nargs='+', default=[1.0, 0.6, 0.4])
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--scheduler', default='ddim')
    ap.add_argument('--every', type=int, default=10)
    ap.add_argument(
        '--pixel-dilations', type=int, nargs='+', default=[8], help="the paste-back's dilations (px) to compare"
    )
    a = ap.parse_args()
    tiles = dataset_images(load_tile_dataset(a.tiles))[:: a.every]
    pairs = make_paired_set(tiles, seed=123, progress=False)
    base = RestorerSettings(model=a.ldm, vae=a.vae, scheduler=a.scheduler, steps=a.steps, seed=0)
    methods = {'no restoration': make_restorer('none'), 'telea': make_restorer('telea')}
    latent = make_restorer('latent', base)
    for s in a.strengths:
        for d in a.pixel_dilations:  # one loaded pipeline, other settings
            methods[f'latent, strength {s:g}, dilation {d}'] = type(latent)(
                replace(base, strength=s, pixel_dilation=d), pipeline=latent.pipeline
            )
    rows = []
    for i, (im, m, c, k) in enumerate(zip(pairs['artifact'], pairs['mask'], pairs['clean'], pairs['kind'])):
        for name, f in methods.items():
            out = f(im, m)
            rows.append(
                dict(
                    kind=k,
                    method=name,
                    psnr=psnr(out, c),
                    psnr_artifact=psnr_artifact(out, c, m.astype(bool)),
                    ssim=ssim(out, c),
                )
            )
    df = pd.DataFrame(rows)
    overall = df.groupby('method')[['psnr', 'psnr_artifact', 'ssim']].mean().round(3)
    print(f'{len(tiles)} validation tiles\n')
    print(overall.to_markdown())
    print()
    print(df.pivot_table(index='kind', columns='method', values='psnr').round(2).to_markdown())


if __name__ == '__main__':
    main()
