"""The augmentation experiment's results: what results.json holds, as typed models.

The experiment (`emogen.experiment.run`) builds an `ExperimentResults` and writes it;
`emogen.experiment.report` and the CLI read its fields. The names of the experiment's conditions and generators live here
once, for the experiment, the report and the tests.

Version 2 is the speaker-fold design: every SER run names its fold (`SERRun.fold`), and the
probe, the judges and the generators are fit per fold. A file of another version, or one
without a version (written before versions, with one split), fails to load with a message
saying what it is and what this emogen reads: the report has one layout, for folds.

Everything but the version is optional, so a partial experiment still loads and reports:
a missing section is skipped, never a crash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from emogen.evaluation.metrics import mean_and_spread
from emogen.evaluation.stats import BootstrapInterval, PairedComparison, bootstrap_ci, paired_comparison

RESULTS_VERSION = 2  # 2: speaker folds (every SER run names its fold); 1 had one split

REAL = "real"  # the condition trained on real clips only, and the source of real clips
VAE, DIFFUSION = "vae", "diffusion"
GENERATORS = (VAE, DIFFUSION)
GENERATED_FROM = {"real+vae": VAE, "real+diffusion": DIFFUSION}  # the conditions with generated clips
AUGMENTED_BY = {generator: condition for condition, generator in GENERATED_FROM.items()}
# the control: real clips only, for as many optimizer steps as CONTROL_MATCHES's SER takes
CONTROL, CONTROL_MATCHES = "real-matched", AUGMENTED_BY[DIFFUSION]
CONDITIONS = (REAL, CONTROL, *GENERATED_FROM)
PROBE = "probe"  # the linear probe's name beside the conditions (ExperimentResults.probe)
# the judges of generated clips that did not choose which to keep (GeneratedSet.judged):
# an SER of the fold trained on its training + validation clips with its own seed, and the
# linear probe
SER_JUDGE, PROBE_JUDGE = "ser-judge", PROBE
JUDGES = (SER_JUDGE, PROBE_JUDGE)
SCORES = ("weighted_accuracy", "unweighted_accuracy", "macro_f1")
UA = "unweighted_accuracy"


class _Record(BaseModel):
    # keys a newer or older writer added are ignored rather than fatal; NaN stays NaN in JSON
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants")


class Spread(_Record):
    """A number over seeds: mean, sample std and the per-seed values."""

    mean: float
    std: float | None = None
    n: int | None = None
    values: list[float] = Field(default_factory=list)

    @property
    def count(self) -> int:
        return self.n if self.n is not None else len(self.values)


class FidSpread(Spread):
    """FID over seeds, with the sample sizes (FID is biased upward for small sets)."""

    n_real: int | None = None
    n_generated: int | None = None


class SERMetrics(_Record):
    """`emogen.evaluation.metrics.classification_report` on the held-out test speakers."""

    weighted_accuracy: float
    unweighted_accuracy: float
    macro_f1: float
    recall: dict[str, float] = Field(default_factory=dict)
    confusion: list[list[int]] = Field(default_factory=list)
    count: int = 0

    def score(self, name: str) -> float:
        return float(getattr(self, name))


class SERRun(_Record):
    """One SER training of one condition, fold and seed, evaluated on the fold's held-out
    speakers."""

    fold: int
    seed: int
    checkpoint: str
    n_train: int
    n_generated: int = 0
    train_steps: int | None = None  # optimizer steps taken
    train_seconds: float | None = None
    epochs: int
    stopped_early: bool = False
    metrics: SERMetrics
    per_speaker: dict[str, float] = Field(default_factory=dict)  # UA per held-out speaker
    history: list[dict[str, float]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _has_fold(cls, data: Any) -> Any:
        # without this a run from before folds fails as a bare "field required"
        if isinstance(data, Mapping) and "fold" not in data:
            raise ValueError("an SER run without a speaker fold: results from before folds (one split) are not read; "
                             "rerun the experiment to write them")
        return data

    @property
    def pair_key(self) -> str:
        """What pairs this run with another condition's: the same fold (test speakers,
        training speakers, generators) and the same seed. Comparisons and gains pair by it."""
        return f"fold {self.fold} seed {self.seed}"


class ProbeRun(_Record):
    """`emogen.evaluation.probe.LinearProbe` fit on the real train+val clips of a fold and scored on
    its held-out speakers: the reference an SER has to beat to be a usable instrument.
    ExperimentResults.probe pools the folds: scores averaged over folds (as the SERs'
    summaries are), confusions added, every speaker's UA from the fold that tested it."""

    fold: int | None = None  # None: the pool of all folds
    n_train: int
    metrics: SERMetrics
    per_speaker: dict[str, float] = Field(default_factory=dict)
    fold_ua: Spread | None = None  # the pool: UA over folds


class JudgeRun(_Record):
    """A fold's SER judge: trained on the fold's real training + validation clips with a
    seed of its own, it scores generated clips it did not filter; `metrics` is its UA on
    the fold's real held-out clips, what its clarity is relative to."""

    fold: int
    seed: int
    checkpoint: str
    epochs: int
    metrics: SERMetrics


class Comparison(_Record):
    """UA of a condition minus UA of a reference condition."""

    paired: PairedComparison  # over the pairs (seeds) both have
    # per held-out speaker: the difference averaged over pairs, bootstrapped over speakers
    speakers: BootstrapInterval | None = None


class JudgedClarity(_Record):
    """One judge's clarity of one generator's clips (share judged as the requested
    emotion), over fold x seed sets: of all generated clips and of the kept ones, beside
    the judge's own UA on real held-out clips (over folds)."""

    judge_ua: Spread
    all: Spread
    kept: Spread | None = None
    all_per_emotion: dict[str, float] = Field(default_factory=dict)
    kept_per_emotion: dict[str, float] = Field(default_factory=dict)  # emotions with kept clips


class Realism(_Record):
    """Does it look like speech? A classifier two-sample test against the fold's held-out
    real clips (`metrics.two_sample_accuracy`: 0.5 = indistinguishable, 1.0 = every clip
    told apart) and the share of near-silent frames beside the real clips'."""

    two_sample_accuracy: Spread  # over fold x seed sets
    n_per_side: int  # clips per side in the first set
    silent_frames: Spread
    real_silent_frames: float  # of every held-out real clip (each clip once over the folds)
    # The same test between the held-out real clips and the fold's training clips (other
    # speakers), mean over folds: what a perfect generator of the training speakers
    # would score, since the test also tells speakers apart.
    real_two_sample_accuracy: float | None = None


class GeneratedSet(_Record):
    """One generator's clips over fold x seed sets. `clarity` is the filter's (the fold
    and seed's real-trained SER, which chose the kept clips: it is high for the kept ones
    by construction); `judged` is by judges that chose nothing (SER_JUDGE, PROBE_JUDGE)."""

    n_per_emotion: int
    n_clips: int
    n_kept: int
    clarity: Spread
    clarity_per_emotion: dict[str, float] = Field(default_factory=dict)
    fid: FidSpread
    real_fid_reference: float | None = None  # held-out real clips against training real clips
    inception_score: Spread
    mean_confidence: Spread | None = None
    generate_seconds: Spread | None = None
    judged: dict[str, JudgedClarity] = Field(default_factory=dict)
    realism: Realism | None = None


class GeneratorRun(_Record):
    """A generator's Ray Train run (of one fold: ExperimentResults.generators holds the
    first fold's, generators_per_fold all of them)."""

    fold: int | None = None
    checkpoint: str
    epochs: int
    seconds: float
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)  # the final epoch's train_* / val_*
    history: list[dict[str, float]] = Field(default_factory=list)
    space: str | None = None  # diffusion: "mel" or "latent"


class FoldSplit(_Record):
    """One speaker fold: who is held out for testing, who validates, the clip counts."""

    fold: int
    test_speakers: list[str]
    val_speakers: list[str] = Field(default_factory=list)
    split_counts: dict[str, int] = Field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = Field(default_factory=dict)


class DataSummary(_Record):
    """The clips and how they were split. With folds, every accepted clip is tested once:
    split_counts and class_counts have only "test" (the folds' test sets added up),
    test_speakers is every speaker, and `folds` has each fold's split."""

    features: str | None = None
    split_counts: dict[str, int] = Field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    test_speakers: list[str] = Field(default_factory=list)
    folds: list[FoldSplit] = Field(default_factory=list)


class SampleClip(_Record):
    source: str  # REAL or a generator
    emotion: str
    path: str  # relative to the experiment folder
    kind: str = "griffin-lim"


class Samples(_Record):
    mels: str | None = None  # an .npz of one mel per "source/emotion", relative to the experiment folder
    wavs: list[SampleClip] = Field(default_factory=list)
    # emotion -> PNG of the first fold's diffusion U-Net attention while generating it (emogen.inference.attention)
    attention: dict[str, str] = Field(default_factory=dict)


class MLflowRun(_Record):
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None


ScoreSpreads = dict[str, Spread]  # SCORES -> spread over seeds


class ExperimentResults(_Record):
    """results.json. Everything but the version is optional, because a partial experiment
    still deserves a report; summary and gains missing for a condition are computed from
    its runs."""

    version: int = RESULTS_VERSION
    name: str = ""
    preset: str | None = None
    created: str | None = None
    command: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    data: DataSummary | None = None
    seeds: list[int] = Field(default_factory=list)
    n_folds: int | None = None  # None in a partial dict: the report counts data.folds or the runs' folds
    conditions: list[str] = Field(default_factory=lambda: list(CONDITIONS))
    runs: dict[str, list[SERRun]] = Field(default_factory=dict)
    summary: dict[str, ScoreSpreads] = Field(default_factory=dict)
    gains: dict[str, ScoreSpreads] = Field(default_factory=dict)  # over REAL, paired by SERRun.pair_key
    gains_over_matched: dict[str, ScoreSpreads] = Field(default_factory=dict)  # CONTROL_MATCHES over CONTROL
    # {reference (REAL or CONTROL): {condition: Comparison}}, UA
    comparisons: dict[str, dict[str, Comparison]] = Field(default_factory=dict)
    probe: ProbeRun | None = None  # with folds, the pool of `probes`
    probes: list[ProbeRun] = Field(default_factory=list)  # per fold
    judges: list[JudgeRun] = Field(default_factory=list)  # per fold
    generated: dict[str, GeneratedSet] = Field(default_factory=dict)
    generators: dict[str, GeneratorRun] = Field(default_factory=dict)
    generators_per_fold: dict[str, list[GeneratorRun]] = Field(default_factory=dict)
    samples: Samples | None = None
    seconds: dict[str, float] = Field(default_factory=dict)
    mlflow: MLflowRun | None = None
    # where the report was written: returned to the caller, not part of results.json
    report: dict[str, str] | None = Field(default=None, exclude=True)

    @field_validator("version")
    @classmethod
    def _readable_version(cls, version: int) -> int:
        if version != RESULTS_VERSION:
            raise ValueError(f"results.json version {version} is not readable here: this emogen reads version "
                             f"{RESULTS_VERSION} (speaker folds); rerun the experiment to write it")
        return version

    @model_validator(mode="after")
    def _spreads_from_runs(self) -> ExperimentResults:
        baseline = self.runs.get(REAL, [])
        for condition, runs in self.runs.items():
            if runs and condition not in self.summary:
                self.summary[condition] = summarize(runs)
            if condition != REAL and condition not in self.gains:
                gains = paired_gains(runs, baseline)
                if gains:
                    self.gains[condition] = gains
        return self

    def to_json(self) -> dict[str, Any]:
        """The results.json content: no report paths, no keys without a value."""
        return self.model_dump(mode="json", exclude_none=True)


def spread(values: Iterable[float]) -> Spread:
    values = [float(v) for v in values]
    return Spread(**mean_and_spread(values), values=values)


def summarize(runs: list[SERRun]) -> ScoreSpreads:
    """Each score's spread over the runs (fold x seed) of one condition."""
    return {score: spread(run.metrics.score(score) for run in runs) for score in SCORES}


def paired_gains(runs: list[SERRun], reference: list[SERRun]) -> ScoreSpreads:
    """Each score of `runs` minus the reference's score of the same fold and seed
    (`SERRun.pair_key`: pairing removes what the fold's speakers and the seed do to
    both); {} without a shared pair."""
    base = {run.pair_key: run.metrics for run in reference}
    pairs = [(run.metrics, base[run.pair_key]) for run in runs if run.pair_key in base]
    if not pairs:
        return {}
    return {score: spread(a.score(score) - b.score(score) for a, b in pairs) for score in SCORES}


def pool_probes(probes: list[ProbeRun]) -> ProbeRun:
    """The folds' probes as one reference row: scores and recalls averaged over folds,
    confusions and counts added, each speaker's UA from the fold that held it out."""
    if len(probes) == 1:
        return probes[0]
    metrics = [p.metrics for p in probes]
    emotions = sorted({e for m in metrics for e in m.recall})
    confusions = [np.asarray(m.confusion) for m in metrics if m.confusion]
    pooled = SERMetrics(
        **{score: float(np.mean([m.score(score) for m in metrics])) for score in SCORES},
        recall={e: float(np.mean([m.recall[e] for m in metrics if e in m.recall])) for e in emotions},
        confusion=sum(confusions[1:], confusions[0]).tolist() if confusions else [],
        count=sum(m.count for m in metrics),
    )
    return ProbeRun(n_train=round(float(np.mean([p.n_train for p in probes]))), metrics=pooled,
                    per_speaker={s: ua for p in probes for s, ua in p.per_speaker.items()},
                    fold_ua=spread(m.unweighted_accuracy for m in metrics))


def compare(runs: list[SERRun], reference: list[SERRun], seed: int = 0) -> Comparison:
    """UA of `runs` minus the reference's, paired by `SERRun.pair_key`; and per held-out
    speaker, the difference averaged over the pairs, bootstrapped over speakers (seed: the
    bootstrap's)."""
    base = {run.pair_key: run for run in reference}
    paired = paired_comparison({run.pair_key: run.metrics.score(UA) for run in runs},
                               {key: run.metrics.score(UA) for key, run in base.items()})
    differences: dict[str, list[float]] = {}
    for run in runs:
        other = base.get(run.pair_key)
        for speaker, ua in run.per_speaker.items():
            if other is not None and speaker in other.per_speaker:
                differences.setdefault(speaker, []).append(ua - other.per_speaker[speaker])
    speakers = bootstrap_ci({s: sum(d) / len(d) for s, d in differences.items()}, seed=seed) if differences else None
    return Comparison(paired=paired, speakers=speakers)


def comparisons(runs: Mapping[str, list[SERRun]]) -> dict[str, dict[str, Comparison]]:
    """Every condition against real, and the conditions with generated clips against the
    matched-steps control (what the clips add beyond the optimizer steps they bring)."""
    out: dict[str, dict[str, Comparison]] = {}
    for reference, conditions in ((REAL, [c for c in CONDITIONS if c != REAL]), (CONTROL, list(GENERATED_FROM))):
        if runs.get(reference):
            out[reference] = {c: compare(runs[c], runs[reference]) for c in conditions if runs.get(c)}
    return out


def as_results(results: ExperimentResults | Mapping[str, Any]) -> ExperimentResults:
    """The typed results of a results dict (validated; the current version unless it says
    otherwise), or the model itself."""
    return results if isinstance(results, ExperimentResults) else ExperimentResults.model_validate(results)


def load_results(path: str | Path) -> ExperimentResults:
    """Read an experiment's results.json (or the experiment folder holding it). A file
    must say its version: one without was written before versions, with one split."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    content = json.loads(path.read_text())
    if "version" not in content:
        raise ValueError(f"{path} has no version: it was written before speaker folds (one split), which this emogen "
                         f"does not read (it reads version {RESULTS_VERSION}); rerun the experiment to write it")
    return ExperimentResults.model_validate(content)
