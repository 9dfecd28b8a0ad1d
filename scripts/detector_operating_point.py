"""Choose the artifact detector's operating point for restoration, on validation tiles (issue 23, item 4).

The shipped detector's threshold (0.95) and smallest region (1024 px) were chosen for precision, when a false alarm
cost tissue: the regional restorers regenerate whatever the mask covers. The conditional residual restorer leaves
clean tissue nearly as it is, so a missed artifact (dust and tears are smaller than 1024 px) now costs more than a
false alarm. For each (threshold, min_size) this detects masks on the validation tiles of the synthesize stage
(data/synth/validation: never trained on by the restorer, never the test tiles), restores them with the restorer and
scores the PSNR and FSIM of the restored tile against the clean one; the best PSNR is the operating point. Each
validation tile is scored twice, damaged and clean (its clean twin, with an empty true mask), so a false alarm on
clean tissue costs what it costs on a slide: a first run on the damaged tiles alone (--damaged-only) chose threshold
0.9 and regions of 16 px, which flagged 93 % of the clean test tiles and lowered the demo slide's PSNR. The clean
twins' squared error is weighted by --clean-share, the share of a slide's tissue tiles that hold no artifact (a prior:
most tiles of a slide are clean; 0.5 weighs the twins as the damaged tiles). Writes a Markdown table and, with
--write, the chosen values into the detector folder's detector.json.

Usage (results/restorer_study/detector.md, whose choice is in checkpoints/detector/detector.json):
  python scripts/detector_operating_point.py --detector checkpoints/detector --max-tiles 32 --write \\
      --out results/restorer_study/detector
"""

import argparse, json
from pathlib import Path

import numpy as np
import pandas as pd

from histodiff.data import dataset_images, load_tile_dataset
from histodiff.detect import ArtifactDetector, clean_mask, predict_proba
from histodiff.metrics import fsim, psnr_from_mse
from histodiff.restorers import RestorerSettings, make_restorer
from histodiff.studies import write_table


def scores(restorer, art, clean, masks, weights) -> dict:
    """PSNR of all the tiles together (their mean squared error pooled with `weights`, as a slide's PSNR is: a clean
    twin left as it is has an infinite PSNR of its own) and mean FSIM of the restored tiles against the clean ones."""
    out = [restorer(a, m) if m.any() else a for a, m in zip(art, masks)]
    mse = np.average([((o.astype(float) - c) ** 2).mean() for o, c in zip(out, clean)], weights=weights)
    return dict(psnr=float(psnr_from_mse(mse)), fsim=float(np.mean([fsim(o, c) for o, c in zip(out, clean)])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--validation', default='data/synth/validation')
    ap.add_argument('--detector', default='checkpoints/detector')
    ap.add_argument('--method', default='residual', help='the restorer the operating point is chosen for')
    ap.add_argument('--model', default=None, help="the restorer's model folder (default: the method's own)")
    ap.add_argument('--thresholds', type=float, nargs='+', default=[0.95, 0.98, 0.99, 0.995])
    ap.add_argument('--min-sizes', type=int, nargs='+', default=[16, 256, 1024, 4096])
    ap.add_argument('--max-tiles', type=int, default=0, help='the first N validation tiles (0: all)')
    ap.add_argument('--out', default='results/restorer_study/detector')
    ap.add_argument('--write', action='store_true', help="write the chosen values into the detector's detector.json")
    ap.add_argument('--damaged-only', action='store_true', help='score the damaged tiles only, not their clean twins')
    ap.add_argument('--clean-share', type=float, default=0.9, help="the clean twins' weight in the pooled error")
    a = ap.parse_args()
    ds = load_tile_dataset(a.validation)
    ds = ds.select(range(min(a.max_tiles, len(ds)))) if a.max_tiles else ds
    art, clean, true = dataset_images(ds, 'artifact'), dataset_images(ds, 'clean'), dataset_images(ds, 'mask')
    w = np.ones(len(art))
    if not a.damaged_only:  # each tile once damaged and once clean: a slide is mostly clean tissue, false alarms count
        art, clean, true = (np.concatenate(x) for x in ([art, clean], [clean, clean], [true, np.zeros_like(true)]))
        w = np.concatenate([w * (1 - a.clean_share), w * a.clean_share])
    det = ArtifactDetector.from_pretrained(a.detector)
    prob = predict_proba(det, art)
    restorer = make_restorer(a.method, RestorerSettings(model=a.model, seed=0))
    rows = [dict(threshold='true mask', min_size='', **scores(restorer, art, clean, true, w))]
    rows.append(dict(threshold='no restoration', min_size='', **scores(restorer, art, clean, np.zeros_like(true), w)))
    for t in a.thresholds:
        for s in a.min_sizes:
            masks = np.stack([clean_mask(p, t, s, det.settings['hole_size'], det.settings['dilation']) for p in prob])
            found = dict(detected=float(masks.mean()), recall=float((masks & true).sum() / true.sum()))
            rows.append(dict(threshold=t, min_size=s, **scores(restorer, art, clean, masks, w), **found))
            print(rows[-1])
    df = pd.DataFrame(rows)
    grid = df[df['min_size'] != '']
    best = grid.loc[grid['psnr'].idxmax()]
    note = f"Chosen for {restorer.describe()}: threshold {best['threshold']}, min_size {best['min_size']}."
    twins = 'damaged only' if a.damaged_only else f'and their clean twins, weighted {a.clean_share}'
    data = f"{len(ds)} validation tiles ({a.validation}) {twins}; detector {a.detector}"
    print(write_table(df, a.out, 'Detector operating point for restoration', 'demo', data, note).read_text())
    if a.write:
        f = Path(a.detector) / 'detector.json'
        settings = json.loads(f.read_text())
        settings.update(threshold=float(best['threshold']), min_size=int(best['min_size']))
        f.write_text(json.dumps(settings, indent=1) + '\n')


if __name__ == '__main__':
    main()
