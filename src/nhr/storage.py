"""Where a run directory's files live: a local disk, or object storage through fsspec.

Everything nhr keeps in a run directory goes through one `Storage`, addressed by keys relative
to the run's root ("stages/edit/shard-00003.parquet"). Two kinds:

- `LocalStorage` (a path, or `file://`): each file is written to a temporary name and renamed
  into place, so a killed process leaves the old file or the new one, never half of one. Files
  get the user's umask. Kept on plain `os` calls rather than fsspec's local file system, which
  has no atomic write.
- `ObjectStorage` (`s3://`, `gs://`, any other fsspec protocol; `memory://` in tests): an
  object appears whole when its PUT completes, so a key is written directly. Credentials come
  from the environment the SDKs read (for S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
  `AWS_ENDPOINT_URL` for MinIO, Ceph and other S3-compatible stores); nhr never writes them.

On both, the completion marker written last is what commits a shard, and readers use what
markers list; listings are only used to clean up and to show progress.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Connection failures of the object-store SDKs (botocore, aiohttp), by class name so that
# neither needs importing here; the SDKs have already retried them.
UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ClientConnectorError",
    "ServerTimeoutError",
}

# fsspec protocol -> the extra that brings its implementation
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


class StorageSetupError(Exception):
    """Object storage cannot be used as configured (no driver installed, no credentials, no
    such bucket): the user must fix the setup before work can go on."""


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


WRITE_CHECK = ".nhr-write-check"


def check_writable(storage: Storage) -> None:
    """Write and remove a small file: a folder that cannot be written fails now (OSError),
    before the work whose results it is to hold (edits, judge calls) is paid for."""
    storage.write_bytes(WRITE_CHECK, b"")
    storage.delete(WRITE_CHECK)


def open_storage(location: str | Path) -> Storage:
    """The storage of a run directory given as a path or a URL."""
    if is_url(location):
        return ObjectStorage(str(location))
    if isinstance(location, str) and location.startswith("file://"):
        location = location[len("file://") :]
    return LocalStorage(Path(location))


def first_line(error: BaseException) -> str:
    """The first line of an error's message, shortened, for one-line messages."""
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def join(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part)


# -- local disk --------------------------------------------------------------------------------


@functools.cache
def process_umask() -> int:
    """The process umask, read once. Linux shows it in /proc without changing it; elsewhere
    the set-and-restore dance runs once (the first write, before any worker thread writes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~process_umask()


def dir_mode() -> int:
    return 0o777 & ~process_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A file opened for writing under a temporary name, renamed to `path` on a clean exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 whatever the umask; give the file the mode open() would have
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(path)  # a failed write() names no file; messages need one
        raise


class Storage:
    """The files of one run directory (see the module docstring). Keys use "/"."""

    local: bool
    root: Path | str  # a Path for local storage, the URL for object storage

    def where(self, key: str = "") -> Path | str:
        """The path or URL of a key, for messages and for users."""
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes:
        """The file's bytes; FileNotFoundError when it does not exist."""
        raise NotImplementedError

    def open_read(self, key: str) -> Any:
        """A binary file to read (large files, read in parts); FileNotFoundError if missing."""
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write a whole file: readers see the old one or the new one, never half."""
        raise NotImplementedError

    def open_write(self, key: str) -> Any:
        """A context manager giving a binary file to write; the file appears on a clean exit."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def names(self, folder: str) -> list[str]:
        """Names of the files directly in a folder (none when it does not exist)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove a file; a missing one is fine."""
        raise NotImplementedError

    def delete_folder(self, folder: str) -> None:
        """Remove a folder and everything in it; a missing one is fine."""
        raise NotImplementedError

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write a file only if none exists at the key; False when one already does."""
        raise NotImplementedError

    def is_file(self) -> bool:
        """True when the root itself is a file (a mistaken --run-dir)."""
        return False

    def clean_partial(self) -> None:
        """Remove what a killed writer left behind (temporary files)."""

    @contextmanager
    def replace_folder(self, folder: str) -> Iterator[FolderWriter]:
        """Write a new version of a whole folder (the exported dataset): the old one stays
        until the new one is written."""
        raise NotImplementedError
        yield  # pragma: no cover


class FolderWriter:
    """Writes the files of a folder that `replace_folder` is replacing."""

    def __init__(self, storage: Storage, folder: str) -> None:
        self.storage = storage
        self.folder = folder
        self.written: set[str] = set()

    def write_bytes(self, name: str, data: bytes) -> None:
        self.written.add(name)
        self.storage.write_bytes(join(self.folder, name), data)

    def open_write(self, name: str) -> Any:
        self.written.add(name)
        return self.storage.open_write(join(self.folder, name))


class LocalStorage(Storage):
    local = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def where(self, key: str = "") -> Path:
        return self.path(key)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def open_read(self, key: str) -> Any:
        return open(self.path(key), "rb")

    def write_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self.path(key), data)

    def open_write(self, key: str) -> Any:
        return atomic_file(self.path(key))

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def names(self, folder: str) -> list[str]:
        directory = self.path(folder)
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.is_file())

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_folder(self, folder: str) -> None:
        shutil.rmtree(self.path(folder), ignore_errors=True)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True

    def is_file(self) -> bool:
        return self.root.exists() and not self.root.is_dir()

    def clean_partial(self) -> None:
        if not self.root.is_dir():
            return
        for path in self.root.rglob(".*.tmp"):
            path.unlink(missing_ok=True)
        for path in self.root.glob(".dataset-*"):
            shutil.rmtree(path, ignore_errors=True)

    @contextmanager
    def replace_folder(self, folder: str) -> Iterator[FolderWriter]:
        # Written into a staging folder, then swapped in with two renames. The staging
        # folders are named after their target: one a killed write of this target left
        # behind is removed when the target is written again (and `clean_partial` removes
        # them all at a run's next start); another target's, maybe being written now, is not.
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path(folder)
        prefix = f".dataset-{target.name}-"
        for stale in self.root.glob(f"{glob.escape(prefix)}*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=prefix))
        old = None
        try:
            staging.chmod(dir_mode())  # mkdtemp makes it 0700; the dataset is for others
            yield FolderWriter(LocalStorage(staging), "")
            if target.exists():
                old = Path(tempfile.mkdtemp(dir=self.root, prefix=".dataset-old-"))
                target.rename(old / "old")
            staging.rename(target)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if old is not None:
                if (old / "old").exists() and not target.exists():
                    (old / "old").rename(target)  # moved aside, not replaced: put it back
                shutil.rmtree(old, ignore_errors=True)
            if isinstance(error, OSError) and (
                error.filename is None or str(error.filename).startswith(str(staging))
            ):
                error.filename = str(target)  # name the folder the user knows, not the staging
            raise
        for old in self.root.glob(".dataset-old-*"):
            shutil.rmtree(old, ignore_errors=True)


# -- object storage ----------------------------------------------------------------------------


class ObjectStorage(Storage):
    local = False

    def __init__(self, url: str) -> None:
        protocol = url.split("://", 1)[0]
        self.root = url.rstrip("/")
        self.fs, self.base = _filesystem(protocol, url)

    def _key_path(self, key: str) -> str:
        return f"{self.base}/{key.strip('/')}" if key else self.base

    def where(self, key: str = "") -> str:
        return f"{self.root}/{key}" if key else self.root

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key):
            # start=0: one ranged GET; without it s3fs asks for the size first (a HEAD)
            return self.fs.cat_file(self._key_path(key), start=0)

    def open_read(self, key: str) -> Any:
        with self._errors(key):
            return self.fs.open(self._key_path(key), "rb")

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self.fs.pipe_file(self._key_path(key), data)

    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        # fsspec uploads on close (in parts when large): the object appears whole or not at all
        with self._errors(key), self.fs.open(self._key_path(key), "wb") as handle:
            yield handle

    def exists(self, key: str) -> bool:
        with self._errors(key):
            return self.fs.exists(self._key_path(key))

    def names(self, folder: str) -> list[str]:
        with self._errors(folder):
            try:
                entries = self.fs.ls(self._key_path(folder), detail=True)
            except FileNotFoundError:
                return []
        return sorted(
            entry["name"].rstrip("/").rsplit("/", 1)[-1]
            for entry in entries
            if entry.get("type") == "file"
        )

    def delete(self, key: str) -> None:
        with self._errors(key):
            try:
                self.fs.rm_file(self._key_path(key))
            except FileNotFoundError:
                pass

    def delete_folder(self, folder: str) -> None:
        with self._errors(folder):
            try:
                self.fs.rm(self._key_path(folder), recursive=True)
            except FileNotFoundError:
                pass

    def create_exclusive(self, key: str, data: bytes) -> bool:
        with self._errors(key):
            try:
                self.fs.pipe_file(self._key_path(key), data, mode="create")
            except FileExistsError:
                return False
        return True

    @contextmanager
    def replace_folder(self, folder: str) -> Iterator[FolderWriter]:
        # Objects cannot be renamed as a group: the new files are written over the old ones
        # (each appears whole), then files of the old version that the new one does not have
        # are removed. The export marker, written after, says which files are the dataset.
        writer = FolderWriter(self, folder)
        yield writer
        for name in self._all_names(folder):
            if name not in writer.written:
                self.delete(join(folder, name))

    def _all_names(self, folder: str) -> list[str]:
        base = self._key_path(folder)
        with self._errors(folder):
            try:
                found = self.fs.find(base)
            except FileNotFoundError:
                return []
        prefix = base.strip("/") + "/"  # drivers differ on a leading "/"
        return sorted(path.strip("/")[len(prefix) :] for path in found)

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn a missing driver, missing credentials or a missing bucket into one clear
        StorageSetupError; other errors keep their type (FileNotFoundError means no file)."""
        try:
            yield
        except FileNotFoundError as error:
            if "bucket does not exist" in str(error).lower():
                raise StorageSetupError(
                    f"{self.where(key)}: the bucket does not exist; create it first"
                ) from None
            raise
        except FileExistsError:
            raise
        except Exception as error:
            name = type(error).__name__
            if name in UNREACHABLE:
                raise StorageSetupError(
                    f"{self.where(key)}: cannot reach the object store ({first_line(error)}); "
                    "check the endpoint (AWS_ENDPOINT_URL for S3-compatible stores) and the "
                    "network, then run the same command again: finished work is kept"
                ) from None
            if name in ("NoCredentialsError", "PartialCredentialsError"):
                raise StorageSetupError(
                    f"{self.where(key)}: no credentials for object storage; set them in the "
                    "environment (for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and "
                    "AWS_ENDPOINT_URL for S3-compatible stores)"
                ) from None
            raise


def _filesystem(protocol: str, url: str) -> tuple[Any, str]:
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        # Settings other processes write must be seen now: no cached directory listings.
        options["use_listings_cache"] = False
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
    elif protocol in ("gs", "gcs"):
        options["use_listings_cache"] = False
    try:
        import fsspec.core

        fs, base = fsspec.core.url_to_fs(url, **options)
    except ImportError as error:
        extra = EXTRAS.get(protocol)
        hint = (
            f"pip install 'nhr[{extra}]'"
            if extra
            else f"install the fsspec driver for {protocol}://"
        )
        raise StorageSetupError(
            f"{url}: run directories on {protocol}:// need {error.name or 'a driver'}: {hint}"
        ) from None
    except ValueError as error:
        raise StorageSetupError(f"{url}: not a storage location fsspec knows ({error})") from None
    return fs, base.rstrip("/")
