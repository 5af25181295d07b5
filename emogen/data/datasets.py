"""Labelled corpora: the EmoDB and RAVDESS file-name schemes, the manifest built from
corpus folders and label CSVs, and the speaker-independent splits of a table of clips.

Corpora, label CSVs and the files they name are locations: a local path or a storage URI
(``s3://bucket/prefix``), listed and read through emogen.storage.

A manifest is a DataFrame with one row per audio file found, accepted or not:

    clip_id, path, dataset, speaker, emotion, label, source_sr, channels, source_s, reject_reason

``path`` is the file's location (a local absolute path or a URI). ``reject_reason`` is
empty for rows whose label is one of the six emotions; otherwise it says why (an
excluded class such as boredom, an unknown code, an unparseable name).
Nothing found is dropped silently: accepted + rejected = files found. The splits
(`speaker_split`, `speaker_folds`) label each row "train", "val" or "test" by its speaker,
so no speaker's clips sit on both sides of an evaluation.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
from pathlib import Path

import numpy as np
import pandas as pd

from emogen import storage
from emogen.audio.clips import read_source_info, source_columns
from emogen.config import EMOTION_TO_INDEX, EMOTIONS
from emogen.errors import InvalidInputError, MissingInputError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")

# EmoDB: speaker(2 digits) text(3 chars: letter, 2 digits) emotion(letter) version(letter)
EMODB_EMOTIONS = {
    "W": "anger",  # Wut
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fear",  # Angst
    "F": "happiness",  # Freude
    "T": "sadness",  # Trauer
    "N": "neutral",
}
EMODB_PATTERN = re.compile(r"^(?P<speaker>\d{2})(?P<text>[a-z]\d{2})(?P<code>[A-Za-z])(?P<version>[a-z])$")

# RAVDESS: modality-channel-emotion-intensity-statement-repetition-actor
RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happiness",
    "04": "sadness",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}
RAVDESS_PATTERN = re.compile(
    r"^(?P<modality>\d{2})-(?P<channel>\d{2})-(?P<code>\d{2})-(?P<intensity>\d{2})-"
    r"(?P<statement>\d{2})-(?P<repetition>\d{2})-(?P<actor>\d{2})$"
)

# Label spellings accepted in a CSV, mapped to the six emotions.
EMOTION_ALIASES = {
    **{e: e for e in EMOTIONS},
    "angry": "anger",
    "sad": "sadness",
    "happy": "happiness",
    "joy": "happiness",
    "neutrality": "neutral",
    "fearful": "fear",
    "disgusted": "disgust",
}
# Classes the corpora have that are not among the six: excluded and counted, not errors.
EXCLUDED_EMOTIONS = ("boredom", "calm", "surprise")

MANIFEST_COLUMNS = [
    "clip_id",
    "path",
    "dataset",
    "speaker",
    "emotion",
    "label",
    "source_sr",
    "channels",
    "source_s",
    "reject_reason",
]


class LabelError(ValueError):
    """A file name or label that does not map to one of the six emotions."""


def emodb_name(speaker: int, text: str, emotion: str, version: str = "a") -> str:
    code = {v: k for k, v in EMODB_EMOTIONS.items()}[emotion]
    return f"{speaker:02d}{text}{code}{version}.wav"


def ravdess_name(actor: int, emotion: str, intensity: int = 1, statement: int = 1, repetition: int = 1) -> str:
    code = {v: k for k, v in RAVDESS_EMOTIONS.items()}[emotion]
    # modality 03 = audio-only, vocal channel 01 = speech
    return f"03-01-{code}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}.wav"


def _aligned(emotion: str) -> str:
    """The emotion itself if it is one of the six; excluded classes raise LabelError."""
    if emotion in EXCLUDED_EMOTIONS:
        raise LabelError(f"excluded class: {emotion} is not one of the 6 emotions")
    return emotion


def _stem(location: str | Path) -> str:
    """A file name without its suffix (03a01Fa.wav -> 03a01Fa), of a path or a URI."""
    return os.path.splitext(storage.name(location))[0]


def parse_emodb_name(path: str | Path) -> tuple[str, str]:
    """EmoDB file name -> (speaker, emotion). Raises LabelError with the reason."""
    name = storage.name(path)
    m = EMODB_PATTERN.match(_stem(path))
    if not m:
        raise LabelError(f"file name {name!r} does not follow the EmoDB scheme (e.g. 03a01Fa.wav)")
    code = m["code"]
    if code not in EMODB_EMOTIONS:
        raise LabelError(f"unknown EmoDB emotion code {code!r} in {name!r}")
    return m["speaker"], _aligned(EMODB_EMOTIONS[code])


def parse_ravdess_name(path: str | Path) -> tuple[str, str]:
    """RAVDESS file name -> (actor, emotion). Raises LabelError with the reason."""
    name = storage.name(path)
    m = RAVDESS_PATTERN.match(_stem(path))
    if not m:
        raise LabelError(f"file name {name!r} does not follow the RAVDESS scheme (e.g. 03-01-05-01-02-01-12.wav)")
    if m["code"] not in RAVDESS_EMOTIONS:
        raise LabelError(f"unknown RAVDESS emotion code {m['code']!r} in {name!r}")
    if m["channel"] != "01":
        raise LabelError(f"RAVDESS vocal channel {m['channel']} is song, not speech, in {name!r}")
    return m["actor"], _aligned(RAVDESS_EMOTIONS[m["code"]])


PARSERS = {"emodb": parse_emodb_name, "ravdess": parse_ravdess_name}


def detect_dataset(path: str | Path) -> str | None:
    stem = _stem(path)
    if RAVDESS_PATTERN.match(stem):
        return "ravdess"
    if EMODB_PATTERN.match(stem):
        return "emodb"
    return None


def normalize_emotion(label: object) -> str:
    """A CSV label -> one of the six emotions; excluded classes and unknowns raise LabelError."""
    text = str(label).strip().lower() if label is not None and not (isinstance(label, float) and np.isnan(label)) else ""
    if not text:
        raise LabelError("missing emotion label")
    _aligned(text)
    if text not in EMOTION_ALIASES:
        raise LabelError(f"unknown emotion label {text!r} (expected one of {', '.join(EMOTIONS)})")
    return EMOTION_ALIASES[text]


def read_header(path: str | Path) -> tuple[float, float, float]:
    """(sample rate, channels, seconds) from the header; NaNs when the header is unreadable."""
    try:
        return source_columns(read_source_info(path))
    except Exception:  # noqa: BLE001 - unreadable files are rejected later with the real reason
        return source_columns(None)


def _row(path: str, dataset: str, speaker: str, emotion: str, reason: str, read_headers: bool) -> dict:
    # A header on object storage is a request per file: the preprocessing workers read
    # it there instead, as they decode (emogen.data.features.featurize_rows).
    sr, ch, secs = read_header(path) if read_headers and not storage.is_uri(path) else source_columns(None)
    return {
        "path": path,
        "dataset": dataset,
        "speaker": f"{dataset}:{speaker}" if speaker else "",
        "emotion": emotion,
        "label": EMOTION_TO_INDEX.get(emotion, -1),
        "source_sr": sr,
        "channels": ch,
        "source_s": secs,
        "reject_reason": reason,
    }


def _finish(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=[c for c in MANIFEST_COLUMNS if c != "clip_id"])
    df.insert(0, "clip_id", [f"{d}/{_stem(p)}" for d, p in zip(df["dataset"], df["path"])])
    # Two files with the same stem in one dataset (e.g. a .wav and a .flac) stay distinct.
    dup = df["clip_id"].duplicated(keep=False)
    df.loc[dup, "clip_id"] = [f"{d}/{storage.name(p)}" for d, p in zip(df.loc[dup, "dataset"], df.loc[dup, "path"])]
    df["label"] = df["label"].astype("int64")
    return df.sort_values("clip_id", kind="stable").reset_index(drop=True)


def audio_files(root: str | Path) -> list[str]:
    """The audio files under a folder or storage prefix, recursively, as sorted locations
    (local ones absolute); hidden names are skipped, other suffixes are not audio."""
    if not storage.is_uri(root) and not storage.is_dir(root):
        raise MissingInputError(f"corpus folder not found: {root}")
    location = storage.absolute(root)
    try:  # list_files keeps dangling links (an input to reject, not to skip)
        listed = storage.list_files(location)
    except storage.StorageNotFound:  # a prefix with nothing under it; a missing bucket is a StorageError
        listed = []
    files = sorted(
        f for f in listed
        if os.path.splitext(storage.name(f))[1].lower() in AUDIO_SUFFIXES and not storage.name(f).startswith(".")
    )
    if not files and storage.is_uri(location):  # a prefix is never created: a mistyped one is just empty
        raise MissingInputError(f"no audio files found under {location}")
    return files


def scan_folder(root: str | Path, dataset: str = "auto", read_headers: bool = True) -> pd.DataFrame:
    """Every audio file under root, labelled from its name (EmoDB or RAVDESS scheme).

    root: a local folder or a storage prefix (s3://bucket/corpus).
    dataset: "emodb", "ravdess", or "auto" (decided per file by its name's shape).
    read_headers: fill source_sr, channels and source_s from each local file's header
    (False leaves them NaN and opens no file; files on object storage are never opened
    here: the preprocessing workers fill the three columns as they decode).
    """
    if dataset not in ("auto", *PARSERS):
        raise ValueError(f"unknown dataset {dataset!r}; expected auto, emodb or ravdess")
    rows = []
    for path in audio_files(root):
        kind = detect_dataset(path) if dataset == "auto" else dataset
        if kind is None:
            reason = f"file name {storage.name(path)!r} follows neither the EmoDB nor the RAVDESS scheme"
            rows.append(_row(path, "unknown", "", "", reason, read_headers))
            continue
        try:
            speaker, emotion = PARSERS[kind](path)
            rows.append(_row(path, kind, speaker, emotion, "", read_headers))
        except LabelError as exc:
            rows.append(_row(path, kind, "", "", str(exc), read_headers))
    return _finish(rows)


def _resolve(base: str, path: str) -> str:
    """A CSV's path entry as a location: a URI or an absolute path as written, a relative
    one under base (the CSV's folder or prefix, or the root given)."""
    if storage.is_uri(path) or (not storage.is_uri(base) and Path(path).is_absolute()):
        return path
    if storage.is_uri(base):
        scheme, rest = storage.join(base, path).split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest)}"
    return storage.join(base, path)


def load_csv_manifest(csv_path: str | Path, root: str | Path | None = None, dataset: str = "custom", read_headers: bool = True) -> pd.DataFrame:
    """A label CSV (a local file or a storage URI) with columns path, emotion, speaker
    (paths relative to root or to the CSV's folder or prefix)."""
    csv_location = storage.absolute(csv_path)
    if not storage.is_file(csv_location):
        raise MissingInputError(f"label CSV not found: {csv_path}")
    table = pd.read_csv(io.BytesIO(storage.read_bytes(csv_location)), dtype=str, keep_default_na=False)
    missing = {"path", "emotion", "speaker"} - set(table.columns)
    if missing:
        raise InvalidInputError(f"{csv_location}: missing column(s) {', '.join(sorted(missing))}; need path, emotion, speaker")
    base = storage.absolute(root) if root else storage.parent(csv_location)
    rows = []
    for rec in table.to_dict("records"):
        path = _resolve(base, rec["path"])
        name = rec.get("dataset") or dataset
        speaker = str(rec["speaker"]).strip()
        try:
            emotion = normalize_emotion(rec["emotion"])
            if not speaker:
                raise LabelError("missing speaker id")
            rows.append(_row(path, name, speaker, emotion, "", read_headers))
        except LabelError as exc:
            rows.append(_row(path, name, speaker, "", str(exc), read_headers))
    return _finish(rows)


def build_manifest(inputs: list[str | Path], csv: str | Path | None = None, dataset: str = "auto", read_headers: bool = True) -> pd.DataFrame:
    """One manifest over several folders or storage prefixes (and optionally a label CSV)."""
    parts = [scan_folder(root, dataset, read_headers) for root in inputs]
    if csv is not None:
        parts.append(load_csv_manifest(csv, read_headers=read_headers))
    if not parts:
        raise InvalidInputError("no input: give at least one corpus folder (--input) or a label CSV (--csv)")
    return _finish(pd.concat(parts, ignore_index=True).drop(columns="clip_id").to_dict("records"))


def summarize_labels(manifest: pd.DataFrame) -> dict:
    """Counts by emotion among accepted rows, and excluded classes / label errors among the rest."""
    ok = manifest["reject_reason"] == ""
    excluded = {e: int(manifest["reject_reason"].str.contains(f"excluded class: {e} ").sum()) for e in EXCLUDED_EMOTIONS}
    return {
        "files": int(len(manifest)),
        "labelled": int(ok.sum()),
        "by_emotion": {e: int((manifest.loc[ok, "emotion"] == e).sum()) for e in EMOTIONS},
        "excluded": excluded,
        "label_errors": int((~ok).sum() - sum(excluded.values())),
    }


# ------------------------------------------------------------------------ splitting


def speaker_split(
    table: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0
) -> pd.Series:
    """One speaker-independent train/val/test split: a 'train'/'val'/'test' label per row
    (a Series named "split"), no speaker in two splits.

    Speakers are shuffled per dataset with the seed and dealt so every dataset with at
    least three speakers has one in each split, and both held-out splits get at least one.
    """
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("need 0 <= val_fraction, 0 < test_fraction and val_fraction + test_fraction < 1")
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for dataset in sorted(table["dataset"].unique()):
        speakers = sorted(table.loc[table["dataset"] == dataset, "speaker"].unique())
        speakers = [speakers[i] for i in rng.permutation(len(speakers))]
        n = len(speakers)
        n_test = max(1, int(round(n * test_fraction))) if n >= 2 else 0
        n_val = max(1, int(round(n * val_fraction))) if n >= 3 and val_fraction > 0 else 0
        for i, spk in enumerate(speakers):
            assignment[spk] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return table["speaker"].map(assignment).rename("split")


def speaker_folds(table: pd.DataFrame, k: int = 4, val_fraction: float = 0.15, seed: int = 0) -> list[pd.Series]:
    """K speaker folds for cross-validation: per fold, a 'train'/'val'/'test' label per row
    (a Series named "split", as speaker_split returns).

    Each dataset's speakers are shuffled with the seed and dealt round-robin into k test
    groups (continuing across datasets, so fold sizes stay even): test groups are disjoint
    and every speaker is tested exactly once; a dataset with at least k speakers has a test
    speaker in every fold. Validation speakers come from the fold's other speakers, per
    dataset (a share val_fraction of them, at least one where two or more remain), so no
    fold validates on its own test speakers.
    """
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    if not 0 <= val_fraction < 1:
        raise ValueError("need 0 <= val_fraction < 1")
    n_speakers = table["speaker"].nunique()
    if n_speakers < k:
        raise ValueError(f"{k} folds need at least {k} speakers, the table has {n_speakers}")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    speakers_of: dict[str, list[str]] = {}
    dealt = 0
    for dataset in sorted(table["dataset"].unique()):
        speakers = sorted(table.loc[table["dataset"] == dataset, "speaker"].unique())
        speakers = [speakers[i] for i in rng.permutation(len(speakers))]
        speakers_of[dataset] = speakers
        for spk in speakers:
            fold_of[spk] = dealt % k
            dealt += 1
    folds = []
    for fold in range(k):
        assignment: dict[str, str] = {}
        for dataset, speakers in speakers_of.items():
            rest = [spk for spk in speakers if fold_of[spk] != fold]
            n_val = max(1, int(round(len(rest) * val_fraction))) if len(rest) >= 2 and val_fraction > 0 else 0
            val = {rest[i] for i in rng.permutation(len(rest))[:n_val]}
            for spk in speakers:
                assignment[spk] = "test" if fold_of[spk] == fold else "val" if spk in val else "train"
        folds.append(table["speaker"].map(assignment).rename("split"))
    return folds
