"""The simulator's loop: set up a federation, then run its rounds through the pipeline (McMahan et al. 2017, Algorithm 1).

One synchronous round, top to bottom (`sync_round`):

    plan      the sampler picks round t's clients; the clock gives each its upload width
              and drops those that would miss the deadline              (build.py, clock.py)
    train     the backend runs every kept client's side: local training, client stages
              (DP clipping), transport (codec bytes or masked values)   (backends.py)
    receive   the server decodes each upload; a diverged or corrupt one is left out
    aggregate the aggregator turns the received uploads into the next global model
              (mean, median, FedSGD's step, DP noisy mean, secure sum)  (core/aggregators, privacy/stages.py)
    record    one RoundMetrics row; evaluation every eval_every rounds  (core/metrics.py)

FedBuff replaces the synchronous round with its event loop (fedbuff.py) on the same
pieces. Every random choice of round t (clients, batch order, augmentation, dropout,
stochastic rounding, DP noise) is drawn from generators seeded by (seed, t, client,
stream), so a round depends only on the config and the global model it starts from:
a resumed run repeats an uninterrupted one exactly. The Federation is the one owner
of the global model; backends, Flower's apps and the runtime get it as an argument.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from ..core.aggregators.base import Received
from ..core.aggregators.mean import aggregate  # noqa: F401  (0.4's public average, re-exported)
from ..core.client import num_targets
from ..core.config import Config
from ..core.data import Dataset, load_dataset
from ..core.errors import CodecError, ConfigError, DivergenceError
from ..core.metrics import RoundMetrics
from ..core.partition import make_partition
from ..core.stages import Job, Upload  # noqa: F401  (Upload: 0.4's name here, re-exported)
from ..core.trainer import EVAL_BATCH, Trainer, resolve_device, use_channels_last  # noqa: F401  (re-exported)
from .backends import ClientSide, build_backend
from .build import build_clock, build_pipeline
from .clock import ModelInfo
from .fedbuff import FedBuff
from .accessors import Accessors

MAX_DEAD_ROUNDS = 3  # consecutive rounds with every upload non-finite before giving up


class RoundPlan:
    """Round t's sampled clients, those that train (`chosen`), their widths, the duration and the late ones."""

    def __init__(self, t, sampled, chosen, bits, duration, late):
        self.t, self.sampled, self.chosen, self.bits, self.duration, self.late = (
            t, sampled, chosen, bits, duration, late)

    def jobs(self) -> list[Job]:
        return [Job(k, self.t, self.bits[k]) for k in self.chosen]


class Federation(Accessors):
    """Clients, server and the pipeline of one config; `round(t)` runs round t."""

    def __init__(self, cfg: Config, data: Dataset | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if data is None:
            data = load_dataset(cfg.dataset, cfg.data_root, seed=cfg.seed)
        self.data = data.to(self.device)
        labels = (self.data.y_train if self.data.groups is None else self.data.groups).cpu().numpy()  # text: roles
        parts = make_partition(cfg.partition, labels, cfg.num_clients, cfg.seed, alpha=cfg.alpha,
                               shards_per_client=cfg.shards_per_client, min_size=cfg.min_size)
        self.clients = [torch.as_tensor(p, dtype=torch.long, device=self.device) for p in parts]
        self.sizes = [num_targets(self.data.y_train[c]) for c in self.clients]  # n_k: images, or characters
        self.trainer = Trainer(cfg, self.data, self.clients, self.sizes, self.device)
        self.global_state = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}
        num_params = sum(v.numel() for v in self.global_state.values() if v.is_floating_point())  # d
        self.pipeline = build_pipeline(cfg, self.sizes, num_params, self.device)
        self.trainer.schedule = self.pipeline.schedule  # E_t of each round (core/schedule.py)
        self.trainer.batch_schedule = self.pipeline.batches  # B_t of each round (core/schedule.py)
        shape = (self.data.in_channels, self.data.image_size, self.data.image_size)
        self.info = ModelInfo(self.trainer.model, self.global_state, shape, params_only=self.pipeline.local == "gradient")
        if self.pipeline.control is not None:  # SCAFFOLD (core/scaffold.py): corrected steps; c sent with the model
            self.trainer.control = self.pipeline.control
            self.info.model_bytes += self.pipeline.control.download_bytes(self.global_state)
        self.clock = build_clock(cfg, self.sizes, self.info, self.pipeline)
        self.client_side = ClientSide(self.trainer, self.pipeline)
        self.backend = build_backend(self)
        self.fedbuff = FedBuff(self) if self.pipeline.asynchronous else None
        self.dead_rounds = 0

    # -- one round --------------------------------------------------------
    def round(self, t: int) -> RoundMetrics:
        """Run round t (1-based): sample, train, aggregate, maybe evaluate. `seconds`: its wall time."""
        start = time.perf_counter()
        row = self.fedbuff.step(t) if self.fedbuff is not None else self.sync_round(t)
        self.evaluate_row(t, row)
        row.seconds = time.perf_counter() - start
        return row

    def sync_round(self, t: int) -> RoundMetrics:
        """A synchronous round: every kept client trains from the global model, the server aggregates."""
        plan = self.plan_round(t)
        uploads = self.backend.uploads(t, plan.jobs(), self.global_state) if plan.chosen else []
        return self.finish_round(plan, uploads)

    def plan_round(self, t: int) -> RoundPlan:
        """Round t's clients, each one's width, the round's duration and who is late (the clock's plan)."""
        sampled = self.pipeline.sampler(t)
        if not sampled:  # possible under DP's Poisson sampling: the round waits for nobody
            return RoundPlan(t, [], [], {}, None if self.clock.links is None else 0.0, [])
        bits, duration, kept = self.clock.plan(t, sampled)
        late = [k for k, keep in zip(sampled, kept) if not keep]
        chosen = [k for k, keep in zip(sampled, kept) if keep]  # late clients' work would be thrown away
        return RoundPlan(t, sampled, chosen, bits, duration, late)

    def finish_round(self, plan: RoundPlan, uploads: list[Upload], late: list[int] | None = None) -> RoundMetrics:
        """The server's side of round plan.t: receive each upload, aggregate, and return the round's metrics.

        An upload that diverged (non-finite) or does not decode (truncated, checksum
        mismatch) is left out with a warning and counted in `dropped_clients`.
        `late`: the plan's late clients, plus any that never answered (Flower).
        """
        t, late = plan.t, plan.late if late is None else late
        transport, aggregator = self.pipeline.transport, self.pipeline.aggregator
        reference = self.client_side.reference(self.global_state)
        received, losses, errors, widths = [], [], [], []
        upload_bytes, dropped = 0, len(late)
        for up in uploads:
            if up.diverged:
                dropped += 1
                warnings.warn(f"round {t}: client {up.client} sent non-finite values (diverged); left out of the average")
                continue
            values = up.received
            if up.blob is not None:
                upload_bytes += len(up.blob)
                if values is None:
                    try:
                        values = transport.receive(up, reference, self.device)
                    except CodecError as e:
                        dropped += 1
                        warnings.warn(f"round {t}: refused client {up.client}'s upload ({e}); the round goes on "
                                      f"without it")
                        continue
                errors.append(up.error)
            received.append(Received(up.client, values, up.num_samples))
            losses.append(up.loss)
            widths.append(up.bits)
        if received or (aggregator.steps_when_empty and not uploads and not late):
            if received:
                self.dead_rounds = 0
            result = aggregator.aggregate(t, self.global_state, received, plan.sampled)
            self.global_state = result.state
            upload_bytes = upload_bytes if result.upload_bytes is None else result.upload_bytes
            errors = errors if result.errors is None else result.errors
        elif not late:  # every client that sent diverged (a round whose clients were all late is not divergence)
            self.count_dead_round(t)
        row = RoundMetrics(
            round=t, train_loss=float(torch.tensor(losses, dtype=torch.float32).mean()) if losses else None,
            upload_bytes=upload_bytes, download_bytes=self.model_bytes * (len(uploads) + len(late)),
            quant_error=float(np.mean(errors)) if errors else None, dropped_clients=dropped,
            sim_seconds=plan.duration, mean_bits=float(np.mean(widths)) if widths else None,
            mean_staleness=0.0 if widths else None, epsilon=self.pipeline.epsilon(t),
            sampled_clients=len(uploads) + len(late))
        self.pipeline.schedule.observe(t, row.train_loss)  # the loss-driven epoch schedule's input
        return row

    def evaluate_row(self, t: int, row: RoundMetrics) -> RoundMetrics:
        """Add test_acc / test_loss to round t's row when t is evaluated (every eval_every rounds, and the last)."""
        if t % self.cfg.eval_every == 0 or t == self.cfg.num_rounds:
            row.test_acc, row.test_loss = self.evaluate()
            if not math.isfinite(row.test_loss):  # finite weights can still overflow the loss
                warnings.warn(f"round {t}: test loss is {row.test_loss}; recorded as empty")
                row.test_loss = None
        return row

    def count_dead_round(self, t: int) -> None:
        """One more round in which every upload diverged; the third in a row stops the run with the likely cause."""
        self.dead_rounds += 1
        if self.dead_rounds >= MAX_DEAD_ROUNDS:
            cause = (self.pipeline.aggregator.divergence_cause(self.cfg) or
                     f"the learning rate lr={self.cfg.lr} is probably too high for model={self.cfg.model}; "
                     f"try a smaller lr")
            raise DivergenceError(
                f"every client diverged (NaN/inf) for {self.dead_rounds} rounds in a row up to round {t}: {cause}")

    # -- lifetime and checkpoints ---------------------------------------------
    def close(self) -> None:
        """Stop the backend's worker processes, if any; the next round starts them again."""
        self.backend.close()

    def resume_state(self) -> dict:
        """What a checkpoint must hold besides the global model to resume exactly."""
        state = {"dead_rounds": self.dead_rounds}
        if self.fedbuff is not None:
            state["fedbuff"] = self.fedbuff.state_dict()
        carried = self.pipeline.aggregator.state_dict()
        if carried:  # only aggregators with a memory (server optimizers): older checkpoints stay as they were
            state["aggregator"] = carried
        schedule = self.pipeline.schedule.state_dict()
        if schedule:  # only the loss-driven epoch schedule remembers (E_t and L_t so far)
            state["schedule"] = schedule
        return state

    def load_resume_state(self, state: dict, global_state: dict | None = None) -> None:
        """Resume: the counters (and FedBuff's events) of `resume_state`, and the global model if given."""
        if global_state is not None:
            self.global_state = {k: v.to(self.device) for k, v in global_state.items()}
        self.dead_rounds = state["dead_rounds"]
        if self.fedbuff is not None:
            self.fedbuff.load_state_dict(state["fedbuff"])
        if "aggregator" in state:
            self.pipeline.aggregator.load_state_dict(state["aggregator"])
        if "schedule" in state:
            self.pipeline.schedule.load_state_dict(state["schedule"])


Federation.engine_state = Federation.resume_state  # 0.4's names
Federation.load_engine_state = Federation.load_resume_state


def replay_clock(cfg: Config, link: str, data: Dataset | None = None) -> list[float]:
    """sim_seconds of every round of `cfg` had it run on `link`, without training anything.

    With fixed bits and no deadline the clock never changes what is trained (nobody is
    dropped, every width is `bits`), so a finished run without a link, or with another
    one, gets its exact clock on any link profile from its config alone: the same
    sampled clients, link draws and encoded sizes as a real run with that link.
    """
    cfg = cfg.replace(link=link)
    if cfg.bits_policy != "fixed" or cfg.deadline > 0 or cfg.algorithm == "fedbuff" or cfg.epoch_schedule == "loss":
        raise ConfigError("replay_clock needs bits_policy='fixed', deadline=0, a synchronous algorithm and no "
                          "loss-driven epoch_schedule: otherwise the clock changes with what is trained, so run it")
    if cfg.link == "none":
        raise ConfigError("replay_clock needs a link profile, e.g. mobile")
    fed = Federation(cfg, data=data)
    return [fed.plan(t, fed.sample_clients(t))[1] for t in range(1, cfg.num_rounds + 1)]
