"""How the service words its refusals and names its checkpoint, and the web page, as plain
functions (the served app checks the same end to end in test_serve.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.exceptions import RequestValidationError

from emogen.inference.generator import EmotionGenerator
from emogen.inference.schema import AttentionRequest, RequestError, resolve_attention
from emogen.serving.errors import checkpoint_name, request_error_response, validation_error
from emogen.serving.page import page_html
from tests.inference.checkpoints import vae_state


def test_attention_refuses_a_vae_checkpoint():
    """The check /v1/attention runs before anything else on the model (a unit call: the
    served app has no VAE checkpoint, and the message is all the endpoint adds)."""
    with pytest.raises(RequestError) as refused:
        resolve_attention(AttentionRequest(emotion="fear"), EmotionGenerator(vae_state()))
    assert refused.value.status == 422 and refused.value.detail()["message"] == (
        "model: attention maps need a diffusion checkpoint; this replica serves a vae")
    response = request_error_response(refused.value)
    assert response.status_code == 422 and json.loads(response.body) == refused.value.detail()


def test_page_offers_attention_only_for_diffusion():
    assert 'id="show_attention" type="checkbox"' in page_html({"model": "diffusion", "default_steps": 5})
    for info in ({"model": "vae"}, {}):  # a VAE, or no model loaded
        html = page_html(info)
        assert "show_attention" not in html.split("<script>")[0] and "__ATTENTION__" not in html


def test_responses_name_a_checkpoint_by_its_folders_never_its_path():
    assert checkpoint_name("/srv/secret/runs/train/diffusion-demo/checkpoint_000001") == "diffusion-demo/checkpoint_000001"
    assert checkpoint_name("C:\\models\\vae\\checkpoint_000003\\") == "vae/checkpoint_000003"
    assert checkpoint_name("models:/emogen-vae@champion (version 1)") == "models:/emogen-vae@champion (version 1)"
    assert checkpoint_name(None) is None


def test_validation_errors_name_every_field():
    exc = RequestValidationError([
        {"loc": ("body", "steps"), "msg": "Input should be a valid integer", "type": "int_parsing"},
        {"loc": ("body",), "msg": "Value error, num_samples: 17 clips exceed the budget", "type": "value_error"},
        {"loc": ("body", 0), "msg": "Input should be a valid dictionary", "type": "dict_type"},
    ])
    response = asyncio.run(validation_error(None, exc))
    content = json.loads(response.body)
    assert response.status_code == 422
    assert [d["loc"] for d in content["detail"]] == [["body", "steps"], ["body", "num_samples"], ["body"]]
    assert content["message"] == ("steps: Input should be a valid integer; num_samples: Value error, num_samples: 17 "
                                  "clips exceed the budget; body: Input should be a valid dictionary")
