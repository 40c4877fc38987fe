"""The global model in Flower train messages (fl_lib/runtime/flower_model.py): exact, compact, checked."""
import pytest
import torch

pytest.importorskip("flwr")

from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects  # noqa: E402
from flwr.app import ArrayRecord  # noqa: E402

from fl_lib.core.errors import FLError  # noqa: E402
from fl_lib.runtime.flower_model import pack_global, unpack_global  # noqa: E402


def _state():
    """Float weights, a BatchNorm's int64 counter and a 0-d tensor: the dtypes and shapes a state dict has."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    net[1].num_batches_tracked += 7
    return {**net.state_dict(), "scale": torch.tensor(0.5)}


def test_the_model_comes_back_bit_for_bit():
    state = _state()
    back = unpack_global(pack_global(state), {n: torch.zeros_like(v) for n, v in state.items()})
    assert list(back) == list(state)
    for name, v in state.items():
        assert back[name].dtype == v.dtype and back[name].shape == v.shape and torch.equal(back[name], v), name


def test_one_array_per_dtype_fewer_objects_than_one_per_tensor():
    state = _state()
    packed = pack_global(state)
    assert sorted(packed) == ["float32", "int64"]
    per_tensor = ArrayRecord({n: v for n, v in state.items()})
    # the record, and each Array with its one chunk (Flower splits Arrays of more than 5 MB only); one Array per
    # tensor is 17 objects here (equal chunks are stored once), 21 for the CIFAR CNN, 5 or 3 packed
    assert len(get_all_nested_objects(packed)) == 1 + 2 * 2 < len(get_all_nested_objects(per_tensor)) == 17


def test_a_model_that_does_not_fit_is_refused():
    state = _state()
    packed = pack_global(state)
    smaller = {n: torch.zeros_like(v) for n, v in list(state.items())[:-1]}
    with pytest.raises(FLError, match="more values than this client's model"):
        unpack_global(packed, smaller)
    bigger = {**state, "extra": torch.zeros(3)}
    with pytest.raises(FLError, match="does not fit this client's model at 'extra'"):
        unpack_global(packed, bigger)
    with pytest.raises(FLError, match="float64"):
        unpack_global(packed, {**state, "scale": torch.tensor(0.5, dtype=torch.float64)})
