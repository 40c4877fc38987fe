"""The global model in a Flower train message: one flat Array per dtype instead of one per tensor.

Flower stores and sends each Array of an ArrayRecord as an object of its own, pulled
with one request each way per SuperNode. SqueezeNet's or the CIFAR CNN's state dict
made 20-50 objects per message, and with 10 SuperNodes on one machine those requests,
not the bytes, kept the SuperLink busy. The values and their order are the state
dict's; the receiver knows the names and shapes from its own copy of the model.
"""
from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from ..core.errors import FLError


def pack_global(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """`state` as one flat Array per dtype (named by it), the tensors in the state dict's order."""
    groups: dict[str, list[torch.Tensor]] = {}
    for v in state.values():
        groups.setdefault(str(v.dtype).removeprefix("torch."), []).append(v.detach().reshape(-1).cpu())
    return ArrayRecord({dtype: torch.cat(parts) for dtype, parts in groups.items()})


def unpack_global(record: ArrayRecord, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`pack_global`'s inverse: the state dict with `like`'s names, shapes, dtypes and device."""
    flats = {dtype: torch.from_numpy(np.array(arr.numpy())) for dtype, arr in record.items()}  # a writable copy
    offsets = dict.fromkeys(flats, 0)
    state = {}
    for name, v in like.items():
        dtype = str(v.dtype).removeprefix("torch.")
        flat, start = flats.get(dtype), offsets.get(dtype, 0)
        if flat is None or start + v.numel() > flat.numel():
            raise FLError(f"the global model in the message does not fit this client's model at {name!r} "
                          f"({dtype}, {tuple(v.shape)})")
        state[name] = flat[start:start + v.numel()].view(v.shape).to(device=v.device, dtype=v.dtype)
        offsets[dtype] = start + v.numel()
    if any(offsets[d] != flats[d].numel() for d in flats):
        raise FLError("the global model in the message has more values than this client's model")
    return state
