"""The web page served at /: page.html (package data) with the emotions, the checkpoint's
default steps and model kind filled in."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from emogen.config import EMOTIONS

# Offered only for a diffusion model: a VAE has no U-Net, so /v1/attention would refuse it.
ATTENTION_CHECKBOX = '<label><input id="show_attention" type="checkbox"> Show attention</label>'


@cache
def _page_template() -> str:
    return files("emogen.serving").joinpath("page.html").read_text(encoding="utf-8")


def page_html(info: dict[str, Any]) -> str:
    """The web page: an emotion picker, the checkpoint's default steps, the model kind, and
    for a diffusion model the "Show attention" checkbox."""
    options = "".join(f'<option value="{e}">{e}</option>' for e in EMOTIONS)
    steps = info.get("default_steps") or 1
    attention = ATTENTION_CHECKBOX if info.get("model") == "diffusion" else ""
    return (_page_template().replace("__OPTIONS__", options).replace("__STEPS__", str(steps))
            .replace("__ATTENTION__", attention).replace("__MODEL__", str(info.get("model", "not loaded"))))
