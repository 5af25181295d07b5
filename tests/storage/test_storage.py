"""emogen.storage on a local folder and on the loopback S3 server: the same calls, the same
answers, whole-or-nothing writes, cached fetches, and one-line errors naming the URI."""

from __future__ import annotations

import pytest

from emogen import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A fresh folder or prefix to work under."""
    if request.param == "local":
        return str(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/{request.node.name.replace('[', '-').rstrip(']')}"


def test_uri_or_path():
    assert storage.is_uri("s3://bucket/x") and storage.is_uri("gs://b/x")
    assert not storage.is_uri("runs/x") and not storage.is_uri("file:///tmp/x") and not storage.is_uri("/tmp/x")
    assert storage.join("s3://b/x/", "y", "/z.wav") == "s3://b/x/y/z.wav"
    assert storage.name("s3://b/x/y.wav") == "y.wav"
    assert storage.absolute("s3://b/x/") == "s3://b/x"
    assert storage.absolute("file:///tmp/x") == "/tmp/x"


def test_write_read_list_remove(root):
    assert not storage.exists(root)
    storage.write_text(storage.join(root, "a", "one.txt"), "one")
    storage.write_bytes(storage.join(root, "a", "b", "two.bin"), b"\x00\x01")
    storage.write_text(storage.join(root, "top.txt"), "top")

    assert storage.is_dir(root) and storage.is_dir(storage.join(root, "a"))
    assert storage.is_file(storage.join(root, "top.txt")) and not storage.is_dir(storage.join(root, "top.txt"))
    assert storage.read_text(storage.join(root, "a", "one.txt")) == "one"
    assert storage.list_files(root) == [storage.join(root, p) for p in ("a/b/two.bin", "a/one.txt", "top.txt")]
    with storage.open_input(storage.join(root, "a", "b", "two.bin")) as handle:
        handle.seek(1)
        assert handle.read() == b"\x01"

    storage.write_text(storage.join(root, "top.txt"), "rewritten")  # a rewrite replaces, whole
    assert storage.read_text(storage.join(root, "top.txt")) == "rewritten"
    storage.remove(storage.join(root, "a"))
    assert storage.list_files(root) == [storage.join(root, "top.txt")]
    storage.remove(storage.join(root, "nothing-here"))  # not an error


def test_upload_then_fetch_is_cached_and_refetched_when_changed(root, tmp_path):
    source = tmp_path / "src"
    (source / "inner").mkdir(parents=True)
    (source / "state.pt").write_bytes(b"weights-1")
    (source / "inner" / "meta.json").write_text("{}")
    remote = storage.join(root, "run")
    storage.upload(source, remote)
    assert storage.list_files(remote) == [storage.join(remote, "inner/meta.json"), storage.join(remote, "state.pt")]

    cache = tmp_path / "cache"
    first = storage.fetch(remote, cache)
    assert (first / "state.pt").read_bytes() == b"weights-1" and (first / "inner" / "meta.json").exists()
    assert storage.fetch(remote, cache) == first  # unchanged: the same local copy
    if storage.is_uri(root):
        storage.write_bytes(storage.join(remote, "state.pt"), b"weights-two")
        second = storage.fetch(remote, cache)
        assert second != first and (second / "state.pt").read_bytes() == b"weights-two"
        assert not [p for p in cache.iterdir() if p.name.startswith(".fetch-")]  # no staging left behind
    else:
        assert first == source.resolve() or first == storage.local_path(remote)  # local: read in place


def test_missing_things_are_one_line_errors_naming_the_location(s3_bucket, tmp_path):
    with pytest.raises(storage.StorageNotFound, match=r"s3://emogen-test-storage/nothing\.txt: not found"):
        storage.read_bytes(f"{s3_bucket}/nothing.txt")
    with pytest.raises(storage.StorageNotFound, match=r"^s3://emogen-test-storage/no-run: not found$"):
        storage.fetch(f"{s3_bucket}/no-run", tmp_path)
    with pytest.raises(storage.StorageError, match=r"^s3://emogen-no-such-bucket/x: .*(bucket|Bucket)") as error:
        storage.list_files("s3://emogen-no-such-bucket/x")
    assert "\n" not in str(error.value) and "Request ID" not in str(error.value)
    assert storage.is_dir(s3_bucket) and not storage.is_dir(f"{s3_bucket}/empty-prefix")


def test_refusals_from_the_store_are_one_line_without_request_ids():
    """What pyarrow raises for refused keys (the loopback server accepts any, so the SDK's
    message is given here) becomes one line naming the URI."""
    refused = OSError("When reading information for key 'x' in bucket 'b': AWS Error ACCESS_DENIED during "
                      "HeadObject operation: No response body. (Request ID: 7A1B)\nsecond line")
    with pytest.raises(storage.StorageError) as error, storage.reporting("s3://b/x"):
        raise refused
    assert str(error.value) == ("s3://b/x: When reading information for key 'x' in bucket 'b': AWS Error "
                                "ACCESS_DENIED during HeadObject operation: No response body.")
