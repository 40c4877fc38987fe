"""Lesson 09's clock view, link widget and plot helpers: the engine's own clock, redrawn without training."""
import math

import numpy as np
import pandas as pd
import pytest

from fl_lib.study import plots
from fl_lib.core.config import preset
from fl_lib.core.data import synthetic
from fl_lib.simulator.federation import Federation
from fl_lib.core.links import WIDTHS, transfer_seconds
from fl_lib.study.widgets import LinkExplorer, clock_stats, clock_summary, clock_view, width_label

ROUNDS = 3


@pytest.fixture(scope="module")
def data():
    return synthetic(num_train=300, num_test=50, seed=0)


@pytest.fixture(scope="module")
def cfg():
    return preset("smoke", link="mobile", num_rounds=ROUNDS, device="cpu")


@pytest.fixture()
def fed(cfg, data, monkeypatch):
    fed = Federation(cfg, data=data)

    def no_training(*args, **kwargs):
        raise AssertionError("the clock view must not train")
    monkeypatch.setattr(fed, "train_client", no_training)
    monkeypatch.setattr(fed, "local_update", no_training)
    return fed


@pytest.mark.parametrize("changes", [dict(link="lognormal:5,1.5", bits_policy="adaptive"),
                                     dict(link="iot", deadline=300.0, bits_policy="adaptive"),
                                     dict(link="mobile", deadline=1.0, bits=16)])
def test_clock_view_plans_as_a_fresh_federation(fed, cfg, data, changes):
    """Oracle: a Federation built from scratch with the changed config plans the same widths, durations, kept."""
    view, fresh = clock_view(fed, **changes), Federation(cfg.replace(**changes), data=data)
    for t in range(1, ROUNDS + 1):
        chosen = fresh.sample_clients(t)
        assert view.plan(t, chosen) == fresh.plan(t, chosen)
    assert fed.cfg == cfg and fed.links.profile.name == "mobile"  # the original is untouched


def test_clock_stats_rows_follow_the_engine(fed):
    stats = clock_stats(fed, "mobile", 0.0, (32, 8), ROUNDS)
    assert list(dict.fromkeys(stats.policy)) == ["FP32", "INT8", "adaptive"]
    assert len(stats) == 3 * ROUNDS * fed.cfg.clients_per_round
    parts = stats.download_s + stats.compute_s + stats.upload_s + stats.latency_s
    np.testing.assert_allclose(parts, stats.total_s)
    fp32 = stats[stats.policy == "FP32"]
    for t, g in fp32.groupby("round"):  # no deadline: everyone kept, the round lasts the slowest client
        assert g.kept.all() and g.round_s.iloc[0] == pytest.approx(g.total_s.max())
        for k, up in zip(g.client, g.upload_s):
            assert up == pytest.approx(transfer_seconds(fed.upload_size(32), fed.links.state(t, k).up_bps))
    adaptive = stats[stats.policy == "adaptive"]
    assert set(adaptive.bits.dropna()) <= set(WIDTHS)
    assert (adaptive.bits.isna() <= ~adaptive.kept).all()  # a client without a width is never kept
    summary = clock_summary(stats)
    assert list(summary.index) == ["FP32", "INT8", "adaptive"]
    assert summary.loc["FP32", "mean round (s)"] == pytest.approx(fp32.drop_duplicates("round").round_s.mean())


def test_width_label():
    assert [width_label(b) for b in (32, 16, 2, None, float("nan"))] == ["FP32", "INT16", "INT2", "late", "late"]


def test_link_explorer_redraws_in_place_without_training(fed):
    ex = LinkExplorer(fed, sigma=1.0, bit_widths=(32, 16, 8), num_rounds=ROUNDS)
    fig, x0 = ex.figure, np.array(ex.figure.data[0].x, dtype=float)
    n = ROUNDS * fed.cfg.clients_per_round
    assert ex.link() == "lognormal:8.56,1"
    assert [np.sum(tr.y) for tr in fig.data[:3]] == [n, n, n]  # every client-round counted once per width
    assert ex.widths.sum() == n

    ex.sigma.value = 0.0  # identical links: every client's upload is 8 U / median exactly
    assert ex.figure is fig and not np.array_equal(np.array(fig.data[0].x, dtype=float), x0)
    for b in (32, 16, 8):
        up = ex.stats[ex.stats.policy == width_label(b)].upload_s
        np.testing.assert_allclose(up, transfer_seconds(fed.upload_size(b), 8.56e6))

    ex.deadline.value = ex.deadline.max  # a deadline every client meets: nobody dropped, adaptive sends 16 bits
    assert ex.stats.kept.all() and (ex.stats[ex.stats.policy == "adaptive"].bits == 16).all()
    assert list(fig.data[-1].y) == [n] + [0] * (len(WIDTHS))

    ex.deadline.value = ex.deadline.step  # shorter than any client's compute: every client late
    assert not ex.stats.kept.any()
    assert fig.data[-1].y[-1] == n and fig.data[-1].hovertext[-1] == "late"
    assert "dropped (%)" in ex.text.value and fig.layout.title.text.startswith("lognormal:8.56,0")


def test_adaptive_widths_bar_has_a_label_for_every_width(fed):
    """The bar chart's x axis carries one tick label per width ("INT16" .. "INT<min_bits>", "late").

    The bars sit at 0, 1, 2, ... on a numeric axis whose tick text is the labels: a categorical
    axis inside the widget's VBox lost every label in JupyterLab (seen in Chromium), so the
    labels must not depend on category handling.
    """
    ex = LinkExplorer(fed, sigma=1.0, bit_widths=(32, 8), num_rounds=ROUNDS, min_bits=4)
    bar = ex.figure.data[-1]
    labels = [f"INT{b}" for b in range(16, 3, -1)] + ["late"]
    assert bar.type == "bar" and list(bar.x) == list(range(len(labels))) and list(bar.hovertext) == labels
    axis = ex.figure.layout["xaxis" + bar.xaxis.removeprefix("x")]
    assert axis.type == "linear" and axis.tickmode == "array"
    assert list(axis.tickvals) == list(range(len(labels))) and list(axis.ticktext) == labels
    assert list(axis.range) == [-0.5, len(labels) - 0.5]
    assert list(bar.y) == ex.widths.tolist() and ex.widths.index.tolist() == labels  # bar i counts label i
    picked = ex.stats[ex.stats.policy == "adaptive"].bits
    assert (picked.dropna() >= 4).all()  # min_bits reaches the widget's policy
    assert list(bar.y) == [sum(width_label(b) == label for b in picked) for label in labels]
    assert sum(bar.y) == ROUNDS * fed.cfg.clients_per_round


def test_common_grid_interpolates_each_run():
    df = pd.DataFrame({"label": ["a"] * 4, "seed": [0, 0, 1, 1], "t": [0.0, 2.0, 1.0, 3.0],
                       "acc": [0.0, 1.0, 0.5, 0.7]})
    g = plots.common_grid(df, "t", "acc", "label", points=3)
    assert list(g.t.unique()) == [1.0, 1.5, 2.0]  # what both runs cover
    np.testing.assert_allclose(g[g.seed == 0].acc, [0.5, 0.75, 1.0])
    np.testing.assert_allclose(g[g.seed == 1].acc, [0.5, 0.55, 0.6])


def test_histogram_steps_count_every_value(tmp_path):
    values = np.array([0.1, 0.2, 0.2, 5.0, 40.0])
    edges = plots.histogram_edges(values, bins=4, log_x=True)
    assert edges[0] == pytest.approx(0.1) and edges[-1] == pytest.approx(40.0)
    np.testing.assert_allclose(np.diff(np.log(edges)), math.log(400) / 4)
    x, y = plots.step_xy(values, edges)
    assert len(x) == len(y) == 6 and y[0] == y[-1] == 0 and y.sum() == len(values)
    df = pd.DataFrame({"s": np.r_[values, values * 2], "w": ["FP32"] * 5 + ["INT16"] * 5})
    fig = plots.histogram(df, "s", "w", log_x=True, name="h", figures_dir=tmp_path)
    assert len(fig.data) == 2 and (tmp_path / "h.png").is_file()
