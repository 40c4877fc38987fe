"""Lesson 10's widget: check boxes overlay cached methods' curves; nothing is trained or recomputed."""
import numpy as np
import pandas as pd
import pytest

from fl_lib.study.widgets import CurveExplorer


@pytest.fixture()
def frame():
    """Two methods x two seeds x three rounds, the columns a sweep gives."""
    rows = []
    for method, shift in (("FedAvg", 0.0), ("FedAdam", 0.1)):
        for seed in (0, 1):
            for t in (1, 2, 3):
                rows.append({"method": method, "seed": seed, "round": t, "test_acc": 0.1 * t + shift + 0.02 * seed,
                             "train_loss": 2.0 - 0.1 * t - shift, "test_loss": np.nan})
    return pd.DataFrame(rows)


def test_curve_explorer_toggles_methods_and_metrics_in_place(frame):
    ex = CurveExplorer(frame, hue="method")
    fig = ex.figure
    assert [tr.name for tr in fig.data[1::2]] == ["FedAvg", "FedAdam"] and len(fig.data) == 4
    assert ex.metric.options == (("test accuracy", "test_acc"), ("clients' training loss", "train_loss"))
    np.testing.assert_allclose(fig.data[3].y, [0.21, 0.31, 0.41])  # FedAdam: mean of the seeds' 0.2 + 0.1 t, + 0.02
    np.testing.assert_allclose(fig.data[1].y + np.std([0.0, 0.02], ddof=1), fig.data[0].y[:3])  # the band: + 1 std
    assert all(tr.visible for tr in fig.data) and "FedAdam" in ex.text.value

    ex.boxes["FedAdam"].value = False  # hide one method: its band and line, nothing else
    assert ex.figure is fig and ex.chosen() == ["FedAvg"]
    assert [tr.visible for tr in fig.data] == [True, True, False, False]
    assert "FedAdam" not in ex.text.value and "0.3100" in ex.text.value  # FedAvg's last round: 0.3 + 0.01

    ex.metric.value = "train_loss"
    np.testing.assert_allclose(fig.data[1].y, [1.9, 1.8, 1.7])
    np.testing.assert_allclose(fig.data[3].y, [1.8, 1.7, 1.6])  # redrawn though hidden: ticking it shows it current
    assert fig.layout.yaxis.title.text == "clients' training loss" and not fig.data[3].visible

    ex.boxes["FedAvg"].value = False
    assert not any(tr.visible for tr in fig.data) and "No method chosen" in ex.text.value


def test_curve_explorer_refuses_unknown_choices(frame):
    with pytest.raises(ValueError, match="chosen 'FedProx' is not a method of the frame: FedAvg, FedAdam"):
        CurveExplorer(frame, hue="method", chosen=["FedProx"])
    with pytest.raises(ValueError, match="none of the metrics"):
        CurveExplorer(frame, hue="method", metrics=("test_loss",))
    ex = CurveExplorer(frame, hue="method", chosen=["FedAdam"])
    assert [tr.visible for tr in ex.figure.data] == [False, False, True, True]
