"""Seconds per round of one config in process, in Flower's Simulation Runtime and on a localhost deployment.

    python benchmarks/flower_bench.py                                  # smoke (synthetic)
    python benchmarks/flower_bench.py --preset quick --dataset ../shared/data/cifar10_subset.npz --rounds 2

Also prints fl_lib's counted upload bytes against the bytes of Flower's own
messages. The deployment starts a SuperLink and one SuperNode per client on
127.0.0.1 (free ports) and stops them, and everything they started, at the end.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fl_lib.runtime import flower
from fl_lib.runtime import results
from fl_lib.core.config import preset

BIN = Path(sys.executable).parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--dataset", default=None)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num-clients", type=int, default=None)
    args = p.parse_args(argv)
    kw = {"num_rounds": args.rounds, "device": "cpu", "checkpoint_every": 0}
    if args.dataset:
        kw["dataset"] = args.dataset
    if args.num_clients:
        kw["num_clients"] = args.num_clients
    cfg = preset(args.preset, **kw)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        r = results.run(cfg, tmp / "in-process", progress=False)
        rows.append(("in process", time.perf_counter() - start, r))
        start = time.perf_counter()
        flower.run_simulation(cfg, tmp / "simulation", progress=False)
        rows.append(("Flower simulation", time.perf_counter() - start, results.load_run(tmp / "simulation")))
        start = time.perf_counter()
        deploy(cfg, tmp / "deployment", tmp)
        rows.append(("Flower deployment (localhost)", time.perf_counter() - start,
                     results.load_run(tmp / "deployment")))
    print(f"\n{args.preset}, {cfg.dataset}, {cfg.num_clients} clients, {cfg.num_rounds} rounds, bits={cfg.bits}")
    print(f"{'runtime':<32}{'wall s':>8}{'s/round':>9}{'fl_lib up MB':>14}{'Flower up MB':>14}"
          f"{'Flower down MB':>16}{'final acc':>10}")
    for name, wall, run in rows:
        s = run.summary
        print(f"{name:<32}{wall:8.1f}{s['seconds_per_round']:9.2f}{s['total_upload_mb']:14.3f}"
              f"{s.get('flower_bytes_up', 0) / 1e6:14.3f}{s.get('flower_bytes_down', 0) / 1e6:16.3f}"
              f"{s['final_test_acc']:10.4f}")
    return 0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(cfg, out: Path, tmp: Path) -> None:
    port = _port()
    home = tmp / "flwr_home"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "localhost"\n\n[superlink.localhost]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp / "flower.log", "w")
    procs = [subprocess.Popen([BIN / "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
                               "--disable-runtime-dependency-installation"], env=env, stdout=log, stderr=log)]
    try:
        flower.wait_for_port(port)
        for k in range(cfg.num_clients):
            procs.append(subprocess.Popen(
                [BIN / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                 "--port", str(_port()), "--node-config", f"partition-id={k} num-partitions={cfg.num_clients}"],
                env=env, stdout=log, stderr=log))
        os.environ["FLWR_HOME"] = str(home)
        rc = flower.deploy(cfg, out, round_timeout=900, connect_timeout=120)
        if rc != 0:
            raise SystemExit(f"flwr run failed ({rc}); see {tmp / 'flower.log'}")
    finally:
        for p in procs:
            flower.stop_tree(p)


if __name__ == "__main__":
    sys.exit(main())
