"""Fit the conditional restorer's kind gate (histodiff.gate) on pairs synthesized from clean training tiles (issue 23).

The restorer beat leaving the artifact on most kinds but lowered blurred tiles' PSNR and stain patches' SSIM and
FSIM. The gate names a tile's artifact kind from the tile itself and applies that kind's action: leave the tile,
keep the low-pass of the residual, or keep the restorer's output. This synthesizes --items pairs, one artifact each
(the eight kinds round-robin), from the training tiles of data/tiles/train that are not validation tiles
(`histodiff.data.validation_split`; the validation and test tiles are never seen), restores them with the restorer
(its gate off), fits the classifier and chooses each kind's action (`histodiff.gate.fit_gate`), and writes the gate
into --model's gate/ folder and every (tile, action) score to --out (CSV) with a summary table (Markdown).

Usage (checkpoints/restorer/gate and results/restorer_study/gate_fit.md):
  python scripts/fit_gate.py --model checkpoints/restorer --items 640 --out results/restorer_study/gate_fit
"""

import argparse
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from histodiff.artifacts import ARTIFACT_KINDS
from histodiff.conditional import RestorationPairs
from histodiff.data import dataset_images, load_tile_dataset, validation_split
from histodiff.gate import GATE_FOLDER, fit_gate, save_gate
from histodiff.restorers import RestorerSettings, make_restorer


def pairs(tiles_dir: str, n: int, seed: int, fraction: float):
    "(damaged, clean, masks, kinds) of n items from the training tiles that are not validation tiles."
    ds = load_tile_dataset(tiles_dir)
    train, _ = validation_split(ds['source'], fraction)
    images, kinds = dataset_images(ds)[train], list(ARTIFACT_KINDS)
    draw = {k: RestorationPairs(images, kinds=[k], max_artifacts=1, p_clean=0, seed=seed) for k in kinds}
    items, j = [], 0
    while len(items) < n:  # item j of the next kind; one that missed the tissue (an empty mask) is skipped
        d, c, m = draw[kinds[len(items) % len(kinds)]].pair(j)
        j += 1
        if m.any():
            items.append((d, c, m))
    damaged, clean, masks = (np.stack(a) for a in zip(*items))
    return damaged, clean, masks, [kinds[i % len(kinds)] for i in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='checkpoints/restorer', help='the restorer folder; its gate/ is (re)written')
    ap.add_argument('--tiles', default='data/tiles/train', help="the download stage's training tiles")
    ap.add_argument('--items', type=int, default=640)
    ap.add_argument('--seed', type=int, default=777)
    ap.add_argument('--validation-fraction', type=float, default=0.1)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--out', default='results/restorer_study/gate_fit')
    a = ap.parse_args()
    damaged, clean, masks, kinds = pairs(a.tiles, a.items, a.seed, a.validation_fraction)
    restorer = make_restorer('residual', RestorerSettings(model=a.model, gate=False))
    restored = np.concatenate([
        restorer.restore(damaged[i : i + a.batch], masks[i : i + a.batch])
        for i in tqdm(range(0, len(damaged), a.batch), desc='restore')
    ])  # fmt: skip
    gate, scores = fit_gate(damaged, restored, clean, masks, kinds)
    save_gate(gate, Path(a.model) / GATE_FOLDER)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    scores.to_csv(f'{a.out}.csv', index=False)
    mean = scores.groupby(['kind', 'action'])[['psnr', 'ssim', 'fsim']].mean().unstack()
    one = scores[scores.action == 'none']
    named = (one['named'] == one['kind']).groupby(one['kind']).mean().rename('named right')
    text = (
        f"# The kind gate, fitted on {a.items} synthesized training pairs (seed {a.seed})\n\n"
        f"Actions chosen: {gate.actions}\n\nMean score of each action (whole tile), per true kind:\n\n"
        f"{mean.round(4).to_markdown()}\n\nShare of tiles whose kind the gate named right:\n\n"
        f"{named.round(3).to_markdown()}\n"
    )
    Path(f'{a.out}.md').write_text(text)
    print(text)


if __name__ == '__main__':
    main()
