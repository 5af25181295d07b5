"""Search spaces of a sweep: the YAML/JSON form (one distribution or constant per field of
an override section), its pydantic validation, and the Ray Tune domains it becomes.

The default spaces are package data, emogen/training/tune_spaces.yaml; `--space FILE`
replaces a model's block. A sampled trial config is an overrides file of `emogen train`.
"""

from __future__ import annotations

import copy
import importlib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from emogen.config import read_mapping_file
from emogen.errors import InvalidInputError, MissingInputError
from emogen.presets import model_configs
from emogen.training.tasks import MODELS, model_spec

SPACES_RESOURCE = "tune_spaces.yaml"  # package data of `emogen.training`, beside this module
SECTIONS = ("train", "ser", "vae", "unet", "diffusion")
SEARCHERS = ("random", "grid", "optuna", "hyperopt")

class Distribution(BaseModel):
    """One searched value, written as a one-key mapping: {loguniform: [low, high]}."""

    model_config = ConfigDict(extra="forbid")

    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    quniform: list[float] | None = None  # [low, high, q]
    randint: list[int] | None = None  # [low, high)
    lograndint: list[int] | None = None
    qrandint: list[int] | None = None
    choice: list[Any] | None = Field(None, min_length=1)
    grid: list[Any] | None = Field(None, min_length=1)  # every value, crossed with the others

    @model_validator(mode="after")
    def _one_distribution_of_the_right_arity(self) -> Distribution:
        given = self.model_dump(exclude_none=True)
        if len(given) != 1:
            raise ValueError(f"give exactly one distribution, got {', '.join(given) or 'none'}")
        kind, args = self.kind_and_args()
        arity = 3 if kind.startswith("q") else 2
        if kind not in ("choice", "grid") and len(args) != arity:
            raise ValueError(f"{kind} takes {arity} numbers, got {args!r}")
        return self

    def kind_and_args(self) -> tuple[str, list[Any]]:
        kind, args = next(iter(self.model_dump(exclude_none=True).items()))
        return kind, list(args)


# A constant (kept fixed in every trial) or a distribution: a mapping is always the latter.
SpaceValue = Annotated[
    Annotated[Distribution, Tag("distribution")] | Annotated[Any, Tag("constant")],
    Discriminator(lambda v: "distribution" if isinstance(v, (dict, Distribution)) else "constant"),
]
Fields = dict[str, SpaceValue]


class SearchSpace(BaseModel):
    """The space of one model: override sections of `emogen train --config`, each
    {field: distribution or constant}; a sampled trial config is an overrides file."""

    model_config = ConfigDict(extra="forbid")

    train: Fields | None = None
    ser: Fields | None = None
    vae: Fields | None = None
    unet: Fields | None = None
    diffusion: Fields | None = None

    def sections(self) -> dict[str, dict[str, Any]]:
        """{section: {field: {kind: [args]} or constant}}, as the YAML reads."""
        out = {}
        for section in SECTIONS:
            fields = getattr(self, section)
            if fields is not None:
                out[section] = {name: dict([value.kind_and_args()]) if isinstance(value, Distribution) else value
                                for name, value in fields.items()}
        return out


class SpacesFile(BaseModel):
    """A file of spaces per model, like the built-in emogen/training/tune_spaces.yaml."""

    model_config = ConfigDict(extra="forbid")

    ser: SearchSpace | None = None
    vae: SearchSpace | None = None
    diffusion: SearchSpace | None = None


def _describe(error: ValidationError, source: str) -> str:
    """Pydantic's errors as `source: section.field: what is wrong (got value)`."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"] if part not in ("distribution", "constant"))
        message = item["msg"].removeprefix("Value error, ")
        if "got" not in message:
            message += f" (got {item['input']!r})"
        problems.append(f"{where}: {message}" if where else message)
    return f"{source}: " + "; ".join(problems)


def validate_space(model: str, data: Any, source: str = "search space") -> dict[str, dict[str, Any]]:
    """A search space for `model` from either {model: {sections}} or the sections themselves;
    returns {section: {field: spec or constant}}. Errors name the bad key and value."""
    if not isinstance(data, dict):
        raise InvalidInputError(f"{source}: a search space is a mapping of sections, got {type(data).__name__}")
    try:
        per_model = SpacesFile.model_validate(data)
    except ValidationError as exc:
        per_model_error = exc
    else:
        space = getattr(per_model, model)
        if space is None:
            raise InvalidInputError(
                f"{source}: no search space for {model!r}; expected {{{model}: {{section: {{field: spec}}}}}} "
                f"or {{section: {{field: spec}}}} with sections among {', '.join(SECTIONS)}"
            )
        return space.sections()
    try:
        return SearchSpace.model_validate(data).sections()
    except ValidationError as exc:
        sections_error = exc
    # Report the errors of the form the file was evidently written in.
    looks_per_model = set(data) <= set(MODELS) and all(
        isinstance(v, dict) and set(v) <= set(SECTIONS) for v in data.values())
    raise InvalidInputError(_describe(per_model_error if looks_per_model else sections_error, source)) from None


def load_space(model: str, path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The search space of a model: {section: {field: spec or constant}}.

    path: a YAML/JSON file, either {model: {sections}} (like the built-in
    emogen/training/tune_spaces.yaml, used when path is None) or the sections themselves.
    """
    model_spec(model)  # an unknown model is a ValueError naming the known ones
    if path is None:
        source = f"emogen/training/{SPACES_RESOURCE}"
        data = yaml.safe_load(resources.files("emogen.training").joinpath(SPACES_RESOURCE).read_text())
    else:
        source = str(path)
        if not Path(path).is_file():
            raise MissingInputError(f"no search-space file at {path}")
        data = read_mapping_file(path, "--space")
    return validate_space(model, data, source)


def to_param_space(space: dict[str, dict[str, Any]], search: str = "random") -> dict[str, dict[str, Any]]:
    """Space specs -> Ray Tune domains (nested by section, as the trial config)."""
    from ray import tune  # deferred: Ray Tune is heavy to import, and `emogen --help` imports this module

    def domain(value: Any) -> Any:
        if not isinstance(value, Distribution):
            return value
        kind, args = value.kind_and_args()
        if kind in ("choice", "grid"):
            return tune.grid_search(args) if kind == "grid" or search == "grid" else tune.choice(args)
        return getattr(tune, kind)(*args)

    try:
        validated = SearchSpace.model_validate(space)
    except ValidationError as exc:
        raise InvalidInputError(_describe(exc, "search space")) from None
    return {section: {name: domain(value) for name, value in getattr(validated, section).items()}
            for section in SECTIONS if getattr(validated, section) is not None}


def make_searcher(search: str, metric: str, mode: str) -> Any:
    """Tune's search algorithm for --search; optuna and hyperopt are optional packages."""
    if search in ("random", "grid"):
        return None  # Tune's BasicVariantGenerator: random sampling, grid values crossed
    modules = {"optuna": ("ray.tune.search.optuna", "OptunaSearch", "optuna"),
               "hyperopt": ("ray.tune.search.hyperopt", "HyperOptSearch", "hyperopt")}
    if search not in modules:
        raise InvalidInputError(f"unknown search algorithm {search!r}; expected one of {', '.join(SEARCHERS)}")
    module, cls, package = modules[search]
    try:
        importlib.import_module(package)
    except ImportError:
        raise InvalidInputError(
            f"--search {search} needs the {package!r} package, which is not installed; "
            f"install it or use --search random (or grid)"
        ) from None
    return getattr(importlib.import_module(module), cls)(metric=metric, mode=mode)


def couple(model: str, preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Keep a sampled config trainable: in a latent-diffusion preset the U-Net's
    in_channels must equal vae.latent_channels, so it follows a searched latent size."""
    out = copy.deepcopy(overrides)
    latent = (out.get("vae") or {}).get("latent_channels")
    if latent is not None and "in_channels" not in (out.get("unet") or {}):
        base = model_configs(preset, {k: v for k, v in out.items() if k != "vae"})
        if base["diffusion"].space == "latent":
            out.setdefault("unet", {})["in_channels"] = latent
    return out

