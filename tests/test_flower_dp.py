"""DP-FedAvg on Flower: clipping in the ClientApp, noise and the accountant in the ServerApp, as in process.

The ClientApp runs fl_lib's client stages (DPClip scales the update to norm S before the codec) and the
strategy runs the server stages (DPMean: the sum over the fixed denominator plus N(0, (zS)^2) from the
seeded noise stream; the accountant's epsilon after each round). Same config, same seeds: the Simulation
Runtime must give the in-process run's epsilon and metrics.
"""
import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.41')")

from fl_lib.runtime import flower, results  # noqa: E402
from tests.test_flower import one_thread, tiny  # noqa: E402,F401  (one_thread is a fixture)


@pytest.mark.slow
def test_dp_fedavg_on_flower_equals_in_process(tmp_path, one_thread):  # noqa: F811
    cfg = tiny(num_rounds=3, client_fraction=0.5, upload="delta", dp_clip=1.0, dp_noise=0.5)  # Poisson sampling
    flower.run_simulation(cfg, tmp_path / "flower", progress=False)
    got = results.load_run(tmp_path / "flower")
    ref = results.run(cfg, tmp_path / "in-process", progress=False)
    columns = ["test_acc", "test_loss", "epsilon", "upload_bytes", "sampled_clients", "dropped_clients"]
    assert got.metrics[columns].equals(ref.metrics[columns])
    assert got.summary["epsilon"] == ref.summary["epsilon"] > 0
    assert got.metrics.sampled_clients.sum() > 0  # some round really trained and clipped
