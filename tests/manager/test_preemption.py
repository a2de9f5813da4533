"""SIGTERM with a PreemptionHandler: the saves in flight finish, a final step is saved, marked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.helpers.training_states import assert_state_is, state_for

import statevault
from statevault import CheckpointManager, InvalidArgumentError, PreemptionHandler

CHILD = textwrap.dedent(
    """
    import sys, time
    import statevault
    from tests.helpers.training_states import state_for

    manager = statevault.CheckpointManager(sys.argv[1], max_to_keep=2)
    current = {"step": 0}
    handler = statevault.PreemptionHandler(
        manager, deadline=60.0, final_state=lambda: (current["step"], state_for(current["step"]))
    ).install()
    for step in range(1, 22):
        current["step"] = step
        if step % 10 == 0:
            manager.save(step, state_for(step), blocking=False)
    print("in step 21", flush=True)
    time.sleep(60)  # a long training step: SIGTERM arrives here
    """
)


def test_sigterm_finishes_in_flight_saves_and_takes_a_final_marked_one(tmp_path: Path) -> None:
    source = str(Path(statevault.__file__).parents[1])
    root = str(Path(__file__).parents[2])
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([source, root])},
        cwd=root,
    ) as child:
        assert child.stdout is not None and child.stdout.readline() == "in step 21\n"
        child.send_signal(signal.SIGTERM)
        assert child.wait(60) == 128 + signal.SIGTERM
    with CheckpointManager(tmp_path) as manager:
        infos = manager.steps()
        assert [info.step for info in infos] == [20, 21]  # max_to_keep=2
        assert infos[1].preempted
        restored = manager.restore()
        assert restored.step == 21 and restored.preempted
        assert_state_is(restored.state, 21)


def test_cooperative_mode_only_flags_the_request(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        handler = PreemptionHandler(manager, deadline=30.0, cooperative=True)
        with handler:
            manager.save(1, state_for(1, numel=8), blocking=False)
            assert not handler.requested
            os.kill(os.getpid(), signal.SIGTERM)  # handled in this thread before kill returns
            assert handler.requested
            assert handler.finish(2, state_for(2, numel=8)) == 2
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back
        assert [(i.step, i.preempted) for i in manager.steps()] == [(1, True), (2, True)]


def test_bad_deadline_is_refused(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager, pytest.raises(InvalidArgumentError):
        PreemptionHandler(manager, deadline=0)
