"""fl_lib in Flower's Simulation Runtime (Ray actors as virtual SuperNodes) gives the in-process engine's run.

One run, the most demanding: fl_lib's secure aggregation as four message steps per
round. Ray's start-up is most of it (~8 s of ~20 s on this 2-core VM), so the other
configurations are checked on the same ClientApp and strategy without a transport
(test_flower.py: plain FedAvg, DP-FedAvg with Poisson sampling, a silent node) and on
real deployments (test_flower_security.py: DP-FedAvg over TLS; test_flower_local.py).
"""
import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.42')")
pytest.importorskip("ray", reason="Flower's Simulation Runtime needs Ray (pip install 'flwr[simulation]')")

from fl_lib.runtime import flower, results  # noqa: E402
from tests.test_flower import tiny  # noqa: E402

# torch on one thread: these tiny rounds gain nothing from a second one, and crawl when two threads share
# busy cores (a 3-round in-process run: 10 s on two threads beside other work, 0.2 s on one)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_simulation_equals_the_in_process_secure_sum(tmp_path):
    """fl_lib's secure aggregation over Flower's messages, 4 clients (3 a round), 2 rounds: every metric equals
    results.run's."""
    cfg = tiny(num_clients=4, client_fraction=0.75, secure_aggregation=True)
    flower.run_simulation(cfg, tmp_path / "sim", round_timeout=60, progress=False)
    got = results.load_run(tmp_path / "sim")
    ref = results.run(cfg, tmp_path / "in-process", progress=False)
    columns = ["test_acc", "test_loss", "train_loss", "upload_bytes", "quant_error", "dropped_clients"]
    assert got.metrics[columns].equals(ref.metrics[columns])
    assert got.summary["runtime"] == "flower-simulation" and got.summary["flower_nodes"] == cfg.num_clients
    # four steps of messages: masked vectors at k bits plus keys, sealed shares and unmask shares, and framing
    assert got.summary["total_upload_bytes"] <= got.summary["flower_bytes_up"]
