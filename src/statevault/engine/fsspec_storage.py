"""Object storage (S3 and anything fsspec reaches) behind the :class:`Storage` interface.

A URL (``s3://bucket/key``, ``gs://...``, ``memory://...``) names an object; fsspec picks
the file system from its scheme, configured by ``storage_options`` (a dict passed to
fsspec as is, the way pandas and fsspec users pass it) and the usual environment
(botocore's credentials chain, ``AWS_ENDPOINT_URL``...). Credentials are never logged.

Reads: ``size`` is one metadata request; each ``read``/``readv`` is one ranged GET of
exactly the bytes asked for, stateless, so the engine's reader threads fetch ranges in
parallel (a header first with one small read, then only the tensors wanted).

Writes: an object store has no rename and no positional writes, so a pending object
spools its positional writes to a local temporary file; ``commit`` uploads it in one
operation (multipart, parts in parallel, for large files). The object appears only when
the upload completes: readers see the old object or the new one, never a part, and a
failed upload aborts its parts and leaves the old object. ``begin(name, exclusive=True)``
commits with a conditional create (``If-None-Match: *``) where the store supports it, so
two writers cannot both create one name (the second gets ``DestinationExistsError``).
May import: ``statevault.errors``, the engine's ``memory`` and ``storage``. Imported where
a URL is routed to a storage (``storage_for``), and by the checkpoint manager's object layout.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

from statevault.engine.memory import ByteBuffer
from statevault.engine.storage import (
    LOCAL_STORAGE,
    Name,
    PendingObject,
    Storage,
    StoredObject,
)
from statevault.errors import (
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CheckpointReadError,
    CheckpointWriteError,
    DestinationExistsError,
    InvalidArgumentError,
    StateVaultError,
)

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
StorageOptions = Mapping[str, Any]


def is_url(name: object) -> bool:
    """Whether ``name`` is a string with a scheme (``s3://...``), not a local path."""
    return isinstance(name, str) and _URL.match(name) is not None and not name.startswith("file://")


def _reading_error(name: str, exc: BaseException) -> StateVaultError:
    """A storage failure in words that name the object and what to check."""
    if isinstance(exc, FileNotFoundError):
        return CheckpointNotFoundError(
            f"{name}: no such object (or no such bucket); check the URL and that the bucket exists"
        )
    if isinstance(exc, PermissionError):
        return CheckpointPermissionError(
            f"{name}: access denied by the object store; check the credentials and endpoint "
            "(storage_options, or the environment/config files fsspec and botocore read)",
            getattr(exc, "errno", None),
        )
    return CheckpointReadError(
        f"{name}: could not be read from the object store ({type(exc).__name__}: {exc}); "
        "the checkpoint itself is not known to be damaged: retry, and check the network "
        "and the endpoint"
    )


class FsspecObject(StoredObject):
    """An object opened for ranged reads; each read is one request for exactly its bytes."""

    remote = True

    def __init__(self, fs: Any, name: str) -> None:
        self.name = name
        self._fs = fs
        try:
            info = fs.info(name)
        except Exception as exc:
            raise _reading_error(name, exc) from exc
        if info.get("type") == "directory":
            raise CheckpointNotFoundError(f"{name}: is a prefix (a directory), not an object")
        self.size = int(info["size"])
        self._closed = False

    def read(self, nbytes: int, offset: int) -> bytes:
        end = min(offset + nbytes, self.size)
        if self._closed:
            raise StateVaultError(f"internal error: {self.name} read after close")
        if end <= offset:
            return b""
        try:
            return bytes(self._fs.cat_file(self.name, start=offset, end=end))
        except Exception as exc:
            raise _reading_error(self.name, exc) from exc

    def readv(self, buffers: list[ByteBuffer], offset: int) -> int:
        data = memoryview(self.read(sum(len(b) for b in buffers), offset))
        done = 0
        for buffer in buffers:
            piece = data[done : done + len(buffer)]
            memoryview(buffer).cast("B")[: len(piece)] = piece
            done += len(piece)
            if done == len(data):
                break
        return done

    def close(self) -> None:
        self._closed = True


class FsspecPending(PendingObject):
    """Positional writes spooled locally; ``commit`` uploads the whole object at once."""

    def __init__(self, fs: Any, name: str, *, exclusive: bool) -> None:
        self._fs = fs
        self._name = name
        self._exclusive = exclusive
        # closed by commit or abort, which the engine always calls (not a with-block's scope)
        self._spool: Any = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="statevault-upload-", delete=False
        )

    def write(self, offset: int, buffers: list[ByteBuffer]) -> None:
        if self._spool is None:
            raise StateVaultError("internal error: write after commit or abort")
        os.pwritev(self._spool.fileno(), buffers, offset)

    def commit(self, *, durable: bool) -> None:
        """Upload (durable once the store acknowledges it, whatever ``durable`` says)."""
        if self._spool is None:
            raise StateVaultError("internal error: commit of an upload already ended")
        self._spool.close()
        options = {"mode": "create"} if self._exclusive else {}
        try:
            self._fs.put_file(self._spool.name, self._name, **options)
        except FileExistsError as exc:
            raise self._taken() from exc
        except OSError as exc:
            if "PreconditionFailed" in str(exc) or "412" in str(exc):
                raise self._taken() from exc
            raise CheckpointWriteError(
                f"{self._name}: upload failed ({exc}); the previous object, if any, is intact",
                getattr(exc, "errno", None),
            ) from exc
        except Exception as exc:
            raise CheckpointWriteError(
                f"{self._name}: upload failed ({exc}); the previous object, if any, is intact"
            ) from exc
        finally:
            self._remove_spool()
        self._fs.invalidate_cache(self._name)

    def _taken(self) -> DestinationExistsError:
        return DestinationExistsError(
            f"{self._name}: another writer created it first; nothing was replaced", self._name
        )

    def abort(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._remove_spool()

    def _remove_spool(self) -> None:
        if self._spool is not None:
            os.unlink(self._spool.name)
            self._spool = None


class FsspecStorage(Storage):
    """Objects of one fsspec file system, named by URL."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    @classmethod
    def for_url(cls, url: str, storage_options: StorageOptions | None = None) -> FsspecStorage:
        try:
            import fsspec
        except ImportError as exc:  # an optional dependency
            raise StateVaultError(
                f"{url}: reading and writing URLs needs fsspec (and s3fs for s3://): "
                "pip install 'statevault[s3]'"
            ) from exc
        protocol = url.split("://", 1)[0]
        try:
            fs = fsspec.filesystem(protocol, **dict(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise StateVaultError(
                f"{url}: no usable fsspec file system for {protocol}:// ({exc})"
            ) from exc
        return cls(fs)

    def open(self, name: Name) -> FsspecObject:
        return FsspecObject(self.fs, os.fspath(name))

    def begin(self, name: Name, *, exclusive: bool = False) -> FsspecPending:
        return FsspecPending(self.fs, os.fspath(name), exclusive=exclusive)

    def exists(self, name: Name) -> bool:
        try:
            return bool(self.fs.isfile(os.fspath(name)))
        except Exception as exc:
            raise _reading_error(os.fspath(name), exc) from exc

    def remove(self, name: Name) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(os.fspath(name))

    def list_names(self, directory: Name) -> list[str]:
        where = os.fspath(directory)
        try:
            entries = self.fs.ls(where, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise _reading_error(where, exc) from exc
        return sorted(e["name"].rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")

    def list_tree(self, directory: Name) -> list[str]:
        """Every object below ``directory``: one paginated listing on S3, not one per level."""
        where = os.fspath(directory)
        prefix = self.fs._strip_protocol(where).rstrip("/") + "/"
        try:
            found = self.fs.find(where, withdirs=False)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise _reading_error(where, exc) from exc
        return sorted(name[len(prefix) :] for name in found if name.startswith(prefix))

    def abort_uploads(self, directory: Name) -> list[str]:
        """Abort the multipart uploads left below ``directory`` by killed writers (S3 keeps
        their parts, and bills them, until they are aborted); other stores have none."""
        if "s3" not in _protocols(self.fs):
            return []
        where = os.fspath(directory)
        bucket, _, key = self.fs._strip_protocol(where).partition("/")
        prefix = key.rstrip("/") + "/" if key else ""
        try:
            listing = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
            aborted = []
            for upload in listing.get("Uploads", []):
                self.fs.call_s3(
                    "abort_multipart_upload",
                    Bucket=bucket,
                    Key=upload["Key"],
                    UploadId=upload["UploadId"],
                )
                aborted.append(upload["Key"])
        except Exception as exc:
            raise _reading_error(where, exc) from exc
        return aborted


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def storage_for(name: Name, storage_options: StorageOptions | None) -> Storage:
    """The storage that holds ``name``: an fsspec one for a URL, local disk otherwise."""
    if is_url(name):
        return FsspecStorage.for_url(os.fspath(name), storage_options)
    if storage_options:
        raise InvalidArgumentError(
            f"{os.fspath(name)}: storage_options apply to URLs (s3://...), not local paths; "
            "leave it out for a local file"
        )
    return LOCAL_STORAGE
