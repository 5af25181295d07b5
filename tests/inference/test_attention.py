"""Attention maps of the diffusion U-Net (emogen.inference.attention, `emogen attention`).

An untrained tiny U-Net is enough: the properties checked (shapes, softmax rows, which
steps and which pass are captured, an unchanged clip, a written PNG) do not depend on
training, so no Ray and no training run. Short 1-s clips of 32 mel bands keep every
sampling loop at a few milliseconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from emogen.checkpoint import save_state
from emogen.inference.attention import AttentionMaps, attention_png, attention_to_image, capture_attention, plot_attention
from emogen.inference.generator import EmotionGenerator
from emogen.models import AttentionBlock
from tests.inference.checkpoints import diffusion_state, vae_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRIDS = {"down2": (8, 12), "down3": (4, 6), "mid": (4, 6), "up3": (4, 6), "up2": (8, 12)}  # 44 frames padded to 48


@pytest.fixture(scope="module")
def generator() -> EmotionGenerator:
    return EmotionGenerator(diffusion_state())


@pytest.fixture(scope="module")
def maps(generator) -> AttentionMaps:
    return capture_attention(generator, "fear", steps_to_capture=[0, 2, 4], steps=5, guidance_scale=1.0)


def test_one_head_averaged_hw_by_hw_map_per_block_and_captured_step(maps):
    assert maps.grids == GRIDS and maps.blocks == list(GRIDS)  # forward order, named by level
    assert maps.step_indices == [0, 2, 4]
    timesteps = [s.timestep for s in maps.steps]
    assert timesteps == sorted(timesteps, reverse=True) and len(set(timesteps)) == 3  # noisy first
    assert maps.mel.shape == (32, 44)
    for step in maps.steps:
        assert list(step.weights) == maps.blocks
        for name, weights in step.weights.items():
            h, w = maps.grids[name]
            assert weights.shape == (h * w, h * w)
            assert (weights >= 0).all()
            np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)


def test_default_steps_are_the_first_middle_and_last(generator):
    assert capture_attention(generator, "anger", steps=5).step_indices == [0, 2, 4]
    assert capture_attention(generator, "anger", steps=10).step_indices == [0, 5, 9]


def test_attention_to_image(maps):
    weights, grid = maps.steps[0].weights["down2"], maps.grids["down2"]
    mean = attention_to_image(weights, grid, "mean")
    assert mean.shape == grid
    assert mean.sum() == pytest.approx(1.0, abs=1e-5)
    query = 3 * grid[1] + 5  # frequency row 3, time column 5
    one = attention_to_image(weights, grid, query)
    np.testing.assert_array_equal(one, weights[query].reshape(grid))
    assert one.sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="do not match grid"):
        attention_to_image(weights, (4, 6))
    with pytest.raises(ValueError, match="outside"):
        attention_to_image(weights, grid, grid[0] * grid[1])


def test_capture_leaves_the_clip_unchanged_and_nothing_switched_on(generator):
    """Bit-identical to plain generation, with guidance (two U-Net passes per step) too;
    afterwards no hook is left and no block stores weights."""
    for scale in (1.0, 3.0):
        plain_mel = generator.generate("fear", 1, steps=5, guidance_scale=scale, seed=3)[0]
        captured = capture_attention(generator, "fear", [0, 1, 2, 3, 4], seed=3, steps=5, guidance_scale=scale)
        np.testing.assert_array_equal(captured.mel, plain_mel)
    unet = generator.unet
    blocks = [m for m in unet.modules() if isinstance(m, AttentionBlock)]
    assert len(blocks) == len(GRIDS)
    assert all(not b.store_attention and b.last_attention is None and not b._forward_hooks for b in blocks)
    assert not unet.time_mlp._forward_pre_hooks and not unet.class_emb._forward_pre_hooks


def test_guidance_maps_are_from_the_conditional_pass(generator):
    """At step 0 both runs see the same noise, so the conditional pass of a guided run
    attends exactly as the unguided run (which has only that pass); the unconditional
    pass, run last, would not: the untrained null-class embedding differs from fear's."""
    unguided = capture_attention(generator, "fear", [0], steps=5, guidance_scale=1.0)
    guided = capture_attention(generator, "fear", [0], steps=5, guidance_scale=3.0)
    for name in GRIDS:
        np.testing.assert_array_equal(guided.steps[0].weights[name], unguided.steps[0].weights[name])
    other = capture_attention(generator, "sadness", [0], steps=5, guidance_scale=1.0)
    assert not np.allclose(other.steps[0].weights["mid"], unguided.steps[0].weights["mid"])  # the label matters


def test_bad_requests_raise_value_error(generator):
    with pytest.raises(ValueError, match="VAE checkpoint"):
        capture_attention(EmotionGenerator(vae_state()), "fear")
    with pytest.raises(ValueError, match=r"0\.\.4"):
        capture_attention(generator, "fear", [0, 5], steps=5)
    with pytest.raises(ValueError, match="unknown emotion"):
        capture_attention(generator, "terror", steps=5)


def test_plot_writes_a_png(maps, tmp_path):
    path = plot_attention(maps, tmp_path / "new" / "dir" / "fear.png")
    assert path == tmp_path / "new" / "dir" / "fear.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert [p.name for p in path.parent.iterdir()] == ["fear.png"]  # no temp file left behind


def test_attention_png_is_the_png_plot_attention_writes(maps, tmp_path):
    """The service's bytes and the CLI's file come from one figure: same PNG."""
    png = attention_png(maps)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert plot_attention(maps, tmp_path / "fear.png").read_bytes() == png


def test_cli_writes_the_png_and_prints_a_summary(tmp_path, capsys):
    from emogen.cli.main import main

    save_state(tmp_path / "ckpt", diffusion_state())
    out = tmp_path / "attention.png"
    main(["attention", "--checkpoint", str(tmp_path / "ckpt"), "--emotion", "fear", "--steps-to-capture", "0", "3",
          "--steps", "4", "--guidance-scale", "2", "--out", str(out)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["png"] == str(out) and summary["emotion"] == "fear" and summary["model"] == "diffusion"
    assert summary["steps"] == [0, 3] and summary["num_inference_steps"] == 4
    assert summary["blocks"] == {name: list(grid) for name, grid in GRIDS.items()}


def test_cli_vae_checkpoint_is_a_one_line_user_error(tmp_path, capsys):
    from emogen.cli.main import main

    save_state(tmp_path / "vae", vae_state())
    with pytest.raises(SystemExit) as exc:
        main(["attention", "--checkpoint", str(tmp_path / "vae"), "--emotion", "fear", "--out", str(tmp_path / "a.png")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "VAE checkpoint" in err[0] and "no U-Net" in err[0]
    assert not (tmp_path / "a.png").exists()
