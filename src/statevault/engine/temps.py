"""The temporary files of saves in flight: names that identify their writer, and cleanup.

A save writes ``.{name}.{writer}.{pid}.{random}.svtmp`` beside its target and renames it
over the target when complete. A writer killed mid-save (SIGKILL, OOM killer, power cut)
leaves that file behind. ``writer`` names the host and its process-id namespace, so a later
save into the directory can tell, without any lock, which leftovers belong to a process of
this machine that no longer exists (pid gone, a zombie, or the pid now used by a process
started after the file was last written) and remove only those. Files of live writers
(another process, or another thread of this one) and of other hosts (a shared file system)
are never touched, nor are temporaries that a sharded save's commit journal names
(``engine.commit``): they are the new checkpoint until the journal is carried out.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
from pathlib import Path
from typing import NamedTuple

from statevault.engine.commit import journaled_temporaries

TEMP_SUFFIX = ".svtmp"
NAME_MAX_BYTES = 255  # the longest file name most Linux file systems accept
# A pid reused by a process that started this long after the temp file was last written is
# someone else. /proc gives start times to 1/100 s and boot time to 1 s: the margin keeps a
# live writer (which started before it wrote) from ever looking like a newcomer.
START_MARGIN_SECONDS = 2.0
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\Z")
_RANDOM = re.compile(r"[0-9a-f]{12}\Z")
logger = logging.getLogger("statevault")


def writer_token() -> str:
    """This process's host and pid namespace, as one file-name piece without dots.

    The pid namespace matters where containers share a host name and a volume but not
    their pids: a pid means nothing outside its namespace.
    """
    host = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "_"
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:  # no /proc (not Linux): the host name alone
        return host
    return f"{host}-{re.sub(r'[^0-9]', '', namespace)}"


def temp_name(target_name: str) -> str:
    """A fresh temporary name for a save to ``target_name`` by this process."""
    tail = f".{writer_token()}.{os.getpid()}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    # The target's name is only there for people reading the directory: shorten it so that
    # a target whose own name is near the limit still gets a temporary file.
    room = NAME_MAX_BYTES - 1 - len(tail.encode())
    name = target_name.encode()[: max(0, room)].decode(errors="ignore")
    return f".{name}{tail}"


class Temporary(NamedTuple):
    """A save's temporary file, with the writer its name records."""

    path: Path
    writer: str  # writer_token() of the writing process
    pid: int


def temporaries(directory: str | os.PathLike[str]) -> list[Temporary]:
    """Every temporary file of a statevault save in ``directory`` (in flight or left over).

    Files named by statevault versions before writer-named temporaries
    (``.{name}.{random}.svtmp``) do not say who wrote them and are not listed.
    """
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
                continue
            parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 3)  # [".name", writer, pid, random]
            if len(parts) != 4 or not parts[2].isdigit() or not _RANDOM.match(parts[3]):
                continue
            if _TOKEN.match(parts[1]) and entry.is_file(follow_symlinks=False):
                found.append(Temporary(Path(entry.path), parts[1], int(parts[2])))
    return sorted(found)


def stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """The temporary files in ``directory`` whose writer, a process of this host, is gone.

    These are what a killed save left behind; the next save into the directory removes
    them. A file that disappears while being looked at (its save just finished) is skipped.
    """
    ours = writer_token()
    committed = journaled_temporaries(Path(directory))  # a sharded save's new set: not stale
    stale = []
    for temporary in temporaries(directory):
        if temporary.writer != ours or temporary.path.name in committed:
            continue  # another host's (or container's) pids mean nothing here
        try:
            written = temporary.path.stat().st_mtime
        except FileNotFoundError:
            continue
        if not _writer_alive(temporary.pid, written):
            stale.append(temporary.path)
    return stale


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> None:
    """Remove what killed saves left in ``directory``; never fails the save that calls it.

    Housekeeping only: a leftover that cannot be listed or removed is logged (as a
    warning) and left for ``stale_temporaries`` to report; the save goes on either way.
    """
    try:
        stale = stale_temporaries(directory)
    except OSError as exc:
        logger.warning("could not look for leftover temporary files in %s: %s", directory, exc)
        return
    for path in stale:
        try:
            path.unlink()
        except FileNotFoundError:
            pass  # another save removed it first
        except OSError as exc:
            logger.warning("could not remove leftover temporary file %s: %s", path, exc)


def _writer_alive(pid: int, written: float) -> bool:
    """Whether process ``pid`` of this host may still be writing a file last written then.

    Unsure answers are "alive": a leftover kept is only disk space, a file removed under
    a live writer fails its save.
    """
    if pid != os.getpid():  # ours is alive: another thread of ours may be saving
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
    started = _process_start(pid)  # even ours: a previous owner of our pid may have died
    if started is None:
        return True
    state, start_time = started
    if state == "Z":
        return False  # exited; only its parent has not collected its status yet
    return start_time is None or start_time <= written + START_MARGIN_SECONDS


def _process_start(pid: int) -> tuple[str, float | None] | None:
    """The state letter of process ``pid`` and its start time (Unix seconds), from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # the name may contain ")"
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(
                (float(line.split()[1]) for line in handle if line.startswith("btime ")), None
            )
    except (OSError, IndexError, ValueError):
        return None
    state = fields[0] if fields else "?"
    try:
        ticks = int(fields[19])  # field 22 of the file, "starttime", in clock ticks
    except (IndexError, ValueError):
        return state, None
    if boot is None:
        return state, None
    return state, boot + ticks / os.sysconf("SC_CLK_TCK")


def describe_temporaries(directory: str | os.PathLike[str]) -> list[str]:
    """One note per save temporary in ``directory``, for inspect and verify to show."""
    stale = set(stale_temporaries(directory))
    notes = []
    for temporary in temporaries(directory):
        if temporary.path in stale:
            notes.append(
                f"leftover temporary file {temporary.path.name} of a killed save (pid "
                f"{temporary.pid} is gone); the next save into this directory removes it"
            )
        else:
            notes.append(
                f"temporary file {temporary.path.name}: a save in progress (pid "
                f"{temporary.pid} on {temporary.writer}), or left by another host"
            )
    return notes
