"""Noise schedule, samplers, seeded sampling, guidance and the diffusion loss (tiny sizes)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from emogen.models.diffusion import DiffusionConfig, diffusion_loss, make_sampler, make_train_scheduler, sample
from emogen.models import UNet
from emogen.presets import model_configs

SHAPE = (1, 16, 22)  # per item: small, and 22 frames exercise the U-Net's padding


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> UNet:
    torch.manual_seed(0)
    return UNet(model_configs("tiny")["unet"]).eval()


def test_train_scheduler_is_the_spec_schedule():
    sch = make_train_scheduler(DiffusionConfig())
    assert isinstance(sch, DDPMScheduler)
    assert sch.config.num_train_timesteps == 1000 and sch.config.prediction_type == "epsilon"
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(sch.betas.double(), betas, rtol=0, atol=1e-7)


def test_add_noise_matches_closed_form():
    sch = make_train_scheduler(DiffusionConfig())
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 1, 8, 10, generator=g), torch.randn(4, 1, 8, 10, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    a = abar[t].float()[:, None, None, None]
    expected = a.sqrt() * x0 + (1 - a).sqrt() * eps
    torch.testing.assert_close(sch.add_noise(x0, eps, t), expected, rtol=1e-5, atol=1e-5)
    assert abar[-1] < 1e-4  # the chain ends near pure noise


def test_clip_sample_follows_space():
    assert make_train_scheduler(DiffusionConfig(space="mel")).config.clip_sample is True
    assert make_train_scheduler(DiffusionConfig(space="latent")).config.clip_sample is False
    with pytest.raises(ValueError):
        DiffusionConfig(space="wave")


@pytest.mark.parametrize("name,cls", [("ddpm", DDPMScheduler), ("ddim", DDIMScheduler), ("dpm", DPMSolverMultistepScheduler)])
def test_make_sampler_shares_the_training_schedule(name, cls):
    train = make_train_scheduler(DiffusionConfig(beta_end=0.03))
    sampler = make_sampler(name, train_scheduler=train)
    assert isinstance(sampler, cls)
    torch.testing.assert_close(sampler.alphas_cumprod, train.alphas_cumprod)
    assert sampler is not make_sampler(name, train_scheduler=train)  # stateful: fresh each time


def test_unknown_sampler():
    with pytest.raises(ValueError, match="ddim"):
        make_sampler("euler")


@pytest.mark.parametrize("name,steps", [("ddpm", 8), ("ddim", 5), ("dpm", 5)])
def test_sample_shape_finite_and_seeded(model, name, steps):
    sch = make_sampler(name)
    labels = torch.tensor([0, 3, 5])
    calls = []
    a = sample(model, sch, labels, SHAPE, steps, seed=1, progress=lambda i, n: calls.append((i, n)))
    assert a.shape == (3, *SHAPE) and torch.isfinite(a).all()
    assert calls == [(i + 1, steps) for i in range(steps)]
    b = sample(model, make_sampler(name), labels, SHAPE, steps, seed=1)
    c = sample(model, sch, labels, SHAPE, steps, seed=2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sample_full_shape_eta_and_guidance(model):
    labels = [1, 2]
    ddim = make_sampler("ddim")
    x0 = sample(model, ddim, labels, (2, *SHAPE), 4, eta=0.0, seed=0)
    x1 = sample(model, ddim, labels, (2, *SHAPE), 4, eta=1.0, seed=0)
    assert not torch.allclose(x0, x1)  # eta reaches DDIM
    g = sample(model, ddim, labels, (2, *SHAPE), 4, guidance_scale=3.0, seed=0)
    assert torch.isfinite(g).all() and not torch.allclose(g, x0)
    unc = sample(model, ddim, None, (2, *SHAPE), 4, seed=0)
    assert unc.shape == (2, *SHAPE)
    with pytest.raises(ValueError):
        sample(model, ddim, labels, (3, *SHAPE), 4)
    assert not model.training  # sample restores the mode it found


def test_sample_guidance_one_equals_conditional_model(model):
    # guidance 1 must be exactly the conditional network: no uncond pass mixed in
    class CondOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t, labels):
            return self.inner(x, t, labels, cond_drop_prob=0.0)

    labels = torch.tensor([0, 4])
    a = sample(model, make_sampler("ddim"), labels, SHAPE, 4, guidance_scale=1.0, seed=5)
    b = sample(CondOnly(model), make_sampler("ddim"), labels, SHAPE, 4, seed=5)
    assert torch.equal(a, b)


def test_diffusion_loss_is_seeded_and_falls_when_overfitting():
    torch.manual_seed(0)
    net = UNet(model_configs("tiny")["unet"]).train()
    sch = make_train_scheduler(DiffusionConfig())
    g = torch.Generator().manual_seed(0)
    x0 = torch.tanh(2 * torch.randn(4, *SHAPE, generator=g))
    labels = torch.arange(4)

    def fixed_loss() -> float:
        net.eval()
        with torch.no_grad():
            value = diffusion_loss(net, sch, x0.repeat(4, 1, 1, 1), labels.repeat(4), generator=torch.Generator().manual_seed(123)).item()
        net.train()
        return value

    assert fixed_loss() == fixed_loss()
    before = fixed_loss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        loss = diffusion_loss(net, sch, x0, labels, generator=g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        opt.step()
    assert fixed_loss() < 0.5 * before


def test_sample_rows_do_not_depend_on_batch_mates(model):
    # one generator per row and fixed-size model chunks: a row comes out the same alone
    # or beside others (DDPM: per-step noise drawn per row too)
    def run(seeds, labels):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return sample(model, make_sampler("ddpm"), labels, SHAPE, 3, generator=generators, model_chunk_rows=2)

    batch = run([1, 2, 3], [0, 3, 5])
    assert torch.equal(run([2], [3])[0], batch[1])
    assert torch.equal(run([3, 1], [5, 0]), batch[[2, 0]])
    with pytest.raises(ValueError, match="generators"):
        sample(model, make_sampler("ddim"), [0, 1], SHAPE, 2, generator=[torch.Generator()])


def test_min_snr_weights_follow_the_prediction_type_and_a_large_gamma_is_plain_mse():
    from emogen.models.diffusion import DiffusionConfig, diffusion_loss, make_train_scheduler, min_snr_weights

    t = torch.tensor([0, 100, 500, 999])
    for kind in ("epsilon", "v_prediction", "sample"):
        scheduler = make_train_scheduler(DiffusionConfig(prediction_type=kind))
        alpha_bar = scheduler.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        expected = {"epsilon": snr.clamp(max=5) / snr, "v_prediction": snr.clamp(max=5) / (snr + 1), "sample": snr.clamp(max=5)}[kind]
        assert torch.allclose(min_snr_weights(scheduler, t, 5.0), expected)
    eps = make_train_scheduler(DiffusionConfig())
    w = min_snr_weights(eps, t, 5.0)
    assert w[0] < 0.01 and w[-1] == pytest.approx(1.0)  # nearly clean steps count little, noisy ones fully

    class Zero(torch.nn.Module):
        def forward(self, x, t, labels):
            return torch.zeros_like(x)

    x0 = torch.randn(64, 1, 8, 8)  # 64 random timesteps: some well above SNR 0.1
    plain = diffusion_loss(Zero(), eps, x0, None, generator=torch.Generator().manual_seed(0))
    huge = diffusion_loss(Zero(), eps, x0, None, generator=torch.Generator().manual_seed(0), snr_gamma=1e12)
    weighted = diffusion_loss(Zero(), eps, x0, None, generator=torch.Generator().manual_seed(0), snr_gamma=0.1)
    assert huge.item() == pytest.approx(plain.item(), rel=1e-5) and weighted.item() < plain.item()
