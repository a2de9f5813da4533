"""Opt-in preemption handling: on SIGTERM, finish the saves in flight and take a final one.

Clusters announce preemption with SIGTERM and kill the job a grace period later. The
handler then (1) waits for the async saves in flight, (2) takes a final synchronous save of
``final_state()`` if the last save's duration says it fits in what is left of ``deadline``,
(3) marks the steps it finished or saved as preemption-triggered (``StepInfo.preempted``),
and (4) exits with ``exit_code``. A save that does not fit is skipped with a logged reason:
the previous committed step stays the one to resume from.

The handler runs in the main thread between two bytecodes, possibly in the middle of an
optimizer step. Where that matters, pass ``cooperative=True``: the signal only sets
:attr:`PreemptionHandler.requested`, and the training loop, at a step boundary, calls
:meth:`PreemptionHandler.finish` with a consistent state and exits itself.

Imported by the public package.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from statevault.errors import InvalidArgumentError
from statevault.manager.manager import CheckpointManager

logger = logging.getLogger("statevault.manager")
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a job ended by SIGTERM

Handler = Callable[[int, FrameType | None], Any] | int | None


class PreemptionHandler:
    """Saves what it can within ``deadline`` seconds of SIGTERM (see the module docstring).

    Example::

        with statevault.PreemptionHandler(manager, deadline=25.0,
                                          final_state=lambda: (step, state())):
            train()
    """

    def __init__(
        self,
        manager: CheckpointManager,
        *,
        deadline: float,
        final_state: Callable[[], tuple[int, Any]] | None = None,
        cooperative: bool = False,
        exit_code: int = EXIT_TERMINATED,
        signals: tuple[int, ...] = (signal.SIGTERM,),
    ) -> None:
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or deadline <= 0:
            raise InvalidArgumentError(
                f"deadline must be a positive number of seconds: {deadline!r}"
            )
        self._manager, self._deadline, self._final_state = manager, float(deadline), final_state
        self._cooperative, self._exit_code, self._signals = cooperative, exit_code, signals
        self._received: float | None = None
        self._previous: dict[int, Handler] = {}

    @property
    def requested(self) -> bool:
        """Whether a preemption signal arrived (what a cooperative loop checks each step)."""
        return self._received is not None

    def install(self) -> PreemptionHandler:
        """Handle the signals from now on (main thread only, as Python requires)."""
        try:
            for number in self._signals:
                self._previous[number] = signal.signal(number, self._on_signal)
        except ValueError as exc:  # "signal only works in main thread"
            self.uninstall()
            raise InvalidArgumentError(f"PreemptionHandler.install(): {exc}") from None
        return self

    def uninstall(self) -> None:
        """Give the signals back to the handlers they had before :meth:`install`."""
        for number, previous in self._previous.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> PreemptionHandler:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.uninstall()

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        self._received = time.monotonic()
        logger.warning("preemption signal %d: saving within %.1f s", number, self._deadline)
        if self._cooperative:
            return
        final = self._final_state() if self._final_state is not None else None
        self.finish(*(final or (None, None)))
        raise SystemExit(self._exit_code)

    def remaining(self) -> float:
        """Seconds left of the deadline (the whole deadline before any signal)."""
        if self._received is None:
            return self._deadline
        return self._deadline - (time.monotonic() - self._received)

    def finish(self, step: int | None = None, state: Any = None) -> int | None:
        """Finish the saves in flight, then save ``state`` as ``step`` if it fits in time.

        Returns the newest step committed under preemption, or None when nothing was.
        """
        manager = self._manager
        in_flight = manager._background.steps()
        if not manager._background.wait(max(self.remaining(), 0.0)):
            logger.error("saves in flight did not finish within the deadline: %s", in_flight)
            return None
        finished = [number for number in in_flight if manager._mark_preempted(number)]
        if step is not None:
            estimate = manager.last_save_seconds or 0.0
            if estimate > self.remaining():
                logger.error(
                    "no final save of step %d: the last save took %.1f s, %.1f s are left",
                    step,
                    estimate,
                    self.remaining(),
                )
            else:
                manager._save_preempted(step, state)
                finished.append(step)
        return max(finished) if finished else None
