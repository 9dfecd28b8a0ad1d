"""Training checkpoints are verified before a resume (a manifest of sizes and sha256, written last), a damaged or
half-written one is skipped with a message naming it, and a resumed run logs what the uninterrupted run logs.
The toy model of nbs/04_train.ipynb: a linear regression whose loss draws noise from the global RNG. Seconds."""

import json, warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from histodiff.train import TensorDictDataset, TrainConfig, fit, latest_checkpoint, list_checkpoints, verify_checkpoint

torch.set_num_threads(1)  # tiny model: one thread is faster


class Toy(nn.Module):
    """Linear regression with noisy targets (noise from the global RNG); raises at micro-batch `fail_at` (an
    interruption)."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.seen = []
        self.fail_at = fail_at

    def training_loss(self, batch):
        if self.fail_at is not None and len(self.seen) == self.fail_at:
            raise RuntimeError('simulated interruption')
        self.seen.append(batch['idx'].tolist())
        y = batch['x'].sum(1, keepdim=True) + 0.1 * torch.randn(len(batch['x']), 1)
        return F.mse_loss(self.lin(batch['x']), y)


def toy_data(n=10):
    g = torch.Generator().manual_seed(0)
    return TensorDictDataset(x=torch.randn(n, 4, generator=g), idx=torch.arange(n))


def toy_model(**kw):
    torch.manual_seed(1)
    return Toy(**kw)


def cfg(d, **kw):
    """6 steps of 2 micro-batches, a checkpoint every 2 steps (all kept), EMA, a batch size that does not divide the
    data."""
    return TrainConfig(
        str(d),
        **{
            **dict(
                max_steps=6,
                batch_size=3,
                gradient_accumulation_steps=2,
                learning_rate=0.05,
                checkpoint_every=2,
                keep_checkpoints=5,
                log_every=1,
                ema_decay=0.9,
                progress=False,
                seed=7,
            ),
            **kw,
        },
    )


def interrupted(d, fail_at=9, **kw):
    "A run that dies during step 5 (micro-batch 10), after its checkpoints at steps 2 and 4."
    with pytest.raises(RuntimeError, match='simulated'):
        fit(toy_model(fail_at=fail_at), toy_data(), cfg(d, **kw))


def resumed(d, **kw):
    "Resume run `d` with a fresh model; return (model, messages of the warnings raised)."
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        m = fit(toy_model(), toy_data(), cfg(d, **kw))
    return m, [str(x.message) for x in w]


def assert_same_weights(a, b):
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def metrics(d, name='loss'):
    "The rows (step, value) dvclive holds for metric `name` of run `d`."
    lines = (Path(d) / 'dvclive' / 'plots' / 'metrics' / f'{name}.tsv').read_text().splitlines()
    i, j = lines[0].split('\t').index('step'), lines[0].split('\t').index(name)
    return [(l.split('\t')[i], l.split('\t')[j]) for l in lines[1:] if l]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp('A')
    return d, fit(toy_model(), toy_data(), cfg(d))


@pytest.mark.parametrize('name', ['random_states_0.pkl', 'model.safetensors'])
def test_truncated_file_falls_back_to_previous_checkpoint(name, uninterrupted, tmp_path):
    d, a = uninterrupted
    interrupted(tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ['step_00000002', 'step_00000004']
    bad = tmp_path / 'checkpoints' / 'step_00000004' / name
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    b, msgs = resumed(tmp_path)
    assert any('step_00000004' in m and name in m and 'step_00000002' in m for m in msgs), msgs
    assert len(b.seen) == 8  # steps 3..6 retrained from the checkpoint at step 2
    assert_same_weights(a, b)
    assert metrics(tmp_path) == metrics(d)


def test_checkpoint_without_manifest_is_skipped(uninterrupted, tmp_path):
    "A run killed between writing its checkpoint's files and its manifest: that checkpoint is not complete."
    d, a = uninterrupted
    interrupted(tmp_path)
    ck = tmp_path / 'checkpoints' / 'step_00000004'
    assert (ck / 'manifest.json').exists() and verify_checkpoint(ck) is None
    (ck / 'manifest.json').unlink()
    assert 'manifest.json' in verify_checkpoint(ck)
    with pytest.warns(UserWarning, match='step_00000004'):
        assert latest_checkpoint(tmp_path).name == 'step_00000002'
    b, msgs = resumed(tmp_path)
    assert any('step_00000004' in m and 'manifest.json' in m for m in msgs), msgs
    assert len(b.seen) == 8
    assert_same_weights(a, b)


def test_no_complete_checkpoint_starts_afresh_with_a_message(uninterrupted, tmp_path):
    d, a = uninterrupted
    interrupted(tmp_path)
    for ck in list_checkpoints(tmp_path):
        (ck / 'optimizer.bin').write_bytes(b'')
    b, msgs = resumed(tmp_path)
    assert any('from scratch' in m for m in msgs), msgs
    assert len(b.seen) == 12
    assert_same_weights(a, b)
    assert [verify_checkpoint(ck) for ck in list_checkpoints(tmp_path)] == [None] * 3  # rewritten by the new run
    assert metrics(tmp_path) == metrics(d)


def test_resumed_run_logs_what_the_uninterrupted_run_logs(tmp_path):
    "The loss is averaged over the log window: a checkpoint inside a window (step 3 of 2-step windows) must carry it."
    kw = dict(max_steps=8, checkpoint_every=3, log_every=2)
    fit(toy_model(), toy_data(), cfg(tmp_path / 'A', **kw))
    interrupted(tmp_path / 'B', **kw)
    resumed(tmp_path / 'B', **kw)
    assert [s for s, _ in metrics(tmp_path / 'A')] == ['2', '4', '6', '8']
    assert metrics(tmp_path / 'B') == metrics(tmp_path / 'A')
    assert metrics(tmp_path / 'B', 'lr') == metrics(tmp_path / 'A', 'lr')


def test_exact_resume_and_old_checkpoints(uninterrupted, tmp_path):
    "Resume is exact; a checkpoint from before manifests resumes with a warning; a named damaged checkpoint is refused."
    d, a = uninterrupted
    interrupted(tmp_path)
    ck = tmp_path / 'checkpoints' / 'step_00000004'
    b, msgs = resumed(tmp_path)
    assert not [m for m in msgs if 'checkpoint' in m], msgs
    assert_same_weights(a, b)
    assert all(verify_checkpoint(c) is None for c in list_checkpoints(tmp_path))
    assert latest_checkpoint(tmp_path).name == 'step_00000006'
    # as written by histodiff before manifests: no manifest.json, no mention of it in trainer_state.json
    (ck / 'manifest.json').unlink()
    st = json.loads((ck / 'trainer_state.json').read_text())
    (ck / 'trainer_state.json').write_text(json.dumps({k: st[k] for k in ('step', 'micro', 'config')}))
    assert verify_checkpoint(ck) is None
    c, msgs = resumed(tmp_path / 'C', resume=str(ck))
    assert any('step_00000004' in m and 'cannot be verified' in m for m in msgs), msgs
    assert_same_weights(a, c)
    # a damaged checkpoint named explicitly is refused, naming the file
    bad = tmp_path / 'checkpoints' / 'step_00000002' / 'scheduler.bin'
    bad.write_bytes(bad.read_bytes() + b'x')
    with pytest.raises(ValueError, match='scheduler.bin'):
        fit(toy_model(), toy_data(), cfg(tmp_path / 'D', resume=str(bad.parent)))
