"""Star-Diff's single-path ablations (SPEC 3) sampled through the real pipeline with oracle networks.

An oracle stands in for a UNet: the residual oracle returns the true residual, the noise oracle the noise implied by
x_t and the true residual, eps = (x_t - x_in - (abar_t - 1) I_res) / bbar_t. The missing prediction must be derived
from x_t, x_in and the given one (never taken as 0), so every ablation recovers the target.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from histodiff.residual import oracle_sample
from histodiff.stardiff import StarDiffModel, StarDiffPipeline, StarDiffScheduler, unet_config


class Oracle(nn.Module):
    "A UNet stand-in fed `[x_t, x_in]` and t: the true residual (`kind='residual'`) or the implied noise (`'noise'`)."

    def __init__(self, scheduler, residual, kind):
        super().__init__()
        self.scheduler, self.residual, self.kind = scheduler, residual, kind
        self.dummy = nn.Parameter(torch.zeros(()))  # model.device / model.dtype read the parameters

    def forward(self, inp, t):
        c = inp.shape[1] // 2
        x_t, x_in = inp[:, :c], inp[:, c:]
        if self.kind == 'residual':
            return SimpleNamespace(sample=self.residual.expand_as(x_t))
        t = torch.as_tensor(t).cpu()
        a, b = self.scheduler.abar(t, x_t), self.scheduler.bbar(t, x_t)
        return SimpleNamespace(sample=(x_t - x_in - (a - 1) * self.residual) / b)


@pytest.fixture(scope='module')
def data():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 16, 16, generator=g) * 1.2 - 0.95  # IHC target in [-0.95, 0.25]
    res = 0.5 + 0.25 * (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1)  # mean 0.5 plus spatial variation
    return x0, x0 + res, res


def oracle_pipe(paths, res, sch=None):
    sch = sch or StarDiffScheduler()
    nets = {f'{k}_net': Oracle(sch, res, k) for k in ('residual', 'noise') if paths in ('both', k)}
    pipe = StarDiffPipeline(StarDiffModel(3, paths=paths, scheduler=sch, **nets))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize('n', [2, 10, 50])
def test_noise_only_recovers_the_residual(data, n):
    x0, x_in, res = data
    out = oracle_pipe('noise', res).sample(x_in, n, torch.Generator().manual_seed(1))
    assert abs((x_in - out).mean().item() - res.mean().item()) < 1e-4  # was 0.41 of 0.50 at 10 steps with gamma_t = 0
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_noise_only_one_step_returns_the_input_and_warns(data):
    x0, x_in, res = data
    with pytest.warns(UserWarning, match='unidentifiable'):
        out = oracle_pipe('noise', res).sample(x_in, 1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x_in, atol=1e-5, rtol=0)


@pytest.mark.parametrize('n', [1, 10, 50])
def test_residual_only_removes_the_noise(data, n):
    x0, x_in, res = data
    out = oracle_pipe('residual', res).sample(x_in, n, torch.Generator().manual_seed(1))
    assert abs((x_in - out).std().item() - res.std().item()) < 1e-5  # e_hat = 0 left the start noise in: 0.174 vs 0.144
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize('paths', ['both', 'residual', 'noise'])
def test_stochastic_sampling_lands_on_the_target(data, paths):
    x0, x_in, res = data
    out = oracle_pipe(paths, res).sample(x_in, 10, torch.Generator().manual_seed(2), eta=1.0)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        oracle_sample(StarDiffScheduler(), x0, x_in, 10, 1.0, torch.Generator().manual_seed(2), paths),
        x0,
        atol=1e-4,
        rtol=0,
    )


def test_first_step_from_T_is_finite_for_an_imperfect_noise_net(data):
    x0, x_in, res = data
    sch = StarDiffScheduler()
    sch.set_timesteps(10)
    x_T = sch.start_sample(x_in, torch.Generator().manual_seed(3))
    e_hat = (x_T - x_in) / 0.1 + 0.01  # the best prediction at T, plus an error
    out = sch.step(None, e_hat, 1000, x_T, x_in)
    assert out.pred_residual.abs().max() == 0  # r is unidentifiable at T: 0, not error / 1e-6
    torch.testing.assert_close(out.prev_sample, x_T - (0.1 - sch.bbar(900, x_T)) * e_hat)


def test_step_refuses_a_missing_prediction_without_x_in(data):
    x0, x_in, res = data
    sch = StarDiffScheduler()
    sch.set_timesteps(10)
    with pytest.raises(ValueError, match='x_in'):
        sch.step(None, torch.zeros_like(x0), 1000, x_in)
    with pytest.raises(ValueError, match='x_in'):
        sch.step(res, None, 1000, x_in)
    with pytest.raises(ValueError, match='neither'):
        sch.step(None, None, 1000, x_in, x_in)


@pytest.mark.parametrize('paths', ['residual', 'noise'])
def test_training_loss_agrees_with_the_sampling_identity(data, paths):
    "An oracle has zero training loss: training's x_t and the sampler's completion are the same identity."
    x0, x_in, res = data
    model = oracle_pipe(paths, res).model
    torch.manual_seed(0)
    assert model.training_loss({'he': x_in, 'ihc': x0}).item() < 1e-3


@pytest.mark.parametrize('paths', ['residual', 'noise'])
def test_single_path_models_save_and_load(tmp_path, paths):
    torch.manual_seed(0)
    pipe = StarDiffPipeline(StarDiffModel(3, unet_config(16, (16, 32), 1, 8, attention=False), paths=paths).eval())
    he = (torch.rand(1, 16, 16, 3) * 255).to(torch.uint8).numpy()
    ref = pipe.stain(he, num_inference_steps=3, generator=0)
    pipe.save_pretrained(tmp_path / 'p')
    pipe.model.save_pretrained(tmp_path / 'm')
    for sub in ('p', 'm'):
        loaded = StarDiffPipeline.from_pretrained(tmp_path / sub)
        assert loaded.model.paths == paths
        assert (loaded.stain(he, num_inference_steps=3, generator=0) == ref).all()
