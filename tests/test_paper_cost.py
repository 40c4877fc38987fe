"""benchmarks/paper_cost.py: its extrapolation arithmetic on injected timings, and its probes on a tiny federation."""
import math

import pytest
import torch

from benchmarks import paper_cost
from fl_lib.core.config import preset
from fl_lib.core.data import synthetic
from fl_lib.simulator.federation import Federation


def test_round_seconds_adds_the_four_terms_of_the_paper_round():
    r = paper_cost.Round.of(preset("paper"))
    assert (r.train_samples, r.uploads, r.test_samples, r.rounds) == (250_000, 10, 10_000, 300)  # 5 x 50,000
    m = paper_cost.Measured(bits=16, train_per_s=1000.0, upload_s=0.1, aggregate_s=0.05, eval_per_s=2000.0)
    t = paper_cost.round_seconds(m, r)
    assert (t["train"], t["upload"], t["aggregate"], t["evaluate"]) == (250.0, 1.0, 0.05, 5.0)
    assert t["round"] == pytest.approx(256.05)
    assert t["total_h"] == pytest.approx(256.05 * 300 / 3600)


def test_int16_over_fp32_shares_the_width_independent_terms():
    terms = {32: {"train": 100.0, "upload": 1.0, "aggregate": 0.5, "evaluate": 3.5, "round": 105.0},
             16: {"train": 90.0, "upload": 3.0, "aggregate": 0.5, "evaluate": 4.5, "round": 98.0}}
    own, shared = paper_cost.int16_over_fp32(terms)
    assert own == pytest.approx(98.0 / 105.0)
    assert shared == pytest.approx((99.5 + 3.0) / (99.5 + 1.0))  # common: the mean of 104 and 95


def test_round_counts_follow_sampling_epochs_and_eval_every():
    cfg = preset("paper", num_clients=100, client_fraction=0.1, local_epochs=2, eval_every=5, num_rounds=40)
    r = paper_cost.Round.of(cfg)
    assert (r.train_samples, r.uploads, r.test_samples, r.rounds) == (2 * 10 * 500, 10, 2_000, 40)


def test_tile_repeats_the_subset_in_order_to_the_full_sizes():
    small = synthetic(num_train=30, num_test=7, seed=0)
    big = paper_cost.tile(small, 100, 20)
    assert big.x_train.shape == (100, 3, 32, 32) and big.x_test.shape == (20, 3, 32, 32)
    assert torch.equal(big.x_train[30:60], small.x_train) and torch.equal(big.y_test[14:20], small.y_test[:6])
    assert torch.equal(big.mean, small.mean)


def test_probes_time_every_piece_through_the_engine(capsys):
    data = paper_cost.tile(synthetic(num_train=64, num_test=16, seed=0), 200, 40)
    probes = []
    for bits in paper_cost.BITS:
        cfg = preset("paper", dataset="synthetic", model="cifar_cnn", bits=bits, batch_size=16, device="cpu",
                     checkpoint_every=0)
        probes.append(paper_cost.Probe(Federation(cfg, data=data), train_samples=16, eval_samples=24))
    before = {k: v.clone() for k, v in probes[0].fed.global_state.items()}
    results = paper_cost.measure(probes, repeats=1, device=torch.device("cpu"))
    assert [m.bits for m in results] == [32, 16]
    for m in results:
        assert all(math.isfinite(v) and v > 0 for v in (m.train_per_s, m.upload_s, m.aggregate_s, m.eval_per_s))
    p = probes[1]
    assert len(p.idx) == 16 and len(p.trainer.data.y_test) == 24
    p.train()  # the values are views of the trainer's model (as the engine's): read them before it reloads
    assert any(not torch.equal(p.values[k], before[k]) for k in before)  # the slice was trained
    assert all(torch.equal(probes[0].fed.global_state[k], before[k]) for k in before)  # the global model untouched
    terms = paper_cost.report(results, paper_cost.Round.of(probes[0].fed.cfg), probes)
    out = capsys.readouterr().out
    assert f"INT16 / FP32 per round: {terms[16]['round'] / terms[32]['round']:.3f} from each width's own" in out
    assert "250,000 training samples / train rate + 10 x upload" in out


@pytest.mark.parametrize("flags, message", [
    (["--repeats", "2"], "--repeats=2 is out of range: at least 3"),
    (["--train-samples", "0"], "--train-samples=0 is out of range: 1 to 50,000"),
    (["--eval-samples", "10001"], "--eval-samples=10001 is out of range: 1 to 10,000"),
])
def test_bad_flags_get_one_line(flags, message, capsys):
    assert paper_cost.main(flags) == 2
    err = capsys.readouterr().err
    assert err.strip() == message or err.startswith(message)
    assert err.count("\n") == 1
