"""resolve_checkpoint_ref on local paths and on the loopback S3 server (no MLflow): a
state.pt, a checkpoint folder, a run folder (its newest checkpoint), and a location without
a checkpoint; pinned_reference, what a driver hands its workers. Model URIs are covered by
test_registry.py, against a real MLflow server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emogen import storage
from emogen.errors import MissingInputError
from emogen.tracking.registry import ResolvedModel, pinned_reference, resolve_checkpoint_ref


def touch_state(folder):
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"")  # the reference is resolved, not loaded
    return folder / "state.pt"


def test_a_state_file_a_checkpoint_folder_and_a_run_folder(tmp_path):
    older = touch_state(tmp_path / "run" / "checkpoint_2026-11-25_10-00-00.000001")
    newer = touch_state(tmp_path / "run" / "checkpoint_2026-11-25_10-00-00.000002")
    (tmp_path / "run" / "checkpoint_2026-11-25_10-00-00.000003").mkdir()  # being written: no state.pt yet
    assert resolve_checkpoint_ref(older) == ResolvedModel(str(older), older)
    assert resolve_checkpoint_ref(str(older.parent)) == ResolvedModel(str(older.parent), older)
    by_run = resolve_checkpoint_ref(tmp_path / "run")
    assert by_run.state_path == newer and by_run.uri == str(tmp_path / "run")
    assert by_run.registered() is None and by_run.describe() == str(tmp_path / "run")


def test_a_relative_path_is_made_absolute(tmp_path, monkeypatch):
    state = touch_state(tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    resolved = resolve_checkpoint_ref("ckpt")
    assert resolved.uri == str(tmp_path / "ckpt") and resolved.state_path == state and os.path.isabs(resolved.state_path)


def test_no_checkpoint_is_the_error_load_state_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingInputError, match="^no checkpoint at missing-run$"):
        resolve_checkpoint_ref("missing-run")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(MissingInputError, match="^no checkpoint at empty-run/state.pt$"):
        resolve_checkpoint_ref("empty-run")


def test_a_model_uri_keeps_its_registry_fields():
    tmp = Path("/x/state.pt")
    resolved = ResolvedModel("models:/emogen-vae@champion", tmp, "emogen-vae", "3", "abc")
    assert resolved.describe() == "models:/emogen-vae@champion (version 3)" and resolved.state_path == tmp
    assert resolved.registered() == {"uri": "models:/emogen-vae@champion", "name": "emogen-vae", "version": "3",
                                     "run_id": "abc"}
    assert ResolvedModel("models:/emogen-vae/3", tmp, "emogen-vae", "3").describe() == "models:/emogen-vae/3"


def test_a_checkpoint_on_s3_is_listed_then_only_its_state_file_fetched(s3_bucket, tmp_path, monkeypatch):
    run = f"{s3_bucket}/train/vae-tiny"
    for stamp, weights in (("000001", b"older"), ("000002", b"newer")):
        storage.write_bytes(f"{run}/checkpoint_2026-11-25_10-00-00.{stamp}/state.pt", weights)
    storage.write_bytes(f"{run}/checkpoint_2026-11-25_10-00-00.000003/.metadata.json", b"{}")  # no state.pt yet
    storage.write_bytes(f"{run}/checkpoint_manager_snapshot.json", b"{}")  # Ray Train's own files beside them
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))

    newest = f"{run}/checkpoint_2026-11-25_10-00-00.000002/state.pt"
    assert pinned_reference(run + "/") == newest  # what the workers of a latent diffusion get
    by_run = resolve_checkpoint_ref(run + "/")
    assert by_run.uri == run and by_run.describe() == run and by_run.registered() is None
    assert by_run.state_path.read_bytes() == b"newer" and by_run.state_path.is_relative_to(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == ["state.pt"]  # one file fetched, not the run
    assert resolve_checkpoint_ref(newest).state_path == by_run.state_path  # cached: fetched once per node
    older = resolve_checkpoint_ref(f"{run}/checkpoint_2026-11-25_10-00-00.000001")
    assert older.state_path.read_bytes() == b"older"

    with pytest.raises(MissingInputError, match=f"^no checkpoint at {s3_bucket}/train/missing$"):
        resolve_checkpoint_ref(f"{s3_bucket}/train/missing")
    with pytest.raises(MissingInputError, match=f"^no checkpoint at {run}/checkpoint_2026-11-25_10-00-00.000003$"):
        pinned_reference(f"{run}/checkpoint_2026-11-25_10-00-00.000003")
    with pytest.raises(storage.StorageError, match="^s3://emogen-no-such-bucket/run: .*bucket"):
        resolve_checkpoint_ref("s3://emogen-no-such-bucket/run")


def test_a_local_reference_is_pinned_to_its_newest_state_file(tmp_path):
    touch_state(tmp_path / "run" / "checkpoint_2026-11-25_10-00-00.000001")
    newer = touch_state(tmp_path / "run" / "checkpoint_2026-11-25_10-00-00.000002")
    assert pinned_reference(tmp_path / "run") == str(newer)
    assert pinned_reference(f"file://{tmp_path / 'run'}") == str(newer)
