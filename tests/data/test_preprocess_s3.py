"""Preprocessing with every location on object storage, against the loopback S3 server: the
tiny corpus uploaded to a bucket -> `emogen preprocess` s3 -> s3 equals the local run of the
same corpus; hostile objects become reject rows; a label CSV on s3; audio decoded from a
URI equals the local decode; a rerun replaces the features; bad URIs are one line."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import soundfile as sf

from tests.support import emogen, tone
from emogen import storage
from emogen.audio.clips import RejectedClip, load_clip, read_audio
from emogen.config import EMOTIONS
from emogen.data.datasets import build_manifest, load_csv_manifest
from emogen.data.features import decode_mels, features_dir, preprocess, read_features, write_generated_features
from emogen.errors import MissingInputError

ROOT = Path(__file__).resolve().parents[2]
NOT_AUDIO = b"RIFF\x00\x00\x00\x00WAVEgarbage" + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def corpus(tiny_features, s3_bucket):
    """(local corpus folder, its copy in the bucket, a prefix of hostile objects)."""
    local = Path(tiny_features).parent / "corpus"
    remote = storage.upload(local, f"{s3_bucket}/corpus")
    hostile = f"{s3_bucket}/hostile"
    storage.write_bytes(f"{hostile}/03z01Wa.wav", b"")  # an empty object
    storage.write_bytes(f"{hostile}/03z02Wa.wav", NOT_AUDIO)  # not audio, with an audio name
    storage.write_text(f"{hostile}/notes.txt", "not audio")  # not an audio suffix: not an input
    return local, remote, hostile


@pytest.fixture(scope="module")
def s3_run(corpus, s3_bucket, ray_session):
    """`emogen preprocess` from the bucket to the bucket: (summary, output URI)."""
    _, remote, hostile = corpus
    output = f"{s3_bucket}/data"
    return emogen("preprocess", "--input", remote, "--input", hostile, "--output", output), output


def test_s3_features_equal_the_local_run(s3_run, corpus, tiny_features):
    """Same clip ids, same mel bytes, same labels and header columns as the local run of the
    same corpus; each row's path is its object's URI."""
    summary, output = s3_run
    remote, local = read_features(output), read_features(tiny_features)
    assert summary["features"] == f"{output}/features" and features_dir(output) == summary["features"]
    assert list(remote["clip_id"]) == list(local["clip_id"]) and len(remote) > 0
    assert list(remote["mel"]) == list(local["mel"])
    columns = ["dataset", "speaker", "emotion", "label", "source_sr", "channels", "source_s", "n_mels", "n_frames"]
    pd.testing.assert_frame_equal(remote[columns], local[columns])
    assert remote["source_sr"].notna().all()  # headers read in the workers, never on the driver
    local_root, remote_root = str(corpus[0].resolve()), corpus[1]
    assert [p.replace(remote_root, local_root, 1) for p in remote["path"]] == list(local["path"])


def test_s3_summary_rejects_and_manifest_beside_the_features(s3_run, tiny_features):
    """summary.json, rejects.csv and manifest.csv in the output prefix; the hostile objects
    are reject rows with their reasons, counted: accepted + rejected = input."""
    summary, output = s3_run
    local = json.loads((Path(tiny_features) / "summary.json").read_text())
    written = json.loads(storage.read_text(f"{output}/summary.json"))
    assert written == {k: v for k, v in summary.items() if k != "excluded"}  # the CLI adds the label counts
    assert summary["input"] == local["input"] + 2 and summary["accepted"] == local["accepted"]
    assert summary["accepted"] + summary["rejected"] == summary["input"]
    rejects = pd.read_csv(io.BytesIO(storage.read_bytes(f"{output}/rejects.csv")), keep_default_na=False)
    reasons = dict(zip(rejects["path"], rejects["reject_reason"]))
    assert len(rejects) == summary["rejected"]
    assert reasons[storage.join(output.rsplit("/", 1)[0], "hostile", "03z01Wa.wav")] == "empty file (0 bytes)"
    assert reasons[storage.join(output.rsplit("/", 1)[0], "hostile", "03z02Wa.wav")].startswith("not a readable audio file")
    manifest = pd.read_csv(io.BytesIO(storage.read_bytes(f"{output}/manifest.csv")), keep_default_na=False)
    assert len(manifest) == summary["input"] and all(p.startswith("s3://") for p in manifest["path"])
    assert (manifest["source_sr"] == "").all()  # the driver opened no object
    assert not any(p.endswith("notes.txt") for p in manifest["path"])
    assert all(f.endswith(".parquet") for f in storage.list_files(f"{output}/features"))


def test_rerun_into_an_existing_s3_output_replaces_the_features(s3_run, corpus, ray_session):
    """A second run into the same prefix, without the hostile objects, leaves only its rows."""
    _, output = s3_run
    manifest = build_manifest([corpus[1]])
    again = preprocess(manifest, output, batch_size=32)
    assert again["input"] == len(manifest) == again["accepted"] + again["rejected"]
    assert len(read_features(output)) == again["accepted"]
    fs, path = storage.filesystem(f"{output}/features")
    assert pads.dataset(path, filesystem=fs, format="parquet").count_rows() == len(manifest)  # none of the first run's
    rejects = pd.read_csv(io.BytesIO(storage.read_bytes(f"{output}/rejects.csv")), keep_default_na=False)
    assert not any("hostile" in p for p in rejects["path"])


def test_label_csv_on_s3(corpus, s3_bucket):
    """A CSV URI: relative paths resolve under its prefix (.. included), URIs stay as written."""
    local, remote, _ = corpus
    names = sorted(p.relative_to(local).as_posix() for p in (local / "emodb").rglob("*.wav"))[:2]
    table = pd.DataFrame({"path": [f"../corpus/{names[0]}", f"{remote}/{names[1]}", "../corpus/missing.wav"],
                          "emotion": ["anger", "sad", "happy"], "speaker": ["s1", "s2", "s1"]})
    csv = storage.write_text(f"{s3_bucket}/labels/labels.csv", table.to_csv(index=False))
    manifest = load_csv_manifest(csv)
    emotions = dict(zip(manifest["path"], manifest["emotion"]))
    assert emotions == {f"{remote}/{names[0]}": "anger", f"{remote}/{names[1]}": "sadness", f"{remote}/missing.wav": "happiness"}
    assert (manifest["reject_reason"] == "").all() and manifest["source_sr"].isna().all()  # no object opened here
    np.testing.assert_array_equal(read_audio(f"{remote}/{names[0]}")[0], read_audio(local / names[0])[0])


def test_read_audio_from_a_uri_equals_the_local_file(corpus, s3_bucket, tmp_path):
    """Decoding an object equals decoding the same file locally, a long file's centre
    included (read past the read-ahead window); broken objects get the local reasons."""
    local, remote, hostile = corpus
    for name in [sorted((local / "emodb").rglob("*.wav"))[0], sorted((local / "ravdess").rglob("*.wav"))[0]]:
        relative = name.relative_to(local).as_posix()
        from_uri, from_file = read_audio(f"{remote}/{relative}"), read_audio(name)
        assert from_uri[1] == from_file[1]
        np.testing.assert_array_equal(from_uri[0], from_file[0])
        np.testing.assert_array_equal(load_clip(f"{remote}/{relative}"), load_clip(name))
    long = tmp_path / "long.wav"
    sf.write(long, tone(120.0, 8_000), 8_000, subtype="PCM_16")  # 1.9 MB: the centre is past the first window
    np.testing.assert_array_equal(read_audio(storage.upload(long, f"{s3_bucket}/long.wav"))[0], read_audio(long)[0])
    for location, reason in [(f"{hostile}/03z01Wa.wav", "empty file (0 bytes)"), (f"{hostile}/03z02Wa.wav", "not a readable audio file"),
                             (f"{hostile}/absent.wav", "file not found")]:
        with pytest.raises(RejectedClip, match=re.escape(reason)):
            read_audio(location)


def test_generated_features_on_s3(s3_bucket):
    """write_generated_features into a URI: the readers read it back, the location is a str."""
    mels = np.random.default_rng(0).uniform(-1, 1, (4, 128, 173)).astype(np.float32)
    location = write_generated_features(mels, np.array([0, 1, 2, 3]), f"{s3_bucket}/gen/fold-0", "vae")
    assert location == f"{s3_bucket}/gen/fold-0/features"
    table = read_features(f"{s3_bucket}/gen/fold-0")
    order = [int(clip_id.rsplit("_", 1)[1]) for clip_id in table["clip_id"]]  # sorted by clip id: emotion first
    assert sorted(order) == [0, 1, 2, 3] and list(table["emotion"]) == [EMOTIONS[k] for k in order]
    np.testing.assert_array_equal(decode_mels(table), mels[order])
    with pytest.raises(MissingInputError, match=rf"^no features at {s3_bucket}/gen/nothing: run `emogen preprocess` first$"):
        features_dir(f"{s3_bucket}/gen/nothing")


def test_bad_uris_are_one_line_naming_the_uri(corpus, s3_bucket, tmp_path):
    """No such bucket, a prefix with no audio, no such CSV, no such output bucket: each ends
    before Ray starts with exit code 2 and one `emogen: error:` line naming the URI."""
    _, remote, _ = corpus
    storage.write_text(f"{s3_bucket}/labels-only/readme.txt", "labels, no audio")
    cases = {
        "s3://emogen-no-such-bucket/corpus: ": ["--input", "s3://emogen-no-such-bucket/corpus", "--output", str(tmp_path / "a")],
        f"no audio files found under {s3_bucket}/labels-only": ["--input", f"{s3_bucket}/labels-only", "--output", str(tmp_path / "b")],
        f"label CSV not found: {s3_bucket}/no-labels.csv": ["--csv", f"{s3_bucket}/no-labels.csv", "--output", str(tmp_path / "c")],
        "s3://emogen-no-such-bucket/data/manifest.csv: ": ["--input", f"{remote}/emodb", "--output", "s3://emogen-no-such-bucket/data"],
    }
    running = {named: subprocess.Popen([sys.executable, "-m", "emogen.cli", "preprocess", *argv], cwd=tmp_path, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE) for named, argv in cases.items()}
    for named, process in running.items():  # started together: each pays its own imports, two cores share them
        _, stderr = process.communicate(timeout=300)
        errors = [line for line in stderr.splitlines() if line.startswith("emogen: error:")]
        assert process.returncode == 2, f"{named}: {stderr[-3000:]}"
        assert len(errors) == 1 and named in errors[0], f"{named}: {stderr[-3000:]}"
        assert "Traceback" not in stderr, f"{named}: {stderr[-3000:]}"
