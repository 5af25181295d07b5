"""Shapes, conditioning, attention capture, overfitting and save/load of the networks (tiny preset)."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F

from emogen.config import EMOTIONS
from emogen.models import (
    ConditionalVAE,
    ResNetSER,
    SERConfig,
    UNet,
    UNetConfig,
    VAEConfig,
    crop_frames,
    pad_frames,
    set_store_attention,
    vae_loss,
)
from emogen.presets import PRESETS, model_configs

N_MELS = 128
NUM_CLASSES = len(EMOTIONS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cfgs():
    return model_configs("tiny")


def mels(b: int, frames: int, height: int = N_MELS, channels: int = 1) -> torch.Tensor:
    return torch.rand(b, channels, height, frames) * 2 - 1


def labels(b: int) -> torch.Tensor:
    return torch.arange(b) % NUM_CLASSES


# --- layers ---------------------------------------------------------------------------


@pytest.mark.parametrize("frames,multiple,padded", [(173, 8, 176), (176, 8, 176), (50, 4, 52), (1, 2, 2)])
def test_pad_and_crop_frames(frames, multiple, padded):
    x = torch.randn(2, 1, 8, frames)
    p, n = pad_frames(x, multiple)
    assert p.shape[-1] == padded and n == frames
    assert torch.equal(crop_frames(p, n), x)
    assert torch.equal(p[..., frames:], x[..., -1:].expand(*x.shape[:-1], padded - frames))  # the last frame repeated


# --- U-Net ----------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [173, 50])
def test_unet_output_shape_equals_input(cfgs, frames):
    model = UNet(cfgs["unet"]).eval()
    x = mels(2, frames)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 999]), labels(2))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_latent_channels_and_scalar_timestep():
    model = UNet(UNetConfig(in_channels=4, base_channels=8, channel_mults=(1, 2, 2), attention_levels=(1, 2), attention_heads=2)).eval()
    z = torch.randn(3, 4, 16, 22)
    with torch.no_grad():
        assert model(z, 500, labels(3)).shape == z.shape


def test_unet_rejects_height_not_divisible(cfgs):
    with pytest.raises(ValueError, match="height"):
        UNet(cfgs["unet"])(mels(1, 16, height=7), 0, labels(1))


def test_guidance_scale_one_is_the_conditional_model(cfgs):
    model = UNet(cfgs["unet"]).eval()
    x, t, y = mels(3, 22, height=16), torch.tensor([10, 500, 900]), labels(3)
    with torch.no_grad():
        cond = model(x, t, y)
        assert torch.equal(model.forward_with_cond_scale(x, t, y, 1.0), cond)
        uncond = model(x, t, None)
        guided = model.forward_with_cond_scale(x, t, y, 3.0)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond))


def test_dropped_labels_use_the_null_class(cfgs):
    model = UNet(cfgs["unet"]).eval()
    x, t, y = mels(3, 22, height=16), torch.tensor([1, 2, 3]), labels(3)
    null = torch.full((3,), model.null_class)
    assert model.null_class == NUM_CLASSES and model.class_emb.num_embeddings == NUM_CLASSES + 1
    with torch.no_grad():
        dropped = model(x, t, y, cond_drop_prob=1.0)
        assert torch.equal(dropped, model(x, t, null))
        assert torch.equal(dropped, model(x, t, None))
        assert not torch.allclose(dropped, model(x, t, y))


def test_label_dropout_defaults_to_config_in_training_only(cfgs):
    model = UNet(cfgs["unet"])
    x, t, y = mels(4, 22, height=16), torch.zeros(4, dtype=torch.long), labels(4)
    model.train()
    model.config = dataclasses.replace(cfgs["unet"], cond_drop_prob=1.0)  # always drop while training
    with torch.no_grad():
        assert torch.equal(model(x, t, y), model(x, t, None))
        model.eval()  # eval: no dropout whatever the config says
        assert torch.equal(model(x, t, y), model(x, t, y, cond_drop_prob=0.0))
        assert not torch.equal(model(x, t, y), model(x, t, None))


def test_unet_attention_weights_are_exposed(cfgs):
    model = UNet(cfgs["unet"]).eval()
    x = mels(2, 50, height=32)
    blocks = set_store_attention(model, True)
    assert blocks, "the tiny U-Net has attention layers"
    with torch.no_grad():
        out_stored = model(x, 0, labels(2))
    for block in blocks:
        attn = block.last_attention
        assert attn is not None and attn.shape[0] == 2 and attn.shape[1] == block.heads
        assert attn.shape[-1] == attn.shape[-2]
        torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)))
    # capturing weights must not change the result (manual softmax vs fused kernel)
    set_store_attention(model, False)
    with torch.no_grad():
        out_fused = model(x, 0, labels(2))
    torch.testing.assert_close(out_stored, out_fused, atol=1e-5, rtol=1e-4)
    assert all(b.last_attention is None for b in blocks)
    out, attn = blocks[0](torch.randn(1, blocks[0].qkv.in_channels, 4, 6), return_attention=True)
    assert out.shape == (1, blocks[0].qkv.in_channels, 4, 6) and attn.shape == (1, blocks[0].heads, 24, 24)


# --- VAE ------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [173, 50])
def test_vae_shapes(cfgs, frames):
    model = ConditionalVAE(cfgs["vae"]).eval()
    x = mels(2, frames)
    with torch.no_grad():
        recon, mu, logvar = model(x, labels(2))
        assert recon.shape == x.shape and mu.shape == logvar.shape == (2, *model.latent_shape(frames))
        assert recon.abs().max() <= 1.0  # tanh output stays in the mels' range
        z = model.reparameterize(mu, logvar)
        assert model.decode(z, labels(2), frames=frames).shape == x.shape
        assert model.decode(z, labels(2)).shape[-1] == z.shape[-1] * cfgs["vae"].downsample_factor


def test_vae_latent_is_spatial_4x16x22():
    model = ConditionalVAE(VAEConfig(base_channels=8, class_emb_dim=16))
    assert model.latent_shape(173) == (4, 16, 22)


def test_vae_sample_chosen_emotion(cfgs):
    model = ConditionalVAE(cfgs["vae"])
    fear = EMOTIONS.index("fear")
    g = torch.Generator().manual_seed(3)
    out = model.sample(torch.full((3,), fear), frames=173, generator=g)
    assert out.shape == (3, 1, N_MELS, 173) and torch.isfinite(out).all()
    again = model.sample(torch.full((3,), fear), frames=173, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    # the label reaches the decoder
    other = model.sample(torch.full((3,), EMOTIONS.index("anger")), frames=173, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(out, other)


def test_vae_latent_distribution_is_fit_per_emotion_and_sampled_from(cfgs):
    from emogen.models.vae import LatentStatistics

    model = ConditionalVAE(cfgs["vae"]).eval()
    shape = model.latent_mean.shape[1:]
    assert not model.latent_distribution_fitted
    g = torch.Generator().manual_seed(0)
    mu = torch.randn((7, *shape), generator=g) * 3 + 5
    classes = torch.tensor([0, 0, 0, 2, 2, 2, 2])
    stats = LatentStatistics()
    stats.add(mu[:4], classes[:4], 6)  # two batches add up to one pass
    stats.add(mu[4:], classes[4:], 6)
    model.fit_latent_distribution(stats.sums, stats.squares, stats.counts)
    assert model.latent_distribution_fitted and model.latent_count.tolist() == [3, 0, 4, 0, 0, 0]
    for k in (0, 2):
        assert torch.allclose(model.latent_mean[k], mu[classes == k].mean(0), atol=1e-5)
        assert torch.allclose(model.latent_std[k], mu[classes == k].std(0, unbiased=False), atol=1e-4)
    # an emotion without clips keeps N(0, I)
    assert model.latent_mean[1].abs().max() == 0 and torch.all(model.latent_std[1] == 1)

    noise = torch.randn((2, *shape), generator=g)
    latents = model.latents_from_noise(noise, torch.tensor([2, 1]))
    assert torch.allclose(latents[0], model.latent_mean[2] + model.latent_std[2] * noise[0]) and torch.equal(latents[1], noise[1])
    posterior = model.sample(torch.tensor([2]), generator=torch.Generator().manual_seed(1))
    prior = model.sample(torch.tensor([2]), generator=torch.Generator().manual_seed(1), latent="prior")
    z = model.latents_from_noise(torch.randn((1, *shape), generator=torch.Generator().manual_seed(1)), torch.tensor([2]))
    assert torch.allclose(posterior, model.decode(z, torch.tensor([2]), 173)) and not torch.allclose(posterior, prior)
    with pytest.raises(ValueError, match="latent must be one of posterior, prior"):
        model.sample(torch.tensor([2]), latent="aggregate")
    with pytest.raises(ValueError, match="173-frame clips"):
        model.latents_from_noise(torch.randn(1, shape[0], shape[1], 3), torch.tensor([0]))


def test_vae_latent_principal_directions_capture_how_positions_move_together(cfgs):
    """Encoder means of one emotion that vary along one hidden direction (plus small
    independent noise): the fitted distribution finds that direction and its spread, and
    its samples reproduce the correlation a per-element Gaussian would lose."""
    import dataclasses

    from emogen.models.vae import LatentStatistics

    model = ConditionalVAE(dataclasses.replace(cfgs["vae"], latent_components=2)).eval()
    shape = model.latent_mean.shape[1:]
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(shape, generator=g)
    direction /= direction.norm()
    amount = torch.randn(200, generator=g) * 4.0
    mu = 1.0 + amount.view(-1, 1, 1, 1) * direction + 0.05 * torch.randn((200, *shape), generator=g)
    labels = torch.full((200,), 3)
    stats = LatentStatistics(keep_latents=True)
    stats.add(mu[:120], labels[:120], 6)
    stats.add(mu[120:], labels[120:], 6)
    model.fit_latent_distribution(stats.sums, stats.squares, stats.counts, *stats.latents)
    top = model.latent_basis[3, 0]
    assert abs(float(top @ direction.flatten())) > 0.99 and model.latent_scales[3, 0] == pytest.approx(4.0, rel=0.15)
    total = model.latent_std[3] ** 2 + (model.latent_basis[3] * model.latent_scales[3, :, None]).pow(2).sum(0).view(shape)
    assert torch.allclose(total, mu.var(0, unbiased=False), rtol=1e-3, atol=1e-6)  # the variance is split, not lost
    assert model.latent_basis[0].abs().max() == 0  # no clips of emotion 0: no directions

    samples = model.latents_from_noise(torch.randn((4000, *shape), generator=g), torch.full((4000,), 3))
    along = (samples - model.latent_mean[3]).flatten(1) @ direction.flatten()
    assert along.std() == pytest.approx(4.0, rel=0.15)  # the spread along the hidden direction is kept
    i, j = direction.flatten().abs().topk(2).indices.tolist()  # two positions the direction moves together
    pair = (samples - model.latent_mean[3]).flatten(1)[:, [i, j]]
    assert abs(float(torch.corrcoef(pair.T)[0, 1])) > 0.5
    plain = ConditionalVAE(dataclasses.replace(cfgs["vae"], latent_components=0)).eval()  # a per-element Gaussian
    assert LatentStatistics().latents == (None, None) and plain.latent_basis.shape[1] == 0


def test_vae_loads_weights_saved_before_the_latent_distribution(cfgs):
    model = ConditionalVAE(cfgs["vae"])
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("latent_")}
    again = ConditionalVAE(cfgs["vae"])
    again.load_state_dict(old)  # strict: the missing buffers are the unfitted distribution
    assert not again.latent_distribution_fitted and torch.equal(again.latent_std, torch.ones_like(again.latent_std))


def test_vae_loss_terms(cfgs):
    x = mels(2, 50)
    mu, logvar = torch.zeros(2, 4, 16, 7), torch.zeros(2, 4, 16, 7)
    terms = vae_loss(x, x, mu, logvar)
    assert set(terms) == {"loss", "recon", "spectral", "kl"}
    assert terms["loss"].item() == 0.0  # perfect recon, posterior == prior
    mu1 = torch.ones_like(mu)
    assert vae_loss(x, x, mu1, logvar)["kl"].item() == pytest.approx(0.5)  # per element, not summed
    assert vae_loss(x, x, mu1, logvar, kl_weight=0.0)["loss"].item() == 0.0  # warm-up factor
    with pytest.raises(ValueError):
        vae_loss(x[..., :10], x, mu, logvar)


# --- SER ------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [173, 50])
def test_ser_shapes_and_embedding(cfgs, frames):
    model = ResNetSER(cfgs["ser"]).eval()
    x = mels(3, frames)
    with torch.no_grad():
        logits, emb = model(x), model.embed(x)
    assert logits.shape == (3, NUM_CLASSES)
    assert emb.shape == (3, cfgs["ser"].embed_dim) == (3, cfgs["ser"].widths[-1])
    torch.testing.assert_close(model.head(emb), logits)  # forward = head(embed) in eval mode


@pytest.mark.parametrize("frames", [173, 50])
def test_ser_stats_pooling_doubles_the_embedding(cfgs, frames):
    cfg = dataclasses.replace(cfgs["ser"], pooling="stats")
    model = ResNetSER(cfg).eval()
    x = mels(3, frames)
    with torch.no_grad():
        logits, emb = model(x), model.embed(x)
    assert cfg.embed_dim == 2 * cfg.widths[-1]
    assert emb.shape == (3, cfg.embed_dim) and logits.shape == (3, NUM_CLASSES)
    torch.testing.assert_close(model.head(emb), logits)
    with torch.no_grad():  # mean and std over time of the frequency-averaged last feature map
        h = model.stages(model.stem(x)).mean(dim=-2)
    torch.testing.assert_close(emb[:, : cfg.widths[-1]], h.mean(dim=-1))
    torch.testing.assert_close(emb[:, cfg.widths[-1] :] ** 2, h.var(dim=-1, unbiased=False), atol=2e-5, rtol=1e-3)
    with pytest.raises(ValueError, match="pooling"):
        dataclasses.replace(cfgs["ser"], pooling="max")


def _normalized_ser(cfgs) -> ResNetSER:
    model = ResNetSER(dataclasses.replace(cfgs["ser"], input_norm=True, pooling="stats")).eval()
    model.set_input_stats(torch.linspace(-0.5, 0.5, N_MELS), torch.linspace(0.1, 2.0, N_MELS))
    return model


def test_ser_input_norm_standardizes_each_band(cfgs):
    model = _normalized_ser(cfgs)
    x = mels(2, 40)
    expected = (x - torch.linspace(-0.5, 0.5, N_MELS)[:, None]) / torch.linspace(0.1, 2.0, N_MELS)[:, None]
    torch.testing.assert_close(model.normalize(x), expected)
    plain = ResNetSER(dataclasses.replace(cfgs["ser"], pooling="stats")).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("input_")})
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), plain.embed(expected))
    with pytest.raises(ValueError, match="input_norm"):
        plain.set_input_stats(torch.zeros(N_MELS), torch.ones(N_MELS))


def test_ser_input_stats_live_in_the_checkpoint_and_the_classifier_applies_them(cfgs, tmp_path):
    from emogen.checkpoint import save_state
    from emogen.inference.classifier import SERClassifier

    model = _normalized_ser(cfgs)
    state = {"model_name": "ser", "configs": {"ser": dataclasses.asdict(model.config)}, "model": model.state_dict()}
    save_state(tmp_path, state)
    classifier = SERClassifier.from_checkpoint(tmp_path)
    torch.testing.assert_close(classifier.model.input_mean, model.input_mean)
    torch.testing.assert_close(classifier.model.input_std, model.input_std)
    x = mels(3, 40)
    probs, emb = classifier.predict(x[:, 0].numpy())
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(emb), model.embed(x))
        torch.testing.assert_close(torch.from_numpy(probs), torch.softmax(model(x), dim=1))
    fresh = ResNetSER(model.config).eval()  # unset stats: identity, so outputs differ
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("input_")}, strict=False)
    with torch.no_grad():
        assert not torch.allclose(fresh.embed(x), torch.from_numpy(emb))


# --- overfitting: each loss falls on a few fixed examples -------------------------------


def _overfit(model, loss_fn, steps: int, lr: float = 3e-3) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    first = sum(losses[:3]) / 3
    last = sum(losses[-3:]) / 3
    return first, last


def test_vae_overfits(cfgs):
    # 32 bands keep this fast; the architecture is the same
    model = ConditionalVAE(dataclasses.replace(cfgs["vae"], n_mels=32)).train()
    # smooth, structured targets (like mels), not white noise
    ramp = torch.linspace(-1, 1, 32)[:, None] * torch.linspace(0.5, 1.5, 4)[:, None, None, None]
    x = torch.tanh(torch.randn(4, 1, 1, 1) + ramp + torch.zeros(4, 1, 32, 24))
    y = labels(4)

    def loss_fn():
        recon, mu, logvar = model(x, y)
        return vae_loss(recon, x, mu, logvar)["loss"]

    first, last = _overfit(model, loss_fn, steps=40)
    assert last < 0.5 * first


def test_ser_overfits(cfgs):
    model = ResNetSER(cfgs["ser"]).train()
    x, y = mels(6, 24, height=32), labels(6)
    first, last = _overfit(model, lambda: F.cross_entropy(model(x), y), steps=40, lr=1e-2)
    assert last < 0.5 * first


# --- save / load ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unet", "vae", "ser"])
def test_state_dict_round_trip(cfgs, name):
    build = {"unet": UNet, "vae": ConditionalVAE, "ser": ResNetSER}[name]
    model = build(cfgs[name]).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    clone = build(cfgs[name]).eval()
    clone.load_state_dict(torch.load(buf, weights_only=True))
    x, y = mels(2, 50, height=32), labels(2)
    with torch.no_grad():
        if name == "unet":
            a, b = model(x, 7, y), clone(x, 7, y)
        elif name == "vae":
            a, b = model(x, y)[0], clone(x, y)[0]
        else:
            a, b = model(x), clone(x)
    assert torch.equal(a, b)


# --- presets --------------------------------------------------------------------------


def test_presets_build_and_validate():
    assert set(PRESETS) >= {"tiny", "demo", "paper"}
    demo = model_configs("demo")
    assert demo["diffusion"].space == "latent" and demo["unet"].in_channels == demo["vae"].latent_channels
    assert model_configs("paper")["diffusion"].space == "mel"
    over = model_configs("tiny", {"unet": {"base_channels": 16, "channel_mults": [1, 2], "attention_levels": [1]}, "train_ser": {"epochs": 3}})
    assert over["unet"].base_channels == 16 and over["unet"].channel_mults == (1, 2)
    with pytest.raises(ValueError, match="tiny"):
        model_configs("huge")
    with pytest.raises(ValueError, match="unknown UNetConfig"):
        model_configs("tiny", {"unet": {"no_such_field": 1}})
    with pytest.raises(ValueError, match="latent_channels"):
        model_configs("demo", {"vae": {"latent_channels": 8}})
    assert isinstance(model_configs("tiny")["ser"], SERConfig)
    # model_configs must not mutate the shared preset data
    assert PRESETS["tiny"]["unet"]["base_channels"] == 8


def test_every_network_has_a_training_task_and_rebuilds_from_a_checkpoint(cfgs):
    from emogen.checkpoint import build_model
    from emogen.models import NETWORKS
    from emogen.training import MODELS

    assert set(MODELS) == set(NETWORKS)
    ser = build_model("ser", {"ser": dataclasses.asdict(cfgs["ser"])})
    assert isinstance(ser, NETWORKS["ser"].network)
