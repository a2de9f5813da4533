"""load_into against torch's own load_state_dict, case by case (differential tests).

Each case builds two identical modules, loads one with ``module.load_state_dict(state)`` and
the other with statevault, from the dict itself and from a file it saved, then compares the
modules (values, dtypes, devices, requires_grad, tensor types and which keys share one
tensor) and the reported keys with torch's. What differs on purpose is listed in
docs/loading.md, "Differences from torch's load_state_dict", and tested as such here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import return_and_correct_aliasing

import statevault
from statevault.errors import StateDictMismatchError, UnsupportedObjectError

Make = Callable[[], nn.Module]


def _seeded(make: Make, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make()


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A comparable plain tensor: a PairTensor's first half, any other tensor itself."""
    return tensor.a if isinstance(tensor, PairTensor) else tensor.detach()


def _shared_groups(module: nn.Module) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(key)
    return sorted(groups.values())


def assert_same_module(expected: nn.Module, got: nn.Module) -> None:
    """Same keys, values, dtypes, devices, requires_grad, tensor types and sharing."""
    want, have = expected.state_dict(keep_vars=True), got.state_dict(keep_vars=True)
    assert list(want) == list(have)
    for key, tensor in want.items():
        other = have[key]
        assert type(other) is type(tensor), key
        assert isinstance(other, nn.Parameter) == isinstance(tensor, nn.Parameter), key
        assert (other.dtype, other.device, other.requires_grad) == (
            tensor.dtype,
            tensor.device,
            tensor.requires_grad,
        ), key
        if not tensor.is_meta:
            assert torch.equal(_plain(other), _plain(tensor)), key
    assert _shared_groups(got) == _shared_groups(expected)


def _by_torch(module: nn.Module, state: dict[str, Any], **options: Any) -> Any:
    return module.load_state_dict(state, **options)


def _saved(state: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "state.safetensors"
    statevault.save(state, path)
    return path


def differential(
    make: Make, state: dict[str, Any], tmp_path: Path, **options: Any
) -> tuple[nn.Module, list[tuple[nn.Module, statevault.LoadReport]], Any]:
    """torch's module and result; statevault's (module, report) from the dict and the file."""
    reference = _seeded(make, 2)
    result = _by_torch(reference, state, **options)
    ours = []
    for source in (state, _saved(state, tmp_path)):
        module = _seeded(make, 2)
        ours.append((module, statevault.load_into(module, source, **options)))
    return reference, ours, result


def assert_like_torch(make: Make, state: dict[str, Any], tmp_path: Path, **options: Any) -> None:
    reference, ours, result = differential(make, state, tmp_path, **options)
    for module, report in ours:
        assert_same_module(reference, module)
        assert report.missing_keys == result.missing_keys
        assert report.unexpected_keys == result.unexpected_keys


def assert_both_refuse(make: Make, state: dict[str, Any], tmp_path: Path, match: str) -> None:
    with pytest.raises(RuntimeError, match=match):
        _by_torch(_seeded(make, 2), state)
    for source in (state, _saved(state, tmp_path)):
        with pytest.raises(StateDictMismatchError, match=match):
            statevault.load_into(_seeded(make, 2), source)


# -- 1. versioned modules and _metadata ---------------------------------------------------


def _conv_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))


def _old_batchnorm_state(version: int | None) -> OrderedDict[str, torch.Tensor]:
    """A state dict as torch < 0.4.1 wrote it: no num_batches_tracked, BatchNorm version 1."""
    source = _seeded(_conv_bn, 1)
    source[1].num_batches_tracked.fill_(7)
    state = source.state_dict()
    del state["1.num_batches_tracked"]
    if version is None:
        del state._metadata  # type: ignore[attr-defined]
    else:
        state._metadata["1"]["version"] = version  # type: ignore[attr-defined]
    return state


@pytest.mark.parametrize("version", [1, None], ids=["version 1", "no versions"])
@pytest.mark.parametrize("strict", [True, False])
def test_old_batchnorm_checkpoints_load_as_torch_loads_them(
    version: int | None, strict: bool, tmp_path: Path
) -> None:
    state = _old_batchnorm_state(version)
    assert_like_torch(_conv_bn, state, tmp_path, strict=strict)
    _, ours, _ = differential(_conv_bn, state, tmp_path)
    for module, report in ours:
        assert report.ok and "1.num_batches_tracked" in report.matched
        assert int(module[1].num_batches_tracked) == 0  # its own value, as torch keeps it
        # torch's BatchNorm upgrade is applied on the fast path, not through load_state_dict
        assert not any("load_state_dict" in note for note in report.notes)
        assert any("predates them" in note for note in report.notes)


def test_a_current_checkpoint_without_the_counter_is_refused_as_torch_refuses(
    tmp_path: Path,
) -> None:
    state = _old_batchnorm_state(2)
    assert_both_refuse(_conv_bn, state, tmp_path, "num_batches_tracked")
    assert_like_torch(_conv_bn, state, tmp_path, strict=False)


def test_save_keeps_metadata_at_every_level_and_load_gives_it_back(tmp_path: Path) -> None:
    model = _conv_bn()
    path = tmp_path / "ckpt.safetensors"
    statevault.save({"model": model.state_dict(), "epoch": 3}, path)
    back = statevault.load(path)
    assert isinstance(back["model"], OrderedDict)
    assert back["model"]._metadata == model.state_dict()._metadata  # type: ignore[attr-defined]
    statevault.save(model, path)  # a module: its state_dict(), versions included
    assert statevault.load(path)._metadata == model.state_dict()._metadata


class Renamed(nn.Module):
    """A module whose version 2 renamed ``w`` to ``weight``, migrating old checkpoints."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3))
        self.seen: list[dict[str, Any]] = []

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        *args: Any,
    ) -> None:
        self.seen.append(dict(local_metadata))
        if local_metadata.get("version", 1) < 2 and prefix + "w" in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(prefix + "w")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def _with_renamed() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), Renamed())


def test_a_custom_override_gets_its_local_metadata_and_migrates(tmp_path: Path) -> None:
    state = _seeded(_with_renamed, 1).state_dict()
    state["1.w"] = state.pop("1.weight")
    state._metadata["1"]["version"] = 1  # type: ignore[attr-defined]
    assert_like_torch(_with_renamed, state, tmp_path)
    reference, ours, _ = differential(_with_renamed, state, tmp_path)
    for module, _ in ours:
        assert module[1].seen == reference[1].seen == [{"version": 1}]
    assert state._metadata["1"] == {"version": 1}  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", [1, 2])
def test_versions_saved_under_a_key_reach_the_modules_loaded_from_it(
    version: int, tmp_path: Path
) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save({"model": _old_batchnorm_state(version), "epoch": 3}, path)
    module = _seeded(_conv_bn, 2)
    if version == 1:
        assert statevault.load_into(module, path, prefix="model.").ok
    else:
        with pytest.raises(StateDictMismatchError, match="num_batches_tracked"):
            statevault.load_into(module, path, prefix="model.")


def test_a_custom_override_under_a_prefix_gets_its_version(tmp_path: Path) -> None:
    state = _seeded(_with_renamed, 1).state_dict()
    state["1.w"] = state.pop("1.weight")
    state._metadata["1"]["version"] = 1  # type: ignore[attr-defined]
    path = tmp_path / "ckpt.safetensors"
    statevault.save({"model": state}, path)
    module = _seeded(_with_renamed, 2)
    assert statevault.load_into(module, path, prefix="model.").ok
    assert module[1].seen == [{"version": 1}]
    assert torch.equal(module[1].weight, state["1.w"])


# -- 2. assign= ---------------------------------------------------------------------------


def _frozen_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net[0].bias.requires_grad_(False)
    return net


@pytest.mark.parametrize("source_kind", ["dict", "file"])
def test_assign_on_a_meta_model_then_an_optimizer(source_kind: str, tmp_path: Path) -> None:
    state = _seeded(_frozen_net, 1).state_dict()
    source: Any = state if source_kind == "dict" else _saved(state, tmp_path)

    def meta_net() -> nn.Module:
        with torch.device("meta"):
            return _frozen_net()

    reference, ours = meta_net(), meta_net()
    torch_result = reference.load_state_dict(state, assign=True)
    report = statevault.load_into(ours, source, assign=True)
    assert report.ok and report.missing_keys == torch_result.missing_keys
    assert_same_module(reference, ours)
    assert not any(t.is_meta for t in ours.state_dict().values())
    if source_kind == "file":  # fresh memory: not the caller's tensors
        assert ours[0].weight.data_ptr() != state["0.weight"].data_ptr()
    x = torch.randn(5, 3)
    for module in (reference, ours):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        module(x).sum().backward()
        optimizer.step()
    assert_same_module(reference, ours)
    assert torch.equal(ours[0].bias, state["0.bias"])  # frozen: not stepped


def test_assign_replaces_tensors_like_torch_and_check_still_works_on_meta(
    tmp_path: Path,
) -> None:
    state = _seeded(_frozen_net, 1).state_dict()
    assert_like_torch(_frozen_net, state, tmp_path, assign=True)
    module = _frozen_net()
    old = module[0].weight
    statevault.load_into(module, _saved(state, tmp_path), assign=True)
    assert module[0].weight is not old and isinstance(module[0].weight, nn.Parameter)
    with torch.device("meta"):
        meta = _frozen_net()
    assert statevault.check(meta, state).ok
    from statevault.errors import MetaDeviceError

    with pytest.raises(MetaDeviceError):  # without assign, still refused
        statevault.load_into(meta, state)


def test_load_model_takes_assign(tmp_path: Path) -> None:
    with torch.device("meta"):
        meta = nn.Linear(2, 2)
    state = nn.Linear(2, 2).state_dict()
    statevault.load_model(meta, _saved(state, tmp_path), assign=True)
    assert torch.equal(meta.weight, state["weight"]) and isinstance(meta.weight, nn.Parameter)


# -- 3. tensor-subclass parameters ---------------------------------------------------------


class PairTensor(torch.Tensor):
    """A minimal wrapper subclass (torch's TwoTensor pattern): no storage of its own."""

    a: torch.Tensor
    b: torch.Tensor

    @staticmethod
    def __new__(cls, a: torch.Tensor, b: torch.Tensor) -> PairTensor:
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined,no-any-return]
            cls,
            a.shape,
            strides=a.stride(),
            storage_offset=a.storage_offset(),
            dtype=a.dtype,
            device=a.device,
            requires_grad=a.requires_grad,
        )

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b

    def __tensor_flatten__(self) -> tuple[list[str], None]:
        return ["a", "b"], None

    @staticmethod
    def __tensor_unflatten__(
        inner: dict[str, torch.Tensor], meta: None, size: Any, stride: Any
    ) -> PairTensor:
        return PairTensor(inner["a"], inner["b"])

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out_a = func(*pytree.tree_map_only(PairTensor, lambda t: t.a, (args, kwargs))[0], **kwargs)
        out_b = func(*pytree.tree_map_only(PairTensor, lambda t: t.b, (args, kwargs))[0], **kwargs)
        flat_a, spec = pytree.tree_flatten(out_a)
        flat_b = pytree.tree_leaves(out_b)
        out = [
            PairTensor(x, y) if isinstance(x, torch.Tensor) else x
            for x, y in zip(flat_a, flat_b, strict=True)
        ]
        return return_and_correct_aliasing(func, args, kwargs, pytree.tree_unflatten(out, spec))


def _paired() -> nn.Module:
    module = nn.Linear(3, 2)
    weight = module.weight.detach()
    module.weight = nn.Parameter(PairTensor(weight.clone(), weight.clone()))
    return module


def test_wrapper_subclass_parameters_load_like_torch(tmp_path: Path) -> None:
    state = _seeded(lambda: nn.Linear(3, 2), 1).state_dict()
    assert _seeded(_paired, 2).weight.data_ptr() == 0  # nothing to read into directly
    assert_like_torch(_paired, state, tmp_path)
    _, ours, _ = differential(_paired, state, tmp_path)
    for module, report in ours:
        assert isinstance(module.weight, PairTensor) and report.ok
        assert torch.equal(module.weight.a, state["weight"])
        assert torch.equal(module.weight.b, state["weight"])


def test_swap_tensors_mode_is_honoured_for_subclasses(tmp_path: Path) -> None:
    state = _seeded(lambda: nn.Linear(3, 2), 1).state_dict()
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        assert_like_torch(_paired, state, tmp_path)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


# -- 4. load state dict hooks ---------------------------------------------------------------


def _forgiving() -> nn.Module:
    module = nn.Linear(2, 2)

    def forgive(mod: nn.Module, incompatible: Any) -> None:
        incompatible.unexpected_keys[:] = [
            k for k in incompatible.unexpected_keys if not k.startswith("legacy")
        ]

    module.register_load_state_dict_post_hook(forgive)
    return module


def test_a_post_hook_forgives_keys_before_the_strict_verdict(tmp_path: Path) -> None:
    state = dict(_seeded(lambda: nn.Linear(2, 2), 1).state_dict())
    state["legacy_scale"] = torch.ones(1)
    assert_like_torch(_forgiving, state, tmp_path)
    state["other"] = torch.ones(1)  # not forgiven: both refuse
    assert_both_refuse(_forgiving, state, tmp_path, "other")


def _renaming() -> nn.Module:
    module = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))

    def rename(mod: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
        for key in [k for k in state if k.startswith(prefix + "old_")]:
            state[prefix + key[len(prefix) + 4 :]] = state.pop(key)

    module[1].register_load_state_dict_pre_hook(rename)
    return module


@pytest.mark.parametrize("strict", [True, False])
def test_a_pre_hook_edits_what_is_loaded(strict: bool, tmp_path: Path) -> None:
    state = dict(_seeded(_renaming, 1).state_dict())
    state["1.old_bias"] = state.pop("1.bias")
    assert_like_torch(_renaming, state, tmp_path, strict=strict)


def test_modules_without_hooks_are_refused_before_any_weight_is_touched(
    tmp_path: Path,
) -> None:
    state = dict(_seeded(lambda: nn.Linear(2, 2), 1).state_dict(), extra=torch.ones(1))
    module = _seeded(lambda: nn.Linear(2, 2), 2)
    before = module.weight.clone()
    with pytest.raises(StateDictMismatchError, match="extra"):
        statevault.load_into(module, _saved(state, tmp_path))
    assert torch.equal(module.weight, before)


# -- shared and tied parameters, buffers, strict both ways ----------------------------------


class TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.randn(3))
        self.register_buffer("cache", torch.zeros(2), persistent=False)


def _shared_module() -> nn.Module:
    shared = nn.Linear(2, 2)
    return nn.Sequential(shared, nn.ReLU(), shared)  # one module under two names


@pytest.mark.parametrize("strict", [True, False])
def test_a_module_shared_under_two_names_loads_like_torch(strict: bool, tmp_path: Path) -> None:
    state = _seeded(_shared_module, 1).state_dict()
    assert_like_torch(_shared_module, state, tmp_path, strict=strict)
    separate = dict(state, **{"2.weight": torch.full((2, 2), 3.0)})  # the later key wins
    assert_like_torch(_shared_module, separate, tmp_path, strict=strict)


@pytest.mark.parametrize("strict", [True, False])
def test_tied_parameters_and_buffers_load_like_torch(strict: bool, tmp_path: Path) -> None:
    state = _seeded(TiedNet, 1).state_dict()
    assert_like_torch(TiedNet, state, tmp_path, strict=strict)


def test_missing_and_unexpected_keys_match_torch_without_strict(tmp_path: Path) -> None:
    state = dict(_seeded(TiedNet, 1).state_dict())
    del state["scale"]
    state["stray"] = torch.ones(2)
    assert_like_torch(TiedNet, state, tmp_path, strict=False)
    assert_both_refuse(TiedNet, state, tmp_path, "scale")


def test_a_tied_key_absent_from_the_file_is_filled_deliberately(tmp_path: Path) -> None:
    """A listed difference: torch reports head.weight missing (the tie fills it anyway)."""
    state = dict(_seeded(TiedNet, 1).state_dict())
    del state["head.weight"]
    reference, ours, result = differential(TiedNet, state, tmp_path, strict=False)
    assert result.missing_keys == ["head.weight"]
    for module, report in ours:
        assert_same_module(reference, module)
        assert report.missing_keys == [] and report.ok


def test_shape_mismatch_without_strict_keeps_the_module_deliberately(tmp_path: Path) -> None:
    """A listed difference: torch raises on a size mismatch even with strict=False."""
    state = dict(_seeded(lambda: nn.Linear(2, 3), 1).state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        nn.Linear(2, 2).load_state_dict(state, strict=False)
    module = _seeded(lambda: nn.Linear(2, 2), 2)
    before = module.weight.clone()
    report = statevault.load_into(module, _saved(state, tmp_path), strict=False)
    assert [m.key for m in report.shape_mismatches] == ["weight", "bias"]
    assert torch.equal(module.weight, before)


# -- 6. a value that is not a tensor -----------------------------------------------------------


def test_a_non_tensor_under_a_parameters_key_is_named_with_its_type(tmp_path: Path) -> None:
    state = {"weight": (1, 2), "bias": torch.zeros(2)}
    with pytest.raises(RuntimeError, match="received <class 'tuple'>"):
        nn.Linear(2, 2).load_state_dict(state, strict=False)
    path = tmp_path / "tuple.safetensors"
    statevault.save(state, path)
    for strict in (True, False):
        with pytest.raises(UnsupportedObjectError, match="'weight' holds a tuple"):
            statevault.load_into(nn.Linear(2, 2), path, strict=strict)
    with pytest.raises(UnsupportedObjectError, match="'weight' holds a tuple"):
        statevault.load_into(nn.Linear(2, 2), state)


@pytest.fixture
def one_rank_group() -> Any:
    """A real one-rank gloo process group, destroyed after the test."""
    import socket

    import torch.distributed as dist

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_dtensor_parameter_gets_torchs_outcome_not_a_raw_write(
    one_rank_group: Any, tmp_path: Path
) -> None:
    """torch refuses to copy a plain tensor into a DTensor; so does load_into (no Bad address)."""
    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor

    mesh = DeviceMesh("cpu", [0])

    def sharded() -> nn.Module:
        module = _seeded(lambda: nn.Linear(3, 2), 2)
        module.weight = nn.Parameter(distribute_tensor(module.weight.detach(), mesh, [Shard(0)]))
        return module

    state = _seeded(lambda: nn.Linear(3, 2), 1).state_dict()
    with pytest.raises(RuntimeError, match=r"mixed torch\.Tensor and DTensor") as by_torch:
        sharded().load_state_dict(state)
    for source in (state, _saved(state, tmp_path)):
        module = sharded()
        before = module.weight.full_tensor().clone()
        with pytest.raises(RuntimeError, match=r"mixed torch\.Tensor and DTensor") as ours:
            statevault.load_into(module, source)
        assert str(ours.value) == str(by_torch.value)
        assert torch.equal(module.weight.full_tensor(), before)


def test_the_torch_path_is_linear_in_the_number_of_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch filters the whole dict once per child (quadratic for a ModuleList); we split it.

    Counts the keys each module's split looks at: 4 per Linear (its 2 keys at the root's split
    and its own), however many layers there are.
    """
    from statevault.loading import state_dict_load

    looked_at = [0]
    split = state_dict_load._by_child

    def counting(local: Any, prefix: str, children: Any) -> Any:
        looked_at[0] += len(local)
        return split(local, prefix, children)

    monkeypatch.setattr(state_dict_load, "_by_child", counting)
    for layers in (100, 400):
        looked_at[0] = 0
        model = nn.ModuleList([nn.Linear(2, 2) for _ in range(layers)])
        model.register_load_state_dict_post_hook(lambda module, keys: None)
        report = statevault.load_into(model, model.state_dict())
        assert report.ok and "load_state_dict" in report.notes[-1]
        assert looked_at[0] == 4 * layers
