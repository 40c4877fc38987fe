"""Early convergence (lesson 05): the mean accuracy over the first rounds, against curves worked by hand."""
import math

import pandas as pd
import pytest

from fl_lib.study.measures import early_auc, early_auc_by, paired_verdicts, rounds_to_target


def run(acc, **cols):
    """A run's metrics: rounds 1.. with test_acc (None: not evaluated)."""
    return pd.DataFrame({"round": range(1, len(acc) + 1), "test_acc": [math.nan if a is None else a for a in acc],
                         **cols})


def test_early_auc_of_a_straight_line_is_its_midpoint():
    assert early_auc(run([0.1, 0.2, 0.3, 0.4, 0.5]), 5) == pytest.approx(0.3)
    assert early_auc(run([0.7] * 4), 4) == pytest.approx(0.7)


def test_early_auc_looks_only_at_the_first_rounds():
    m = run([0.1, 0.2, 0.3, 0.9, 0.9])
    # trapezoids (0.1 + 0.2) / 2 and (0.2 + 0.3) / 2 over 2 rounds: rounds 4 and 5 do not count
    assert early_auc(m, 3) == pytest.approx(0.2)
    assert early_auc(m, 3.5) == pytest.approx(0.2)  # no evaluation between 3 and 3.5


def test_early_auc_skips_rounds_without_an_evaluation_and_sorts():
    m = run([0.2, None, 0.6, None]).iloc[::-1]
    assert early_auc(m, 4) == pytest.approx(0.4)  # one trapezoid from round 1 to round 3
    assert early_auc(run([None, 0.5, None]), 3) == 0.5  # a single evaluation is its own mean
    assert math.isnan(early_auc(run([None, None]), 2))


def test_early_auc_refuses_a_window_below_one_round():
    with pytest.raises(ValueError, match=r"rounds=0 is not allowed: must be >= 1"):
        early_auc(run([0.1, 0.2]), 0)


def test_a_curve_that_rises_sooner_has_the_larger_area_though_both_end_equal():
    fast, slow = run([0.4, 0.6, 0.7, 0.7]), run([0.1, 0.3, 0.6, 0.7])
    assert early_auc(fast, 4) > early_auc(slow, 4)
    assert rounds_to_target(fast.set_index("round").test_acc, 0.6) < rounds_to_target(slow.set_index("round").test_acc, 0.6)
    assert early_auc(fast, 4) == pytest.approx((0.5 + 0.65 + 0.7) / 3)


def test_early_auc_by_feeds_paired_verdicts():
    frame = pd.concat([run([0.4, 0.6], label="INT16", seed=0), run([0.2, 0.4], label="FP32", seed=0),
                       run([0.5, 0.7], label="INT16", seed=1), run([0.2, 0.6], label="FP32", seed=1)],
                      ignore_index=True)
    auc = early_auc_by(frame, ["label", "seed"], 2)
    assert list(auc.index) == [("INT16", 0), ("FP32", 0), ("INT16", 1), ("FP32", 1)]
    assert auc.tolist() == pytest.approx([0.5, 0.3, 0.6, 0.4])
    verdict = paired_verdicts(auc.rename("auc").reset_index(), "FP32", "auc")
    # paired differences 0.2 and 0.2: mean 0.2, spread 0, so INT16 "helps"
    assert verdict.loc["INT16", "mean"] == pytest.approx(0.2) and verdict.loc["INT16", "verdict"] == "helps"


def test_early_convergence_pairs_int16_with_fp32_and_gives_a_verdict():
    """INT16 one round ahead of FP32 on every seed (by different margins): faster, on both measures."""
    from fl_lib.study.measures import early_convergence, early_verdict
    frames = []
    for seed, lead in ((0, 0.1), (1, 0.05), (2, 0.08)):
        fp32 = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6]
        frames.append(run(fp32, label="FP32", bits=32, seed=seed))
        frames.append(run([min(a + lead, 0.6) for a in fp32], label="INT16", bits=16, seed=seed))
    table, targets = early_convergence(pd.concat(frames), rounds=4)
    assert targets == [0.3, 0.45, 0.54]  # fractions 0.5, 0.75, 0.9 of FP32's best, 0.6
    int16 = table.xs("INT16", level="label")
    assert set(int16.verdict) == {"faster"} and (int16.seeds == 3).all()
    assert int16.loc["early area, R = 4", "mean"] == pytest.approx((0.1 + 0.05 + 0.08) / 3)
    text = early_verdict(table, 4)
    assert "**holds** in this run (faster)" in text and "paired over 3 seed(s): +0.0767" in text
