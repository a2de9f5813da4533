"""The committed steps of a managed directory and what is known of each: valid, damaged, why.

"Valid" means written by this manager in this process, or its checksums verified
(``statevault.verify`` or a verifying ``statevault.load``); the result is remembered, so a
step is read for verification at most once. Loading falls back past damaged steps to the
newest one that verifies, logging why each was skipped. Thread-safe: the manager's
background writer adds and removes steps while the caller reads.

Imported by ``statevault.manager.manager`` only.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from statevault.errors import CheckpointNotFoundError, CorruptFileError, StepNotFoundError
from statevault.manager.policies import StepRecord
from statevault.manager.steps import Status, StepInfo
from statevault.manager.stores import StepStore

logger = logging.getLogger("statevault.manager")


@dataclass
class CatalogEntry:
    """One committed step (mutable: verification fills in ``verified`` or ``problem``)."""

    step: int
    location: str  # the step's folder (or URL prefix): only the store interprets it
    manifest: dict[str, Any]
    state_file: str | Path  # as the file tools take it
    problem: str | None = None  # why it is damaged
    verified: bool = False

    @property
    def metrics(self) -> dict[str, float | None]:
        metrics = self.manifest.get("metrics")
        return dict(metrics) if isinstance(metrics, dict) else {}

    @property
    def metadata(self) -> dict[str, str]:
        metadata = self.manifest.get("metadata")
        return dict(metadata) if isinstance(metadata, dict) else {}

    def record(self) -> StepRecord:
        return StepRecord(self.step, float(self.manifest.get("time") or 0.0), self.metrics)

    def info(self, kept: tuple[str, ...]) -> StepInfo:
        status: Status = "damaged" if self.problem else "valid" if self.verified else "unverified"
        return StepInfo(
            self.step,
            status,
            self.manifest.get("time"),
            self.metrics,
            self.metadata,
            int(self.manifest.get("nbytes") or 0),
            bool(self.manifest.get("preempted")),
            kept,
            self.problem,
        )


class StepCatalog:
    """The steps found in ``store`` when opened, kept up to date by the manager."""

    def __init__(self, store: StepStore) -> None:
        self.store = store
        self.directory = store.where  # for messages
        self._lock = threading.RLock()
        self._entries = {
            step: self.read_entry(location, step)
            for step, location in store.committed_steps().items()
        }

    def read_entry(self, location: str, step: int) -> CatalogEntry:
        try:
            manifest = self.store.read_manifest(location, step)
        except ValueError as exc:
            return CatalogEntry(step, location, {}, location, problem=str(exc))
        return CatalogEntry(step, location, manifest, self.store.state_file(location, manifest))

    def __contains__(self, step: int) -> bool:
        with self._lock:
            return step in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def numbers(self, *, newest_first: bool = False) -> list[int]:
        with self._lock:
            return sorted(self._entries, reverse=newest_first)

    def entries(self) -> list[CatalogEntry]:
        with self._lock:
            return [self._entries[step] for step in sorted(self._entries)]

    def get(self, step: int) -> CatalogEntry | None:
        with self._lock:
            return self._entries.get(step)

    def entry(self, step: int) -> CatalogEntry:
        """The entry of ``step``, or StepNotFoundError listing the steps there are."""
        entry = self.get(step)
        if entry is None:
            known = ", ".join(map(str, self.numbers())) or "none"
            raise StepNotFoundError(f"{self.directory}: no step {step} (steps: {known})")
        return entry

    def add(self, entry: CatalogEntry) -> None:
        with self._lock:
            self._entries[entry.step] = entry

    def remove(self, step: int) -> None:
        with self._lock:
            self._entries.pop(step, None)

    def records(self) -> list[StepRecord]:
        """What retention policies see: every step not known to be damaged, oldest first."""
        return [entry.record() for entry in self.entries() if entry.problem is None]

    def verified(self, step: int) -> bool:
        """Whether ``step`` verifies (its checksums are read once, then remembered)."""
        entry = self.get(step)
        if entry is None:  # deleted by retention meanwhile
            return False
        if entry.problem is None and not entry.verified:
            try:
                report = self.store.verify(entry.state_file)
            except (CorruptFileError, CheckpointNotFoundError) as exc:
                entry.problem = str(exc)
            else:
                if report.ok:
                    entry.verified = True
                else:
                    bad = f"checksum mismatch: {report.bad[0]}" if report.bad else None
                    entry.problem = report.header_error or bad or "does not verify"
        return entry.problem is None

    def damaged_text(self) -> str:
        damaged = [f"step {e.step}: {e.problem}" for e in self.entries() if e.problem]
        return f"; damaged steps skipped: {'; '.join(damaged)}" if damaged else ""

    def load(self, step: int | None, device: str | torch.device) -> tuple[CatalogEntry, Any]:
        """Load ``step``, or the newest step that verifies while loading (skipping damaged
        ones with a logged reason); an explicitly asked damaged step raises."""
        if step is not None:
            entry = self.entry(step)
            if entry.problem is not None:
                raise CorruptFileError(f"{entry.location}: step {step} is damaged: {entry.problem}")
            state = self._load(entry, device)
            return entry, state
        for number in self.numbers(newest_first=True):
            entry = self.entry(number)
            try:
                if entry.problem is not None:
                    raise CorruptFileError(entry.problem)
                return entry, self._load(entry, device)
            except (CorruptFileError, CheckpointNotFoundError) as exc:
                logger.warning(
                    "%s: step %d is damaged (%s); falling back to an older step",
                    self.directory,
                    number,
                    exc,
                )
        raise StepNotFoundError(f"{self.directory}: no valid step to restore{self.damaged_text()}")

    def _load(self, entry: CatalogEntry, device: str | torch.device) -> Any:
        try:
            state = self.store.load(entry.state_file, device)  # checksums verified
        except (CorruptFileError, CheckpointNotFoundError) as exc:
            entry.problem = str(exc)
            raise
        entry.verified = True
        return state
