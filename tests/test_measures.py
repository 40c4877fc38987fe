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


# -- client drift and paired verdicts (lesson 10) -------------------------------------------
def test_drift_stats_against_hand_worked_updates():
    from fl_lib.study.measures import drift_stats

    opposite = drift_stats([[1.0, 2.0], [-1.0, -2.0]], [5, 5])  # equal weights, opposite walks: they cancel
    assert opposite["mean_update"] == 0 and opposite["agreement"] == 0
    assert opposite["update_norm"] == pytest.approx(math.sqrt(5)) and opposite["spread"] == pytest.approx(math.sqrt(5))
    same = drift_stats([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]], [1, 2, 3])
    assert same["agreement"] == pytest.approx(1.0) and same["spread"] == 0 and same["mean_update"] == pytest.approx(5)
    # n = (3, 1): p = (3/4, 1/4), Delta = (3/4, 1/4); spread = 3/4 |(1/4, -1/4)| + 1/4 |(-3/4, 3/4)|
    s = drift_stats([[1.0, 0.0], [0.0, 1.0]], [3, 1])
    assert s["mean_update"] == pytest.approx(math.sqrt(10) / 4) and s["update_norm"] == pytest.approx(1.0)
    assert s["agreement"] == pytest.approx(math.sqrt(10) / 4)
    assert s["spread"] == pytest.approx(0.75 * math.sqrt(2) / 4 + 0.25 * 3 * math.sqrt(2) / 4)
    assert s["rms_update"] == pytest.approx(math.sqrt(10) / 4 / math.sqrt(2))
    assert math.isnan(drift_stats([[0.0, 0.0]], [1])["agreement"])  # nobody moved
    with pytest.raises(ValueError, match="one row per client"):
        drift_stats([[1.0, 0.0]], [1, 2])


def test_client_updates_step_as_a_fedavg_round(tiny, tiny_data):
    """Oracle: with every client sampled and float32 uploads, FedAvg's round 1 moves the model by exactly
    sum_k p_k Delta_k, and metrics.csv's train_loss is the mean of the clients' losses."""
    import torch

    from fl_lib.simulator.federation import Federation
    from fl_lib.study.measures import client_updates, drift_stats

    cfg = tiny(local_epochs=2)
    fed = Federation(cfg, data=tiny_data)
    start = {k: v.clone() for k, v in fed.global_state.items()}
    row = fed.round(1)
    moved = torch.cat([(fed.global_state[k] - start[k]).flatten() for k in start if start[k].is_floating_point()])
    updates, sizes, losses = client_updates(cfg, start, 1, data=tiny_data)
    assert updates.shape == (cfg.num_clients, moved.numel()) and sizes == fed.sizes
    p = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
    torch.testing.assert_close(p @ updates, moved, rtol=1e-5, atol=1e-6)
    assert float(torch.tensor(losses, dtype=torch.float32).mean()) == pytest.approx(row.train_loss, rel=1e-6)
    drift = drift_stats(updates, sizes)
    assert drift["mean_update"] == pytest.approx(float(torch.linalg.vector_norm(moved)), rel=1e-5)
    assert 0 < drift["agreement"] <= 1 and drift["spread"] > 0
    again, _, _ = client_updates(cfg, start, 1, data=tiny_data)
    assert torch.equal(again, updates)  # deterministic
    initial = Federation(cfg, data=tiny_data).global_state  # the start is left as it was
    assert all(torch.equal(start[k], v) for k, v in initial.items())


def test_stored_model_is_the_last_round_of_the_cached_run(tiny, tiny_data, tmp_path):
    import torch

    from fl_lib.core.errors import FLError
    from fl_lib.runtime import results
    from fl_lib.simulator.federation import Federation
    from fl_lib.study.measures import stored_model

    cfg = tiny(num_rounds=2)
    with pytest.raises(FLError, match="no checkpoint"):
        stored_model(cfg, root=tmp_path)
    results.run(cfg, root=tmp_path, data=tiny_data, progress=False, log=lambda *a: None)
    t, state = stored_model(cfg, root=tmp_path)
    fed = Federation(cfg, data=tiny_data)
    fed.round(1), fed.round(2)
    assert t == 2 and all(torch.equal(state[k], v.cpu()) for k, v in fed.global_state.items())


def test_paired_verdicts_follow_the_stated_rule():
    from fl_lib.study.measures import paired_verdicts

    runs = pd.DataFrame({"label": ["FedAvg", "A", "B", "C", "FedAvg", "A", "B", "C", "D"],
                         "seed": [0, 0, 0, 0, 1, 1, 1, 1, 0],
                         "acc": [0.50, 0.60, 0.45, 0.52, 0.40, 0.52, 0.30, 0.38, 0.7]})
    v = paired_verdicts(runs, "FedAvg", "acc")
    assert list(v.index) == ["A", "B", "C", "D"]
    # A: d = (0.10, 0.12), mean 0.11 > std 0.0141; B: d = (-0.05, -0.10), mean -0.075 < -0.0354;
    # C: d = (0.02, -0.02), mean 0 within std 0.0283; D ran one seed only
    assert v.loc["A", "mean"] == pytest.approx(0.11) and v.loc["A", "std"] == pytest.approx(0.02 / math.sqrt(2))
    assert v.loc["B", "seed 1"] == pytest.approx(-0.10)
    assert list(v.verdict) == ["helps", "hurts", "no difference", "one seed"]
    assert v.loc["D", "seeds"] == 1 and math.isnan(v.loc["D", "seed 1"])
    with pytest.raises(ValueError, match="reference 'FedSGD'"):
        paired_verdicts(runs, "FedSGD", "acc")
