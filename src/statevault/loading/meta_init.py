"""skip_init(): modules built inside get their parameters on the meta device, in this thread only.

torch offers one way to change a parameter as it is registered: a process-wide hook
(``register_module_parameter_registration_hook``). So the hook is installed while any
thread is inside ``skip_init`` and acts only for the threads that are: each thread's depth
is thread-local, and a module built meanwhile in another thread is built normally. The
init-skipping ``TorchFunctionMode`` is thread-local in torch already.

May import: torch only. Imported by ``loading.build``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle


class _Threads(threading.local):
    """How deep the current thread is inside ``skip_init`` blocks (0: not inside)."""

    depth = 0


_this_thread = _Threads()
_install_lock = threading.Lock()  # guards the two below
_blocks_open = 0  # skip_init blocks open in all threads: the hook is installed while > 0
_hook: RemovableHandle | None = None


def _parameter_to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> Any:
    if not _this_thread.depth:
        return None  # a module built in another thread: leave it alone
    if param is None or param.is_meta:
        return None  # keep it (a tied parameter registered a second time is already meta)
    return type(param)(param.to("meta"), requires_grad=param.requires_grad)


# In-place fills that weight-init functions run; on a meta tensor they change nothing, but
# some (normal_) go through torch's Python reference kernels whose first use imports
# torch._dynamo: measured 1.6 s on the first load_model of a process.
_FILLS = frozenset(
    {"normal_", "uniform_", "fill_", "zero_", "random_", "bernoulli_", "exponential_",
     "geometric_", "log_normal_", "cauchy_", "erfinv_", "clamp_", "mul_", "add_", "sub_",
     "div_", "copy_", "fmod_", "abs_", "sqrt_", "neg_"}
)  # fmt: skip


class _SkipMetaFills(TorchFunctionMode):
    """Return meta tensors from in-place fills untouched instead of dispatching them."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        # nn.init functions forward their tensor as a keyword (``tensor=``)
        first = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
        if (
            getattr(func, "__name__", "") in _FILLS
            and isinstance(first, torch.Tensor)
            and first.is_meta
        ):
            return first
        return func(*args, **kwargs)


def _enter() -> None:
    global _blocks_open, _hook
    with _install_lock:
        if _blocks_open == 0:
            _hook = register_module_parameter_registration_hook(_parameter_to_meta)
        _blocks_open += 1
    _this_thread.depth += 1


def _leave() -> None:
    global _blocks_open, _hook
    _this_thread.depth -= 1
    with _install_lock:
        _blocks_open -= 1
        if _blocks_open == 0 and _hook is not None:
            _hook.remove()
            _hook = None


@contextmanager
def skip_init() -> Iterator[None]:
    """Modules built inside, in this thread, get their parameters on the meta device.

    No memory and no init for them; buffers are created normally. Fill the module with
    :func:`materialize` afterwards. Modules built meanwhile in other threads (or in threads
    started inside the block) are built as usual.

    Example::

        with statevault.skip_init():
            model = Model(dim=4096)
        statevault.materialize(model, "model.safetensors")
    """
    _enter()
    try:
        with _SkipMetaFills():
            yield
    finally:
        _leave()
