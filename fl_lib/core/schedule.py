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
