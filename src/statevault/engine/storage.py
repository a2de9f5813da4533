"""Where checkpoint bytes live: the storage interface, and local disk as its implementation.

Every save goes through a :class:`Storage`; loads open their files through one. The engine
above it plans and moves bytes; a storage only knows named objects:

- ``open(name)`` -> :class:`StoredObject`: its ``size``, positional reads into new bytes
  (``read``, for headers) and scatter reads into the caller's memory (``readv``). The local one also hands out its descriptor (``fd``) so the engine can
  ``preadv`` straight into tensor memory.
- ``begin(name)`` -> :class:`PendingObject`, then, in this order: ``write(offset, buffers)``
  any number of times (calls come one at a time, possibly from one helper thread), then
  exactly one of ``commit(durable=...)`` (the object appears under ``name`` whole, or the
  old one stays) or ``abort()`` (nothing appears; may follow a failed ``commit``, is safe
  to call twice). A failing ``commit`` publishes nothing.
- ``exists(name)``, ``remove(name)``, ``list_names(directory)``, ``list_tree(directory)``
  (every object below it, for layouts of many objects such as the checkpoint manager's),
  ``abort_uploads(directory)`` (drops what killed writers left half uploaded; nothing to do
  on a local disk, where ``temps`` removes stale temporaries).
- ``begin(name, exclusive=True)``: the commit fails with ``DestinationExistsError`` if
  ``name`` exists by then, atomically (a hard link on disk, ``If-None-Match: *`` on S3), so
  of two writers racing to create one name exactly one wins: a commit marker.

Atomic commit is part of the interface because it is the one thing every backend must do
differently. Local disk (:class:`LocalStorage`) writes a temporary file beside the target
(named for its writer, ``temps``), fsyncs it, renames it over the target and fsyncs the
directory; a process killed at any moment leaves the previous file intact, and the next
save into the directory removes what the killed one left. An object store has no rename:
writes there are positional parts of one upload (the header part, written last at offset
0, is known in size from the start), and ``commit`` is the upload's completion, or a
conditional create (``If-None-Match``) when the name must not exist yet, with a commit
marker written last where one checkpoint spans several objects. That is why commit is a
method of the pending object and not "rename": nothing above this module may assume a
rename exists, a temporary is visible, or ``fd`` is there (only local files have one).

Errors: a storage raises statevault errors naming the caller's name, never a temporary
(``CheckpointWriteError`` keeps the OS error's ``errno`` and has it as its cause).
May import: ``statevault.errors`` and the engine's ``memory``, ``target``, ``temps``.
Imported by the engine's reader and writer, and by ``saving``/``readers`` to pick one.
"""

from __future__ import annotations

import os
import stat
from abc import ABC, abstractmethod
from pathlib import Path

from statevault.engine import target as _target
from statevault.engine import temps
from statevault.engine.memory import ByteBuffer, remaining_after
from statevault.errors import (
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CorruptFileError,
    DestinationExistsError,
    HeaderError,
    StateVaultError,
)

Name = str | os.PathLike[str]


class StoredObject(ABC):
    """An object opened for reading: a fixed size and positional reads."""

    name: str  # as the caller gave it: every message names it
    size: int  # in bytes, when opened
    # Each read of a remote object is one request (a round trip, often billed): readers ask
    # for whole tensors or runs at once (``tuning.REMOTE_REQUEST_BYTES``), many in parallel,
    # instead of the small cache-sized pieces that suit a local file.
    remote: bool = False

    @abstractmethod
    def read(self, nbytes: int, offset: int) -> bytes:
        """Up to ``nbytes`` from ``offset`` as new bytes (fewer only where the object ends)."""

    @abstractmethod
    def readv(self, buffers: list[ByteBuffer], offset: int) -> int:
        """Fill ``buffers`` in order from ``offset``; bytes read (fewer at the end, 0 past it)."""

    @abstractmethod
    def close(self) -> None:
        """Release the object; further reads fail."""

    def __enter__(self) -> StoredObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PendingObject(ABC):
    """A new object being written: invisible under its name until ``commit``."""

    @abstractmethod
    def write(self, offset: int, buffers: list[ByteBuffer]) -> None:
        """Write every byte of ``buffers``, in order, from ``offset``."""

    @abstractmethod
    def commit(self, *, durable: bool) -> None:
        """Publish the object whole under its name; ``durable``: survive a power cut too."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written; the name keeps what it had. Safe after a failed commit."""


class Storage(ABC):
    """A place that holds named objects; see the module docstring for the call order."""

    @abstractmethod
    def open(self, name: Name) -> StoredObject:
        """The object ``name``, opened for reading (``CheckpointNotFoundError`` if absent)."""

    @abstractmethod
    def begin(self, name: Name, *, exclusive: bool = False) -> PendingObject:
        """Start writing a new object for ``name``; refuses names that must not be replaced.

        ``exclusive``: the commit creates ``name`` only if nothing is there, atomically
        (``DestinationExistsError`` otherwise, and nothing is replaced).
        """

    @abstractmethod
    def exists(self, name: Name) -> bool:
        """Whether an object (a committed one, never a pending one) is there."""

    @abstractmethod
    def remove(self, name: Name) -> None:
        """Remove the object ``name``; absent is not an error."""

    @abstractmethod
    def list_names(self, directory: Name) -> list[str]:
        """The committed objects under ``directory``, sorted (pending ones are not listed)."""

    @abstractmethod
    def list_tree(self, directory: Name) -> list[str]:
        """Every committed object below ``directory`` at any depth, as ``/``-joined names
        relative to it, sorted; [] when there is nothing there."""

    def abort_uploads(self, directory: Name) -> list[str]:
        """Abort the unfinished uploads of killed writers below ``directory``; their names.

        Call it only when no writer below ``directory`` is live. A store without resumable
        uploads has none (the default).
        """
        return []


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """A read-only descriptor of ``path`` and its status, refusing anything but a regular file.

    The open itself must not block: a named pipe blocks ``open`` until a writer appears
    and then ``read`` until it writes, which hangs load/inspect/verify forever. O_NONBLOCK
    makes that open return at once; the kind is then checked on the open descriptor (not
    on the path, which could be swapped in between) and the flag cleared for ordinary reads.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointNotFoundError(f"{path}: is a directory, not a checkpoint file") from None
    except PermissionError as exc:  # still a PermissionError for callers that catch that
        raise CheckpointPermissionError(
            f"{path}: cannot be read by this process ({exc.strerror}); check the permissions "
            "of the file and of the directories above it (read access to the file is needed)",
            exc.errno,
        ) from exc
    except OSError as exc:  # a symlink loop, a name too long, a file where a folder should be
        raise CheckpointNotFoundError(
            f"{path}: cannot be opened as a checkpoint file ({exc.strerror})"
        ) from exc
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            what = next((name for test, name in _FILE_KINDS if test(status.st_mode)), "not a file")
            raise CheckpointNotFoundError(
                f"{path}: is {what}, not a regular file; statevault reads checkpoints only from "
                "regular files (copy the data into a file first)"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, status


def read_regular(path: Path, *, limit: int) -> bytes:
    """The whole of a small regular file (an index), refusing other kinds and files over
    ``limit`` bytes before reading any of it."""
    fd, status = open_regular(path)
    try:
        if status.st_size > limit:
            raise HeaderError(
                f"{path}: is {status.st_size} bytes, above the {limit} byte limit for this kind "
                "of file; it is damaged or not what its name says"
            )
        parts = []
        size = 0
        while size <= limit:
            part = os.read(fd, limit + 1 - size)
            if not part:
                break
            parts.append(part)
            size += len(part)
        if size > limit:  # grew while being read
            raise HeaderError(f"{path}: grew past the {limit} byte limit while being read")
        return b"".join(parts)
    except OSError as exc:
        raise CorruptFileError(f"{path}: could not be read ({exc.strerror})") from exc
    finally:
        os.close(fd)


class LocalFile(StoredObject):
    """A regular file opened read-only; ``fd`` is for engine code that reads it directly."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.fd, status = open_regular(path)
        self.size = status.st_size

    def read(self, nbytes: int, offset: int) -> bytes:
        data = os.pread(self.fd, nbytes, offset)  # whole, unless the file ends first
        while 0 < len(data) < nbytes:
            more = os.pread(self.fd, nbytes - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def readv(self, buffers: list[ByteBuffer], offset: int) -> int:
        return os.preadv(self.fd, buffers, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalPendingFile(PendingObject):
    """A save's temporary file beside its target; ``commit`` renames it over the target."""

    def __init__(self, name: Name, *, exclusive: bool = False) -> None:
        self._exclusive = exclusive
        self._target = _target.resolve(name)  # refuses what must not be replaced, first
        self._directory = self._target.file.parent
        temps.remove_stale_temporaries(self._directory)  # they may be what fills the disk
        self._temp: Path | None = self._directory / temps.temp_name(self._target.file.name)
        try:
            # 0o666 filtered by the umask, like any normally created file; O_EXCL never clobbers.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            self._fd = os.open(self._temp, flags, 0o666)
        except OSError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: OSError, *, replaced: bool = False) -> Exception:
        return _target.write_error(self._target.given, exc, self._directory, replaced=replaced)

    def write(self, offset: int, buffers: list[ByteBuffer]) -> None:
        """``pwritev`` until all is written (short writes resumed where they stopped)."""
        try:
            while buffers:
                written = os.pwritev(self._fd, buffers, offset)
                buffers, offset = remaining_after(buffers, written), offset + written
        except OSError as exc:
            raise self._error(exc) from exc

    def commit(self, *, durable: bool) -> None:
        """Keep the old file's mode, fsync, close, rename over it, fsync the directory."""
        if self._temp is None:
            raise StateVaultError("internal error: commit of a save already committed or aborted")
        try:
            if self._target.existing is not None:
                _target.keep_attributes(self._fd, self._target.existing)
            if durable:
                os.fsync(self._fd)
            self._close()
            if self._exclusive:  # link() never replaces: of two writers, one gets EEXIST
                os.link(self._temp, self._target.file)
                self._temp.unlink()
            else:
                os.replace(self._temp, self._target.file)
        except FileExistsError as exc:
            raise DestinationExistsError(
                f"{self._target.given}: another writer created it first; nothing was replaced",
                str(self._target.given),
            ) from exc
        except OSError as exc:
            raise self._error(exc) from exc
        self._temp = None  # published: nothing left for abort to remove
        if durable:
            try:
                _fsync_directory(self._directory)
            except OSError as exc:
                raise self._error(exc, replaced=True) from exc

    def stage(self, *, durable: bool) -> Path:
        """Finish the file but leave it under its temporary name, for a commit of several
        files at once (``engine.commit``'s journal renames it); ``abort`` still removes it."""
        if self._temp is None:
            raise StateVaultError("internal error: stage of a save already committed or aborted")
        try:
            if durable:
                os.fsync(self._fd)
            self._close()
        except OSError as exc:
            raise self._error(exc) from exc
        return self._temp

    def abort(self) -> None:
        self._close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._temp = None

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable: the directory entry is data too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage(Storage):
    """Files on a local (or mounted) file system; names are paths. Holds no state."""

    def open(self, name: Name) -> LocalFile:
        return LocalFile(Path(name))

    def begin(self, name: Name, *, exclusive: bool = False) -> LocalPendingFile:
        """A temporary file for ``name`` (through symlinks, the file a link names).

        The caller's name is kept as given: ``Path()`` would turn "" into "." and drop a
        trailing "/", which ``target.resolve`` refuses with a message of its own.
        """
        return LocalPendingFile(name, exclusive=exclusive)

    def exists(self, name: Name) -> bool:
        return os.path.isfile(name)

    def remove(self, name: Name) -> None:
        Path(name).unlink(missing_ok=True)

    def list_names(self, directory: Name) -> list[str]:
        """Regular files in ``directory``, without the temporaries of saves (``temps``)."""
        with os.scandir(directory) as entries:
            return sorted(
                entry.name
                for entry in entries
                if entry.is_file() and not entry.name.endswith(temps.TEMP_SUFFIX)
            )

    def list_tree(self, directory: Name) -> list[str]:
        """Regular files below ``directory`` (not following links), without temporaries."""
        found = []
        for folder, _, files in os.walk(directory):
            relative = os.path.relpath(folder, directory)
            for name in files:
                if not name.endswith(temps.TEMP_SUFFIX) and os.path.isfile(
                    os.path.join(folder, name)
                ):
                    found.append(name if relative == "." else f"{relative}/{name}")
        return sorted(found)


LOCAL_STORAGE = LocalStorage()  # stateless: one instance serves every caller and thread
