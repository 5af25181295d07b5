"""The report as a list of blocks: sections are built once and rendered twice (markdown
and HTML), so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class AudioClip:
    rel: str  # relative to the report folder
    path: Path


Cell = Union[str, AudioClip]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Cell]]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Plot:
    title: str
    caption: str
    rel: str
    path: Path


Block = Union[Heading, Para, Table, Code, Plot]


def resolve(out_dir: Path, path: str) -> tuple[Path, str]:
    """(absolute path, link relative to the report) for a path from results.json."""
    p = Path(path)
    full = p if p.is_absolute() else out_dir / p
    try:
        rel = full.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        rel = full.as_posix()
    return full, rel
