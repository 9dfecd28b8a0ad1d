"""Work of the regional latent pipeline outside the model calls (issue 14, item 2), in ms per tile.

Per run: (a) the full `RegionalLatentPipeline.__call__` on a batch of uint8 tiles with one artifact mask each (a
rectangle of random size 16..96 px at a random place), output_type='np'; (b) the model calls alone on the same
batch: the VAE encode, the UNet calls and the VAE decode of one call of the current pipeline, replayed on the very
tensors it passed them (recorded once with hooks: same values, same memory layout, which changes a conv's speed
on a CPU by up to 30 %). Since (a) and (b) come from different runs, the last column also gives the overhead
within single calls: the call's time less the time spent in its VAE encoder / UNet / VAE decoder forwards (timed
by hooks; synchronised on a GPU, so host work cannot hide behind device work there: an upper bound). Overhead per
tile = (a - b) / batch: validation, mask pooling, dilation, feathering, the sampler's arithmetic, blending, dtype
casts and host copies. Weights are random (the time does not depend on them).

`--baseline REF` also times the pipeline of `git show REF:histodiff/regional.py` (imported as a module next to
the current one, same models, same batch) on the same machine, in the same run: the "before" row.

    python benchmarks/pipeline_overhead.py --baseline HEAD                  # CPU, tiny models, batch 32
    python benchmarks/pipeline_overhead.py --device cuda --preset paper --batch 64 --steps 20 --dtype bf16 --append

Every time is the fastest of `--repeats` runs (interleaved: models, before, after, models, ...) after one warm-up
(three with `--compile`): the overhead is a difference of two times, and the minimum is the least disturbed. Prints
a Markdown table and writes it (atomically) to `--out`; `--append` adds this run's section to the file instead of
replacing it.
"""

from __future__ import annotations
import argparse, importlib.util, platform, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

from histodiff.core import atomic_path
from histodiff.train import make_unet, make_scheduler
from histodiff.autoencoder import make_vae
from histodiff import regional

ROOT = Path(__file__).resolve().parents[1]
HEADER = '''# Pipeline overhead outside the model calls

Written by `benchmarks/pipeline_overhead.py` (see its docstring). "overhead" = (pipeline - models alone) / batch,
from separate runs: on a shared 2-core VM it carries a run-to-run noise of up to ~8 ms per tile (a negative value is
that noise). "overhead inside one call" = a call's time less the time in its own VAE / UNet forwards: the steadier
figure. GPU rows (paper sizes): `--device cuda --preset paper --batch 64 --steps 20 --dtype bf16 --append`.
'''
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}
PRESETS = {'tiny': ('tiny', 'tiny'), 'paper': ('released', 'sd15')}  # (UNet preset, VAE preset)


def old_module(ref: str):  # the regional module of a git revision, importable next to the current one
    src = subprocess.run(
        ['git', 'show', f'{ref}:histodiff/regional.py'], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / 'old_regional.py'
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(
        'histodiff._old_regional', path
    )  # package 'histodiff': relative imports work
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def make_models(a):  # (unet, vae) on the device, in the dtype and memory format asked for
    up, vp = PRESETS[a.preset]
    unet = make_unet(up, 4, a.tile // 8).eval()
    vae = make_vae(vp).eval()
    mf = torch.channels_last if a.channels_last else torch.preserve_format
    unet, vae = (m.to(a.device, DTYPES[a.dtype], memory_format=mf) for m in (unet, vae))
    if a.compile:
        for m in (unet, vae.encoder, vae.decoder):
            m.compile()
    return unet, vae


def tiles_and_masks(n, tile, seed=0):  # uint8 tiles and one random rectangular artifact mask per tile
    rng = np.random.default_rng(seed)
    imgs = list(rng.integers(40, 220, (n, tile, tile, 3), dtype=np.uint8))
    masks = []
    for _ in range(n):
        h, w = rng.integers(min(16, tile // 4), min(97, tile // 2), 2)
        y, x = rng.integers(0, tile - h), rng.integers(0, tile - w)
        m = np.zeros((tile, tile), bool)
        m[y : y + h, x : x + w] = True
        masks.append(m)
    return imgs, masks


def sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def models_alone(pipe, imgs, masks, steps, device):  # a closure replaying the model calls of one call of `pipe`
    """Record the exact tensors (values and memory layout) `pipe` hands the VAE and the UNet, and replay just those
    calls."""
    rec, vae = {'enc': [], 'unet': [], 'dec': []}, pipe.vae
    enc, dec = vae.encode, vae.decode
    vae.encode = lambda x, *a, **k: (rec['enc'].append(x.clone()), enc(x, *a, **k))[1]  # clone keeps the strides
    vae.decode = lambda z, *a, **k: (rec['dec'].append(z.clone()), dec(z, *a, **k))[1]
    h = pipe.unet.register_forward_pre_hook(lambda m, args: rec['unet'].append((args[0].clone(), args[1])))
    try:
        pipe(imgs, masks, num_inference_steps=steps, generator=0, output_type='np', progress=False)
    finally:
        del vae.encode, vae.decode
        h.remove()

    @torch.no_grad()
    def run():
        for x in rec['enc']:
            vae.encode(x).latent_dist.mean
        for z, t in rec['unet']:
            pipe.unet(z, t).sample
        for z in rec['dec']:
            vae.decode(z).sample
        sync(device)

    return run


def pipeline_run(
    mod, unet, vae, imgs, masks, steps, device
):  # (pipeline, a closure running one call of it) of module `mod`
    pipe = mod.RegionalLatentPipeline(unet, vae, mod.sampling_scheduler(make_scheduler(), 'dpm'))

    def run():
        pipe(imgs, masks, num_inference_steps=steps, generator=0, output_type='np', progress=False)
        sync(device)

    return pipe, run


def best_times(
    runs: dict, repeats: int, warmup: int = 1
) -> dict:  # name -> fastest of `repeats` runs, interleaved, after warm-ups
    for f in runs.values():
        for _ in range(warmup):
            f()
    ts = {k: [] for k in runs}
    for _ in range(repeats):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in ts.items()}


def inside_overhead(
    run, unet, vae, device, repeats: int
) -> float:  # least (call time - time inside its model calls), s
    "The same overhead measured within single calls: the VAE/UNet calls timed with hooks (synchronised on a GPU)."
    spent, t0 = [0.0], [0.0]

    def start(*_):
        sync(device)
        t0[0] = time.perf_counter()

    def stop(*_):
        sync(device)
        spent[0] += time.perf_counter() - t0[0]

    hs = [m.register_forward_pre_hook(start) for m in (unet, vae.encoder, vae.decoder)]
    hs += [m.register_forward_hook(stop) for m in (unet, vae.encoder, vae.decoder)]
    best = float('inf')
    try:
        for _ in range(repeats):
            spent[0] = 0.0
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t - spent[0])
    finally:
        for h in hs:
            h.remove()
    return best


def machine(device) -> str:
    d = (
        torch.cuda.get_device_name(device)
        if torch.device(device).type == 'cuda'
        else (platform.processor() or platform.machine())
    )
    return f'{platform.platform()}, {d}, torch {torch.__version__}, {torch.get_num_threads()} torch threads'


def table(a, times: dict, inside: dict) -> str:
    opts = f"{a.preset}, {a.dtype}{', compile' if a.compile else ''}{', channels-last' if a.channels_last else ''}"
    rows = [
        '| code | device | models, dtype | batch | steps | pipeline tiles/s | models alone tiles/s | overhead ms/tile '
        '| overhead inside one call, ms/tile |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    tm = times.pop('models')
    for name, t in times.items():
        rows.append(
            f'| {name} | {a.device} | {opts} | {a.batch} | {a.steps} | {a.batch / t:.2f} | {a.batch / tm:.2f} | '
            f'{(t - tm) / a.batch * 1e3:.2f} | {inside[name] / a.batch * 1e3:.2f} |'
        )
    head = (
        f'## {a.device}, {opts}, batch {a.batch}, {a.tile} px, DPM-Solver++ {a.steps} steps\n\n'
        f'Machine: {machine(a.device)}. Fastest of {a.repeats} interleaved runs after warm-up '
        f'({time.strftime("%Y-%m-%d %H:%M")}).\n\n'
    )
    return head + '\n'.join(rows) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', default='fp32', choices=list(DTYPES))
    p.add_argument('--compile', action='store_true')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--tile', type=int, default=256)
    p.add_argument('--preset', default='tiny', choices=list(PRESETS))
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--baseline', default=None, help='git revision to time too')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'pipeline_overhead.md'))
    p.add_argument('--append', action='store_true')
    a = p.parse_args(argv)
    unet, vae = make_models(a)
    imgs, masks = tiles_and_masks(a.batch, a.tile)
    pipe, after = pipeline_run(regional, unet, vae, imgs, masks, a.steps, a.device)
    runs = {'models': models_alone(pipe, imgs, masks, a.steps, a.device)}
    if a.baseline:
        runs[f'before ({a.baseline})'] = pipeline_run(
            old_module(a.baseline), unet, vae, imgs, masks, a.steps, a.device
        )[1]
    runs['after (working tree)'] = after
    times = best_times(runs, a.repeats, 3 if a.compile else 1)
    inside = {k: inside_overhead(f, unet, vae, a.device, a.repeats) for k, f in runs.items() if k != 'models'}
    text = table(a, times, inside)
    print(text)
    out = Path(a.out)
    old = out.read_text() if a.append and out.exists() else HEADER
    with atomic_path(out) as tmp:
        Path(tmp).write_text(old.rstrip('\n') + '\n\n' + text)


if __name__ == '__main__':
    main()
