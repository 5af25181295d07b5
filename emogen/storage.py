"""Locations a user names: a local path or a storage URI (``s3://bucket/prefix``,
``gs://bucket/prefix``), read and written through pyarrow's file systems, the ones Ray
Data and Ray Train use for the same URIs.

Credentials and endpoints come from the standard environment of the process (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL`` for an S3-compatible server, or the node's instance role), never from
options, so they appear in no log, summary or MLflow param. A failed storage call raises
`StorageError`, one line naming the location and the cause.

Writes are whole or nothing: a local file is written beside its target and renamed over
it; an object store makes an object visible only once its upload completes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from emogen.errors import MissingInputError, UserError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Schemes that name a file system (not an MLflow models:/ or runs:/ reference).
LOCAL_SCHEME = "file"
CACHE_ENV = "EMOGEN_CACHE"  # where fetched remote checkpoints are kept (default: the temp dir)


class StorageError(UserError, OSError):
    """A storage location that cannot be read or written (no such bucket, no credentials,
    no permission, an unreachable endpoint); the message names the location."""


class StorageNotFound(StorageError, MissingInputError):
    """Nothing at a storage location (still a FileNotFoundError)."""


def is_uri(location: str | Path) -> bool:
    """True for a remote storage URI (s3://, gs://, ...); False for a local path or file://."""
    match = _SCHEME.match(str(location)) if isinstance(location, str) else None
    return bool(match) and match.group(1).lower() != LOCAL_SCHEME


def local_path(location: str | Path) -> Path:
    """A local location as a Path (file:// stripped); a remote URI is an error."""
    if is_uri(location):
        raise ValueError(f"{location} is not a local path")
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def absolute(location: str | Path) -> str:
    """A local location made absolute (Ray Train and Tune need that); a URI as it is,
    without a trailing slash."""
    return str(location).rstrip("/") if is_uri(location) else str(local_path(location).resolve())


def join(location: str | Path, *parts: str) -> str:
    """location/part/...: "/"-joined for a URI, a local path joined as a path."""
    if is_uri(location):
        return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(local_path(location).joinpath(*parts))


def name(location: str | Path) -> str:
    """The last component of a location: s3://b/x/y.wav -> y.wav."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def parent(location: str | Path) -> str:
    """The folder or prefix holding a location: s3://b/x/labels.csv -> s3://b/x."""
    if is_uri(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return str(local_path(location).parent)


# ----------------------------------------------------------------- file systems


_FILESYSTEMS: dict[str, Any] = {}


def filesystem(location: str | Path) -> tuple[Any, str]:
    """(pyarrow file system, path inside it) of a location. Remote file systems are made
    once per scheme and bucket in a process: resolving an S3 bucket's region is a request."""
    import pyarrow.fs as pafs  # deferred: pyarrow is heavy, and `emogen --help` imports modules that import this one

    if not is_uri(location):
        return pafs.LocalFileSystem(), str(local_path(location).resolve())
    text = str(location)
    scheme, rest = text.split("://", 1)
    bucket = rest.split("/", 1)[0]
    key = f"{scheme.lower()}://{bucket}"
    with reporting(text):
        if key not in _FILESYSTEMS:
            _FILESYSTEMS[key] = pafs.FileSystem.from_uri(key)[0]
    return _FILESYSTEMS[key], rest.rstrip("/")


def uri_of(fs: Any, path: str) -> str:
    """The location of `path` inside pyarrow file system `fs`: the inverse of `filesystem`
    (Ray Train reports a checkpoint as a file system and a path)."""
    kind = getattr(fs, "type_name", "local")
    if kind == "s3":
        return f"s3://{path.lstrip('/')}"
    if kind == "gcs":
        return f"gs://{path.lstrip('/')}"
    if kind in ("local", "mock"):
        return path
    raise ValueError(f"no URI scheme for a {kind} file system ({path})")


_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")


def _reason(error: BaseException) -> str:
    """A storage error's cause in one line: the SDK's message without request ids."""
    text = _REQUEST_ID.sub("", str(error)).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextmanager
def reporting(location: str | Path) -> Iterator[None]:
    """Storage errors inside the block -> StorageError naming `location` and the cause."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageNotFound(f"{absolute(location)}: not found") from None
    except (OSError, ValueError) as error:  # pyarrow raises OSError, ArrowInvalid (a ValueError) for a bad URI
        raise StorageError(f"{absolute(location)}: {_reason(error)}") from None


def _info(location: str | Path) -> Any:
    fs, path = filesystem(location)
    with reporting(location):
        return fs.get_file_info(path)


def exists(location: str | Path) -> bool:
    import pyarrow.fs as pafs  # deferred: pyarrow is heavy, and `emogen --help` imports modules that import this one

    if not is_uri(location):
        return local_path(location).exists()
    return _info(location).type != pafs.FileType.NotFound or is_dir(location)


def is_dir(location: str | Path) -> bool:
    """A folder, or on an object store a prefix with at least one object under it."""
    import pyarrow.fs as pafs  # deferred: pyarrow is heavy, and `emogen --help` imports modules that import this one

    if not is_uri(location):
        return local_path(location).is_dir()
    fs, path = filesystem(location)
    with reporting(location):
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            return True
        if "/" not in path:  # a bucket's root: listing it says whether the bucket exists
            fs.get_file_info(pafs.FileSelector(path, recursive=False))
            return True
        # some object stores have no directory markers: a prefix exists when it has objects
        return bool(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False)))


def is_file(location: str | Path) -> bool:
    import pyarrow.fs as pafs  # deferred: pyarrow is heavy, and `emogen --help` imports modules that import this one

    if not is_uri(location):
        return local_path(location).is_file()
    return _info(location).type == pafs.FileType.File


def list_files(location: str | Path) -> list[str]:
    """Every file under a folder or prefix, recursively, as locations, sorted. Locally also
    dangling links (not is_dir rather than is_file): an input to reject, not to skip."""
    import pyarrow.fs as pafs  # deferred: pyarrow is heavy, and `emogen --help` imports modules that import this one

    if not is_uri(location):
        root = local_path(location)
        return sorted(str(p) for p in root.rglob("*") if not p.is_dir())
    fs, path = filesystem(location)
    scheme = str(location).split("://", 1)[0]
    with reporting(location):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(f"{scheme}://{info.path}" for info in infos if info.type == pafs.FileType.File)


# ------------------------------------------------------------------ reading


def open_input(location: str | Path) -> IO[bytes]:
    """A seekable binary file object (soundfile reads from it; remote reads are ranged)."""
    if not is_uri(location):
        return open(local_path(location), "rb")
    fs, path = filesystem(location)
    with reporting(location):
        return fs.open_input_file(path)


def read_bytes(location: str | Path) -> bytes:
    with reporting(location), open_input(location) as handle:
        return handle.read()


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode("utf-8")


# ------------------------------------------------------------------ writing


def write_bytes(location: str | Path, data: bytes) -> str:
    """data at location, whole or not at all; returns the location."""
    if not is_uri(location):
        target = local_path(location)
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
        return str(target)
    fs, path = filesystem(location)
    with reporting(location), fs.open_output_stream(path) as stream:
        stream.write(data)
    return str(location)


def write_text(location: str | Path, text: str) -> str:
    return write_bytes(location, text.encode("utf-8"))


def atomic_write(target: str | Path, write: Callable[[str], None]) -> Path:
    """write(tmp_path) into a temp file beside target, then rename it over target: a crash
    never leaves half a file (checkpoints, results.json)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def make_dirs(location: str | Path) -> None:
    """A local folder (and its parents); a no-op on an object store (prefixes need no folder)."""
    if not is_uri(location):
        local_path(location).mkdir(parents=True, exist_ok=True)


def upload(source: str | Path, location: str | Path) -> str:
    """A local file or folder copied to location (a folder's tree under it); returns location."""
    import pyarrow.fs as pafs  # deferred: pyarrow is heavy, and `emogen --help` imports modules that import this one

    fs, path = filesystem(location)
    source = Path(source)
    with reporting(location):  # a folder is copied file by file, a file as one object
        pafs.copy_files(str(source.resolve()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return str(location)


def download(location: str | Path, target: str | Path) -> Path:
    """A remote file or prefix copied to the local target (a prefix's tree under it)."""
    import pyarrow.fs as pafs  # deferred: pyarrow is heavy, and `emogen --help` imports modules that import this one

    fs, path = filesystem(location)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with reporting(location):
        pafs.copy_files(path, str(target.resolve()), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return target


def remove(location: str | Path) -> None:
    """A file or a folder/prefix with everything under it; nothing there is not an error."""
    import pyarrow.fs as pafs  # deferred: pyarrow is heavy, and `emogen --help` imports modules that import this one

    if not is_uri(location):
        path = local_path(location)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        return
    fs, path = filesystem(location)
    with reporting(location):
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.File:
            fs.delete_file(path)
        elif is_dir(location):
            fs.delete_dir(path)


# ------------------------------------------------------------------ fetching


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "emogen-cache")


def fetch(location: str | Path, cache: str | Path | None = None) -> Path:
    """A local copy of a remote file or prefix (a local location is returned as it is).

    Kept in a node-local cache, keyed by the URI and what is there (every object's path,
    size and modification time), so a rewritten checkpoint is fetched again and an
    unchanged one once per node. The copy lands in a staging folder renamed into place:
    a reader never sees half of it, and two processes fetching at once both end whole.
    """
    import pyarrow.fs as pafs  # deferred: pyarrow is heavy, and `emogen --help` imports modules that import this one

    if not is_uri(location):
        return local_path(location)
    fs, path = filesystem(location)
    with reporting(location):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            listing = [info]
        else:
            listing = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File]
    if not listing:
        raise StorageNotFound(f"{absolute(location)}: not found")
    signature = "|".join(f"{i.path}:{i.size}:{i.mtime_ns}" for i in listing)
    cache = Path(cache or cache_root())
    target = cache / hashlib.sha256(f"{location}|{signature}".encode()).hexdigest()[:24] / name(location)
    if target.exists():
        return target
    return put_in_place(target, lambda staged: download(location, staged), staging_in=cache)


def put_in_place(target: Path, fill: Callable[[Path], Any], staging_in: Path) -> Path:
    """fill(staged) writes what target is to hold (a file or a folder) at a fresh path in a
    staging folder under staging_in, which is then renamed to target: a reader never sees
    half of it. When another process put its copy in place first, that copy stays."""
    staging_in.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=staging_in, prefix=".fetch-"))
    try:
        staged = staging / target.name
        fill(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staged, target)
        except OSError:  # another process put the same copy in place first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
