"""Seeded random streams: every random draw of a run comes from one of these.

A draw is named by (seed, round t, party, stream). The party is a client k (key
k + 1) or the server (key 0), and the stream says what the draw is for, so two
runs that differ in one feature (the codec, the link model, DP) share every
other draw, and a resumed run repeats an uninterrupted one exactly. Round 0 is
"once per run" (for example a client's link speed before its per-round jitter).
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

SERVER = -1  # the party key of server-side draws (client k has key k + 1, the server 0)


class Stream(IntEnum):
    """What a generator's draws are for; the values are part of every run's numbers, never change them."""

    BATCHES = 0  # batch order and augmentation of local training
    ROUNDING = 1  # stochastic rounding in the quantizer
    DROPOUT = 2  # dropout masks (torch's global generator is seeded from it)
    LINK = 3  # link bandwidths, latency and compute speed
    DP_NOISE = 4  # differential-privacy noise added by the server
    SECAGG = 5  # secure-aggregation masks and shares
    DISPATCH = 6  # fedbuff: which idle clients start the next jobs
    SAMPLING = 7  # DP with Poisson sampling: which clients join a round (the fixed-size draw keeps its own key)


def seed_for(*keys: int) -> int:
    """A 63-bit seed derived from integers, independent for every distinct key tuple."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def stream_seed(seed: int, t: int, party: int, stream: Stream, *extra: int) -> int:
    """The seed of `stream` for `party` (a client index, or SERVER) in round t.

    `extra` keys tell apart several draws of one party in one round (fedbuff: a
    client's second job from the same global model); without them the key is the
    synchronous engine's.
    """
    return seed_for(seed, t, party + 1, int(stream), *extra)


def torch_generator(seed: int, t: int, party: int, stream: Stream, *extra: int, device="cpu") -> torch.Generator:
    """A torch.Generator for `stream` of `party` in round t."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, t, party, stream, *extra))


def numpy_generator(seed: int, t: int, party: int, stream: Stream, *extra: int) -> np.random.Generator:
    """A numpy Generator for `stream` of `party` in round t."""
    return np.random.default_rng(stream_seed(seed, t, party, stream, *extra))


def sampling_generator(seed: int, t: int) -> np.random.Generator:
    """The server's draw of round t's clients (kept on its historical key (seed, t, 0))."""
    return np.random.default_rng(seed_for(seed, t, 0))
