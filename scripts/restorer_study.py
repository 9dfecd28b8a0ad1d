"""Choose the conditional residual restorer's settings on validation tiles, never on the test tiles (issue 23).

Validation tiles: the last 10 % of each source's training tiles (`histodiff.data.validation_split`), which the
restorer never trains on, each used twice with one synthesized artifact (the eight kinds round-robin, the synthesize
stage's validation_seed): the set the synthesize stage writes to data/synth/validation. Rows: "no restoration",
Telea, biharmonic, then the restorer of each --models folder at each --steps, --pixel-dilations, --paths and
--starts. Writes a table with 95 % bootstrap intervals (overall and per kind) to --out (Markdown and CSV).

Usage:
  python scripts/restorer_study.py --models checkpoints/restorer --steps 1 2 4 10 --out results/restorer_study/steps
  python scripts/restorer_study.py --models runs/ss001 runs/ss1 --labels 'sum_scale 0.01' 'sum_scale 1' \\
      --steps 1 4 --out results/restorer_study/sum_scale
  python scripts/restorer_study.py --steps 1 2 --paths both residual --starts noise mean \\
      --out results/restorer_study/paths
  python scripts/restorer_study.py --steps 2 --gate --out results/restorer_study/gate
"""

import argparse
from dataclasses import replace
from itertools import product
from pathlib import Path

from histodiff.conditional import ConditionalRestorationPipeline
from histodiff.data import dataset_images, load_tile_dataset
from histodiff.restorers import RestorerSettings, make_restorer
from histodiff.studies import restoration_study, summarize, write_table


def methods(a) -> dict:
    "Row label -> restorer."
    rows = {name: make_restorer(name) for name in ('none', 'telea', 'biharmonic')}
    rows = {r.label: r for r in rows.values()}
    for model, label in zip(a.models, a.labels or a.models):
        first = make_restorer('residual', RestorerSettings(model=model, seed=0))
        for paths, start in product(a.paths, a.starts):  # one loaded UNet, other settings
            pipe = ConditionalRestorationPipeline(first.pipeline.unet, first.pipeline.scheduler, paths, start)
            for n, d in product(a.steps, a.pixel_dilations):
                for gate in [None] + [first.gate] * (
                    a.gate and first.gate is not None
                ):  # with --gate: its kind gate too
                    r = type(first)(replace(first.settings, steps=n, pixel_dilation=d), pipeline=pipe, gate=gate)
                    rows[
                        f'{label}, {n} step{"s" * (n > 1)}, dilation {d}, {paths} path{"s" * (paths == "both")}, '
                        f'{start}' + ', gated' * (gate is not None)
                    ] = r
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--validation', default='data/synth/validation', help='the synthesize stage\'s validation set')
    ap.add_argument('--models', nargs='+', default=['checkpoints/restorer'])
    ap.add_argument('--labels', nargs='+', default=None, help='a row label for each model (default: its folder)')
    ap.add_argument('--steps', type=int, nargs='+', default=[1, 2, 4, 10])
    ap.add_argument('--pixel-dilations', type=int, nargs='+', default=[0])
    ap.add_argument('--paths', nargs='+', default=['residual'], choices=['both', 'residual'],
                    help="sample with both predictions or the residual path only")  # fmt: skip
    ap.add_argument('--starts', nargs='+', default=['mean'], choices=['noise', 'mean'],
                    help="start from the damaged tile plus noise (as trained) or from the damaged tile")  # fmt: skip
    ap.add_argument('--gate', action='store_true', help="also each setting with the model folder's kind gate")
    ap.add_argument('--n-boot', type=int, default=1000)
    ap.add_argument('--out', default='results/restorer_study/steps')
    a = ap.parse_args()
    ds = load_tile_dataset(a.validation)
    art, mask, clean = dataset_images(ds, 'artifact'), dataset_images(ds, 'mask'), dataset_images(ds, 'clean')
    per_tile = restoration_study(methods(a), art, mask, clean, list(ds['kind']), progress=True)
    keys = ['psnr', 'psnr_artifact', 'ssim', 'fsim', 'seconds']
    data = f"{len(ds)} validation tiles ({a.validation}), never trained on, never the test tiles"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    overall = summarize(per_tile, 'method', keys, n_boot=a.n_boot)
    print(
        write_table(
            overall, a.out, 'Conditional residual restorer: settings on validation tiles', 'demo', data
        ).read_text()
    )
    by_kind = summarize(per_tile, ['kind', 'method'], keys[:-1], n_boot=a.n_boot)
    write_table(by_kind, f'{a.out}_by_kind', 'The same, per artifact kind', 'demo', data)


if __name__ == '__main__':
    main()
