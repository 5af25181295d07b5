"""Command-line options built from the parameter objects (FitConfig, ExperimentConfig,
SweepConfig, the sampling options, ServeArgs), so each option's default and help live
once, in its field.

A field becomes `--field-name` when it is declared with `option(...)`; fields without that
metadata (e.g. values only code passes, such as an MLflow parent run) are not options.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, Literal

_POSITIONAL = "positional"


def option(default: Any = dataclasses.MISSING, help: str = "", *, positional: bool = False, **argparse_keywords: Any) -> Any:
    """A dataclass field that is also a command-line option; argparse_keywords (type,
    choices, action, ...) override what `add_config_options` infers from the annotation."""
    return dataclasses.field(default=default, metadata={"help": help, _POSITIONAL: positional, **argparse_keywords})


def _inferred_keywords(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a field annotation: bool -> a flag, tuple[int, ...] -> nargs,
    list[X] -> repeatable, X | None -> X."""
    if annotation is bool:
        return {"action": "store_true"}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return {"type": args[0], "nargs": "+"}
    if origin is list:
        return {"type": args[0] if isinstance(args[0], type) else str, "action": "append"}
    if args:  # a union: the first concrete type that is not None
        inner = next(a for a in args if a is not type(None))
        return _inferred_keywords(inner)
    return {"type": annotation if isinstance(annotation, type) else str}


def add_config_options(parser: argparse.ArgumentParser, config_class: type, *, unset_means_preset: bool = False) -> None:
    """One option per `option(...)` field of config_class, named after it.

    unset_means_preset: every option defaults to None, so the caller can tell "not given"
    and take the preset's value; the field default is shown in the help.
    """
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if "help" not in f.metadata:
            continue
        keywords = {k: v for k, v in f.metadata.items() if k != _POSITIONAL}
        for key, value in _inferred_keywords(hints[f.name]).items():
            keywords.setdefault(key, value)
        if keywords.get("action") in ("store_true", "store_const"):
            keywords.pop("type", None)  # flags take no value
        if f.metadata.get(_POSITIONAL):
            parser.add_argument(f.name, **keywords)
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            keywords["required"] = True
        elif unset_means_preset:
            keywords["default"] = None
            if f.default is not None and keywords.get("action") != "store_true":
                shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
                keywords["help"] += f" (default: the preset's, else {shown})"
        else:
            keywords["default"] = f.default
        parser.add_argument("--" + f.name.replace("_", "-"), **keywords)


def config_values(config_class: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of config_class's options, by field name."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """Where Ray runs: a cluster's address or a local instance's CPUs."""
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else start a local instance)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray instance (default: all)")


def _value_type(annotation: Any) -> Callable[[str], Any]:
    """The argparse type of a field: X | None -> X; X | Literal[words] -> a word as it is, else X."""
    members = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    words = {w for a in members if typing.get_origin(a) is Literal for w in typing.get_args(a)}
    kind = next((a for a in members if typing.get_origin(a) is not Literal), str)
    if not words:
        return kind

    def parse(text: str) -> Any:
        return text if text in words else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_model_options(parser: argparse.ArgumentParser, model: type, *, required: tuple[str, ...] = (),
                      aliases: dict[str, tuple[str, ...]] | None = None) -> None:
    """One option per field of a pydantic model, named after it, its description the help:
    `add_config_options` for settings that are a pydantic model (Ray Serve validates its
    application's arguments as one) where the other parameter objects are dataclasses;
    aliases keep a field's earlier flag spellings working."""
    aliases = aliases or {}
    for name, field in model.model_fields.items():
        keywords: dict[str, Any] = {"dest": name, "help": field.description or "", "type": _value_type(field.annotation)}
        if name in required:
            keywords["required"] = True
        else:
            keywords["default"] = field.default
        parser.add_argument("--" + name.replace("_", "-"), *aliases.get(name, ()), **keywords)
