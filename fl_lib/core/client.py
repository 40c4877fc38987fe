"""What one client does locally: the minibatches it draws and the precision it trains in.

Both trainers (clients one by one in `fedavg.py`, all at once in `batched.py`)
draw a client's batches from `client_batches`, so a client sees the same batch
order and augmentation whichever trainer runs it.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .data import get_batch


def autocast(precision: str, device: torch.device):
    """bf16 autocast when precision == 'bf16', else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def batch_inputs(data, idx, *, train: bool, augment: bool, channels_last: bool, generator=None):
    """Images and labels at `idx`, normalized (and augmented when training), in the model's memory format."""
    x, y = get_batch(data, idx, train=train, augment=augment and data.augment, generator=generator)
    if channels_last and x.dim() == 4:  # text batches are (B, L) ids
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def num_targets(y) -> int:
    """Targets that count in a batch's loss: every label, or every character but the padding of text."""
    return len(y) if y.dim() == 1 else int((y != -100).sum())  # -100: F.cross_entropy's ignore_index


CONFIG_B = object()  # client_batches' default batch size: the config's B


def client_batches(data, idx, cfg, generator: torch.Generator, channels_last: bool, epochs: int | None = None,
                   batch_size=CONFIG_B):
    """A client's minibatches (x, y) for one round: E epochs, each a fresh permutation of its data.

    `generator` is the client's `Stream.BATCHES` generator of the round; it draws
    both the permutations and the augmentation, in this order. `epochs`: the round's
    E_t under an epoch schedule (core/schedule.py); None: cfg.local_epochs.
    `batch_size`: the round's B_t under a batch schedule (None: the whole data); default cfg.batch_size.
    """
    n = len(idx)
    bs = (cfg.batch_size if batch_size is CONFIG_B else batch_size) or n
    for _ in range(cfg.local_epochs if epochs is None else epochs):
        order = idx[torch.randperm(n, generator=generator).to(idx.device)]
        for start in range(0, n, bs):
            yield batch_inputs(data, order[start:start + bs], train=True, augment=cfg.augment,
                               channels_last=channels_last, generator=generator)


def num_steps(n: int, batch_size: int | None, local_epochs: int) -> int:
    """Local SGD steps of a client holding n samples: E * ceil(n / B)."""
    bs = batch_size or n
    return local_epochs * -(-n // bs)


def all_finite(loss, state) -> bool:
    """Whether a client's loss and every float tensor it would send are finite (it did not diverge)."""
    # min and max propagate nan and are +-inf if any value is: one pass each, ~10x faster than isfinite()
    ends = [torch.stack(torch.aminmax(v)) for v in state.values() if v.is_floating_point() and v.numel()]
    return bool(torch.isfinite(torch.cat([loss.reshape(-1).float()] + [e.float() for e in ends])).all())
