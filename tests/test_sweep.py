"""sweep: the combinations and their order, the configs (so the cache keys) of runs made by hand, one tidy frame."""
import pandas as pd
import pytest

from fl_lib.core.errors import ConfigError, DivergenceError
from fl_lib.runtime import results
from fl_lib.study.sweep import grid, sweep
from tiny import tiny_config, tiny_data

BASE = tiny_config(num_rounds=2)


def test_grid_is_the_product_first_axis_outermost():
    runs = grid(BASE, {"seed": [0, 1], "bits": [32, 8]})
    assert [cols for cols, _ in runs] == [{"seed": 0, "bits": 32}, {"seed": 0, "bits": 8},
                                          {"seed": 1, "bits": 32}, {"seed": 1, "bits": 8}]
    assert [cfg for _, cfg in runs] == [BASE.replace(seed=s, bits=b) for s in (0, 1) for b in (32, 8)]


def test_grid_of_a_list_with_fixed_values_and_named_settings():
    axes = [{"seed": [0, 1], "bits": [32, 8]},
            {"seed": 0, "policy": {"INT8 delta": {"bits": 8, "upload": "delta"}}}]
    runs = grid(BASE, axes)
    assert [cols for cols, _ in runs][-1] == {"seed": 0, "bits": 8, "policy": "INT8 delta"}
    assert runs[0][0] == {"seed": 0, "bits": 32, "policy": None}  # a named axis the first grid lacks
    assert runs[-1][1] == BASE.replace(seed=0, bits=8, upload="delta")
    assert len(runs) == 5


@pytest.mark.parametrize("axes, message", [
    ({"bitz": [8]}, "axis 'bitz' is not a Config field; allowed fields: dataset, data_root,"),
    ({"policy": {"a": {"bitz": 8}}}, "axis 'policy', 'a': 'bitz' is not a Config field; allowed fields: dataset"),
    ({"policy": {"a": 8}}, "axis 'policy', 'a': 8 is not a Config field"),
    ({"bits": {"INT8": {"bits": 8}}}, "axis 'bits' holds named settings, so it needs a name that is not a Config"),
    ({"test_acc": [1]}, "axis 'test_acc' is not allowed: a run's metrics already have that column"),
    ({"bits": []}, "axis 'bits' has no values"),
    ({}, "axes={} is not allowed"),
    ([], "axes=\\[\\] is not allowed"),
    ({"bits": 8, "p": {"a": {"bits": 16}}}, "two axes set bits \\(8 and 16\\)"),
])
def test_bad_axes_are_one_line_naming_the_value(axes, message):
    with pytest.raises(ConfigError, match=message) as e:
        grid(BASE, axes)
    assert "\n" not in str(e.value)


def test_a_bad_value_is_the_configs_own_error():
    with pytest.raises(ConfigError, match="bits"):
        grid(BASE, {"bits": [32, 1]})


def test_sweep_is_every_metrics_row_of_the_runs_made_by_hand(tmp_path):
    frame = sweep(BASE, {"seed": [0, 1], "bits": [32, 8]}, root=tmp_path, workers=1, progress=False,
                  label=lambda c: f"{c['bits']} bits")
    configs = [BASE.replace(seed=s, bits=b) for s in (0, 1) for b in (32, 8)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(c.key() for c in configs)  # the same cache keys
    expected = pd.concat([results.run(c, root=tmp_path, progress=False).metrics
                          .assign(seed=c.seed, bits=c.bits, label=f"{c.bits} bits") for c in configs],
                         ignore_index=True)
    pd.testing.assert_frame_equal(frame, expected)
    assert list(frame.columns[-3:]) == ["seed", "bits", "label"] and len(frame) == 4 * 2


def test_sweep_reads_stored_runs_back_without_computing(tmp_path, monkeypatch):
    first = sweep(BASE, {"bits": [32, 8]}, root=tmp_path, workers=1, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a stored run was computed again")

    monkeypatch.setattr(results, "_compute", refuse)
    pd.testing.assert_frame_equal(sweep(BASE, {"bits": [32, 8]}, root=tmp_path, workers=1, progress=False), first)


def test_sweep_on_in_memory_data_runs_here_one_by_one(tmp_path):
    data = tiny_data()
    frame = sweep(BASE, {"seed": [0, 1]}, root=tmp_path, progress=False, data=data)
    for s in (0, 1):
        by_hand = results.run(BASE.replace(seed=s), root=tmp_path / "by_hand", progress=False, data=data).metrics
        pd.testing.assert_frame_equal(frame[frame.seed == s].drop(columns=["seed", "seconds"]).reset_index(drop=True),
                                      by_hand.drop(columns="seconds"))


def test_a_failed_run_raises_or_is_kept_as_one_row(tmp_path, monkeypatch):
    real = results.run

    def run(cfg, **kwargs):
        if cfg.seed == 1:
            raise DivergenceError("diverged in round 1")
        return real(cfg, **kwargs)

    monkeypatch.setattr(results, "run", run)
    with pytest.raises(DivergenceError):
        sweep(BASE, {"seed": [0, 1]}, root=tmp_path, progress=False, data=tiny_data())
    frame = sweep(BASE, {"seed": [0, 1]}, root=tmp_path, progress=False, data=tiny_data(), errors="keep",
                  label=str)
    failed = frame[frame.error.notna()]
    assert len(failed) == 1 and failed.seed.iloc[0] == 1 and isinstance(failed.error.iloc[0], DivergenceError)
    assert failed["round"].isna().all() and failed.label.iloc[0] == "{'seed': 1}"
    assert frame[frame.seed == 0].error.isna().all() and len(frame[frame.seed == 0]) == 2
    with pytest.raises(ConfigError, match="errors='skip' is not allowed"):
        sweep(BASE, {"seed": [0]}, root=tmp_path, errors="skip")
