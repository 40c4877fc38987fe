"""A round's pipeline, built from a Config: the one place that reads the algorithm, DP, secure-aggregation,
bits-policy and aggregator fields.

    sampler      who takes part in round t: m uniform clients, or Poisson(q) under DP
    local        what a client computes: its weights after E epochs (FedAvg, FedBuff) or its gradient (FedSGD)
    prox_mu      FedProx's mu: local training held near the global model (0: off, no FedProx stage)
    schedule     local epochs E_t of round t: fixed, or a decay / loss-driven schedule (core/schedule.py)
    batches      local batch size B_t of round t: fixed, or growing (core/schedule.py)
    scaffold     SCAFFOLD's control variates: a client stage, a second upload message, and the aggregator
    stages       client-side transforms: DP clipping
    transport    codec bytes (quantized or float32), or plain values for a secure sum
    aggregator   mean | median (registry) | DP noisy mean | secure sum | DP secure sum | FedBuff's buffer,
                 wrapped in FedSGD's server step for fedsgd, or in a server optimizer (server_opt)
    clock        the link model with the width policy (fixed or adaptive) and what an upload costs

Stages declare what they cannot work with (`Stage.conflicts`, `Stage.refusal`);
`check` refuses such a config in one line before anything is built, and
`build_pipeline` checks again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from ..core.aggregators.base import Aggregator
from ..core.aggregators.buffer import BufferAggregator
from ..core.aggregators.registry import AGGREGATORS, aggregator_class
from ..core.errors import ConfigError
from ..core.fedprox import FedProx
from ..core.schedule import BATCH_SCHEDULES, SCHEDULES, FixedBatch, FixedEpochs, batch_schedule, epoch_schedule
from ..core.scaffold import ControlTransport, Scaffold
from ..core.aggregators.server_opt import ServerOptimizer
from ..core.aggregators.server_sgd import ServerSGD
from ..core.links import SECAGG_ROUND_TRIPS, Links, parse_link
from ..core.stages import CodecTransport, Stage, Transport, UniformSampler, check_conflicts
from ..privacy import dp_quant
from ..privacy.dp import epsilon_per_round, fixed_size_epsilon_per_round
from ..privacy.secagg import received_bytes
from ..privacy.stages import (DPClip, DPMean, DPSecureSum, MaskedValues, PoissonSampler, SecureSum,
                              secure_upload_bytes)
from .clock import AdaptiveWidth, Clock, FixedWidth, ModelInfo


@dataclass
class Pipeline:
    """Everything a round runs that depends on the method, as objects the Federation calls in order."""

    sampler: Callable[[int], list[int]]
    local: str  # "weights" or "gradient": which Trainer method computes an upload
    stages: list[Stage]
    transport: Transport
    aggregator: Aggregator
    delta: bool  # uploads are taken against the global model (codec reference)
    epochs: int  # local passes over a client's data per round (the clock's compute time)
    asynchronous: bool  # FedBuff's event loop instead of synchronous rounds
    expected_clients: float  # the DP mean's fixed divisor m (else the clients per round)
    epsilons: list[float] | None = field(default=None)  # epsilon after each round (DP with noise)
    dp_grid: object = None  # DP under secure aggregation: the public rotated grid (dp_quant.py)
    prox_mu: float = 0.0  # FedProx's mu (core/fedprox.py): local training held near the global model; 0 = off
    schedule: FixedEpochs | None = None  # E_t of round t (core/schedule.py); build_pipeline always sets one
    batches: FixedBatch | None = None  # B_t of round t (core/schedule.py); build_pipeline always sets one
    control: Scaffold | None = None  # SCAFFOLD (core/scaffold.py): c and the c_k; also a stage and the aggregator

    def epsilon(self, t: int) -> float | None:
        return self.epsilons[t - 1] if self.epsilons else None


def stage_classes(cfg) -> list:
    """The classes of `cfg`'s stages, transport and aggregator(s), chosen without building anything."""
    dp = cfg.dp_clip > 0
    classes = [DPClip] if dp else []
    classes.append(MaskedValues if cfg.secure_aggregation else CodecTransport)
    chosen = aggregator_class(cfg.aggregator)  # listed even where a private sum replaces it: it may conflict
    if cfg.algorithm == "fedbuff":
        classes += [BufferAggregator] + ([chosen] if cfg.aggregator != "mean" else [])
    elif cfg.secure_aggregation or dp:
        classes += [DPSecureSum if cfg.secure_aggregation and dp else SecureSum if cfg.secure_aggregation
                    else DPMean] + ([chosen] if cfg.aggregator != "mean" else [])
    else:
        classes.append(chosen)
    if cfg.server_opt != "none":  # listed wherever asked for: it names the server steps it cannot wrap
        classes.append(ServerOptimizer)
    if cfg.algorithm == "fedsgd":
        classes.append(ServerSGD)
    if cfg.prox_mu > 0:
        classes.append(FedProx)
    if cfg.epoch_schedule != "fixed":
        classes.append(SCHEDULES[cfg.epoch_schedule])
    if cfg.batch_schedule != "fixed":
        classes.append(BATCH_SCHEDULES[cfg.batch_schedule])
    if cfg.scaffold:
        classes.append(Scaffold)
    return classes


def all_stage_classes() -> list:
    """Every stage class a config can ask for (to find the owner of a setting)."""
    return [aggregator_class(name) for name in AGGREGATORS] + [
        ServerSGD, ServerOptimizer, BufferAggregator, FedProx, *SCHEDULES.values(), *BATCH_SCHEDULES.values(),
        Scaffold, DPClip, DPMean, DPSecureSum, SecureSum, MaskedValues, CodecTransport]


CLUSTERED_ONLY = ("cfl_eps1", "cfl_eps2", "cfl_min_rounds")  # the split thresholds of simulator/clustered.py


def check(cfg) -> None:
    """Refuse, in one line, a config whose stages declare they cannot work together or with its settings,
    or that sets a field (away from its default) which only a stage outside its pipeline reads.

    Called before a run starts (results.run, run_many, the CLI) and when a Federation is built.
    """
    classes = stage_classes(cfg)
    check_conflicts(classes, cfg)
    used = {f for c in classes for f in c.settings}
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for owner in all_stage_classes():
        for name in owner.settings:
            if name not in used and getattr(cfg, name) != defaults[name]:
                raise ConfigError(f"{name}={getattr(cfg, name)!r} applies to {owner.requested_by or owner.name} "
                                  f"only: leave it at {defaults[name]!r}")
    for name in CLUSTERED_ONLY:
        if getattr(cfg, name) != defaults[name]:
            raise ConfigError(f"{name}={getattr(cfg, name)!r} is read by clustered FL only "
                              f"(simulator/clustered.run_clustered), not by a federation's rounds: "
                              f"leave it at {defaults[name]!r}")


def build_pipeline(cfg, sizes: list[int], num_params: int, device) -> Pipeline:
    """The stages of `cfg`'s rounds, for clients holding `sizes` samples and a model of `num_params` floats."""
    check(cfg)
    dp = cfg.dp_clip > 0
    poisson = dp and cfg.dp_sampling == "poisson"
    expected = cfg.client_fraction * cfg.num_clients if poisson else float(cfg.clients_per_round)
    sampler = (PoissonSampler(cfg.seed, cfg.num_clients, cfg.client_fraction) if poisson
               else UniformSampler(cfg.seed, cfg.num_clients, cfg.clients_per_round))
    grid = dp_quant.grid_for(cfg, num_params)  # refuses, in one line, a width at which the update would be lost
    stages = [DPClip(cfg.dp_clip)] if dp else []
    transport = MaskedValues() if cfg.secure_aggregation else CodecTransport(cfg.seed, cfg.rounding, device)
    aggregator = _aggregator(cfg, sizes, num_params, expected, grid)
    control = Scaffold.from_config(cfg, aggregator, sizes, device) if cfg.scaffold else None
    if control is not None:  # c_k+ and Delta c_k on the client, a second message up, c updated after the model
        stages, aggregator = stages + [control], control
        transport = ControlTransport(transport, cfg.seed, cfg.rounding, device)
    epsilons = None
    if dp and cfg.dp_noise > 0:
        epsilons = (epsilon_per_round(cfg.client_fraction, cfg.dp_noise, cfg.num_rounds, cfg.dp_delta) if poisson
                    else fixed_size_epsilon_per_round(cfg.num_clients, cfg.clients_per_round, cfg.dp_noise,
                                                      cfg.num_rounds, cfg.dp_delta))
    fedsgd = cfg.algorithm == "fedsgd"
    prox = FedProx(cfg.prox_mu) if cfg.prox_mu > 0 else None
    return Pipeline(sampler=sampler, local="gradient" if fedsgd else "weights", stages=stages, transport=transport,
                    aggregator=aggregator, delta=cfg.upload == "delta" and cfg.algorithm in ("fedavg", "fedbuff"),
                    epochs=1 if fedsgd else cfg.local_epochs, asynchronous=cfg.algorithm == "fedbuff",
                    expected_clients=expected, epsilons=epsilons, dp_grid=grid,
                    prox_mu=prox.mu if prox else 0.0, control=control,
                    schedule=epoch_schedule(cfg, 1 if fedsgd else None), batches=batch_schedule(cfg))


def _aggregator(cfg, sizes, num_params, expected, grid) -> Aggregator:
    dp = cfg.dp_clip > 0
    if cfg.algorithm == "fedbuff":
        return BufferAggregator(cfg.buffer_weights, cfg.server_lr)
    if cfg.secure_aggregation and dp:
        return DPSecureSum(grid, cfg.dp_clip, cfg.dp_noise, expected, cfg.seed, num_params)
    if cfg.secure_aggregation:
        return SecureSum(cfg.bits, cfg.seed, sizes, num_params)
    if dp:
        return DPMean(cfg.dp_clip, cfg.dp_noise, expected, cfg.seed, num_params)
    combine = aggregator_class(cfg.aggregator).from_config(cfg)
    if cfg.server_opt != "none":  # FedAvgM / FedAdam / FedYogi on the aggregate (Reddi et al. 2021)
        combine = ServerOptimizer.from_config(cfg, combine)
    return ServerSGD(combine, cfg.lr) if cfg.algorithm == "fedsgd" else combine


def build_clock(cfg, sizes: list[int], info: ModelInfo, pipeline: Pipeline) -> Clock:
    """The simulated clock of `cfg` (with link none it has no links: rounds have no duration)."""
    profile = parse_link(cfg.link)
    links = Links(profile, cfg.num_clients, cfg.seed) if profile is not None else None
    policy = (AdaptiveWidth(cfg.bits, cfg.min_bits, cfg.deadline) if cfg.bits_policy == "adaptive"
              else FixedWidth(cfg.bits, cfg.deadline))
    masked = protocol = None
    if cfg.secure_aggregation:
        grid = pipeline.dp_grid
        if grid is not None:  # DP: uniform weights on the rotated grid
            masked = lambda bits, cohort: grid.upload_bytes(len(cohort))  # noqa: E731
        else:  # the integer n_k / gcd weights the secure sum masks with
            masked = lambda bits, cohort: secure_upload_bytes(info.num_params, bits,  # noqa: E731
                                                              [sizes[k] for k in cohort])
        protocol = received_bytes
    return Clock(links, sizes, pipeline.epochs, info, policy, pipeline.sampler, masked, protocol,
                 SECAGG_ROUND_TRIPS if cfg.secure_aggregation else 1, schedule=pipeline.schedule)
