"""The benchmark at a tiny size: every section runs and prints its target line. No timings are asserted."""
import statistics

import pytest
import torch

from benchmarks import bench
from fl_lib.core.config import Config
from fl_lib.core.data import synthetic
from fl_lib.simulator.federation import Federation


@pytest.mark.slow
def test_quick_bench_prints_every_target_line(capsys):
    # One thread: a busy machine then cannot slow the spinning threads' handoffs tenfold.
    args = bench.build_parser().parse_args(["--quick", "--dataset", "synthetic", "--threads", "1"])
    threads = torch.get_num_threads()
    assert bench.main(args) == 0
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    out = capsys.readouterr().out
    targets = out[out.index("\nTargets"):]
    for line in ("1 engine efficiency, cnn", "1 engine efficiency, squeezenet1_0", "2 vs the common way, cnn",
                 "2 vs the common way, squeezenet1_0", "3 evaluation share, quick",
                 "3 evaluation share, fedavg-mnist-cnn", "4 codec share", "5 peak RSS growth",
                 "6 engine=auto is not the slower engine, cnn", "6 engine=auto is not the slower engine, squeezenet1_0"):
        assert line in targets, line
    assert targets.count("target ") == 10 and ("met" in targets)


def test_side_by_side_alternates_and_pairs():
    calls = []
    times = bench.side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               torch.device("cpu"), repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then A B, B A, A B
    assert [len(v) for v in times.values()] == [3, 3]
    assert bench.paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == statistics.median([2.0, 4.0, 3.0])


@pytest.fixture(scope="module")
def fed():
    cfg = Config(dataset="synthetic", model="cifar_cnn", num_clients=3, partition="iid", local_epochs=1,
                 batch_size=16, device="cpu", checkpoint_every=0)
    return Federation(cfg, data=synthetic(num_train=96, num_test=32, seed=0))


def test_plain_loop_and_baseline_take_the_engines_steps(fed):
    """The references train the same clients with the same number of optimizer steps as one round."""
    steps = sum(-(-n // fed.cfg.batch_size) for n in fed.sizes)
    loop = bench.PlainLoop(fed, channels_last=True)
    counted = []
    loop.opt.step = lambda *a, _step=loop.opt.step, **k: (counted.append(1), _step(*a, **k))[1]
    loop()
    assert len(counted) == steps
    baseline = bench.CommonFedAvgBaseline(fed)
    before = {k: v.clone() for k, v in baseline.net_glob.state_dict().items()}
    baseline()
    after = baseline.net_glob.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained and averaged


def test_dataset_flags_choose_each_models_data():
    args = bench.build_parser().parse_args(["--model", "cnn", "cifar_cnn", "--mnist", "a.npz", "--cifar10", "b.npz"])
    assert [w.dataset for w in bench._workloads(args)] == ["a.npz", "b.npz"]
    args = bench.build_parser().parse_args(["--model", "cnn", "cifar_cnn"])
    assert [w.dataset for w in bench._workloads(args)] == ["synthetic-mnist", "synthetic"]
