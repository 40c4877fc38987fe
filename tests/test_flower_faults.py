"""The test-only hold (fl_lib/runtime/flower_faults.py): only the named client's step of the named round stops."""
import subprocess
import sys
import time

import pytest

from fl_lib.runtime import flower_faults


def _held(tmp_path, step, client, t, want=("train", 1, 3)) -> tuple[subprocess.Popen, bool]:
    marker = tmp_path / f"held-{step}-{client}-{t}"
    env = {flower_faults.HOLD: flower_faults.hold_value(*want, marker)}
    code = f"from fl_lib.runtime.flower_faults import hold_if_asked; hold_if_asked({step!r}, {client!r}, {t})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 30
    while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    held = proc.poll() is None and marker.exists()
    proc.kill()
    proc.wait()
    assert not held or marker.read_text() == str(proc.pid)  # the whole PID of the process that holds
    return proc, held


def test_the_named_step_holds_and_writes_its_pid(tmp_path):
    proc, held = _held(tmp_path, "train", 1, 3)
    assert held
    proc, held = _held(tmp_path, "saved", "server", 1, want=("saved", flower_faults.SERVER, 1))
    assert held


@pytest.mark.parametrize("step, client, t", [("masked-input", 1, 3), ("train", 0, 3), ("train", 1, 2),
                                             ("train", 11, 3), ("saved", "server", 3)])
def test_any_other_step_client_or_round_goes_on(tmp_path, step, client, t):
    proc, held = _held(tmp_path, step, client, t)
    assert not held and proc.returncode == 0


def test_an_unknown_step_is_refused():
    with pytest.raises(ValueError, match="step='upload' is not allowed: must be one of train, masked-input, saved"):
        flower_faults.hold_value("upload", 1, 3, "/tmp/x")
