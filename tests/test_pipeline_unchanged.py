"""The round pipeline changed no number: every feature combination's metrics.csv equals 0.4's.

tests/data/before_pipeline_*.csv were written by fl_lib 0.4.0 (commit d09abc2, the last
release with one Federation class doing everything) for the configs below, with one
thread (torch's and numpy's BLAS) and torch's AVX2 kernels (see tests/test_unchanged.py for why). The
pipeline of 0.5 must give the same files byte for byte: links and deadlines, adaptive
widths, DP with both samplings, secure aggregation with and without DP, FedBuff,
FedSGD on a clock, stochastic rounding on a CNN.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_unchanged import AVX2, EXACT, assert_same_rows

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

CASES = {
    "adaptive_deadline": dict(link="mobile", bits_policy="adaptive", bits=16, min_bits=4, deadline=30.0, rounding="stochastic", client_fraction=0.5),
    "fixed_link": dict(link="mobile", bits=8, client_fraction=0.5, momentum=0.9),
    "dp_poisson": dict(dp_clip=0.5, dp_noise=0.3, client_fraction=0.5),
    "dp_fixed_delta": dict(dp_clip=0.5, dp_noise=0.3, dp_sampling="fixed", bits=8, upload="delta"),
    "secagg": dict(secure_aggregation=True, bits=8, link="mobile"),
    "secagg_deadline": dict(secure_aggregation=True, bits=8, link="mobile", deadline=5.0),
    "dp_secagg": dict(secure_aggregation=True, bits=12, dp_clip=0.5, dp_noise=0.5, link="mobile"),
    "fedbuff": dict(algorithm="fedbuff", link="mobile", bits=8, client_fraction=0.5, concurrency=4, buffer_size=2),
    "fedbuff_adaptive": dict(algorithm="fedbuff", link="mobile", bits_policy="adaptive", bits=16, buffer_weights="samples", server_lr=0.8),
    "fedsgd_link": dict(algorithm="fedsgd", lr=0.5, bits=16, link="iot"),
    "cnn_stochastic": dict(model="cnn", bits=4, rounding="stochastic", client_fraction=0.5),
}


SCRIPT = """
import sys, warnings
import torch
warnings.simplefilter("ignore")
torch.set_num_threads(1)
from fl_lib.runtime import results
from fl_lib.core.config import Config
BASE = dict(dataset="synthetic-mnist", model="2nn", num_clients=6, partition="dirichlet", alpha=0.5, local_epochs=1,
            batch_size=16, lr=0.05, momentum=0.0, weight_decay=0.0, num_rounds=3, augment=False,
            device="cpu", checkpoint_every=0)
for name, kw in {cases!r}.items():
    results.run(Config(**{{**BASE, **kw}}), sys.argv[1] + "/" + name, progress=False, log=lambda m: None)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    # one thread for torch and for numpy's BLAS too: the DP grid's rotation error is a numpy sum
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               **({"ATEN_CPU_CAPABILITY": "avx2"} if AVX2 else {}))
    subprocess.run([sys.executable, "-c", SCRIPT.format(cases=CASES), str(out)], env=env, check=True, cwd=ROOT)
    return out


@pytest.mark.skipif(not AVX2, reason="the pinned files hold AVX2 kernels' float sums (see test_unchanged.py)")
@pytest.mark.parametrize("name", sorted(CASES))
def test_metrics_equal_those_of_0_4(runs, name):
    """Byte for byte; on a CPU whose AVX2 kernels sum otherwise (AMX, test_unchanged.EXACT) to a relative 1e-2."""
    if name == "cnn_stochastic" and not EXACT:  # 3 rounds of stochastic rounding grow a 7th digit to 1.7%
        pytest.skip("stochastic rounding amplifies this CPU's last-digit differences: only byte equality tests it")
    before = list(csv.reader((DATA / f"before_pipeline_{name}.csv").open()))
    assert_same_rows(list(csv.reader((runs / name / "metrics.csv").open())), before)
