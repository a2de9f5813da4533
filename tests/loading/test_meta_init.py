"""skip_init acts only in the thread inside it: modules built meanwhile elsewhere are normal."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

import statevault


def _seeded_linear() -> nn.Linear:
    torch.manual_seed(7)
    return nn.Linear(4, 3)


def _in_thread(work: Callable[[], None]) -> None:
    """Run ``work`` in a second thread and wait for it; its exception fails the test here."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    if errors:
        raise errors[0]


def test_a_module_built_in_another_thread_meanwhile_is_initialised_normally() -> None:
    reference = _seeded_linear()
    built: dict[str, nn.Module] = {}
    with statevault.skip_init():
        mine = nn.Linear(4, 3)
        _in_thread(lambda: built.update(other=_seeded_linear()))
        also_mine = nn.Linear(4, 3)  # this thread is still inside after the other one built
    other = built["other"]
    assert isinstance(other, nn.Linear)
    assert not other.weight.is_meta and not other.bias.is_meta
    assert torch.equal(other.weight, reference.weight)  # its own init ran, with its seed
    assert torch.equal(other.bias, reference.bias)
    assert mine.weight.is_meta and mine.bias.is_meta
    assert also_mine.weight.is_meta


def test_one_thread_leaving_skip_init_does_not_end_it_for_another() -> None:
    entered, left = threading.Event(), threading.Event()
    built: dict[str, nn.Module] = {}

    def inside_skip_init() -> None:
        with statevault.skip_init():
            entered.set()
            assert left.wait(timeout=60)
            built["after"] = nn.Linear(2, 2)

    thread = threading.Thread(target=inside_skip_init)
    thread.start()
    assert entered.wait(timeout=60)
    with statevault.skip_init():  # opened and closed while the other thread is inside
        assert nn.Linear(2, 2).weight.is_meta
    left.set()
    thread.join(timeout=60)
    assert built["after"].weight.is_meta  # still inside its own block
    assert not nn.Linear(2, 2).weight.is_meta  # both blocks closed: nothing is skipped


def test_nested_blocks_in_one_thread_end_with_the_outer_one() -> None:
    with statevault.skip_init():
        with statevault.skip_init():
            pass
        assert nn.Linear(2, 2).weight.is_meta
    assert not nn.Linear(2, 2).weight.is_meta
