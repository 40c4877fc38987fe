"""Client links and devices: a simulated clock for federated rounds.

Each client k has an uplink and a downlink bandwidth, a latency and a compute
speed. They are drawn once per run (round t = 0 of the LINK stream, see rng.py)
from a named `Profile`, log-normally around the profile's medians:

    x_k = median * exp(sigma * z_k),          z_k ~ N(0, 1)        (base draw, t = 0)

and the bandwidths vary from round to round by a multiplicative factor:

    x_k(t) = x_k * exp(jitter * z_k(t)),      z_k(t) ~ N(0, 1)     (t >= 1)

A client's time in a round (`client_seconds`) is

    T_k = D / down_k + n_k E F / speed_k + U_k / up_k + latency_k

with D the broadcast bytes, U_k its encoded upload bytes, n_k its samples, E the
local epochs, F the training FLOPs per sample (`train_flops_per_sample`) and
speed_k its FLOP/s. A synchronous round lasts max_k T_k over the clients the
server waits for (`sync_round`). Nothing here measures this machine, so every
time is a deterministic function of (config, seed): metrics stay reproducible.

Under secure aggregation (Bonawitz et al. 2017, secagg.py) a client of a round
with n sampled clients sends its masked upload M_k (`secagg.masked_upload_bytes`:
the masked vector at the modulus's k bits per value, its public key and the
3n - 2 Shamir shares it sends), receives besides the model the other n - 1
public keys and the 2(n - 1) shares addressed to it (`secagg.received_bytes`),
and waits one round trip in each of the protocol's four message rounds
(advertise keys, share keys, masked input collection, unmasking):

    T_k = (D + (n - 1)(P + 2 S)) / down_k + n_k E F / speed_k + M_k / up_k + 4 latency_k

with P = 32 B (an X25519 public key) and S = 71 B (one share). The protocol's
rounds are barriers: the server forwards keys and shares once everyone's are in.
Charging each client its own four rounds, as T_k does, equals the barrier's
sum over rounds of the slowest client's time in them whenever the clients' key
and share messages take equally long, and otherwise falls short by at most
their spread between clients (those messages hold n - 1 keys and shares, about
2 kB for 10 clients, against the model's hundreds of kB).

With bits_policy="adaptive" each client uploads at the widest width that fits
the round's budget: the deadline, or without one the slowest client's time at
the widest width whose upload does not dominate its own time (u_k(b) <= R_k,
R_k its download, compute and latency; see "adaptive bit widths" below for the
equations and why). A client slow to compute keeps wide uploads; only uploads
that are what makes a client slow are narrowed, down to `min_bits`.

Where the numbers come from (each is repeated next to its constant below):

- `mobile`: Ookla Speedtest Global Index, United States mobile, Q3 2022: median
  download / upload 68.34 / 8.56 Mbit/s, mean 141.54 / 15.48 Mbit/s (as quoted by
  the Free State Foundation, "Ookla Report Shows U.S. Progress in 5G Mobile
  Wireless Speeds", 27 Oct 2022). Latency: Ookla Global Index, U.S. mobile,
  December 2022, median 31 ms. The spread sigma follows from mean / median =
  exp(sigma^2 / 2) for a log-normal. Compute: Das et al. 2022, "Enabling
  On-Device Smartphone GPU based Training: Lessons Learned" (arXiv 2202.10100):
  CPU training at 15-30 GFLOP/s on Snapdragon 8-series phones.
- `iot`: NB-IoT (3GPP Rel-13, Cat-NB1). Anritsu, "Determining Peak Data Rates for
  NB-IoT": peak rates ~250 kbit/s up and ~200 kbit/s down, and the rate a device
  sustains "more likely a factor of 10 less". Latency 837 ms measured on a live
  NB-IoT network (Ugwuanyi, Paul & Irvine, Electronics 10(18):2224, 2021).
  Compute: a Raspberry Pi 4 at ~8 GFLOP/s in High Performance Linpack
  (Feiereisen, "Benchmarking the Raspberry Pi 4 with Raspberry Pi OS64", 2022).
- Device-speed spread (both profiles): FedScale (Lai et al. 2022) draws a device's
  slowdown from LogNormal(1, 0.6) (`ClientMetadata.get_completion_time_lognormal`,
  after PAPAYA, Huba et al. 2022), so sigma = 0.6.
"""
from __future__ import annotations

import copy
import heapq
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import ConfigError
from .rng import Stream, numpy_generator

MBIT = 1e6  # bits per second in one Mbit/s
WIDTHS = tuple(range(16, 1, -1))  # adaptive bit widths, widest first: 16, 15, ..., 2
MAX_SIGMA = 3.0  # the widest spread the custom form accepts: exp(3) ~ 20x per standard deviation


def sigma_from_mean_median(mean: float, median: float) -> float:
    """The log-normal sigma with this mean and median: mean / median = exp(sigma^2 / 2)."""
    return math.sqrt(2.0 * math.log(mean / median))


@dataclass(frozen=True)
class Profile:
    """Medians and log-normal spreads of one population of clients; `source` cites the numbers."""

    name: str
    up_mbps: float  # median uplink, Mbit/s
    up_sigma: float  # log-normal sigma of the uplink across clients
    down_mbps: float  # median downlink, Mbit/s
    down_sigma: float  # log-normal sigma of the downlink across clients
    latency_s: float  # median round-trip latency, s, added once per round
    latency_sigma: float  # log-normal sigma of the latency across clients
    flops_per_s: float  # median training speed, FLOP/s
    flops_sigma: float  # log-normal sigma of the training speed across clients
    jitter_sigma: float  # per-round log-normal sigma of each bandwidth (t >= 1)
    source: str  # where the numbers come from


# -- mobile ------------------------------------------------------------------
# Ookla Speedtest Global Index, U.S. mobile, Q3 2022 (Free State Foundation,
# 27 Oct 2022: "median download/upload speeds ... 68.34 Mbps/8.56 Mbps and the
# mean speeds were 141.54 Mbps/15.48 Mbps").
_OOKLA_UP_MEDIAN, _OOKLA_UP_MEAN = 8.56, 15.48
_OOKLA_DOWN_MEDIAN, _OOKLA_DOWN_MEAN = 68.34, 141.54
# Spread of single speed tests: sqrt(2 ln(15.48 / 8.56)) = sqrt(2 * 0.5924) = 1.0885 (uplink),
# sqrt(2 ln(141.54 / 68.34)) = sqrt(2 * 0.7281) = 1.2067 (downlink).
_UP_SIGMA_TESTS = sigma_from_mean_median(_OOKLA_UP_MEAN, _OOKLA_UP_MEDIAN)
_DOWN_SIGMA_TESTS = sigma_from_mean_median(_OOKLA_DOWN_MEAN, _OOKLA_DOWN_MEDIAN)
# A speed test's spread mixes differences between devices with changes over time;
# Ookla does not publish the split. Assumption (ours, not a measurement): half of
# the uplink log-variance is between clients, half from round to round:
# jitter = 1.0885 / sqrt(2) = 0.7697, client uplink sigma = 0.7697, and the
# downlink keeps the rest of its own variance: sqrt(1.2067^2 - 0.7697^2) = 0.9294.
_JITTER = _UP_SIGMA_TESTS / math.sqrt(2.0)
_UP_SIGMA = math.sqrt(_UP_SIGMA_TESTS**2 - _JITTER**2)
_DOWN_SIGMA = math.sqrt(_DOWN_SIGMA_TESTS**2 - _JITTER**2)
_MOBILE_LATENCY_S = 0.031  # Ookla Global Index, U.S. mobile, Dec 2022: median 31 ms
# Das et al. 2022 (arXiv 2202.10100): on-device training on phone CPUs at 15-30
# GFLOP/s (Snapdragon 8 series); median = geometric middle sqrt(15 * 30) = 21.2 GFLOP/s.
_PHONE_FLOPS = math.sqrt(15e9 * 30e9)
# FedScale (Lai et al. 2022), ClientMetadata.get_completion_time_lognormal: device
# speed ~ LogNormal(1, tail_skew = 0.6), after PAPAYA (Huba et al. 2022).
_DEVICE_SIGMA = 0.6
_DOWN_UP_RATIO = _OOKLA_DOWN_MEDIAN / _OOKLA_UP_MEDIAN  # 7.98, used by lognormal:M,S

MOBILE = Profile(
    name="mobile",
    up_mbps=_OOKLA_UP_MEDIAN,
    up_sigma=_UP_SIGMA,
    down_mbps=_OOKLA_DOWN_MEDIAN,
    down_sigma=_DOWN_SIGMA,
    latency_s=_MOBILE_LATENCY_S,
    latency_sigma=0.0,  # no per-client latency spread published; 31 ms is << a round here
    flops_per_s=_PHONE_FLOPS,
    flops_sigma=_DEVICE_SIGMA,
    jitter_sigma=_JITTER,
    source=(
        "Ookla Speedtest Global Index, U.S. mobile Q3 2022 (median 8.56/68.34 Mbit/s up/down, "
        "mean 15.48/141.54; sigma from mean/median), Dec 2022 latency 31 ms; compute: Das et al. "
        "2022 (arXiv 2202.10100) phone-CPU training 15-30 GFLOP/s; device spread: FedScale "
        "LogNormal(1, 0.6)"
    ),
)

# -- iot -----------------------------------------------------------------------
# NB-IoT Cat-NB1. Anritsu, "Determining Peak Data Rates for NB-IoT": "peak rates in
# the range of 200kbps in the downlink direction and 250 kbps for the uplink ...
# the data rate is more likely to be a factor of 10 less than these peak rates".
_NBIOT_UP_MBPS = 0.250 / 10  # 25 kbit/s
_NBIOT_DOWN_MBPS = 0.200 / 10  # 20 kbit/s
_NBIOT_LATENCY_S = 0.837  # Ugwuanyi, Paul & Irvine, Electronics 10(18):2224 (2021): 837 ms measured
# Raspberry Pi 4 (4 cores, 64-bit OS): ~8 GFLOP/s in High Performance Linpack
# (Feiereisen 2022). HPL is dense FP64; we take it as the device's training rate.
_PI4_FLOPS = 8e9

IOT = Profile(
    name="iot",
    up_mbps=_NBIOT_UP_MBPS,
    # No per-device NB-IoT throughput spread is published that we found; we use the
    # mobile spreads (same cellular radio causes: distance, load, indoor loss).
    up_sigma=_UP_SIGMA,
    down_mbps=_NBIOT_DOWN_MBPS,
    down_sigma=_DOWN_SIGMA,
    latency_s=_NBIOT_LATENCY_S,
    latency_sigma=0.0,
    flops_per_s=_PI4_FLOPS,
    flops_sigma=_DEVICE_SIGMA,
    jitter_sigma=_JITTER,
    source=(
        "NB-IoT Cat-NB1: Anritsu peak 250/200 kbit/s up/down, sustained ~1/10 of peak; latency "
        "837 ms measured (Ugwuanyi et al., Electronics 2021); compute: Raspberry Pi 4 HPL ~8 "
        "GFLOP/s (Feiereisen 2022); spreads as mobile"
    ),
)

PROFILES: dict[str, Profile] = {"mobile": MOBILE, "iot": IOT}
LINK_NAMES = ("none",) + tuple(PROFILES)  # the named choices of the `link` field
LINK_OPEN_CHOICE = "lognormal:MEDIAN_MBITS,SIGMA with MEDIAN_MBITS > 0 and SIGMA in [0, 3]"


def _bad_link(spec) -> ConfigError:
    allowed = ", ".join(LINK_NAMES)
    return ConfigError(f"link={spec!r} is not allowed: must be one of {allowed}, or {LINK_OPEN_CHOICE}")


def lognormal_profile(median_mbps: float, sigma: float) -> Profile:
    """The custom form: uplink median and spread given; everything else fixed.

    Downlink = uplink x 7.98 (the ratio of Ookla's U.S. mobile medians, 68.34 / 8.56)
    with the same sigma; latency and compute are the mobile medians; compute has no
    spread and bandwidths no per-round jitter, so `lognormal:M,0` is a homogeneous
    federation whose clients are identical.
    """
    return Profile(
        name=f"lognormal:{median_mbps:g},{sigma:g}",
        up_mbps=median_mbps,
        up_sigma=sigma,
        down_mbps=median_mbps * _DOWN_UP_RATIO,
        down_sigma=sigma,
        latency_s=_MOBILE_LATENCY_S,
        latency_sigma=0.0,
        flops_per_s=_PHONE_FLOPS,
        flops_sigma=0.0,
        jitter_sigma=0.0,
        source="custom log-normal uplink; downlink x 7.98, latency and compute as mobile (Ookla, Das et al.)",
    )


def parse_link(spec) -> Profile | None:
    """'none' -> None (no clock), 'mobile' / 'iot' -> their Profile, 'lognormal:M,S' -> custom; else ConfigError."""
    if not isinstance(spec, str):
        raise _bad_link(spec)
    if spec == "none":
        return None
    if spec in PROFILES:
        return PROFILES[spec]
    if not spec.startswith("lognormal:"):
        raise _bad_link(spec)
    parts = spec[len("lognormal:"):].split(",")
    if len(parts) != 2:
        raise _bad_link(spec)
    try:
        median, sigma = float(parts[0]), float(parts[1])
    except ValueError:
        raise _bad_link(spec) from None
    if not (math.isfinite(median) and median > 0 and math.isfinite(sigma) and 0 <= sigma <= MAX_SIGMA):
        raise _bad_link(spec)
    return lognormal_profile(median, sigma)


def check_link(spec) -> None:
    """Raise ConfigError (one line naming `link`) unless `spec` is a valid link; for config RULES."""
    parse_link(spec)


# -- per-client state ----------------------------------------------------------


@dataclass(frozen=True)
class LinkState:
    """One client's link and device in one round."""

    up_bps: float  # uplink, bit/s
    down_bps: float  # downlink, bit/s
    latency_s: float  # round-trip latency, s
    flops_per_s: float  # training speed, FLOP/s


class Links:
    """The clients' links for one run: base draws (t = 0) times per-round jitter (t >= 1).

    Every draw comes from numpy_generator(seed, t, k, Stream.LINK), so two runs with
    the same seed share their links whatever else differs, and a client's base link
    does not depend on which rounds were asked for, or in what order.
    """

    def __init__(self, profile: Profile, num_clients: int, seed: int):
        self.profile, self.num_clients, self.seed = profile, num_clients, seed
        self._base: dict[int, LinkState] = {}

    def _check(self, t: int, k: int) -> None:
        if not 0 <= k < self.num_clients:
            raise IndexError(f"client {k} out of range 0..{self.num_clients - 1}")
        if t < 0:
            raise ValueError(f"round t={t} must be >= 0")

    def base(self, k: int) -> LinkState:
        """Client k's once-per-run link (round 0 of its LINK stream)."""
        self._check(0, k)
        if k not in self._base:
            p = self.profile
            # four draws always, in this order, whatever the sigmas: profiles share z_k
            z = numpy_generator(self.seed, 0, k, Stream.LINK).standard_normal(4)
            self._base[k] = LinkState(
                up_bps=p.up_mbps * MBIT * math.exp(p.up_sigma * z[0]),
                down_bps=p.down_mbps * MBIT * math.exp(p.down_sigma * z[1]),
                latency_s=p.latency_s * math.exp(p.latency_sigma * z[2]),
                flops_per_s=p.flops_per_s * math.exp(p.flops_sigma * z[3]),
            )
        return self._base[k]

    def state(self, t: int, k: int) -> LinkState:
        """Client k in round t: its base link with both bandwidths jittered (t >= 1; t = 0 is the base)."""
        self._check(t, k)
        b = self.base(k)
        if t == 0:
            return b
        z = numpy_generator(self.seed, t, k, Stream.LINK).standard_normal(2)
        j = self.profile.jitter_sigma
        return LinkState(
            up_bps=b.up_bps * math.exp(j * z[0]),
            down_bps=b.down_bps * math.exp(j * z[1]),
            latency_s=b.latency_s,  # latency and compute speed are per client, not per round
            flops_per_s=b.flops_per_s,
        )


# -- time ----------------------------------------------------------------------


def transfer_seconds(num_bytes: int, bits_per_second: float) -> float:
    """Seconds to move num_bytes at bits_per_second: 8 num_bytes / bps."""
    return 8.0 * num_bytes / bits_per_second


@dataclass(frozen=True)
class ClientTime:
    """One client's round, in seconds; total = download + compute + upload + latency."""

    download: float
    compute: float
    upload: float
    latency: float
    total: float


def client_seconds(state: LinkState, download_bytes: int, upload_bytes: int, num_samples: int,
                   local_epochs: int, flops_per_sample: float, round_trips: int = 1) -> ClientTime:
    """T_k = D / down_k + n_k E F / speed_k + U_k / up_k + r latency_k; r round trips (secure aggregation: 4)."""
    download = transfer_seconds(download_bytes, state.down_bps)
    compute = num_samples * local_epochs * flops_per_sample / state.flops_per_s
    upload = transfer_seconds(upload_bytes, state.up_bps)
    latency = round_trips * state.latency_s
    return ClientTime(download, compute, upload, latency, download + compute + upload + latency)


# Bonawitz et al. 2017, section 4: AdvertiseKeys, ShareKeys, MaskedInputCollection, Unmasking (the
# ConsistencyCheck round exists only against an active server, which secagg.py does not simulate)
SECAGG_ROUND_TRIPS = 4


def _total(x) -> float:
    return x.total if isinstance(x, ClientTime) else float(x)


def sync_round(times: Sequence[ClientTime | float], deadline: float = 0.0) -> tuple[float, list[bool]]:
    """(duration, kept) of a synchronous round over the sampled clients' times.

    deadline <= 0: every client is kept and the round lasts the slowest total.
    deadline > 0: clients with total > deadline are dropped; the round lasts
    `deadline` if any was dropped (the server waited until then), else the slowest
    kept total. If every client is dropped the round still lasts `deadline` and
    nothing is aggregated (kept is all False). No clients: (0.0, []).
    """
    totals = [_total(x) for x in times]
    if deadline <= 0:
        return (max(totals) if totals else 0.0), [True] * len(totals)
    kept = [x <= deadline for x in totals]
    if not all(kept):
        return float(deadline), kept
    return (max(totals) if totals else 0.0), kept


# -- adaptive bit widths ---------------------------------------------------------
#
# bits_policy="adaptive" gives client k of round t a width b_k from W = {min_bits, ..., min(bits, 16)}
# (`adaptive_widths`). With R_k = D / down_k + n_k E F / speed_k + latency_k, the part of T_k that
# does not depend on the width, and u_k(b) = U(b) / up_k its upload:
#
#     b_k^own = max{b in W : u_k(b) <= R_k}   (min W if none)       the widest upload that does not
#                                                                     dominate the client's own time
#     tau     = deadline, or without one  max_k T_k(b_k^own)          the round's budget
#     b_k     = max{b in W : R_k + u_k(b) <= tau}   (none: a straggler, dropped; only with a deadline)
#
# Why. The round lasts max_k T_k, so narrowing an upload saves time only where that upload is what
# makes its client slow. A client slow to compute or to download (u_k(16) <= R_k) keeps the widest
# width even if it is the slowest client; a client whose upload dominates is narrowed until it no
# longer does, or to min_bits. Every client then fits: b_k >= b_k^own, so without a deadline nobody
# is dropped, and
#
#     max_k T_k(min W) <= tau <= max_k T_k(max W),   tau <= max(max_k T_k(min W), 2 max_k R_k)
#
# the round is never longer than at the widest allowed fixed width, never shorter than at the
# narrowest, and never longer than the larger of that narrowest round and twice the slowest
# client's work without its upload. (The budget before, the slowest client's time at 2 bits,
# pinned that client to 2 bits in every round even when its compute, not its upload, made it the
# slowest.) "Dominates" means more than half the client's time: a choice, not a law; a smaller
# share would narrow more uploads and shorten rounds, at the price of width where it may not pay.
# `Federation.plan` and FedBuff's `_bits` both use this rule.


def adaptive_widths(bits: int, min_bits: int = 2) -> tuple[int, ...]:
    """The widths the adaptive policy may give, widest first: min(bits, 16) down to min_bits (32 counts as 16)."""
    widths = tuple(b for b in WIDTHS if min_bits <= b <= min(bits, max(WIDTHS)))
    if not widths:
        raise ConfigError(f"min_bits={min_bits} is not allowed with bits={bits}: the adaptive policy needs "
                          f"min_bits in 2..{min(bits, max(WIDTHS))}")
    return widths


def own_width(times: dict[int, ClientTime]) -> int:
    """b_k^own: the widest width whose upload takes no longer than the rest of the client's time; else the narrowest.

    times maps each allowed width to the client's ClientTime at it.
    """
    widths = sorted(times, reverse=True)
    for b in widths:
        c = times[b]
        if c.upload <= c.download + c.compute + c.latency:
            return b
    return widths[-1]


def default_budget(times: Sequence[dict[int, ClientTime]]) -> float:
    """tau without a deadline: max over clients of their total at their own width (`own_width`).

    times holds one {width: ClientTime} per client over the same widths (see the rule above).
    """
    if not times:
        raise ValueError("default_budget needs at least one client")
    return float(max(t[own_width(t)].total for t in times))


def pick_width(times: dict[int, ClientTime], budget: float) -> int | None:
    """The widest width whose total fits the budget, or None (a straggler) if not even the narrowest does."""
    return next((b for b in sorted(times, reverse=True) if times[b].total <= budget), None)


def adaptive_plan(times: Sequence[dict[int, ClientTime]], deadline: float = 0.0) -> tuple[list[int | None], float]:
    """Each client's width (`pick_width`) and the budget: the deadline, else `default_budget` (no clients: [])."""
    if not times:
        return [], float(deadline)
    budget = float(deadline) if deadline > 0 else default_budget(times)
    return [pick_width(t, budget) for t in times], budget


# -- FedBuff -------------------------------------------------------------------


def staleness_weight(staleness: int) -> float:
    """FedBuff's down-weighting of an update that is `staleness` server steps old: 1 / sqrt(1 + s) (Nguyen et al. 2022)."""
    if staleness < 0:
        raise ValueError(f"staleness={staleness} must be >= 0")
    return 1.0 / math.sqrt(1.0 + staleness)


class EventQueue:
    """Arrivals in time order: a heap of (time, sequence number, client).

    The sequence number counts pushes, so arrivals at the same time come out in
    the order they were pushed: the simulation's order of events is deterministic.
    """

    def __init__(self):
        self._heap: list[tuple[float, int, int]] = []
        self._seq = 0

    def push(self, time: float, client: int) -> None:
        heapq.heappush(self._heap, (float(time), self._seq, client))
        self._seq += 1

    def pop(self) -> tuple[float, int]:
        """(time, client) of the earliest arrival (ties: the first pushed)."""
        time, _, client = heapq.heappop(self._heap)
        return time, client

    def peek_time(self) -> float:
        return self._heap[0][0]

    def __len__(self) -> int:
        return len(self._heap)


# -- compute -------------------------------------------------------------------


def train_flops_per_sample(model: torch.nn.Module, input_shape: Sequence[int]) -> int:
    """Training FLOPs of one sample: forward + backward of a batch of one, counted by FlopCounterMode.

    FlopCounterMode counts a matmul of (m x k) by (k x n) as 2 m k n and likewise
    convolutions; element-wise ops count 0. For a Linear(i, o) on data that needs
    no gradient that is 2 i o forward + 2 i o for the weight gradient; a later
    layer also computes its input gradient, 6 i o in all. Runs on a copy of the
    model on the CPU with a zero input, so the model is untouched (no gradients,
    no BatchNorm statistics) and the count is deterministic. It depends only on
    the architecture and input shape: callers may cache it per (model, shape).
    """
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(model).to("cpu").float().train()
    x = torch.zeros((1, *input_shape))
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return int(counter.get_total_flops())
