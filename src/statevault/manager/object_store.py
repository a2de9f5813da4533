"""A managed run on object storage (``s3://bucket/run``, any fsspec URL): commit by marker.

An object store has no rename and no directories, so a step cannot appear by renaming a
finished folder. Instead::

    RUN/
      .statevault-manager.lock                   the writer's lease (lease.py)
      retention.json                             the last retention pass
      step-12/state-<random>.safetensors         uploaded first (a name no other save uses)
      step-12/step.json                          the commit marker, created last, exclusively
      step-12/preempted                          [saved on a preemption signal]

- **Commit.** The state file is uploaded under a name of its own (``state-<random>``), then
  ``step.json`` (the manifest, naming that file) is created with a conditional create
  (``If-None-Match: *``). A step exists exactly when its marker does: listings show only
  steps with one. Of two writers racing one step, the second's marker is refused; it
  removes its own upload (never the other's, which has another name) and raises
  ``StepExistsError``. A failed or killed save leaves at most an unmarked upload.
- **Deletion** removes the marker first (the step is gone at once), then the rest.
- **Leftovers** (unmarked objects in step folders, objects a marker does not name,
  unfinished multipart uploads below the run) are removed by the next writer, which holds
  the lease, so none of them is live.
- **Reading** a step is ``statevault.verify`` / ``load`` of its state file's URL: the
  header in one ranged read, then the tensors in parallel ranged reads, verified.

Imported by ``statevault.manager.stores`` (``store_for``) only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from statevault.engine.fsspec_storage import FsspecStorage, StorageOptions
from statevault.engine.storage import Storage
from statevault.errors import (
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptFileError,
    DestinationExistsError,
    StateVaultError,
    StepExistsError,
)
from statevault.loading.load import load
from statevault.manager.layout import (
    LOCK_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    PREEMPTED_FILE,
    RETENTION_FILE,
    step_name,
)
from statevault.manager.lease import Lease
from statevault.manager.stores import StepStore
from statevault.saving.save import save_to
from statevault.tools.verification import VerifyReport, verify

logger = logging.getLogger("statevault.manager")
_STEP_FOLDER = re.compile(r"step-(0|[1-9][0-9]*)\Z")
_STATE_NAME = re.compile(r"state-[0-9a-f]{16}\.safetensors\Z")
_MANIFEST_LIMIT = 1 << 20  # a manifest is a few hundred bytes; more is not one


def object_storage(url: str, storage_options: StorageOptions | None) -> Storage:
    """The storage behind a run's URL (the tests' fault-injection point)."""
    return FsspecStorage.for_url(url, storage_options)


def joined(*parts: str) -> str:
    return "/".join(part.strip("/") if i else part.rstrip("/") for i, part in enumerate(parts))


class ObjectStore(StepStore):
    """The steps of the run at ``url``; see the module docstring for the layout."""

    def __init__(self, url: str, storage_options: StorageOptions | None) -> None:
        self.root = self.where = url.rstrip("/")
        self.storage_options = storage_options
        self.storage = object_storage(url, storage_options)
        self._lease = Lease(self.storage, joined(self.root, LOCK_FILE), self.root)
        # Opening a run reads every manifest: the objects' existence comes from the listing
        # just made instead of a request each, and the writer's cleanup pass hands the
        # manifests it read to the catalog (it holds the lease: nobody changes them).
        self._listed: set[str] = set()
        self._manifests: dict[str, dict[str, Any]] = {}

    # -- the run and its lease -----------------------------------------------------------

    def open(self, *, create: bool) -> None:
        """Nothing to create (prefixes appear with their objects); a reader needs objects."""
        if not create and not self.storage.list_tree(self.root):
            raise CheckpointNotFoundError(
                f"{self.root}: no such run (no objects under this prefix); check the URL "
                "and the storage_options"
            )

    def acquire(self, *, break_lock: bool) -> None:
        self._lease.acquire(break_lock=break_lock)

    def release(self) -> None:
        self._lease.release()

    def remove_leftovers(self) -> list[str]:
        inside: dict[str, set[str]] = {}
        for name in self._list():
            folder, _, rest = name.partition("/")
            if rest and _STEP_FOLDER.match(folder):
                inside.setdefault(folder, set()).add(rest)
        removed = []
        for folder, names in sorted(inside.items()):
            keep: set[str] = set()
            if MANIFEST_FILE in names:
                step = int(folder.removeprefix("step-"))
                try:
                    manifest = self.read_manifest(joined(self.root, folder), step)
                except ValueError:
                    continue  # damaged: left for the user to look at (ls, delete)
                self._manifests[joined(self.root, folder)] = manifest
                keep = {MANIFEST_FILE, PREEMPTED_FILE, manifest["file"]}
            for name in sorted(names - keep):
                self.storage.remove(joined(self.root, folder, name))
                removed.append(f"{folder}/{name}")
        removed += [f"unfinished upload of {key}" for key in self.storage.abort_uploads(self.root)]
        if removed:
            logger.info("%s: removed leftovers of interrupted saves: %s", self.root, removed)
        return removed

    # -- steps -------------------------------------------------------------------------

    def committed_steps(self) -> dict[int, str]:
        """The steps whose marker exists (one listing of the run)."""
        found = {}
        for name in self._list():
            folder, _, rest = name.partition("/")
            match = _STEP_FOLDER.match(folder)
            if match and rest == MANIFEST_FILE:
                found[int(match.group(1))] = joined(self.root, folder)
        return found

    def read_manifest(self, location: str, step: int) -> dict[str, Any]:
        """Read right after a listing (``committed_steps``): it says which objects exist."""
        cached = self._manifests.pop(location, None)
        if cached is not None:
            return cached
        try:
            data = json.loads(self._read(joined(location, MANIFEST_FILE), _MANIFEST_LIMIT))
        except CheckpointNotFoundError:
            raise ValueError(f"{MANIFEST_FILE} is missing") from None
        except (CorruptFileError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{MANIFEST_FILE} is unreadable ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{MANIFEST_FILE} is not a statevault manager manifest")
        if data.get("step") != step:
            raise ValueError(f"{MANIFEST_FILE} says step {data.get('step')!r}, the folder {step}")
        file = data.get("file")
        if not isinstance(file, str) or not _STATE_NAME.match(file):
            raise ValueError(f"{MANIFEST_FILE} names no state file of this run ({file!r})")
        if not self._listed_here(location, file):
            raise ValueError(f"{file} is missing")
        marked = self._listed_here(location, PREEMPTED_FILE)
        data["preempted"] = bool(data.get("preempted")) or marked
        return data

    def state_file(self, location: str, manifest: Mapping[str, Any]) -> str:
        return joined(location, str(manifest.get("file")))

    def write_step(
        self, step: int, state: Any, metadata: dict[str, str], manifest: dict[str, Any]
    ) -> str:
        """Upload the state file under a fresh name, then create the marker exclusively."""
        folder = joined(self.root, step_name(step))
        file = f"state-{secrets.token_hex(8)}.safetensors"
        ours = joined(folder, file)
        try:
            try:
                save_to(state, ours, storage=self.storage, metadata=metadata)
            except OSError as exc:
                if isinstance(exc, StateVaultError):  # names the object and what to check
                    raise
                raise CheckpointWriteError(
                    f"{folder}: writing step {step} failed ({exc}); it was not committed and "
                    "no step was deleted",
                    exc.errno,
                ) from exc
            with self.storage.open(ours) as stored:
                manifest |= {"nbytes": stored.size, "file": file}
            marker = json.dumps({"format": MANIFEST_FORMAT, **manifest}, allow_nan=False)
            self._put(joined(folder, MANIFEST_FILE), marker.encode(), exclusive=True)
        except DestinationExistsError:
            self._discard(ours)
            raise StepExistsError(
                f"{folder}: step {step} was committed by another writer while this one "
                "uploaded; that step is kept and this upload was removed. Is a second "
                "manager writing this run? Save under a new step number"
            ) from None
        except BaseException:
            if not self._commits(folder, file):  # a failed reply to a commit that went through
                self._discard(ours)
            raise
        return folder

    def mark_preempted(self, location: str) -> None:
        if not self.storage.exists(joined(location, PREEMPTED_FILE)):
            self._put(joined(location, PREEMPTED_FILE), b"saved on a preemption signal\n")

    def remove_step(self, step: int) -> None:
        """The marker first (the step is gone at once), then its other objects."""
        folder = joined(self.root, step_name(step))
        try:
            self.storage.remove(joined(folder, MANIFEST_FILE))
        except StateVaultError:
            raise
        except Exception as exc:
            raise CheckpointWriteError(f"{folder}: deleting step {step} failed ({exc})") from exc
        with contextlib.suppress(Exception):  # what stays is removed as a leftover next start
            for name in self.storage.list_tree(folder):
                self.storage.remove(joined(folder, name))

    def write_retention(self, record: dict[str, Any]) -> None:
        data = json.dumps(record, indent=1, allow_nan=False).encode()
        self._put(joined(self.root, RETENTION_FILE), data)

    def read_retention(self) -> dict[str, Any]:
        try:
            data = json.loads(self._read(joined(self.root, RETENTION_FILE), _MANIFEST_LIMIT))
        except (StateVaultError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    # -- reading state files -------------------------------------------------------------

    def verify(self, state_file: str | Path) -> VerifyReport:
        return verify(state_file, storage_options=self.storage_options)

    def load(self, state_file: str | Path, device: str | torch.device) -> Any:
        return load(state_file, device=device, storage_options=self.storage_options)

    # -- objects -------------------------------------------------------------------------

    def _list(self) -> list[str]:
        names = self.storage.list_tree(self.root)
        self._listed = set(names)
        return names

    def _listed_here(self, location: str, name: str) -> bool:
        return f"{location.removeprefix(self.root).strip('/')}/{name}" in self._listed

    def _read(self, name: str, limit: int) -> str:
        with self.storage.open(name) as stored:
            if stored.size > limit:
                raise CorruptFileError(f"{name}: {stored.size} bytes, over the {limit} limit")
            return stored.read(stored.size, 0).decode("utf-8")

    def _put(self, name: str, data: bytes, *, exclusive: bool = False) -> None:
        pending = self.storage.begin(name, exclusive=exclusive)
        try:
            pending.write(0, [memoryview(data)])
            pending.commit(durable=True)
        except BaseException:
            pending.abort()
            raise

    def _discard(self, name: str) -> None:
        try:
            self.storage.remove(name)
        except Exception as exc:  # a leftover the next writer removes
            logger.warning("%s: could not remove %s: %s", self.root, name, exc)

    def _commits(self, folder: str, file: str) -> bool:
        """Whether the marker of ``folder`` exists and commits ``file``."""
        try:
            data = json.loads(self._read(joined(folder, MANIFEST_FILE), _MANIFEST_LIMIT))
        except Exception:
            return False
        return isinstance(data, dict) and data.get("file") == file
