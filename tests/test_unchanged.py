"""Features that are off change nothing: metrics.csv equals the one made before they existed.

tests/data/before_clock_*.csv were written by fl_lib at commit 67e5b63, before links,
deadlines, adaptive bits, FedBuff, DP and secure aggregation, for the configs below
(one torch thread). With every new field at its default the same configs must give
the same file, byte for byte in every column it had; the new columns come after them.
"""
import csv
from pathlib import Path

import pytest
import torch

from fl_lib import results
from fl_lib.config import Config

DATA = Path(__file__).resolve().parent / "data"
CONFIGS = {"fp32": dict(bits=32), "int8_delta": dict(bits=8, upload="delta"),
           "fedsgd": dict(algorithm="fedsgd", bits=16, lr=0.5)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_metrics_with_new_features_off_equal_those_from_before_them(tmp_path, name):
    kw = dict(CONFIGS[name])
    cfg = Config(dataset="synthetic-mnist", model="2nn", num_clients=4, partition="dirichlet", alpha=0.5,
                 local_epochs=1, batch_size=16, lr=kw.pop("lr", 0.05), momentum=0.9, num_rounds=3, augment=False,
                 device="cpu", checkpoint_every=0, **kw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums depend on the thread count; the files were made with one
    try:
        results.run(cfg, tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    before = list(csv.reader((DATA / f"before_clock_{name}.csv").open()))
    now = list(csv.reader((tmp_path / "metrics.csv").open()))
    width = len(before[0])
    assert now[0][:width] == before[0]
    assert now[0][width:] == ["sim_seconds", "cum_sim_seconds", "mean_bits", "mean_staleness", "epsilon"]
    assert [row[:width] for row in now] == before
    for row in now[1:]:
        assert row[width:width + 2] == ["", ""] and row[-1] == ""  # no clock, no DP
