"""EmotionGenerator: the pipeline a checkpoint's state picks, one seeded call for all of
them, and the parameter objects the CLI's generate/attention options come from."""

from __future__ import annotations

import copy
import dataclasses
import typing

import numpy as np
import pytest
import torch

from emogen.inference.config import AttentionConfig, GenerateConfig, SamplingOptions
from emogen.inference.generator import (
    EmotionGenerator,
    LatentDiffusionPipeline,
    MelDiffusionPipeline,
    VAEPipeline,
)
from emogen.inference.schema import SamplingRequest
from emogen.models.diffusion import SAMPLERS, DiffusionConfig
from emogen.models.vae import ConditionalVAE
from tests.inference.checkpoints import diffusion_state, latent_diffusion_state, vae_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def generators() -> dict[str, EmotionGenerator]:
    return {"mel": EmotionGenerator(diffusion_state()), "latent": EmotionGenerator(latent_diffusion_state()),
            "vae": EmotionGenerator(vae_state(audio={}))}


def test_the_state_picks_the_pipeline(generators):
    mel, latent, vae = generators["mel"].pipeline, generators["latent"].pipeline, generators["vae"].pipeline
    assert type(mel) is MelDiffusionPipeline and type(latent) is LatentDiffusionPipeline and type(vae) is VAEPipeline
    assert latent.latent_scale == 0.5 and latent.decoder.vae is generators["latent"].vae
    assert generators["mel"].vae is None and generators["vae"].unet is None
    assert generators["mel"].sample_shape == (1, 32, 44)
    assert generators["latent"].sample_shape == generators["latent"].vae.latent_shape(generators["latent"].audio.num_frames)
    for generator in generators.values():  # inference only: eval mode, no gradients
        for module in (generator.unet, generator.vae):
            assert module is None or (not module.training and not any(p.requires_grad for p in module.parameters()))
    with pytest.raises(ValueError, match="not a generator"):
        EmotionGenerator({**vae_state(), "model_name": "ser"})


@pytest.mark.parametrize("kind", ["mel", "latent", "vae"])
def test_every_pipeline_is_seeded_and_returns_clamped_mels(generators, kind):
    generator = generators[kind]
    mels = generator.generate(["fear", "anger"], steps=3, seed=2)
    assert mels.shape == (2, generator.audio.n_mels, generator.audio.num_frames) and mels.dtype == np.float32
    assert mels.min() >= -1 and mels.max() <= 1
    np.testing.assert_array_equal(mels, generator.generate(["fear", "anger"], steps=3, seed=2))
    assert not np.array_equal(mels, generator.generate(["fear", "anger"], steps=3, seed=3))
    # a row drawn from its own generator, in fixed chunks, does not depend on its batch mates
    rows = generator.generate_rows([4, 0, 4], [torch.Generator().manual_seed(s) for s in (7, 8, 7)], steps=3, chunk_rows=2)
    alone = generator.generate_rows([4], [torch.Generator().manual_seed(7)], steps=3, chunk_rows=2)
    np.testing.assert_array_equal(rows[0], alone[0])
    np.testing.assert_array_equal(rows[2], alone[0])


def test_the_latent_pipeline_decodes_the_scaled_diffusion_samples(generators):
    """latent diffusion = the U-Net's samples / latent_scale through the VAE decoder."""
    generator = generators["latent"]
    pipeline = generator.pipeline
    labels = torch.tensor([1, 5])
    options = SamplingOptions(steps=3)
    latents = pipeline.denoise(labels, torch.Generator().manual_seed(4), options)
    expected = pipeline.decoder.decode(latents / pipeline.latent_scale, labels)[:, 0].clamp(-1, 1).numpy()
    np.testing.assert_array_equal(generator.generate_rows(labels, torch.Generator().manual_seed(4), steps=3), expected)


def test_a_vae_swapped_on_a_copy_leaves_the_original(generators):
    """What benchmarks/vae_latent.py does: copy.copy the generator and give it another VAE."""
    for kind in ("vae", "latent"):
        original = generators[kind]
        other_vae = ConditionalVAE(original.vae.config).eval().requires_grad_(False)
        other = copy.copy(original)
        other.vae = other_vae
        assert other.vae is other_vae and original.vae is not other_vae
    with pytest.raises(AttributeError):
        copy.copy(generators["mel"]).vae = other_vae


def test_the_vae_latent_source_is_checked(generators):
    with pytest.raises(ValueError, match="vae_latent must be one of posterior, prior"):
        generators["vae"].generate("fear", vae_latent="both")


def test_sampling_options_take_the_checkpoints_defaults():
    config = DiffusionConfig(sampler="dpm", num_inference_steps=12, guidance_scale=2.0, eta=0.3)
    assert SamplingOptions().with_defaults(config) == SamplingOptions(sampler="dpm", steps=12, guidance_scale=2.0, eta=0.3)
    given = SamplingOptions(sampler="ddpm", steps=4, guidance_scale=0.0, eta=0.0)
    assert given.with_defaults(config) == given  # 0 is a value, not "unset" (except steps)
    assert GenerateConfig(checkpoint="c", steps=5).sampling == SamplingOptions(steps=5)


def test_one_list_of_samplers():
    """The CLI's --sampler choices, the request schema and the configs name the same samplers."""
    assert dataclasses.fields(SamplingOptions)[0].metadata["choices"] == list(SAMPLERS)
    request_samplers = typing.get_args(typing.get_args(SamplingRequest.model_fields["sampler"].annotation)[0])
    assert set(request_samplers) == set(SAMPLERS)


def test_generate_and_attention_configs_keep_the_cli_defaults():
    """The defaults `emogen generate` and `emogen attention` had before they were built from these fields."""
    generate = GenerateConfig(checkpoint="c")
    assert (generate.emotion, generate.num_samples, generate.seed, generate.vae_latent, str(generate.out)) == \
        ("all", 4, 0, "posterior", "runs/samples")
    assert generate.sampling == SamplingOptions() and generate.tracking_uri is None and generate.device == "auto"
    attention = AttentionConfig(checkpoint="c", emotion="fear")
    assert attention.steps_to_capture is None and attention.seed == 0 and attention.sampling == SamplingOptions()
    assert str(attention.png_path) == "runs/attention/fear_0.png"
    assert AttentionConfig(checkpoint="c", emotion="fear", out="x.png").png_path == "x.png"
