"""Atomic commit of a set of files (a sharded checkpoint) whose final names are fixed.

One file is replaced atomically by a rename. A set cannot be: Hugging Face's shard names
(``model-00001-of-00004.safetensors``) are fixed, so new shards cannot sit beside the old
ones under their final names. The commit is a small journal instead, in the call order:

1. every new file is written and fsynced under a temporary name (``temps.temp_name``);
2. ``commit`` writes the journal ``.{base}.svjournal`` (temp, fsync, rename, directory
   fsync): from this moment the new set is decided;
3. the journal is carried out (``roll_forward``): each temporary is renamed to its final
   name (the index last), the directory fsynced, then superseded files removed, then the
   journal removed.

A kill before step 2 leaves the old set untouched (plus temporaries that the next save
removes); a kill in step 3 leaves a journal that the next save into the directory carries
out, and that readers follow without writing (``pending``): a temporary still listed in
the journal stands for its final name. ``temps`` never removes a temporary that a journal
names, so no other save into the directory can take the committed files away.

May import: ``statevault.errors``. Imported by: ``engine.temps``, saving, readers.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from statevault.errors import HeaderError

JOURNAL_SUFFIX = ".svjournal"
JOURNAL_VERSION = 1
MAX_JOURNAL_BYTES = 1 << 20  # a journal lists file names: kilobytes


def journal_path(directory: Path, base: str) -> Path:
    """Where the journal of a commit to ``base`` (the save's destination name) lives."""
    return directory / f".{base}{JOURNAL_SUFFIX}"


def _plain(name: object, journal: Path) -> str:
    if not isinstance(name, str) or name in ("", ".", "..") or PurePosixPath(name).name != name:
        raise HeaderError(
            f"{journal}: names {name!r}, which is not a plain file name in its directory; "
            "the journal is damaged. Remove it: the checkpoint it was committing is incomplete"
        )
    return name


def read_journal(journal: Path) -> tuple[list[tuple[str, str]], list[str]] | None:
    """The renames (temporary, final) and removals a journal lists; None when there is none."""
    try:
        # O_NONBLOCK: a FIFO planted under the journal's name must not hang a reader
        fd = os.open(journal, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        raw = os.read(fd, MAX_JOURNAL_BYTES + 1) if regular else b""
    finally:
        os.close(fd)
    try:
        if not regular or len(raw) > MAX_JOURNAL_BYTES:
            raise ValueError("not a journal")
        document: Any = json.loads(raw)
        renames = [(str(t), str(f)) for t, f in document["renames"]]
        removals = [str(name) for name in document["remove"]]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise HeaderError(
            f"{journal}: damaged commit journal of a sharded save; remove it and save again"
        ) from None
    for temporary, final in renames:
        _plain(temporary, journal), _plain(final, journal)
    for name in removals:
        _plain(name, journal)
    return renames, removals


def pending(directory: Path, base: str) -> dict[str, Path]:
    """Final name -> the committed temporary that stands for it, for readers (no writes).

    Empty when no commit to ``base`` is under way or left unfinished.
    """
    journal = read_journal(journal_path(directory, base))
    if journal is None:
        return {}
    return {
        final: directory / temporary
        for temporary, final in journal[0]
        if os.path.lexists(directory / temporary)
    }


def journaled_temporaries(directory: Path) -> set[str]:
    """Names of the temporaries that some journal in ``directory`` has committed."""
    named: set[str] = set()
    with os.scandir(directory) as entries:
        journals = [e.path for e in entries if e.name.endswith(JOURNAL_SUFFIX)]
    for journal in journals:
        try:
            found = read_journal(Path(journal))
        except HeaderError:
            continue  # a damaged journal commits nothing; its temporaries are leftovers
        if found is not None:
            named.update(temporary for temporary, _ in found[0])
    return named


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(
    directory: Path,
    base: str,
    renames: Sequence[tuple[Path, str]],
    removals: Sequence[str],
    *,
    temporary: Path,
    fsync: bool,
) -> None:
    """Decide the new set (the journal), then carry it out; see the module docstring.

    ``renames`` are (written temporary, final name), in the order to rename them (the
    index last); ``removals`` the final names the new set supersedes; ``temporary`` a
    fresh temporary name for the journal itself.
    """
    document = {
        "version": JOURNAL_VERSION,
        "renames": [[path.name, final] for path, final in renames],
        "remove": list(removals),
    }
    with open(temporary, "xb") as handle:
        handle.write(json.dumps(document).encode())
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, journal_path(directory, base))
    if fsync:
        fsync_directory(directory)
    roll_forward(directory, base, fsync=fsync)


def roll_forward(directory: Path, base: str, *, fsync: bool = True) -> None:
    """Finish the commit a journal to ``base`` records (idempotent; nothing when none)."""
    journal = journal_path(directory, base)
    found = read_journal(journal)
    if found is None:
        return
    renames, removals = found
    for temporary, final in renames:
        with contextlib.suppress(FileNotFoundError):  # renamed already, by a killed save
            os.replace(directory / temporary, directory / final)
    if fsync:
        fsync_directory(directory)  # the new set is in place before anything old goes
    for name in removals:
        (directory / name).unlink(missing_ok=True)
    journal.unlink(missing_ok=True)
    if fsync:
        fsync_directory(directory)


def committed_view(directory: Path) -> tuple[dict[str, Path], set[str]]:
    """How a directory reads while commits are unfinished, for folder listings (no writes).

    Final name -> the path holding its committed bytes (the temporary until renamed), and
    the names the commits supersede (to be read as gone). Empty outside a commit.
    """
    present: dict[str, Path] = {}
    superseded: set[str] = set()
    try:
        with os.scandir(directory) as entries:
            journals = [Path(e.path) for e in entries if e.name.endswith(JOURNAL_SUFFIX)]
    except OSError:
        return present, superseded  # the listing that follows says why it cannot be read
    for journal in journals:
        try:
            found = read_journal(journal)
        except HeaderError:
            continue  # damaged: it commits nothing
        if found is None:
            continue
        renames, removals = found
        for temporary, final in renames:
            held = directory / temporary
            present[final] = held if os.path.lexists(held) else directory / final
        superseded.update(removals)
    return present, superseded
