"""Adaptive local computation: how many local epochs E_t the clients of round t train (`epoch_schedule`).

With E = `local_epochs`, h = `epoch_halving`, theta = `epoch_min_drop` and L_t the
round's recorded `train_loss` (the kept clients' mean training loss):

    fixed   E_t = E                                                 (McMahan et al.'s FedAvg)
    decay   E_t = max(1, floor(E / 2^floor((t - 1) / h)))           E halves every h rounds, down to 1
    loss    E_1 = E, and after round t
            E_{t+1} = max(1, floor(E_t / 2))  if E_{t-1} = E_t and (L_{t-1} - L_t) / L_{t-1} < theta
            E_{t+1} = E_t                      otherwise (also for t = 1, or a round without a loss)

Why: early on the clients are far from any optimum and their updates agree, so
local work is cheap progress that saves rounds; later each client's extra epochs
mostly pull it towards its own data (client drift). Decay depends on t alone,
never on `num_rounds`: a run of N rounds must be the first N rounds of a longer one
(the results cache keeps one folder for both). The loss rule depends only on the
recorded metrics, so it replays exactly from metrics.csv (`epochs_per_round`). It
compares two rounds trained at the same E only: a round's loss is the mean over
its local epochs, so right after E halves it is higher whatever the model does.

A non-fixed schedule is a Stage (it declares what it cannot combine with); E_t
reaches local training through `Trainer.epochs(t)` and the clock through
`Clock.client_time`. FedSGD has no local epochs and FedBuff's jobs start at any
time, not in rounds, and SCAFFOLD divides by a fixed number of local steps: all
three refuse a non-fixed schedule.

The batch size B_t of round t (`batch_schedule`, below) is the other half of "deep
early, shallow late": with B = `batch_size`, h = `batch_doubling`, B_max = `batch_max`

    fixed   B_t = B
    grow    B_t = min(B_max, B * 2^floor((t - 1) / h))            (B_max = 0: no cap)

It reaches local training through `Trainer.batch_size(t)`. The clock charges
compute per sample (n_k E_t F), not per step, so B_t does not change a round's time.
The same three methods refuse a growing batch, for the same reasons.
"""
from __future__ import annotations

import math

from .stages import Stage

_NO_EPOCHS = {"server-sgd": "FedSGD takes one full gradient per client: it has no local epochs to schedule",
              "buffer": "FedBuff's jobs start at any time, not in rounds: use epoch_schedule='fixed'",
              "scaffold": "SCAFFOLD's control variates divide by a fixed number of local steps K: use "
                          "epoch_schedule='fixed'"}


class FixedEpochs:
    """E_t = E every round (FedAvg's; FedSGD's clock counts E = 1). Not a stage: it changes nothing."""

    def __init__(self, epochs: int):
        self.start = epochs

    def epochs(self, t: int) -> int:
        return self.start

    def observe(self, t: int, train_loss) -> None:
        """Round t's recorded training loss (None: none recorded); only the loss rule reads it."""

    def state_dict(self) -> dict:
        """What a checkpoint must keep to resume the schedule exactly (empty: E_t follows from t)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EpochDecay(FixedEpochs, Stage):
    """decay: E_t = max(1, floor(E / 2^floor((t - 1) / h)))."""

    name = "epoch-decay"
    settings = ("epoch_halving",)
    requested_by = "epoch_schedule='decay'"
    conflicts = _NO_EPOCHS

    def __init__(self, epochs: int, halving: int):
        super().__init__(epochs)
        self.halving = halving

    def epochs(self, t: int) -> int:
        return max(1, self.start >> ((t - 1) // self.halving))  # E >> j = floor(E / 2^j)


def next_epochs(before: tuple, now: tuple, min_drop: float) -> int:
    """The loss rule: E_{t+1} from (E_{t-1}, L_{t-1}) and (E_t, L_t); a loss of None or nan was not recorded."""
    (e_before, l_before), (e, l) = before, now
    recorded = all(x is not None and not math.isnan(x) for x in (l_before, l))
    if e_before != e or not recorded or not l_before > 0:
        return e
    return max(1, e // 2) if (l_before - l) / l_before < min_drop else e


class LossEpochs(FixedEpochs, Stage):
    """loss: E halves when the round's mean training loss fell by less than theta since the last round at that E."""

    name = "epoch-loss"
    settings = ("epoch_min_drop",)
    requested_by = "epoch_schedule='loss'"
    conflicts = _NO_EPOCHS

    def __init__(self, epochs: int, min_drop: float):
        super().__init__(epochs)
        self.min_drop = min_drop
        self.history: list[int] = []  # E_1, E_2, ...: decided so far
        self.losses: list = []  # L_1, L_2, ...: observed so far

    def epochs(self, t: int) -> int:
        if t > len(self.losses) + 1:
            raise ValueError(f"E of round {t} depends on the training losses before it; rounds observed: "
                             f"{len(self.losses)}")
        while len(self.history) < t:
            self.history.append(self._decide(len(self.history) + 1))
        return self.history[t - 1]

    def _decide(self, t: int) -> int:
        """E_t from rounds t - 2 and t - 1 (list index = round - 1); rounds 1 and 2 train the starting E."""
        if t <= 2:
            return self.start
        return next_epochs((self.history[t - 3], self.losses[t - 3]), (self.history[t - 2], self.losses[t - 2]),
                           self.min_drop)

    def observe(self, t: int, train_loss) -> None:
        if t != len(self.losses) + 1:
            raise ValueError(f"round {t}'s loss observed after {len(self.losses)} rounds: rounds come in order")
        self.epochs(t)  # E_t is fixed before its loss is known
        self.losses.append(train_loss)

    def state_dict(self) -> dict:
        return {"history": list(self.history), "losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.losses = list(state["history"]), list(state["losses"])


SCHEDULES = {"decay": EpochDecay, "loss": LossEpochs}  # the stage class of each non-fixed epoch_schedule


def epoch_schedule(cfg, epochs: int | None = None) -> FixedEpochs:
    """The schedule of `cfg`; `epochs` overrides E of a fixed one (FedSGD's clock counts one pass)."""
    if cfg.epoch_schedule == "decay":
        return EpochDecay(cfg.local_epochs, cfg.epoch_halving)
    if cfg.epoch_schedule == "loss":
        return LossEpochs(cfg.local_epochs, cfg.epoch_min_drop)
    return FixedEpochs(cfg.local_epochs if epochs is None else epochs)


def epochs_per_round(cfg, train_losses) -> list[int]:
    """E_t of every round of a run of `cfg`, one per entry of its recorded `train_loss` column (in round order).

    Total client compute in sample passes is then sum_t E_t * (samples of round t's clients).
    """
    schedule = epoch_schedule(cfg)
    out = []
    for t, loss in enumerate(train_losses, start=1):
        out.append(schedule.epochs(t))
        schedule.observe(t, None if loss is None else float(loss))
    return out


# -- the batch size B_t of round t (`batch_schedule`) --------------------------------------------
_NO_BATCHES = {"server-sgd": "FedSGD takes one full-batch gradient per client: it has no B to schedule",
               "buffer": "FedBuff's jobs start at any time, not in rounds: use batch_schedule='fixed'",
               "scaffold": "SCAFFOLD's control variates divide by a fixed number of local steps K = E ceil(n_k / B): "
                           "use batch_schedule='fixed'"}


class FixedBatch:
    """B_t = B every round (None: the client's whole data, B = inf). Not a stage: it changes nothing."""

    def __init__(self, batch_size: int | None):
        self.start = batch_size

    def batch_size(self, t: int) -> int | None:
        return self.start


class BatchGrowth(FixedBatch, Stage):
    """grow: B_t = min(B_max, B * 2^floor((t - 1) / h)), the batch doubling every h rounds up to B_max.

    Smith, Kindermans, Ying and Le, "Don't decay the learning rate, increase the batch
    size" (ICLR 2018): a larger batch lowers the noise of each step as a smaller
    learning rate would, with fewer steps. Here it also makes late rounds shallow:
    a client holding n samples takes E ceil(n / B_t) local steps, so its drift towards
    its own data shrinks as B_t grows, while every sample is still seen E_t times.
    B_t depends on t alone (a run of N rounds is the first N of a longer one), so a
    checkpoint needs nothing of it. B_max = 0 means no cap: B_t then stops mattering
    once it exceeds a client's data (one full-batch step per epoch).
    """

    name = "batch-grow"
    settings = ("batch_doubling", "batch_max")
    requested_by = "batch_schedule='grow'"
    conflicts = _NO_BATCHES

    def __init__(self, batch_size: int, doubling: int, cap: int):
        super().__init__(batch_size)
        self.doubling, self.cap = doubling, cap

    @classmethod
    def refusal(cls, settings) -> str | None:
        if settings.batch_size is None:
            return ("batch_schedule='grow' doubles B, but batch_size=None already takes a client's whole data: "
                    "set batch_size (e.g. 10), or use batch_schedule='fixed'")
        if settings.batch_max and settings.batch_max < settings.batch_size:
            return (f"batch_max={settings.batch_max} is below batch_size={settings.batch_size}: B_max caps the "
                    f"growing B, so it must be >= B (or 0 = no cap)")
        return None

    def batch_size(self, t: int) -> int:
        grown = self.start << min((t - 1) // self.doubling, 40)  # B << j = B * 2^j; past 2^40 B no data differs
        return min(grown, self.cap) if self.cap else grown


BATCH_SCHEDULES = {"grow": BatchGrowth}  # the stage class of each non-fixed batch_schedule


def batch_schedule(cfg) -> FixedBatch:
    """The batch schedule of `cfg`: B_t of every round."""
    if cfg.batch_schedule == "grow":
        return BatchGrowth(cfg.batch_size, cfg.batch_doubling, cfg.batch_max)
    return FixedBatch(cfg.batch_size)


def batch_sizes_per_round(cfg, num_rounds: int | None = None) -> list:
    """B_t of rounds 1..num_rounds (default: cfg.num_rounds) of a run of `cfg`; None: the client's whole data.

    B_t follows from the config alone, so metrics.csv needs no column for it (old files stay byte for byte).
    """
    schedule = batch_schedule(cfg)
    return [schedule.batch_size(t) for t in range(1, (num_rounds or cfg.num_rounds) + 1)]
