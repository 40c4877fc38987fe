"""`python benchmarks/omp_wait.py`: two torch processes at once, with OpenMP's default wait policy and with PASSIVE.

fl_lib sets OMP_WAIT_POLICY=PASSIVE when it is imported before torch (fl_lib/__init__.py).
This measures why: it starts two processes that each train the small CIFAR CNN for a
fixed number of steps with every core's worth of threads, at the same time, once with
the policy left to the runtime (OMP_WAIT_POLICY unset; the worker imports torch
before fl_lib, so fl_lib's default does not apply: threads spin before they sleep) and once PASSIVE, alternating the two settings over --repeats pairs. It prints
the median wall time of each and their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

WORKER = r"""
import sys, time, torch, torch.nn.functional as F
from fl_lib.core.models import build_model
torch.manual_seed(0)
model = build_model("cifar_cnn", 10, 3, 32).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (32,))
for _ in range(int(sys.argv[1])):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


def pair(policy: str, steps: int) -> float:
    """Wall seconds until both of two simultaneous workers have finished."""
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    if not policy:
        env.pop("OMP_WAIT_POLICY")  # the worker imports torch before fl_lib, so the runtime's default holds
    env.pop("OMP_NUM_THREADS", None)  # every process takes all cores, as a notebook kernel does
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(steps)], env=env) for _ in range(2)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"worker failed with exit status {p.returncode}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/omp_wait.py", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per worker (default 300)")
    p.add_argument("--repeats", type=int, default=3, help="pairs of measurements (default 3)")
    args = p.parse_args(argv)
    times = {"runtime default": [], "PASSIVE": []}
    for i in range(args.repeats):
        order = [("runtime default", ""), ("PASSIVE", "PASSIVE")]
        for name, policy in order if i % 2 == 0 else order[::-1]:
            times[name].append(pair(policy, args.steps))
    slow, fast = statistics.median(times["runtime default"]), statistics.median(times["PASSIVE"])
    print(f"two simultaneous torch processes, {args.steps} steps each, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} before the last pair")
    print(f"  OMP_WAIT_POLICY unset: {slow:.1f} s   PASSIVE: {fast:.1f} s   ratio {slow / fast:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
