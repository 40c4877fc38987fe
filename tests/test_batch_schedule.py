"""The batch-size schedule (core/schedule.py, `batch_schedule`): B_t per round, checked by hand and by oracles.

At batch_schedule='fixed' nothing of it is in the pipeline and every number is as before
(tests/test_unchanged.py pins them). 'grow' doubles B every h rounds up to B_max; every
engine (sequential, batched, pool) trains round t at B_t, and a grow run is, round by
round, a fixed run at batch_size = B_t started from the same global model.
"""
import pytest
import torch

from fl_lib.core.client import num_steps
from fl_lib.core.config import KEYLESS_DEFAULTS, Config
from fl_lib.core.errors import ConfigError
from fl_lib.core.schedule import BatchGrowth, batch_sizes_per_round
from fl_lib.runtime import results
from fl_lib.simulator.build import all_stage_classes, check, stage_classes
from fl_lib.simulator.federation import Federation
from tests.tiny import tiny_data as build_tiny_data

GROW = dict(batch_size=4, batch_schedule="grow", batch_doubling=1, batch_max=16)  # B_t = 4, 8, 16, 16, ...
quiet = lambda msg: None  # noqa: E731


# -- the rule ---------------------------------------------------------------------------------------
def test_grow_doubles_every_h_rounds_up_to_the_cap(tiny):
    """B_t = min(B_max, B * 2^floor((t - 1) / h)), written out by hand; B_max = 0 is no cap."""
    assert batch_sizes_per_round(tiny(**GROW), 5) == [4, 8, 16, 16, 16]
    assert batch_sizes_per_round(tiny(batch_size=10, batch_schedule="grow", batch_doubling=3), 8) == [
        10, 10, 10, 20, 20, 20, 40, 40]
    assert batch_sizes_per_round(tiny(batch_size=10, batch_schedule="grow", batch_doubling=2, batch_max=25), 7) == [
        10, 10, 20, 20, 25, 25, 25]
    assert batch_sizes_per_round(tiny(batch_size=10, batch_schedule="grow", batch_max=10), 3) == [10] * 3
    assert batch_sizes_per_round(tiny(), 3) == [16] * 3  # fixed
    assert batch_sizes_per_round(tiny(batch_size=None), 2) == [None] * 2  # fixed, full batch
    assert BatchGrowth(1, 1, 0).batch_size(10 ** 6) == 2 ** 40  # huge t: no giant integers


# -- the config ---------------------------------------------------------------------------------------
def test_defaults_leave_the_cache_key_and_the_pipeline_as_they_were(tiny):
    for name in ("batch_schedule", "batch_doubling", "batch_max"):
        assert KEYLESS_DEFAULTS[name] == Config.__dataclass_fields__[name].default
    assert tiny().key() == tiny(batch_schedule="fixed").key() != tiny(**GROW).key()
    assert BatchGrowth not in stage_classes(tiny()) and BatchGrowth in stage_classes(tiny(**GROW))
    assert BatchGrowth in all_stage_classes()


@pytest.mark.parametrize("fields, message", [
    (dict(batch_schedule="shrink"), "batch_schedule='shrink' is not allowed: must be one of fixed, grow"),
    (dict(batch_doubling=0), "batch_doubling=0 is not allowed: must be int in [1, 1000000]"),
    (dict(batch_max=-1), "batch_max=-1 is not allowed: must be int in [0, 1000000]"),
])
def test_bad_values_are_refused_in_one_line(tiny, fields, message):
    with pytest.raises(ConfigError) as e:
        tiny(**fields)
    assert str(e.value) == message


@pytest.mark.parametrize("fields, message", [
    (dict(GROW, algorithm="fedsgd", batch_size=None), "batch-grow cannot be combined with server-sgd: FedSGD"),
    (dict(GROW, algorithm="fedbuff", link="mobile"), "batch-grow cannot be combined with buffer: FedBuff"),
    (dict(GROW, scaffold=True), "batch-grow cannot be combined with scaffold: SCAFFOLD's control variates"),
    (dict(batch_schedule="grow", batch_size=None), "batch_schedule='grow' doubles B, but batch_size=None"),
    (dict(GROW, batch_max=2), "batch_max=2 is below batch_size=4: B_max caps the growing B"),
    (dict(batch_doubling=3), "batch_doubling=3 applies to batch_schedule='grow' only: leave it at 10"),
    (dict(batch_max=64), "batch_max=64 applies to batch_schedule='grow' only: leave it at 0"),
])
def test_schedules_that_cannot_apply_are_refused_in_one_line(tiny, fields, message):
    with pytest.raises(ConfigError, match=message) as e:
        check(tiny(**fields))
    assert "\n" not in str(e.value)


# -- the rounds take B_t -----------------------------------------------------------------------------
def test_fixed_is_todays_run_byte_for_byte(tiny, tiny_data, tmp_path):
    """batch_schedule='fixed' spelled out writes the metrics.csv of a config that never names it."""
    plain = results.run(tiny(), tmp_path / "plain", data=tiny_data, progress=False, log=quiet)
    named = results.run(tiny(batch_schedule="fixed", batch_doubling=10, batch_max=0), tmp_path / "named",
                        data=tiny_data, progress=False, log=quiet)
    assert (plain.dir / "metrics.csv").read_text() == (named.dir / "metrics.csv").read_text()
    assert plain.summary["config_key"] == named.summary["config_key"]


def test_a_grow_run_is_a_fixed_run_at_b_t_round_by_round(tiny, tiny_data):
    """Round t of grow equals round t of fixed batch_size = B_t started from the same global model, byte for byte;
    and its optimizer takes E ceil(n_k / B_t) steps per client."""
    grow = Federation(tiny(**GROW), data=tiny_data)
    step, counter = grow.trainer.opt.step, [0]
    grow.trainer.opt.step = lambda *a, **k: (counter.__setitem__(0, counter[0] + 1), step(*a, **k))[1]
    for t, b in zip(range(1, 4), (4, 8, 16)):
        by_hand = Federation(tiny(batch_size=b), data=tiny_data)
        by_hand.global_state = {n: v.clone() for n, v in grow.global_state.items()}
        before = counter[0]
        row = grow.round(t)
        assert counter[0] - before == sum(num_steps(grow.sizes[k], b, 1) for k in grow.sample_clients(t))
        assert row.as_dict() == by_hand.round(t).as_dict()
        for n, v in grow.global_state.items():
            assert torch.equal(v, by_hand.global_state[n])


def test_sequential_and_batched_rounds_agree_under_growth(tiny, tiny_data):
    """Three rounds at B_t = 4, 8, 16 through Federation.round in both engines (float rounding apart)."""
    rows = {}
    for engine in ("sequential", "batched"):
        fed = Federation(tiny(**GROW, engine=engine), data=tiny_data)
        rows[engine] = [fed.round(t) for t in range(1, 4)]
    for a, b in zip(rows["sequential"], rows["batched"]):
        assert a.upload_bytes == b.upload_bytes
        for key in ("train_loss", "test_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-3)
    fixed = Federation(tiny(batch_size=4, engine="batched"), data=tiny_data)
    assert [fixed.round(t).train_loss for t in (1, 2)] != [r.train_loss for r in rows["batched"][:2]]


def test_pool_workers_take_b_t(tiny):
    """The workers build the pipeline from the config, so their B_t is the server's: the pool's rounds are the
    sequential engine's byte for byte (one thread each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny(num_clients=5, alpha=0.5, **GROW)
        seq = Federation(cfg, data=build_tiny_data())
        expected = [seq.round(t).as_dict() for t in range(1, 4)]
        fed = Federation(cfg.replace(engine="pool", workers=2), data=build_tiny_data())  # the pool shares its data
        try:
            got = [fed.round(t).as_dict() for t in range(1, 4)]
        finally:
            fed.close()
    finally:
        torch.set_num_threads(before)
    assert got == expected


def test_a_resumed_grow_run_equals_one_in_one_go(tiny, tiny_data, tmp_path):
    """Two rounds (B_t = 4, 8), then extended to four (16, 16), equals four at once; so does a run resumed
    from its round-2 checkpoint after an interruption in round 3."""
    cfg = tiny(**GROW, checkpoint_every=1)
    whole = results.run(cfg, tmp_path / "whole", data=tiny_data, progress=False, log=quiet)
    results.run(cfg.replace(num_rounds=2), tmp_path / "parts", data=tiny_data, progress=False, log=quiet)
    results.run(cfg, tmp_path / "parts", data=tiny_data, progress=False, log=quiet)
    expected = (whole.dir / "metrics.csv").read_text()
    assert (tmp_path / "parts" / "metrics.csv").read_text() == expected

    def stop(t):
        if t == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        results.run(cfg, tmp_path / "cut", data=tiny_data, progress=False, log=quiet, on_round=stop)
    assert not (tmp_path / "cut" / "summary.json").exists()
    results.run(cfg, tmp_path / "cut", data=tiny_data, progress=False, log=quiet)
    assert (tmp_path / "cut" / "metrics.csv").read_text() == expected
