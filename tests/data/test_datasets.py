"""EmoDB / RAVDESS / CSV loaders and the speaker-independent split."""

from __future__ import annotations

import pandas as pd
import pytest

from emogen.config import EMOTIONS
from emogen.data.datasets import (
    LabelError,
    build_manifest,
    emodb_name,
    load_csv_manifest,
    parse_emodb_name,
    parse_ravdess_name,
    ravdess_name,
    scan_folder,
    speaker_folds,
    speaker_split,
    summarize_labels,
)


@pytest.mark.parametrize(
    "name,speaker,emotion",
    [("03a01Wa.wav", "03", "anger"), ("16b10Td.wav", "16", "sadness"), ("08a05Fb.wav", "08", "happiness"),
     ("11a02Nb.wav", "11", "neutral"), ("09b03Aa.wav", "09", "fear"), ("14a07Ec.wav", "14", "disgust")],
)
def test_emodb_names(name, speaker, emotion):
    assert parse_emodb_name(name) == (speaker, emotion)


@pytest.mark.parametrize(
    "name,actor,emotion",
    [("03-01-05-01-02-01-12.wav", "12", "anger"), ("03-01-01-01-01-01-01.wav", "01", "neutral"),
     ("03-01-03-02-01-02-24.wav", "24", "happiness"), ("03-01-04-01-02-02-07.wav", "07", "sadness"),
     ("03-01-06-02-02-01-10.wav", "10", "fear"), ("03-01-07-01-01-01-03.wav", "03", "disgust")],
)
def test_ravdess_names(name, actor, emotion):
    assert parse_ravdess_name(name) == (actor, emotion)


@pytest.mark.parametrize(
    "parser,name,reason",
    [(parse_emodb_name, "03a01La.wav", "excluded class: boredom"),
     (parse_emodb_name, "03a01Xa.wav", "unknown EmoDB emotion code 'X'"),
     (parse_emodb_name, "hello.wav", "does not follow the EmoDB scheme"),
     (parse_ravdess_name, "03-01-02-01-01-01-01.wav", "excluded class: calm"),
     (parse_ravdess_name, "03-01-08-01-01-01-01.wav", "excluded class: surprise"),
     (parse_ravdess_name, "03-01-09-01-01-01-01.wav", "unknown RAVDESS emotion code '09'"),
     (parse_ravdess_name, "03-02-05-01-01-01-01.wav", "song, not speech")],
)
def test_label_errors_name_the_problem(parser, name, reason):
    with pytest.raises(LabelError, match=reason):
        parser(name)


def test_name_builders_round_trip():
    for e in EMOTIONS:
        assert parse_emodb_name(emodb_name(3, "a01", e))[1] == e
        assert parse_ravdess_name(ravdess_name(7, e, 2 if e != "neutral" else 1))[1] == e


def test_scan_folder_counts_everything(tmp_path, write_wav):
    for e in EMOTIONS + ("boredom",):
        write_wav(tmp_path / "emodb" / emodb_name(3, "a01", e), sample_rate=16_000)
    for e in ("anger", "calm", "surprise"):
        write_wav(tmp_path / "ravdess" / "Actor_05" / ravdess_name(5, e), sample_rate=48_000)
    write_wav(tmp_path / "misc" / "notes.wav")
    (tmp_path / "readme.txt").write_text("not audio")
    m = scan_folder(tmp_path)
    assert len(m) == 7 + 3 + 1  # every audio file, none dropped; the .txt is not audio
    s = summarize_labels(m)
    assert s["labelled"] == 7 and s["excluded"] == {"boredom": 1, "calm": 1, "surprise": 1} and s["label_errors"] == 1
    ok = m[m.reject_reason == ""]
    assert set(ok.dataset) == {"emodb", "ravdess"}
    assert set(ok.speaker) == {"emodb:03", "ravdess:05"}
    assert ok.set_index("dataset").source_sr.to_dict() == {"emodb": 16_000.0, "ravdess": 48_000.0}
    assert m.clip_id.is_unique


def test_csv_manifest(tmp_path, write_wav):
    for name in ("a.wav", "b.wav", "c.wav", "d.wav"):
        write_wav(tmp_path / "clips" / name)
    pd.DataFrame(
        {"path": ["clips/a.wav", "clips/b.wav", "clips/c.wav", "clips/d.wav"],
         "emotion": ["Angry", "sad", "bored", ""], "speaker": ["s1", "s2", "s1", "s2"]}
    ).to_csv(tmp_path / "labels.csv", index=False)
    m = load_csv_manifest(tmp_path / "labels.csv")
    assert list(m.emotion) == ["anger", "sadness", "", ""]
    assert "unknown emotion label 'bored'" in m.reject_reason[2] and "missing emotion label" in m.reject_reason[3]
    assert set(m.speaker[:2]) == {"custom:s1", "custom:s2"}


def test_manifest_paths_are_absolute_locations(tmp_path, write_wav, monkeypatch):
    """A relative folder or CSV still gives absolute paths (a Ray worker's working dir is
    not the driver's); hidden names are skipped, suffixes match in any case; read_headers
    False opens no file."""
    monkeypatch.chdir(tmp_path)
    write_wav(tmp_path / "corpus" / "a" / emodb_name(3, "a01", "anger"))
    write_wav(tmp_path / "corpus" / emodb_name(3, "a02", "fear").replace(".wav", ".WAV"))
    write_wav(tmp_path / "corpus" / ".03a03Wa.wav")
    (tmp_path / "corpus" / "notes.txt").write_text("not audio")
    m = scan_folder("corpus")
    assert sorted(m.path) == sorted([str(tmp_path / "corpus" / "a" / "03a01Wa.wav"), str(tmp_path / "corpus" / "03a02Aa.WAV")])
    assert m.source_sr.notna().all() and scan_folder("corpus", read_headers=False).source_sr.isna().all()
    pd.DataFrame({"path": ["corpus/a/03a01Wa.wav"], "emotion": ["anger"], "speaker": ["s1"]}).to_csv("labels.csv", index=False)
    assert list(load_csv_manifest("labels.csv").path) == [str(tmp_path / "corpus" / "a" / "03a01Wa.wav")]


def test_csv_missing_columns(tmp_path):
    (tmp_path / "bad.csv").write_text("file,label\na.wav,anger\n")
    with pytest.raises(ValueError, match="missing column"):
        load_csv_manifest(tmp_path / "bad.csv")


def test_build_manifest_requires_existing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus folder not found"):
        build_manifest([tmp_path / "nope"])


def _table(n_emodb=10, n_ravdess=24):
    rows = [{"dataset": "emodb", "speaker": f"emodb:{i:02d}"} for i in range(n_emodb) for _ in range(3)]
    rows += [{"dataset": "ravdess", "speaker": f"ravdess:{i:02d}"} for i in range(n_ravdess) for _ in range(3)]
    return pd.DataFrame(rows)


def test_speaker_split_is_speaker_independent_and_deterministic():
    t = _table()
    split = speaker_split(t, seed=3)
    by_speaker = t.assign(split=split).groupby("speaker")["split"].nunique()
    assert (by_speaker == 1).all()
    for ds in ("emodb", "ravdess"):
        assert set(split[t.dataset == ds]) == {"train", "val", "test"}
    assert split.equals(speaker_split(t, seed=3))
    assert not split.equals(speaker_split(t, seed=4))


def test_speaker_split_with_two_speakers_keeps_a_test_speaker():
    split = speaker_split(_table(2, 0), seed=0)
    assert set(split) == {"train", "test"}


@pytest.mark.parametrize("k", [2, 4, 5])
def test_speaker_folds_test_every_speaker_once(k):
    t = _table()
    folds = speaker_folds(t, k=k, val_fraction=0.15, seed=1)
    assert len(folds) == k
    tested = [set(t.loc[split == "test", "speaker"]) for split in folds]
    for i in range(k):
        for j in range(i + 1, k):
            assert not tested[i] & tested[j]
    assert set().union(*tested) == set(t["speaker"])
    assert sum(len(s) for s in tested) == t["speaker"].nunique()
    for split, test_speakers in zip(folds, tested):
        assert (t.assign(split=split).groupby("speaker")["split"].nunique() == 1).all()
        assert not set(t.loc[split == "val", "speaker"]) & test_speakers
        assert set(split) == {"train", "val", "test"}
        for ds in ("emodb", "ravdess"):  # both have >= k speakers: each in every split
            assert set(split[t.dataset == ds]) == {"train", "val", "test"}


def test_speaker_folds_deterministic_and_checked():
    t = _table()
    a, b = speaker_folds(t, k=4, seed=3), speaker_folds(t, k=4, seed=3)
    assert all(x.equals(y) for x, y in zip(a, b))
    assert not all(x.equals(y) for x, y in zip(a, speaker_folds(t, k=4, seed=4)))
    no_val = speaker_folds(t, k=4, val_fraction=0.0)
    assert all("val" not in set(split) for split in no_val)
    with pytest.raises(ValueError):
        speaker_folds(t, k=1)
    with pytest.raises(ValueError):
        speaker_folds(_table(2, 1), k=4)
