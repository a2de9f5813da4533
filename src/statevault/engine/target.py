"""Where a save lands: the file a path names, what may be replaced, and errors in its words.

A save replaces the file the caller's path names. Through a symlink that is the file the
link points to (``latest -> run7/ckpt.safetensors`` replaces ``run7/ckpt.safetensors`` in
its own directory; the link stays a link). The replacement keeps the old file's mode, and
its owner and group where this process may set them. Paths that a save must not replace (a
directory, FIFO, device, socket, a file the caller could not open for writing) are refused
before anything is written. Every error names the caller's path, never the hidden
temporary file, and keeps the OS error as its cause and its ``errno``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import NamedTuple

from statevault.errors import CheckpointNotFoundError, CheckpointWriteError

logger = logging.getLogger("statevault")

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class Target(NamedTuple):
    """A resolved save target."""

    given: str  # the caller's path, as every message names it
    file: Path  # the file to replace (symlinks followed)
    existing: os.stat_result | None  # that file's status, None when it does not exist yet


def resolve(path: str | os.PathLike[str]) -> Target:
    """The file a save to ``path`` replaces, after refusing paths it must not write."""
    given = os.fspath(path)
    if given == "":
        raise CheckpointWriteError(
            "cannot save to an empty path: pass a file name such as 'model.safetensors'",
            errno.ENOENT,
        )
    if given.endswith(os.sep):
        raise CheckpointWriteError(
            f"{given}: names a directory (trailing '{os.sep}'); pass a file path inside it, "
            f"such as {os.path.join(given, 'model.safetensors')}",
            errno.EISDIR,
        )
    try:
        file, existing = _follow_links(given)
    except OSError as exc:
        raise write_error(given, exc, Path(given).parent) from exc
    linked = f" (where the link {given} points)" if file != Path(given) else ""
    if existing is None:
        if not file.parent.is_dir():
            error = CheckpointNotFoundError(
                f"{given}: directory {file.parent}{linked} does not exist; create it first"
            )
            error.errno = errno.ENOENT
            raise error
        return Target(given, file, None)
    _refuse_unwritable(given, file, existing, linked)
    return Target(given, file, existing)


MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup


def _follow_links(given: str) -> tuple[Path, os.stat_result | None]:
    """The file ``given`` names once symlinks are followed, and its status (None: absent).

    Only links in the last component are followed by hand (the kernel follows those in
    directories). Paths stay as relative as the caller's, so nothing depends on being
    able to reach the current directory from ``/``.
    """
    file = Path(given)
    for _ in range(MAX_LINKS):
        try:
            status = os.lstat(file)
        except FileNotFoundError:
            return file, None
        if not stat.S_ISLNK(status.st_mode):
            return file, status
        file = file.parent / os.readlink(file)  # an absolute link target replaces the parent
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))


def _refuse_unwritable(given: str, file: Path, status: os.stat_result, linked: str) -> None:
    mode = status.st_mode
    if stat.S_ISDIR(mode):
        raise CheckpointWriteError(
            f"{given}: is a directory{linked}, not a file; save to a file path inside it, "
            f"such as {os.path.join(given, 'model.safetensors')}",
            errno.EISDIR,
        )
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise CheckpointWriteError(
            f"{given}: is {kind}{linked}; a save only replaces regular files. Save to another path",
        )
    # Opening it for writing (without truncating) asks the kernel the real question:
    # permission bits, ACLs, read-only mounts, immutable files. Replacing the file by a
    # rename would bypass all of them.
    try:
        fd = os.open(file, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise CheckpointWriteError(
            f"{given}: cannot be written{linked}: {exc.strerror}; statevault does not replace "
            "a file you could not write. Make it writable (chmod u+w) or save to another path",
            exc.errno,
        ) from exc
    os.close(fd)


def keep_attributes(fd: int, existing: os.stat_result) -> None:
    """Give the new file (open as ``fd``) the replaced file's mode, owner and group.

    Owner and group only where this process may set them (root, or a group the user is
    in); otherwise the new file is the caller's, as any file it creates. Ownership first:
    changing it can clear set-id bits that the mode then restores.
    """
    own = os.fstat(fd)
    if (own.st_uid, own.st_gid) != (existing.st_uid, existing.st_gid):
        try:
            os.fchown(fd, existing.st_uid, existing.st_gid)
        except PermissionError:
            try:
                os.fchown(fd, -1, existing.st_gid)
            except PermissionError:
                logger.debug("cannot give the new file group %d; it keeps ours", existing.st_gid)
    os.fchmod(fd, stat.S_IMODE(existing.st_mode))


# What to do about an OS error, by errno; the message adds the path and the OS's words.
_FIXES = {
    errno.ENOSPC: "free space on that file system or save elsewhere",
    errno.EDQUOT: "your disk quota is used up: free space or save elsewhere",
    errno.EACCES: "you may not create files in directory {directory}: fix its permissions "
    "or save elsewhere",
    errno.EPERM: "the system refused the operation in directory {directory}: check its "
    "permissions and attributes or save elsewhere",
    errno.EROFS: "directory {directory} is on a read-only file system: save elsewhere",
    errno.ENOENT: "directory {directory} does not exist (any more); create it first",
    errno.ENOTDIR: "a part of the path is not a directory: check the path",
    errno.EISDIR: "it is a directory: save to a file path inside it",
    errno.ENAMETOOLONG: "the name is too long for the file system: use a shorter name",
    errno.EIO: "the storage reported an I/O error: check the device and save elsewhere",
    errno.ELOOP: "the symbolic links form a loop: point the link at a file",
}


def write_error(
    given: str, exc: OSError, directory: Path, *, replaced: bool = False
) -> CheckpointWriteError:
    """``exc``, an OS error met while saving to ``given``, in the caller's words.

    Uses the error's ``strerror``, never ``str(exc)``, which would name the temporary file.
    ``replaced``: the new file is already in place and only syncing its directory failed.
    """
    reason = exc.strerror or type(exc).__name__
    name = errno.errorcode.get(exc.errno or 0, "")
    reason += f" ({name})" if name else ""
    if replaced:
        return CheckpointWriteError(
            f"{given}: saved, but syncing directory {directory} failed: {reason}; the new "
            "file may not survive a power cut. Check the device, then save again",
            exc.errno,
        )
    fix = _FIXES.get(exc.errno or 0, "check the path and the file system, or save elsewhere")
    return CheckpointWriteError(
        f"{given}: cannot save: {reason}; {fix.format(directory=directory)}. The previous "
        "file, if any, is unchanged",
        exc.errno,
    )
