"""Test-only fault injection for the Flower runtime: a process that stops at a chosen step and waits to be killed.

A test that kills a SuperNode mid-round, or the SuperLink between two rounds, must
do it at a known step, not when a log line says a round began (with short waits a
node can answer before the test reads that line, and a SuperLink killed while a
round's messages are on their way leaves the nodes pulling parts that are gone).
With HOLD="STEP:WHO:ROUND:PATH" in its environment, the process that reaches STEP of
round ROUND as WHO writes its PID to PATH and waits there; the test sees PATH and
kills. The steps: a ClientApp's "train" or secure aggregation's "masked-input" (WHO:
the fl_lib client), or the ServerApp's "saved" (WHO: "server"), once round ROUND's
checkpoint is written and before the next round's messages go out. Every process of a
federation may carry the variable: only that one step stops. Unset in every real run.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

HOLD = "FL_LIB_TEST_HOLD"
STEPS = ("train", "masked-input", "saved")
SERVER = "server"  # WHO for the ServerApp's step


def hold_value(step: str, who: int | str, t: int, path) -> str:
    """The HOLD value that stops `who` (a client, or SERVER) at `step` of round `t`, its PID written to `path`."""
    if step not in STEPS:
        raise ValueError(f"step={step!r} is not allowed: must be one of {', '.join(STEPS)}")
    return f"{step}:{who}:{t}:{path}"


def hold_if_asked(step: str, who: int | str, t: int) -> None:
    """Wait here for ever if HOLD names this step, who and round; first write this process's PID (whole)."""
    want = os.environ.get(HOLD, "").split(":", 3)
    if len(want) == 4 and want[:3] == [step, str(who), str(t)]:
        path = Path(want[3])
        partial = path.with_name(path.name + ".partial")
        partial.write_text(str(os.getpid()))
        partial.replace(path)  # the test never reads half a PID
        while True:
            time.sleep(1)
