"""rounds_to_target against hand-worked curves; the mixing experiment and error tables against oracles."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fl_lib.core.data import get_batch, synthetic
from fl_lib.study.measures import local_updates, model_quant_error, quantization_errors, rounds_to_target
from fl_lib.study.mixing import mixing_curves, train_alone, training_loss
from fl_lib.core.models import build_model
from fl_lib.core.quant import fake_quantize, relative_error


# -- rounds_to_target ----------------------------------------------------------------
def test_interpolates_on_the_running_best_not_the_raw_curve():
    # best so far: 0.1, 0.5, 0.5, 0.9; target 0.7 lies halfway from 0.5 (round 3) to 0.9 (round 4).
    # On the raw curve (0.4 at round 3) it would be 3.6.
    assert rounds_to_target([0.1, 0.5, 0.4, 0.9], 0.7) == pytest.approx(3.5)


def test_a_dip_after_reaching_the_target_does_not_matter():
    assert rounds_to_target([0.2, 0.8, 0.1, 0.1], 0.5) == pytest.approx(1 + 0.3 / 0.6)


def test_reached_at_the_first_evaluation_and_exactly_on_target():
    assert rounds_to_target([0.95, 0.97], 0.9) == 1.0
    assert rounds_to_target([0.2, 0.5], 0.5) == 2.0


def test_never_reached_is_none():
    assert rounds_to_target([0.1, 0.2, 0.3], 0.99) is None
    assert rounds_to_target([], 0.5) is None


def test_sparse_evaluations_and_missing_rounds():
    assert rounds_to_target({5: 0.2, 10: 0.6}, 0.4) == pytest.approx(7.5)
    assert rounds_to_target([0.2, None, float("nan"), 0.6], 0.4) == pytest.approx(2.5)  # rounds 2, 3 skipped


def test_accepts_a_series_indexed_by_round():
    s = pd.Series([0.3, 0.6, 0.9], index=[2, 4, 6])
    assert rounds_to_target(s, 0.75) == pytest.approx(5.0)


def test_local_updates_is_mcmahans_u():
    assert local_updates(5, 10, 60000, 100) == 300  # the paper's E=5, B=10 row
    assert local_updates(1, 50, 60000, 100) == 12
    assert local_updates(5, None, 60000, 100) == 5  # B = inf: one step per epoch


# -- quantization error tables --------------------------------------------------------
def test_per_channel_beats_per_tensor_when_channel_scales_differ():
    w = torch.randn(4, 32) * torch.tensor([1.0, 0.1, 0.01, 0.001])[:, None]
    df = quantization_errors({"w": w, "steps": torch.tensor(3)}, [4, 8])
    assert list(df.bits) == [4, 8] and set(df.layer) == {"w"}  # integer buffers skipped
    assert (df.per_channel < df.per_tensor).all()
    # the small channels are where it shows: one shared scale wipes channel 3 out at 4 bits
    small = w[3:]
    assert relative_error(small, fake_quantize(w, 4)[3:]) < 0.2
    assert relative_error(small, fake_quantize(w.reshape(1, -1), 4).reshape(w.shape)[3:]) == pytest.approx(1.0)


def test_one_channel_per_channel_equals_per_tensor():
    w = torch.randn(1, 50)
    df = quantization_errors({"w": w}, [3])
    assert df.per_channel[0] == pytest.approx(df.per_tensor[0])
    assert df.per_channel[0] == pytest.approx(relative_error(w, fake_quantize(w, 3)))


def test_model_quant_error_pools_all_tensors():
    a, b = torch.randn(3, 5), torch.randn(7)
    by_hand = math.sqrt(((fake_quantize(a, 4) - a).pow(2).sum() + (fake_quantize(b, 4) - b).pow(2).sum()).item()
                        / (a.pow(2).sum() + b.pow(2).sum()).item())
    assert model_quant_error({"a": a, "b": b}, 4) == pytest.approx(by_hand, rel=1e-5)
    assert model_quant_error({"a": a}, 32) == 0.0


# -- the mixing experiment (McMahan et al. 2017, Figure 1) ------------------------------
@pytest.fixture(scope="module")
def digits():
    return synthetic(num_train=600, num_test=10, channels=1, size=28, seed=0, name="synthetic-mnist")


@pytest.fixture(scope="module")
def curves(digits):
    return mixing_curves(digits, num_thetas=8, num_samples=200, steps=40, batch_size=50, lr=0.1, seed=0)


def test_mixing_curves_shape(curves):
    assert list(curves.columns) == ["init", "theta", "loss"]
    assert len(curves) == 16
    thetas = curves[curves.init == "shared"].theta.to_numpy()
    np.testing.assert_allclose(thetas, np.linspace(-0.2, 1.2, 8))
    assert np.isfinite(curves.loss).all()


def test_theta_one_is_the_same_first_model_for_both_inits(curves):
    # w is trained from the same init, on the same images, with the same batches in both cases
    at_one = curves[np.isclose(curves.theta, 1.0)].set_index("init").loss
    assert at_one["shared"] == pytest.approx(at_one["independent"], rel=1e-4)


def test_shared_init_mixes_better_than_independent(curves):
    mid = curves[np.isclose(curves.theta, 0.6)].set_index("init").loss
    assert mid["shared"] < mid["independent"]


def test_training_loss_is_mean_cross_entropy_over_the_training_split(digits):
    torch.manual_seed(0)
    model = build_model("2nn", 10, 1, 28)
    x, y = get_batch(digits, torch.arange(len(digits.y_train)), train=True, augment=False)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y).item()
    assert training_loss(model, digits) == pytest.approx(expected, rel=1e-5)


def test_train_alone_lowers_the_loss_on_its_sample(digits):
    torch.manual_seed(0)
    model = build_model("2nn", 10, 1, 28)
    before = training_loss(model, digits)
    train_alone(model, digits, torch.arange(200), steps=40, batch_size=50, lr=0.1, seed=0)
    assert training_loss(model, digits) < before


def test_mixing_needs_two_disjoint_samples(digits):
    with pytest.raises(ValueError, match="training images"):
        mixing_curves(digits, num_samples=400)


def test_summary_upload_per_round_is_the_mean_even_when_the_last_round_dropped_everyone():
    from fl_lib.runtime import results
    rows, timings = [], []
    for t, sent in ((1, 1000), (2, 3000), (3, 0)):  # round 3: every client missed the deadline
        row = {"round": t, "test_acc": None, "upload_bytes": sent, "sim_seconds": 60.0, "dropped_clients": 0,
               "epsilon": None, "seconds": 0.1}
        results.record_round(rows, timings, row)
    totals = results._totals(rows, timings)
    assert totals["upload_bytes_per_round"] == 4000 / 3
    assert totals["upload_mb_per_round"] == 4000 / 3 / 1e6
