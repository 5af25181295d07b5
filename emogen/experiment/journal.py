"""The resume journal: every unit of work an experiment finishes is recorded with its result
in stages.json under its `StageKey` (beside the work, on the experiment's storage), so
re-running the same command skips it."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from emogen import storage


class StageKind(enum.Enum):
    PARENT_RUN = "parent_run"
    GENERATOR = "generator"  # a generator's Ray Train run, keyed by the generator alone
    SER = "ser"
    JUDGE = "judge"
    GENERATED = "generated"
    FID_REFERENCE = "fid_reference"
    PROBE = "probe"


@dataclass(frozen=True)
class StageKey:
    """One unit of work in stages.json: "parent_run", then per fold "fold0/vae",
    "fold0/ser/real/0", "fold0/generated/vae/0", "fold0/fid_reference/0", "fold0/probe",
    "fold0/judge"."""

    kind: StageKind
    fold: int | None = None
    name: str | None = None  # the generator or the condition
    seed: int | None = None

    def __str__(self) -> str:
        parts = [] if self.fold is None else [f"fold{self.fold}"]
        parts += [] if self.kind is StageKind.GENERATOR else [self.kind.value]
        return "/".join([*parts, *(str(p) for p in (self.name, self.seed) if p is not None)])

    @classmethod
    def parent_run(cls) -> StageKey:
        return cls(StageKind.PARENT_RUN)

    @classmethod
    def generator(cls, fold: int, generator: str) -> StageKey:
        return cls(StageKind.GENERATOR, fold, generator)

    @classmethod
    def ser(cls, fold: int, condition: str, seed: int) -> StageKey:
        return cls(StageKind.SER, fold, condition, seed)

    @classmethod
    def judge(cls, fold: int) -> StageKey:
        return cls(StageKind.JUDGE, fold)

    @classmethod
    def generated(cls, fold: int, generator: str, seed: int) -> StageKey:
        return cls(StageKind.GENERATED, fold, generator, seed)

    @classmethod
    def fid_reference(cls, fold: int, seed: int) -> StageKey:
        return cls(StageKind.FID_REFERENCE, fold, seed=seed)

    @classmethod
    def probe(cls, fold: int) -> StageKey:
        return cls(StageKind.PROBE, fold)


def write_json(location: str | Path, data: Any) -> None:
    """data as indented JSON (numpy scalars as floats), replacing the file or object at
    once: a stopped run never leaves half a file to resume from."""
    storage.write_text(location, json.dumps(data, indent=2, default=float))


class FinishedStages:
    """Finished units of work and their results in a stages.json (resume skips them): a
    local file or an object on storage, rewritten whole after every unit."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.done: dict[str, Any] = json.loads(storage.read_text(location)) if storage.is_file(location) else {}

    def __contains__(self, key: StageKey) -> bool:
        return str(key) in self.done

    def __getitem__(self, key: StageKey) -> Any:
        return self.done[str(key)]

    def run(self, key: StageKey, func: Callable[[], Any]) -> Any:
        """func's result under key: recorded when it first finishes, read back after that."""
        if key not in self:
            self.done[str(key)] = func()
            write_json(self.location, self.done)
        return self[key]
