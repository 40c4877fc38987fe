"""Adaptive local computation (core/schedule.py): E_t per round, checked by hand and by counting local steps.

At epoch_schedule='fixed' nothing of a schedule is in the pipeline and every number is as before
(tests/test_unchanged.py and tests/test_pipeline_unchanged.py pin them). A decay or loss-driven
schedule changes the local steps of every engine (sequential, batched, pool) and the clock alike.
"""
import math

import pytest
import torch

from fl_lib.core.client import num_steps
from fl_lib.core.config import KEYLESS_DEFAULTS, Config
from fl_lib.core.errors import ConfigError
from fl_lib.core.schedule import EpochDecay, LossEpochs, epochs_per_round, next_epochs
from fl_lib.runtime import results
from fl_lib.simulator import batched
from fl_lib.simulator.build import all_stage_classes, check, stage_classes
from fl_lib.simulator.federation import Federation
from tests.test_batched import _relative_gap, in_float64
from tests.tiny import tiny_data as build_tiny_data

NONE8 = [None] * 8  # eight rounds without recorded losses: decay and fixed do not read them


# -- the rules, on hand-checked cases -------------------------------------------------------------
def test_decay_halves_every_h_rounds_down_to_one(tiny):
    """E_t = max(1, floor(E / 2^floor((t - 1) / h))), written out by hand."""
    assert epochs_per_round(tiny(local_epochs=5, epoch_schedule="decay", epoch_halving=2), NONE8) == [
        5, 5, 2, 2, 1, 1, 1, 1]
    assert epochs_per_round(tiny(local_epochs=20, epoch_schedule="decay", epoch_halving=1), NONE8) == [
        20, 10, 5, 2, 1, 1, 1, 1]
    assert epochs_per_round(tiny(local_epochs=3, epoch_schedule="decay", epoch_halving=4), NONE8) == [
        3, 3, 3, 3, 1, 1, 1, 1]
    assert epochs_per_round(tiny(local_epochs=1, epoch_schedule="decay", epoch_halving=1), NONE8) == [1] * 8
    assert epochs_per_round(tiny(local_epochs=5), NONE8) == [5] * 8  # fixed


def test_loss_rule_halves_when_the_drop_since_the_last_round_at_that_e_is_small(tiny):
    """theta = 0.1. After round 3 (1.5 -> 1.4, a 6.7 % drop, both at E = 4) E halves to 2; round 4's loss
    rose, but round 3 ran at another E, so E stays; 1.45 -> 1.2 (17 %) keeps it; 1.2 -> 1.19 halves it."""
    cfg = tiny(local_epochs=4, epoch_schedule="loss", epoch_min_drop=0.1)
    losses = [2.0, 1.5, 1.4, 1.45, 1.2, 1.19, 1.0, 0.99]
    assert epochs_per_round(cfg, losses) == [4, 4, 4, 2, 2, 2, 1, 1]


def test_loss_rule_edges():
    """A drop of exactly theta keeps E; a round without a loss (None, or nan read from a CSV) decides nothing."""
    assert next_epochs((4, 1.0), (4, 0.75), 0.25) == 4  # (1 - 0.75) / 1 = 0.25, not below theta
    assert next_epochs((4, 1.0), (4, 0.875), 0.25) == 2
    assert next_epochs((3, 1.0), (3, 1.0), 0.0) == 3  # theta = 0: halve only when the loss rises
    assert next_epochs((3, 1.0), (3, 1.25), 0.0) == 1  # floor(3 / 2)
    assert next_epochs((1, 1.0), (1, 2.0), 0.5) == 1  # never below 1
    for missing in (None, math.nan):
        assert next_epochs((4, missing), (4, 1.0), 0.5) == 4
        assert next_epochs((4, 1.0), (4, missing), 0.5) == 4


def test_loss_schedule_needs_the_losses_before_a_round_and_keeps_its_state():
    s = LossEpochs(4, 0.5)
    assert s.epochs(1) == 4
    with pytest.raises(ValueError, match="E of round 3 depends on the training losses before it"):
        s.epochs(3)
    s.observe(1, 1.0)
    s.observe(2, 0.9)
    with pytest.raises(ValueError, match="rounds come in order"):
        s.observe(4, 0.8)
    assert s.epochs(3) == 2
    copy = LossEpochs(4, 0.5)
    copy.load_state_dict(s.state_dict())
    assert copy.epochs(3) == 2 and copy.state_dict() == s.state_dict() == {"history": [4, 4, 2], "losses": [1.0, 0.9]}
    assert EpochDecay(8, 1).state_dict() == {}  # decay follows from t: nothing to checkpoint


# -- the config and the pipeline ------------------------------------------------------------------
def test_defaults_leave_the_cache_key_and_the_pipeline_as_they_were(tiny):
    cfg = tiny()
    for name in ("epoch_schedule", "epoch_halving", "epoch_min_drop"):
        assert KEYLESS_DEFAULTS[name] == Config.__dataclass_fields__[name].default
    assert cfg.key() == tiny(epoch_schedule="fixed").key() != tiny(epoch_schedule="decay").key()
    assert not set(stage_classes(cfg)) & {EpochDecay, LossEpochs}
    assert {EpochDecay, LossEpochs} <= set(all_stage_classes())
    assert EpochDecay in stage_classes(tiny(epoch_schedule="decay"))


@pytest.mark.parametrize("fields, message", [
    (dict(epoch_schedule="linear"), "epoch_schedule='linear' is not allowed: must be one of fixed, decay, loss"),
    (dict(epoch_halving=0), "epoch_halving=0 is not allowed: must be int in [1, 1000000]"),
    (dict(epoch_min_drop=1.5), "epoch_min_drop=1.5 is not allowed: must be float in [0, 1]"),
])
def test_bad_values_are_refused_in_one_line(tiny, fields, message):
    with pytest.raises(ConfigError) as e:
        tiny(**fields)
    assert str(e.value) == message


@pytest.mark.parametrize("fields, message", [
    (dict(epoch_schedule="decay", algorithm="fedsgd"), "epoch-decay cannot be combined with server-sgd: FedSGD"),
    (dict(epoch_schedule="loss", algorithm="fedbuff", link="mobile"), "epoch-loss cannot be combined with buffer"),
    (dict(epoch_halving=3), "epoch_halving=3 applies to epoch_schedule='decay' only: leave it at 10"),
    (dict(epoch_schedule="decay", epoch_min_drop=0.2), "epoch_min_drop=0.2 applies to epoch_schedule='loss' only"),
])
def test_schedules_that_cannot_apply_are_refused_in_one_line(tiny, fields, message):
    with pytest.raises(ConfigError, match=message) as e:
        check(tiny(**fields))
    assert "\n" not in str(e.value)


def test_flower_refuses_the_loss_schedule_only(tiny):
    flower = pytest.importorskip("fl_lib.runtime.flower")
    with pytest.raises(ConfigError, match="epoch_schedule='loss' follows the server's recorded losses"):
        flower.check_flower_config(tiny(epoch_schedule="loss"))
    flower.check_flower_config(tiny(epoch_schedule="decay"))  # E_t follows from t, which every client knows


# -- the rounds take E_t -------------------------------------------------------------------------
def count_steps(fed) -> list:
    """Wrap the federation's optimizer so each call of step() adds one to the returned counter."""
    counter, step = [0], fed.trainer.opt.step

    def counted(*a, **k):
        counter[0] += 1
        return step(*a, **k)

    fed.trainer.opt.step = counted
    return counter


def expected_steps(fed, epochs: int) -> int:
    return sum(num_steps(fed.sizes[k], fed.cfg.batch_size, epochs) for k in fed.sample_clients(1))


def test_a_decay_run_takes_e_t_epochs_of_steps_per_round(tiny, tiny_data):
    """E = 4 halved every round: 4, 2, 1, 1 local epochs, counted in optimizer steps over the four clients."""
    fed = Federation(tiny(local_epochs=4, epoch_schedule="decay", epoch_halving=1), data=tiny_data)
    counter, per_round = count_steps(fed), []
    for t in range(1, 5):
        before = counter[0]
        fed.round(t)
        per_round.append(counter[0] - before)
    assert per_round == [expected_steps(fed, e) for e in (4, 2, 1, 1)]
    assert per_round[0] == 4 * per_round[2] > 0


def test_a_schedule_trains_as_fixed_e_where_its_e_t_is_that_e(tiny, tiny_data):
    """Round 1 of decay from E = 4 is fixed E = 4's round 1, byte for byte; decay from E = 1 is FedAvg at E = 1."""
    decay = Federation(tiny(local_epochs=4, epoch_schedule="decay", epoch_halving=1), data=tiny_data)
    assert decay.round(1).as_dict() == Federation(tiny(local_epochs=4), data=tiny_data).round(1).as_dict()
    flat = Federation(tiny(epoch_schedule="decay", epoch_halving=1), data=tiny_data)
    fixed = Federation(tiny(), data=tiny_data)
    assert [flat.round(t).as_dict() for t in (1, 2, 3)] == [fixed.round(t).as_dict() for t in (1, 2, 3)]


def test_the_clock_charges_e_t_epochs(tiny, tiny_data):
    """Round t's compute time under the schedule equals a fixed run's at E = E_t (same links, same client)."""
    cfg = tiny(local_epochs=4, epoch_schedule="decay", epoch_halving=1, link="mobile")
    fed = Federation(cfg, data=tiny_data)
    for t, e in ((1, 4), (2, 2), (3, 1)):
        fixed = Federation(tiny(local_epochs=e, link="mobile"), data=tiny_data)
        assert fed.client_time(t, 0, 32) == fixed.client_time(t, 0, 32)
        assert fed.client_time(t, 0, 32) != Federation(tiny(local_epochs=8, link="mobile"), data=tiny_data).client_time(
            t, 0, 32)  # E matters to the time at all


def test_batched_clients_take_e_t_epochs_like_the_trainer(tiny, tiny_data, monkeypatch):
    """In round 2 of E = 4 halved every round both trainers take 2 epochs (float64: equal to 1e-9)."""
    cfg = tiny(num_clients=5, alpha=0.1, min_size=3, local_epochs=4, epoch_schedule="decay", epoch_halving=1,
               momentum=0.9, weight_decay=5e-4)
    fed = in_float64(Federation(cfg, data=tiny_data), monkeypatch)
    chosen = fed.sample_clients(2)
    slots = []
    stack = batched._stack
    monkeypatch.setattr(batched, "_stack", lambda pairs: (slots.append(len(pairs)), stack(pairs))[1])
    out = batched.train_clients(fed.trainer, chosen, 2, fed.global_state)
    assert sum(slots) == sum(num_steps(fed.sizes[k], cfg.batch_size, 2) for k in chosen)
    for k in chosen:
        loss = fed.train_client(k, 2)
        assert _relative_gap(fed.model.state_dict(), out[k][0], fed.global_state) < 1e-9
        torch.testing.assert_close(out[k][1], loss, rtol=1e-5, atol=1e-6)


def test_sequential_and_batched_rounds_agree_under_a_schedule(tiny, tiny_data):
    """Three rounds of the loss-driven schedule (theta = 0.5 halves E after round 2) through Federation.round."""
    cfg = tiny(local_epochs=4, epoch_schedule="loss", epoch_min_drop=0.5, num_rounds=3)
    rows, epochs = {}, {}
    for engine in ("sequential", "batched"):
        fed = Federation(cfg.replace(engine=engine), data=tiny_data)
        rows[engine] = [fed.round(t) for t in range(1, 4)]
        epochs[engine] = fed.pipeline.schedule.history
    assert epochs["sequential"] == epochs["batched"] == [4, 4, 2]
    for a, b in zip(rows["sequential"], rows["batched"]):
        assert a.upload_bytes == b.upload_bytes
        for key in ("train_loss", "test_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-3)


def test_pool_workers_take_the_servers_e_t(tiny, tiny_data):
    """The loss rule's E_t depends on the server's losses: the pool ships them, so its rounds are byte for byte
    the sequential engine's (one thread each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny(num_clients=5, alpha=0.5, local_epochs=4, epoch_schedule="loss", epoch_min_drop=0.5)
        seq = Federation(cfg, data=tiny_data)
        expected = [seq.round(t).as_dict() for t in range(1, 4)]
        fed = Federation(cfg.replace(engine="pool", workers=2), data=build_tiny_data())  # the pool shares its data
        try:
            got = [fed.round(t).as_dict() for t in range(1, 4)]
        finally:
            fed.close()
    finally:
        torch.set_num_threads(before)
    assert seq.pipeline.schedule.history == [4, 4, 2]
    assert got == expected


def test_a_resumed_loss_run_equals_one_in_one_go_and_replays_from_its_metrics(tiny, tiny_data, tmp_path):
    """Two rounds, then extended to four, equals four at once (the schedule's state is checkpointed), and
    epochs_per_round on metrics.csv's train_loss gives the E_t the run trained."""
    cfg = tiny(local_epochs=4, epoch_schedule="loss", epoch_min_drop=0.5)
    whole = results.run(cfg, tmp_path / "whole", data=tiny_data, progress=False, log=lambda m: None)
    results.run(cfg.replace(num_rounds=2), tmp_path / "parts", data=tiny_data, progress=False, log=lambda m: None)
    parts = results.run(cfg, tmp_path / "parts", data=tiny_data, progress=False, log=lambda m: None)
    assert (tmp_path / "whole" / "metrics.csv").read_text() == (tmp_path / "parts" / "metrics.csv").read_text()
    fed = Federation(cfg, data=tiny_data)
    counter, steps = count_steps(fed), []
    for t in range(1, 5):
        before = counter[0]
        fed.round(t)
        steps.append(counter[0] - before)
    replayed = epochs_per_round(cfg, whole.metrics.train_loss)
    assert replayed == fed.pipeline.schedule.history and len(set(replayed)) > 1
    assert steps == [expected_steps(fed, e) for e in replayed]
    assert parts.metrics.train_loss.tolist() == whole.metrics.train_loss.tolist()
