"""CheckpointManager: the checkpoints of a training run in one directory, one folder per step.

It saves steps (synchronously, or in the background from a snapshot: snapshot.py), commits
each atomically, applies retention after each commit (policies.py), restores the newest
step that *verifies* (falling back past damaged ones, with a logged reason) and keeps a
second process out. Every storage operation is a :class:`StepStore`'s (stores.py): a local
directory (layout.py, lock.py) or an fsspec URL such as ``s3://bucket/run``
(object_store.py, lease.py). It is built on the public functions ``statevault.save``,
``load``, ``load_into`` and ``verify``.

Imported by the public package (``statevault.CheckpointManager``) and preemption.py.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from statevault.engine.fsspec_storage import StorageOptions, is_url
from statevault.errors import (
    InvalidArgumentError,
    StateVaultError,
    StepExistsError,
    StepNotFoundError,
)
from statevault.loading.load_into import load_into
from statevault.manager.background import BackgroundSaves
from statevault.manager.catalog import CatalogEntry, StepCatalog
from statevault.manager.policies import (
    AnyOf,
    KeepLatest,
    Mode,
    RetentionPlan,
    RetentionPolicy,
    StepRecord,
    best_step,
    plan_retention,
    ranked,
)
from statevault.manager.steps import (
    Restored,
    StepInfo,
    checked_metadata,
    checked_metrics,
    checked_step,
)
from statevault.manager.stores import store_for
from statevault.reports.load_report import LoadReport

logger = logging.getLogger("statevault.manager")


def _close_at_exit(reference: weakref.ReferenceType[CheckpointManager]) -> None:
    """Interpreter exit: saves in flight finish, and a background failure is raised."""
    manager = reference()
    if manager is not None:
        manager.close()


class CheckpointManager:
    """Save, keep and resume the checkpoints of a training run in ``directory``.

    ``max_to_keep=n`` keeps the n newest steps; ``policy`` adds any retention policy
    (``KeepBest``, ``KeepEveryNSteps``, ... combined with ``AnyOf``); without either every
    step is kept. ``monitor``/``mode`` name the metric that defines :meth:`best_step`
    (never deleted). ``max_in_flight`` bounds async saves (and so the host memory they
    stage). ``read_only=True`` lists, verifies and restores without the lock, while
    another process trains. ``directory`` may be an fsspec URL (``s3://bucket/run``)
    configured by ``storage_options``; there a lease object stands for the lock, and
    ``break_lock=True`` takes over the lease of a run known to be dead (a local directory's
    ``flock`` is never stale: there it changes nothing). See docs/manager.md.

    Example::

        with statevault.CheckpointManager("ckpts", max_to_keep=3) as manager:
            if manager.latest_step() is not None:
                start = manager.restore(into={"model": model, "optim": opt}).step + 1
            for step in range(start, steps):
                ...
                manager.save(step, {"model": model, "optim": opt.state_dict()},
                             metrics={"loss": float(loss)}, blocking=False)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_to_keep: int | None = None,
        policy: RetentionPolicy | None = None,
        monitor: str | None = None,
        mode: Mode = "min",
        max_in_flight: int = 1,
        read_only: bool = False,
        storage_options: StorageOptions | None = None,
        break_lock: bool = False,
    ) -> None:
        self.directory: Path | str = (
            os.fspath(directory).rstrip("/") if is_url(directory) else Path(directory)
        )
        self._policy = _combined(max_to_keep, policy)
        if mode not in ("min", "max"):
            raise InvalidArgumentError(f"mode must be 'min' or 'max', got {mode!r}")
        if type(max_in_flight) is not int or max_in_flight < 1:
            raise InvalidArgumentError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        self._monitor, self._mode, self._read_only = monitor, mode, read_only
        self._state_lock = threading.RLock()
        self._resumed_from: int | None = None
        self._last_commit: int | None = None
        self.last_save_seconds: float | None = None  # of the last committed save
        self._closed = False
        self._store = store_for(directory, storage_options)
        self._store.open(create=not read_only)
        if not read_only:
            self._store.acquire(break_lock=break_lock)
        try:
            if not read_only:
                self._store.remove_leftovers()
            self._catalog = StepCatalog(self._store)
        except BaseException:
            self._store.release()
            raise
        self._background = BackgroundSaves(max_in_flight)
        self._exit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)
        weakref.finalize(self, self._store.release)  # a manager dropped unclosed frees the dir

    # -- saving ------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        *,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        blocking: bool = True,
    ) -> None:
        """Save ``state`` (anything ``statevault.save`` takes) as step ``step``.

        ``blocking=False`` returns once the state is copied to host memory; the write,
        hashing, commit and retention run in the background, and a failure there is raised
        by the next ``save``/``wait``/``close`` (or at interpreter exit). While
        ``max_in_flight`` saves are in flight, this waits for one to finish first.
        """
        self._check_open(writing=True)
        self._background.raise_failure()
        step = checked_step(step)
        metrics_, metadata_ = checked_metrics(metrics), checked_metadata(metadata)
        if step in self._catalog or step in self._background.steps():
            where = "committed" if step in self._catalog else "in flight"
            raise StepExistsError(
                f"{self.directory}: step {step} is already {where}; save under a new step "
                "number, or delete(step) first"
            )
        write = functools.partial(self._write, metrics=metrics_, metadata=metadata_)
        if blocking:
            self.wait()  # commits stay in the order of the save() calls
            write(step, state)
        else:
            self._background.submit(step, state, write)

    def _write(
        self,
        step: int,
        state: Any,
        *,
        metrics: dict[str, float | None],
        metadata: dict[str, str],
        preempted: bool = False,
    ) -> None:
        """Write, commit and record one step, then apply retention (any thread)."""
        started = time.monotonic()
        manifest = {"step": step, "time": time.time(), "metrics": metrics}
        manifest |= {"metadata": metadata, "preempted": preempted}
        location = self._store.write_step(step, state, metadata, manifest)
        self.last_save_seconds = time.monotonic() - started
        state_file = self._store.state_file(location, manifest)
        self._catalog.add(CatalogEntry(step, location, manifest, state_file, verified=True))
        self._last_commit = step
        self._apply_retention()

    def wait(self) -> None:
        """Block until every save in flight is committed; raise a background failure."""
        self._background.wait()
        self._background.raise_failure()

    # -- for the preemption handler -----------------------------------------------------

    def _mark_preempted(self, step: int) -> bool:
        """Mark a committed step as finished under preemption; False if it is not committed."""
        entry = self._catalog.get(step)
        if entry is None:
            return False
        self._store.mark_preempted(entry.location)
        entry.manifest["preempted"] = True
        return True

    def _save_preempted(self, step: int, state: Any) -> None:
        """A final synchronous save, marked as triggered by preemption."""
        self._check_open(writing=True)
        step = checked_step(step)
        if step in self._catalog:
            self._mark_preempted(step)
            return
        self._background.wait()
        self._write(step, state, metrics={}, metadata={}, preempted=True)

    # -- retention ---------------------------------------------------------------------

    def _protected(self, records: list[StepRecord]) -> dict[int, str]:
        reasons: dict[int, list[str]] = {}
        if records:
            reasons.setdefault(records[-1].step, []).append("newest step")
        if self._last_commit is not None:
            reasons.setdefault(self._last_commit, []).append("newest commit of this run")
        if self._monitor is not None:
            best = best_step(records, self._monitor, self._mode)
            if best is not None:
                reasons.setdefault(best, []).append(f"best by {self._monitor} ({self._mode})")
        if self._resumed_from is not None:
            reasons.setdefault(self._resumed_from, []).append("resumed from")
        for step in self._background.steps():
            if step not in self._catalog:  # not committed yet (its own pass sees it committed)
                reasons.setdefault(step, []).append("save in flight")
        return {step: ", ".join(why) for step, why in reasons.items()}

    def retention_plan(self) -> RetentionPlan:
        """The dry run: which steps retention keeps now and why, and which it would delete."""
        with self._state_lock:
            records = self._catalog.records()
            return plan_retention(records, self._policy, self._protected(records))

    def _apply_retention(self) -> None:
        plan = self.retention_plan()
        for step in plan.delete:
            try:
                self._store.remove_step(step)
            except StateVaultError as exc:
                logger.warning("%s: could not delete step %d: %s", self.directory, step, exc)
                continue
            self._catalog.remove(step)
            logger.info("%s: retention deleted step %d", self.directory, step)
        record = {"policy": repr(self._policy), "time": time.time()}
        record["kept"] = {str(step): list(why) for step, why in plan.keep.items()}
        try:
            self._store.write_retention(record)
        except StateVaultError as exc:
            logger.warning("%s: could not record retention: %s", self.directory, exc)

    # -- reading -----------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest committed step whose checksums verify (None when there is none)."""
        self._check_open()
        for step in self._catalog.numbers(newest_first=True):
            if self._catalog.verified(step):
                return step
        return None

    def best_step(self) -> int | None:
        """The valid step with the best ``monitor`` metric (None when none has it)."""
        self._check_open()
        if self._monitor is None:
            raise InvalidArgumentError(
                "best_step() needs the metric to rank by: CheckpointManager(..., monitor="
                "'loss', mode='min')"
            )
        for record in ranked(self._catalog.records(), self._monitor, self._mode):
            if self._catalog.verified(record.step):
                return record.step
        return None

    def steps(self, *, verify: bool = False) -> list[StepInfo]:
        """Every committed step, oldest first, with metrics, size, status and why it is kept.

        ``verify=True`` reads every unverified step's checksums first. A read-only manager
        shows why the writing manager's last retention pass kept each step.
        """
        self._check_open()
        if self._read_only:
            recorded = self._store.read_retention().get("kept", {})
            kept = {int(s): tuple(why) for s, why in recorded.items() if s.isdigit()}
        else:
            kept = dict(self.retention_plan().keep)
        if verify:
            for step in self._catalog.numbers():
                self._catalog.verified(step)
        return [entry.info(kept.get(entry.step, ())) for entry in self._catalog.entries()]

    def step_path(self, step: int | None = None) -> Path | str:
        """The state file of ``step`` (default: the latest valid step), for the file tools:
        a ``Path`` in a local directory, a URL on object storage."""
        self._check_open()
        if step is None:
            latest = self.latest_step()
            if latest is None:
                damaged = self._catalog.damaged_text()
                raise StepNotFoundError(f"{self.directory}: no valid step{damaged}")
            step = latest
        return self._catalog.entry(checked_step(step)).state_file

    def restore(
        self,
        step: int | None = None,
        *,
        into: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> Restored:
        """Load a step (default: the newest one that verifies; damaged ones are skipped with a
        logged reason) and remember it as the step this run resumed from (never deleted).

        ``into={"model": model, "optim": optimizer}`` also loads ``state["model"]`` into the
        module with ``statevault.load_into`` (its report in ``.reports``) and each other
        object through its own ``load_state_dict``.
        """
        self._check_open()
        self.wait()
        entry, state = self._catalog.load(None if step is None else checked_step(step), device)
        self._resumed_from = entry.step
        reports = _load_into_targets(into, state, entry.step) if into else {}
        preempted = bool(entry.manifest.get("preempted"))
        return Restored(entry.step, state, entry.metrics, entry.metadata, preempted, reports)

    # -- housekeeping ------------------------------------------------------------------

    def delete(self, step: int) -> None:
        """Delete a committed step now (whatever retention says); not one in flight."""
        self._check_open(writing=True)
        step = checked_step(step)
        if step in self._background.steps():
            raise InvalidArgumentError(f"step {step} is being saved; wait() before deleting it")
        self._catalog.entry(step)
        self._store.remove_step(step)
        self._catalog.remove(step)

    def _check_open(self, *, writing: bool = False) -> None:
        if self._closed:
            raise InvalidArgumentError(f"{self.directory}: this CheckpointManager is closed")
        if writing and self._read_only:
            raise InvalidArgumentError(
                f"{self.directory}: this CheckpointManager is read-only (read_only=True); "
                "open one without it to save or delete"
            )

    def close(self) -> None:
        """Finish the saves in flight, release the directory, raise a background failure."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._exit_hook)
        try:
            self._background.wait()
        finally:
            self._background.shutdown()
            self._store.release()
        self._background.raise_failure()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # the caller's exception wins; a background failure is still logged
            self.close()
        except Exception as background:
            logger.error("%s: while closing: %s", self.directory, background)

    def __repr__(self) -> str:
        return f"<CheckpointManager {str(self.directory)!r}, {len(self._catalog)} step(s)>"


def _combined(max_to_keep: int | None, policy: RetentionPolicy | None) -> RetentionPolicy | None:
    latest = KeepLatest(max_to_keep) if max_to_keep is not None else None
    if latest is not None and policy is not None:
        return AnyOf(latest, policy)
    return latest or policy


def _load_into_targets(
    into: Mapping[str, Any], state: Any, step: int
) -> dict[str, LoadReport | None]:
    """Each restored part into its live object: modules by load_into, others by load_state_dict."""
    reports: dict[str, LoadReport | None] = {}
    for name, target in into.items():
        if not isinstance(state, dict) or name not in state:
            keys = sorted(map(str, state)) if isinstance(state, dict) else []
            raise InvalidArgumentError(
                f"restore(into=...): step {step} has no {name!r} to load (its keys: {keys})"
            )
        if isinstance(target, torch.nn.Module):
            reports[name] = load_into(target, state[name])
        elif callable(getattr(target, "load_state_dict", None)):
            target.load_state_dict(state[name])
            reports[name] = None
        else:
            raise InvalidArgumentError(
                f"restore(into=...): {name!r} is a {type(target).__name__}, which has no "
                "load_state_dict(); pass modules, optimizers, schedulers, or read .state"
            )
    return reports
