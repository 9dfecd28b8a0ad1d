"""Pretrain the shipped artifact detector (checkpoints/detector) on synthesized artifacts over the demo's five open H&E
sources, choose its threshold for precision on validation tiles, score it on the held-out test tiles and export it as
an fp16 checkpoint with its model card.

Why a script and not the pretrain profile's restore_slide stage: that stage trains the detector on the demo slide's
training region only (one slide, one stain); the shipped detector should have seen every source. The data, the model
(`histodiff.detect.ArtifactDetector`) and the loop (`histodiff.train.fit`, exact resume) are the library's.

Data: every 10th training tile is held out for validation (threshold choice); the detector trains on the others,
each tile in 3 orientations with its own synthesized artifact (plus 20 % clean tiles with empty masks). The test
tiles (held out by region or by image) are scored once, after the threshold is fixed.

Usage (from the repository root, after `make repro` has built data/tiles):
  python scripts/pretrain_detector.py --run results/pretrain_detector --steps 1500 --out checkpoints/detector
Fine-tune the shipped detector with more clean tiles (hard negatives), or only re-choose its operating point:
  python scripts/pretrain_detector.py --init checkpoints/detector --prior-steps 1200 --steps 400 \\
      --clean-fraction 1 --lr 5e-4 --seed 1
  python scripts/pretrain_detector.py --init checkpoints/detector --prior-steps 1200 --steps 0 --minutes 49
"""

import argparse, json, time
from pathlib import Path

import numpy as np
import torch

from histodiff.artifacts import make_paired_set
from histodiff.checkpoints import ModelCard, export_checkpoint
from histodiff.modelfolder import data_hashes
from histodiff.core import dihedral
from histodiff.data import load_tile_dataset, dataset_images
from histodiff.detect import ArtifactDetector, train_detector, evaluate_detector, predict_proba, clean_mask
from histodiff.train import TrainConfig

CHANNELS = (16, 32, 64, 128)  # four levels: the lowest sees 32 x 32 px cells of a 256 px tile
THRESHOLDS = np.round(np.r_[np.arange(0.5, 0.951, 0.05), 0.97, 0.98, 0.99], 2)
MIN_SIZES = (16, 64, 256, 1024, 4096)  # px: connected regions smaller than this are dropped (clean_mask's min_size)


def orientations(tiles: np.ndarray) -> np.ndarray:
    "Each tile as it is, rotated by 90 degrees and flipped: 3 x as many tiles, each to get its own artifact."
    return np.concatenate([tiles, dihedral(tiles, 1), dihedral(tiles, 4)])


def counts(pred: np.ndarray, true: np.ndarray) -> dict:
    "Precision, recall, Dice and F0.5 (precision counts twice as much as recall) of pooled boolean masks."
    tp = float((pred & true).sum())
    fp = float((pred & ~true).sum())
    fn = float((~pred & true).sum())
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return dict(
        precision=p, recall=r, dice=2 * tp / max(2 * tp + fp + fn, 1), f05=1.25 * p * r / max(0.25 * p + r, 1e-9)
    )


def operating_point(detector, tiles: np.ndarray, seed: int = 7) -> dict:
    """The threshold and `min_size` of best F0.5 on `tiles`, each once with a synthesized artifact and once clean:
    on a slide most tissue is clean, so false alarms on clean tiles count as much as those beside an artifact."""
    pairs = make_paired_set(tiles, seed=seed, progress=False)
    images = np.concatenate([pairs['artifact'], tiles])
    true = np.concatenate([pairs['mask'], np.zeros(tiles.shape[:3], bool)])
    prob = predict_proba(detector, images, batch_size=8)
    kw = {k: v for k, v in detector.settings.items() if k not in ('dice_weight', 'threshold', 'min_size')}
    rows = [
        dict(
            threshold=float(t),
            min_size=int(ms),
            **counts(np.stack([clean_mask(p, threshold=float(t), min_size=int(ms), **kw) for p in prob]), true),
        )
        for t in THRESHOLDS
        for ms in MIN_SIZES
    ]
    best = max(rows, key=lambda d: d['f05'])
    return dict(best, curve=rows)


def get_detector(a, fit_tiles: np.ndarray, run: Path) -> ArtifactDetector:
    "Train a new detector, fine-tune `a.init`, or (`--steps 0`) take `a.init` as it is."
    start = ArtifactDetector.from_pretrained(a.init) if a.init else None
    if a.steps == 0:
        if start is None:
            raise SystemExit('--steps 0 needs --init: a detector to choose the operating point of.')
        return start
    cfg = TrainConfig(
        str(run / 'train'),
        max_steps=a.steps,
        batch_size=a.batch,
        learning_rate=a.lr,
        use_ema=False,
        checkpoint_every=250,
        log_every=25,
        seed=a.seed,
        lr_warmup_steps=50,
    )
    return train_detector(
        orientations(fit_tiles),
        cfg,
        seed=a.seed,
        clean_fraction=a.clean_fraction,
        detector=start,
        block_out_channels=CHANNELS,
        layers_per_block=1,
        norm_num_groups=8,
    )


def card_notes(a, op: dict, n_fit: int, n_val: int, n_test: int) -> str:
    "The model card's notes: model, data, training, operating point and test protocol."
    how = (
        f'fine-tuned from {a.init} ({a.prior_steps} steps) for {a.steps} more steps'
        if a.init and a.steps
        else f'trained for {a.steps} steps'
        if a.steps
        else f'taken from {a.init} (weights unchanged)'
    )
    return (
        f'A segmentation UNet (diffusers UNet2DModel, channels {CHANNELS}, one layer per level, no attention) '
        f'trained with BCE + soft Dice on one synthesized artifact per tile (all eight kinds, round-robin) over '
        f'{n_fit} training tiles of the five demo H&E sources in 3 orientations, plus clean tiles with empty masks; '
        f'{how} (last run: {round(100 * a.clean_fraction)} % clean tiles, batch {a.batch}, lr {a.lr}, seed {a.seed}). '
        f'The threshold ({op["threshold"]}) and min_size ({op["min_size"]} px) maximise F0.5 (precision weighted) on '
        f'{n_val} validation tiles (every 10th training tile, not trained on), each once with a synthesized artifact '
        f'and once clean: precision {op["precision"]:.3f}, recall {op["recall"]:.3f}. Dice and IoU are pooled over '
        f'the {n_test} held-out test tiles with each kind synthesized on each tile (seed 1).'
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tiles', default='data/tiles', help='tile datasets train/ and test/ (the download stage)')
    ap.add_argument('--run', default='results/pretrain_detector', help="fit's run folder (checkpoints, resume)")
    ap.add_argument(
        '--init',
        default=None,
        help='a detector folder to start from (fine-tune; with --steps 0: only its operating point)',
    )
    ap.add_argument('--steps', type=int, default=1500, help='training steps (0: no training, needs --init)')
    ap.add_argument('--prior-steps', type=int, default=0, help="the --init detector's own steps (for the card)")
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--clean-fraction', type=float, default=0.2, help='clean tiles (empty masks) per artifact tile')
    ap.add_argument('--seed', type=int, default=0, help='seed of the synthesis and the training')
    ap.add_argument('--out', default='checkpoints/detector')
    ap.add_argument(
        '--minutes',
        type=float,
        default=None,
        help='training minutes for the card when the run was resumed (default: this call)',
    )
    a = ap.parse_args()
    tiles, run = Path(a.tiles), Path(a.run)
    run.mkdir(parents=True, exist_ok=True)
    train = dataset_images(load_tile_dataset(tiles / 'train'))
    val = train[::10]
    fit_tiles = np.delete(train, np.arange(0, len(train), 10), axis=0)
    t0 = time.time()
    det = get_detector(a, fit_tiles, run)
    minutes = a.minutes if a.minutes is not None else (time.time() - t0) / 60
    op = operating_point(det, val)
    det.settings.update(threshold=op['threshold'], min_size=op['min_size'])
    test = dataset_images(load_tile_dataset(tiles / 'test'))
    scores = evaluate_detector(det, test, seed=1, batch_size=8)
    metrics = dict(
        dice=scores['all']['dice'],
        iou=scores['all']['iou'],
        false_alarm=scores['false_alarm'],
        n_test_tiles=len(test),
        threshold=op['threshold'],
        min_size=op['min_size'],
        val_precision=op['precision'],
        val_recall=op['recall'],
        val_dice=op['dice'],
        **{f'dice_{k}': v['dice'] for k, v in scores.items() if k not in ('all', 'false_alarm')},
    )
    print(json.dumps(dict(metrics, curve=op['curve']), indent=1))
    (run / 'metrics.json').write_text(json.dumps(dict(metrics, curve=op['curve']), indent=1))
    det.save_pretrained(run / 'final_model')
    card = ModelCard(
        'detector',
        profile='demo data, scripts/pretrain_detector.py',
        steps=a.prior_steps + a.steps,
        device='cpu (2 cores)',
        minutes=round(minutes, 1),
        data=data_hashes('data/download.json'),
        metrics=metrics,
        notes=card_notes(a, op, len(fit_tiles), len(val), len(test)),
    )
    export_checkpoint(run / 'final_model', a.out, card)
    print(f'{a.out}: exported ({minutes:.1f} min of this call)')


if __name__ == '__main__':
    main()
