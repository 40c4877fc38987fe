"""Time to a target on any clock, per group, and the best accuracy by a time: against hand-worked curves."""
import math

import pandas as pd
import pytest

from fl_lib.study.measures import best_acc_until, time_to_target, time_to_target_by


def run(acc, sim_time, **cols):
    """A run's metrics: round 1.. with test_acc (None: not evaluated) and a simulated clock."""
    return pd.DataFrame({"round": range(1, len(acc) + 1), "test_acc": [math.nan if a is None else a for a in acc],
                         "sim_time": sim_time, **cols})


def test_time_to_target_interpolates_on_any_clock():
    m = run([0.1, None, 0.5, 0.9], [10.0, 20.0, 30.0, 40.0])
    # best so far 0.1 (round 1, t = 10) then 0.5 (round 3, t = 30): 0.3 is halfway between them
    assert time_to_target(m, 0.3) == pytest.approx(2.0)
    assert time_to_target(m, 0.3, x="sim_time") == pytest.approx(20.0)
    assert time_to_target(m, 0.05, x="sim_time") == 10.0  # reached at the first evaluation
    assert time_to_target(m, 0.95, x="sim_time") is None


def test_time_to_target_uses_the_best_so_far():
    m = run([0.2, 0.6, 0.1, 0.7], [1.0, 2.0, 3.0, 4.0])
    # the best so far is 0.6 at t = 2 and still 0.6 at t = 3 (the dip does not count), then 0.7 at t = 4
    assert time_to_target(m, 0.65, x="sim_time") == pytest.approx(3.5)


def test_time_to_target_by_groups_in_order_with_nan_for_not_reached():
    frame = pd.concat([run([0.1, 0.5], [1.0, 3.0], label="b", seed=0),
                       run([0.1, 0.2], [1.0, 2.0], label="a", seed=0),
                       run([0.4, 0.6], [2.0, 4.0], label="b", seed=1)], ignore_index=True)
    by_label = time_to_target_by(frame, "label", 0.3, x="sim_time")
    assert list(by_label.index) == ["b", "a"] and by_label.index.name == "label" and by_label.dtype == float
    # "b" pools both seeds' rows into one curve, 0.1 at t = 1 then 0.4 at t = 2; "a" never reaches 0.3
    assert by_label["b"] == pytest.approx(1.0 + 0.2 / 0.3) and math.isnan(by_label["a"])
    per_run = time_to_target_by(frame, ["label", "seed"], 0.3, x="sim_time")
    assert list(per_run.index) == [("b", 0), ("a", 0), ("b", 1)] and per_run.index.names == ["label", "seed"]
    assert per_run[("b", 0)] == pytest.approx(2.0) and per_run[("b", 1)] == 2.0
    assert per_run.notna().sum() == 2


def test_best_acc_until():
    m = run([0.2, None, 0.6, 0.4], [1.0, 2.0, 3.0, 4.0])
    assert best_acc_until(m, "sim_time", 2.5) == 0.2
    assert best_acc_until(m, "sim_time", 3.0 - 1e-13) == 0.6  # the end of another run's clock, after rounding
    assert best_acc_until(m, "sim_time", 10.0) == 0.6  # the best so far, not the last
    assert math.isnan(best_acc_until(m, "sim_time", 0.5))
    assert best_acc_until(m, "round", 1) == 0.2
