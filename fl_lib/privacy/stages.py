"""Privacy as pipeline stages: DP clipping on the client, the DP noisy mean, and secure sums.

    DPClip        client: w_k -> w_global + clip(w_k - w_global, S)            (dp.py)
    DPMean        server: w += (sum_k clip(Delta_k) + N(0, (z S)^2)) / m          (dp.py)
    MaskedValues  client: the plain values go to the secure sum, not the codec
    SecureSum     server: pairwise-masked n_k-weighted sum on a shared grid     (secagg.py)
    DPSecureSum   server: masked sum of rotated, rounded codes plus noise       (dp_quant.py)

Each draws from the named streams it drew from inside the engine before 0.5 (DP
noise: the server's Stream.DP_NOISE of round t; rounding: the client's ROUNDING),
so runs are unchanged byte for byte.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..core.aggregators.base import Aggregate, Aggregator
from ..core.quant import relative_error
from ..core.rng import SERVER, Stream, numpy_generator, torch_generator
from ..core.stages import Stage, Transport, weights_to_update
from . import dp_quant
from .dp import add_noise, clients_needed, clip_update, dp_average, poisson_sample
from .secagg import SecAggError, channel_bound, masked_upload_bytes, secure_mean, shared_scale_mean

SECAGG_MARGIN = 1.5  # secure aggregation's public bound: this many times the global model's max |w| per channel


_FEDAVG_ONLY = {"server-sgd": "DP-FedAvg and secure aggregation apply to fedavg rounds only "
                              "(algorithm='fedsgd' uploads gradients, which are not clipped or masked)",
               "buffer": "DP-FedAvg and secure aggregation apply to fedavg rounds only "
                         "(algorithm='fedbuff' buffers updates, which are not clipped or masked)"}


class DPClip(Stage):
    """DP-FedAvg's bound on one client's influence, applied by the client before it quantizes."""

    name = "dp-clip"
    conflicts = _FEDAVG_ONLY

    def __init__(self, clip: float):
        self.clip = clip

    def client(self, job, values, global_state):
        clipped, _ = clip_update(weights_to_update(values, global_state), self.clip)
        return {n: (global_state[n].float() + clipped[n]).to(w.dtype) if n in clipped else w
                for n, w in values.items()}


class DPMean(Aggregator):
    """w += (sum_k clip(Delta_k) + N(0, (z S)^2)) / m, Delta_k = received_k - w (dp.py).

    m is fixed in advance: the expected count q K under Poisson sampling, else the
    clients per round; it never depends on who was sampled. The server clips again
    after decoding (quantization can move an update past S), so the sensitivity is
    exactly S whatever the codec did. A round that sampled nobody adds the noise alone.
    """

    name = "dp-mean"
    steps_when_empty = True

    def __init__(self, clip: float, noise: float, expected_clients: float, seed: int, num_params: int):
        self.clip, self.noise, self.m, self.seed, self.num_params = clip, noise, expected_clients, seed, num_params

    def aggregate(self, t, global_state, received, cohort):
        updates = [clip_update(weights_to_update(r.values, global_state), self.clip)[0] for r in received]
        if not updates:  # a Poisson round that sampled nobody: the sum is 0, the noise is still added
            updates = [{n: torch.zeros_like(w, dtype=torch.float32) for n, w in global_state.items()
                        if w.is_floating_point()}]
        noise = torch_generator(self.seed, t, SERVER, Stream.DP_NOISE)
        step = dp_average(updates, self.noise, self.clip, self.m, noise)
        return Aggregate({n: (w.float() + step[n].to(w.device)).to(w.dtype) if n in step else w
                          for n, w in global_state.items()})

    def divergence_cause(self, cfg):
        if self.noise <= 0:
            return None
        d, z, s, m = self.num_params, self.noise, self.clip, self.m
        need = clients_needed(z, d)
        return (f"the DP noise probably broke the model: its norm on the average, z S sqrt(d) / m = "
                f"{z * s * math.sqrt(d) / m:.3g}, is {z * math.sqrt(d) / m:.3g}"
                f" times the largest mean update S = {s:g} with m = {m:g} clients per round; this "
                f"epsilon (dp_noise={z:g}) needs m >= z sqrt(d) = {need:,} clients per round "
                f"(num_clients >= {math.ceil(need / cfg.client_fraction):,} at client_fraction="
                f"{cfg.client_fraction:g}), or accept a larger epsilon with a smaller dp_noise")


class MaskedValues(Transport):
    """Under secure aggregation the client's values go into the masked sum (the aggregator), not the codec."""

    name = "masked-values"
    conflicts = _FEDAVG_ONLY

    @classmethod
    def refusal(cls, cfg):
        if cfg.bits == 32 or cfg.bits_policy != "fixed":
            return (f"secure_aggregation needs every client's integer codes on one grid: use a fixed bits in 2..16 "
                    f"(got bits={cfg.bits}, bits_policy={cfg.bits_policy!r})")
        if cfg.upload == "delta" and cfg.dp_clip == 0:
            return ("secure_aggregation of upload='delta' needs a public bound on the update: set dp_clip, "
                    "or use upload='weights'")
        return None

    def send(self, job, values, up, reference):
        up.received = {n: v.detach().clone() for n, v in values.items()}  # the next client reuses the model
        return up

    def receive(self, up, reference, device):
        return up.received


def secure_upload_bytes(num_params: int, bits: int, sizes: list[int]) -> int:
    """What one client sends in a secure sum of a cohort with sample counts `sizes` (secagg.masked_upload_bytes).

    The integer weights are n_k / gcd, fixed before anyone drops out: their total sets the modulus.
    """
    return masked_upload_bytes(num_params, bits, len(sizes), sum(sizes) // math.gcd(*sizes))


class SecureSum(Aggregator):
    """The round's n_k-weighted mean through pairwise masking (secagg.py).

    Every sampled client joined the key agreement; those that were late or diverged
    drop out, and their masks are recovered from the survivors' shares. The clients
    sum their weights w_k on a grid whose scale per channel is SECAGG_MARGIN * max
    |w_global,c| (public: every client has w_global).
    """

    name = "secure-sum"

    def __init__(self, bits: int, seed: int, sizes: list[int], num_params: int):
        self.bits, self.seed, self.sizes, self.num_params = bits, seed, sizes, num_params

    def aggregate(self, t, global_state, received, cohort):
        values = [{n: v.float() for n, v in r.values.items() if v.is_floating_point()} for r in received]
        senders = [r.client for r in received]
        bound = channel_bound(global_state, margin=SECAGG_MARGIN)
        position = {k: i for i, k in enumerate(cohort)}
        zeros = {n: torch.zeros_like(v) for n, v in values[0].items()}
        everyone = [zeros] * len(cohort)
        for k, v in zip(senders, values):
            everyone[position[k]] = v
        gone = [i for i, k in enumerate(cohort) if k not in set(senders)]
        # every sampled client's n_k, fixed before anyone drops (it sets the modulus); a dropped client's codes are 0
        all_weights = [self.sizes[k] for k in cohort]
        errors = [relative_error(v, shared_scale_mean([v], None, self.bits, bound)) for v in values]
        try:
            mean, per_client = secure_mean(everyone, all_weights, self.bits, bound, self.seed, t, dropped=gone)
        except SecAggError as e:  # too few survivors to unmask: the server learns nothing this round
            warnings.warn(f"round {t}: {e}; the round's uploads cannot be unmasked and are lost")
            charged = secure_upload_bytes(self.num_params, self.bits, all_weights)  # what the clock charged
            return Aggregate(global_state, charged * len(senders), errors)
        state = {n: mean[n].to(g.device, g.dtype) if n in mean else g for n, g in global_state.items()}
        return Aggregate(state, per_client * len(senders), errors)


class DPSecureSum(DPMean):
    """DP-FedAvg under secure aggregation: w += (sum_k decode(z_k) + N(0, (z Delta)^2)) / m.

    Each sender's clipped update is rotated, scaled and rounded to codes z_k with
    ||z_k|| <= B (dp_quant.py, Kairouz et al. 2021), with its own Stream.ROUNDING; the
    codes are masked and summed mod 2^k, and the server decodes the survivors' sum.
    The noise is sized for Delta = gamma B, the norm every decoded upload is held to,
    not dp_clip: Delta > dp_clip, so z stays the noise multiplier the accountant was
    given. m is fixed in advance. With no senders (a Poisson round that sampled
    nobody) the step is the noise alone.
    """

    name = "dp-secure-sum"
    conflicts = {}

    def __init__(self, grid, clip, noise, expected_clients, seed, num_params):
        super().__init__(clip, noise, expected_clients, seed, num_params)
        self.grid = grid

    def aggregate(self, t, global_state, received, cohort):
        grid = self.grid
        like = {n: v for n, v in global_state.items() if v.is_floating_point()}
        senders = [r.client for r in received]
        errors, per_client = [], grid.upload_bytes(len(cohort)) if cohort else 0
        total = np.zeros(grid.num_params)
        if senders:
            position = {k: i for i, k in enumerate(cohort)}
            flats = [np.zeros(grid.num_params)] * len(cohort)
            for r in received:
                flats[position[r.client]] = dp_quant.flatten(weights_to_update(r.values, global_state))
            gone = [i for i, k in enumerate(cohort) if k not in set(senders)]
            codes = dp_quant.client_codes(flats, grid, self.seed, t, clients=cohort, dropped=gone)
            signs = dp_quant.rotation_signs(self.seed, t, grid.size)
            errors = [dp_quant.upload_error(flats[position[k]], codes[position[k]], grid, signs) for k in senders]
            try:
                total = dp_quant.masked_total(codes, grid, self.seed, t, dropped=gone)
            except SecAggError as e:  # too few survivors to unmask: the server learns nothing this round
                warnings.warn(f"round {t}: {e}; the round's uploads cannot be unmasked and are lost")
                return Aggregate(global_state, per_client * len(senders), errors)
        noise = torch_generator(self.seed, t, SERVER, Stream.DP_NOISE)
        step = add_noise(dp_quant.unflatten(total, like), self.noise, grid.sensitivity, noise)  # std z Delta
        state = {n: (g.float() + step[n].to(g.device) / self.m).to(g.dtype) if n in step else g
                 for n, g in global_state.items()}
        return Aggregate(state, per_client * len(senders), errors)


class PoissonSampler:
    """DP-FedAvg's sampling (McMahan et al. 2018): each client joins round t with probability q, drawn from
    the server's SAMPLING stream; the count varies, and may be 0."""

    def __init__(self, seed: int, num_clients: int, q: float):
        self.seed, self.num_clients, self.q = seed, num_clients, q

    def __call__(self, t: int) -> list[int]:
        return poisson_sample(self.num_clients, self.q, numpy_generator(self.seed, t, SERVER, Stream.SAMPLING))
