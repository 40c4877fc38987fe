"""Interrupted runs resume exactly; damaged files, full disks and diverging clients lose nothing."""
import errno
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_lib.runtime import checkpoint
from fl_lib.runtime import results
from fl_lib.cli import main
from fl_lib.core.config import Config
from fl_lib.core.errors import DivergenceError, FLError
from fl_lib.simulator.federation import Federation
from tests.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def tiny(**kw) -> Config:
    """The shared tiny federation with momentum and weight decay, checkpointed every round."""
    return tiny_config(**{**dict(alpha=0.5, momentum=0.9, weight_decay=5e-4, checkpoint_every=1), **kw})


def quiet(msg):
    pass


class Stop(Exception):
    pass


def interrupt_at(monkeypatch, round_):
    """Make Federation.round raise at `round_`, as if the run were cut off there."""
    real = Federation.round

    def cut(self, t):
        if t == round_:
            raise Stop
        return real(self, t)
    monkeypatch.setattr(Federation, "round", cut)


# -- SIGKILL at several points, then resume ------------------------------------------------
@pytest.mark.parametrize("clock", [[], ["--link", "mobile", "--algorithm", "fedbuff", "--bits-policy", "adaptive",
                                          "--client-fraction", "0.5"]], ids=["no-clock", "fedbuff-adaptive"])
@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_matches_an_uninterrupted_run(tmp_path, clock):
    flags = ["run", "--preset", "smoke", "--dataset", "synthetic-mnist", "--model", "2nn", "--num-clients", "4",
             "--local-epochs", "1", "--batch-size", "10", "--num-rounds", "8", "--checkpoint-every", "1",
             "--device", "cpu", "--no-progress", *clock]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "fl_lib", *flags]
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    ckpts = out / "checkpoints"
    # (checkpoint to wait for, extra delay): before any checkpoint, right after one, and mid-round
    points = [(None, 1.0), (1, 0.0), (2, 0.15), (4, 0.3), (6, 0.05)]
    if clock:  # the same kill points were covered above; two suffice for the event queue's state
        points = [(2, 0.15), (6, 0.05)]
    live_kills, resumed = 0, 0
    for wait_for, delay in points:
        proc = subprocess.Popen(cmd + ["--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while wait_for is not None and proc.poll() is None and time.time() < deadline:
            if any(int(p.name[6:12]) >= wait_for for p in checkpoint.list_checkpoints(ckpts)):
                break
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            live_kills += 1
        _, err = proc.communicate()
        resumed += "resuming from round" in err
        assert not (out / "summary.json").exists() or proc.returncode == 0
    final = subprocess.run(cmd + ["--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert live_kills >= len(points) - 2  # the kills really interrupted running work
    assert resumed + ("resuming from round" in final.stderr) >= min(2, len(points))
    assert (out / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()


# -- checkpoints ----------------------------------------------------------------------------
@pytest.mark.parametrize("clock", [{}, dict(link="mobile", bits_policy="adaptive", deadline=2.0),
                                   dict(link="iot", algorithm="fedbuff", buffer_size=2)],
                         ids=["no-clock", "adaptive-deadline", "fedbuff"])
def test_resume_in_process_equals_uninterrupted(tmp_path, monkeypatch, clock):
    whole = results.run(tiny(**clock), tmp_path / "whole", progress=False)
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(Stop):
            results.run(tiny(**clock), tmp_path / "cut", progress=False)
    logs = []
    resumed = results.run(tiny(**clock), tmp_path / "cut", progress=False, log=logs.append)
    assert logs == [f"resuming from round 2 (checkpoint in {tmp_path / 'cut' / 'checkpoints'})"]
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (tmp_path / "whole" / "metrics.csv").read_bytes()
    assert resumed.metrics["test_acc"].tolist() == whole.metrics["test_acc"].tolist()
    # when finished only the last round's state stays: where a longer run would continue from
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "cut" / "checkpoints")] == ["round-000004.pt"]


def test_damaged_checkpoint_is_reported_and_the_previous_one_used(tmp_path, monkeypatch):
    results.run(tiny(), tmp_path / "whole", progress=False)
    with monkeypatch.context() as m:
        interrupt_at(m, 4)
        with pytest.raises(Stop):
            results.run(tiny(), tmp_path / "cut", progress=False)
    newest, previous = checkpoint.list_checkpoints(tmp_path / "cut" / "checkpoints")
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # one flipped bit in the middle of the tensors
    newest.write_bytes(bytes(raw))
    logs = []
    with pytest.warns(UserWarning, match="damaged"):
        results.run(tiny(), tmp_path / "cut", progress=False, log=logs.append)
    assert logs[0].startswith("resuming from round 2")  # round 3's checkpoint was the damaged one
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (tmp_path / "whole" / "metrics.csv").read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_every_kind_of_damage_is_detected(tmp_path, damage):
    path = checkpoint.save(tmp_path, 1, {"round": 1, "w": torch.ones(3)})
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) - 7], "empty": b"", "garbage": b"x" * 200}[damage])
    with pytest.raises(FLError):
        checkpoint.load(path)


def test_checkpoint_with_code_in_it_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    buf = io.BytesIO()
    torch.save({"round": 1, "x": Evil()}, buf, pickle_module=pickle)
    payload = buf.getvalue()
    import hashlib
    path = tmp_path / "round-000001.pt"
    path.write_bytes(checkpoint.MAGIC + hashlib.sha256(payload).digest() + payload)
    with pytest.raises(Exception):
        checkpoint.load(path)
    with pytest.warns(UserWarning, match="skipping"):
        assert checkpoint.latest(tmp_path, "any") is None
    assert not (tmp_path / "pwned").exists()


def test_results_json_with_nan_is_refused(tmp_path):
    results.run(tiny(num_rounds=1), tmp_path / "r", progress=False)
    summary = tmp_path / "r" / "summary.json"
    summary.write_text(summary.read_text().replace('"rounds": 1', '"rounds": NaN'))
    with pytest.raises(FLError, match="NaN"):
        results.load_run(tmp_path / "r")


# -- finished results are never lost ---------------------------------------------------------
def test_interrupted_forced_rerun_keeps_the_finished_results(tmp_path, monkeypatch):
    out = tmp_path / "r"
    results.run(tiny(), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(Stop):
            results.run(tiny(), out, force=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert results.run(tiny(), out, progress=False).summary["rounds"] == 4  # still served from the cache


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_full_disk_or_read_only_folder_leaves_earlier_results_intact(tmp_path, monkeypatch, err):
    out = tmp_path / "r"
    results.run(tiny(num_rounds=2), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("metrics.csv"):
            raise OSError(err, os.strerror(err))
        return real_replace(src, dst)
    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(FLError, match=os.strerror(err)) as info:
        results.run(tiny(num_rounds=2, lr=0.1), out, force=True, progress=False)
    assert "left as they were" in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# -- diverging clients -------------------------------------------------------------------------
def test_all_clients_diverging_stops_with_a_message_naming_lr(tmp_path):
    cfg = tiny(lr=100.0, momentum=0.99, num_rounds=30, checkpoint_every=0)
    with pytest.warns(UserWarning, match="non-finite"):
        with pytest.raises(DivergenceError, match=r"lr=100.0"):
            results.run(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "metrics.csv").exists()


def test_cli_reports_divergence_in_one_line(tmp_path, capsys):
    code = main(["run", "--preset", "smoke", "--dataset", "synthetic-mnist", "--model", "2nn", "--lr", "100",
                 "--momentum", "0.99", "--num-rounds", "30", "--no-progress", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "learning rate" in err and "Traceback" not in err


# -- fuzzing the command line ------------------------------------------------------------------
TOKENS = {
    "alpha": ["0.5", "0.01", "100", "0", "-1", "nan", "inf", "abc", ""],
    "bits": ["2", "4", "8", "16", "32", "1", "17", "8.5", "x"],
    "upload": ["weights", "delta", "grad", ""],
    "rounding": ["nearest", "stochastic", "up"],
    "lr": ["0.05", "1e-3", "30", "0", "-0.1", "nan", "1e999"],
    "momentum": ["0", "0.9", "1", "-0.5"],
    "client-fraction": ["0.5", "1", "0", "2", "1e-9"],
    "num-clients": ["1", "3", "8", "0", "5000", "2.5"],
    "partition": ["iid", "shards", "dirichlet", "dirichlet_per_client", "zipf"],
    "batch-size": ["1", "16", "full", "0", "-3"],
    "min-size": ["0", "10", "900", "-1"],
    "algorithm": ["fedavg", "fedsgd", "fedprox"],
    "eval-every": ["1", "2", "0"],
    "seed": ["0", "7", "-1", "99999999999"],
}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.dictionaries(st.sampled_from(sorted(TOKENS)), st.integers(0, 99), max_size=6))
@pytest.mark.slow
def test_fuzzed_command_lines_never_show_a_traceback_or_write_nan(tmp_path_factory, choice):
    out = tmp_path_factory.mktemp("fuzz")
    argv = ["run", "--preset", "smoke", "--dataset", "synthetic-mnist", "--model", "2nn", "--num-rounds", "2",
            "--local-epochs", "1", "--no-progress", "--out", str(out)]
    for flag, i in choice.items():
        argv += [f"--{flag}", TOKENS[flag][i % len(TOKENS[flag])]]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)  # an uncaught exception here is a traceback for the user
    assert code in (0, 1, 2)
    if code == 0:
        text = (out / "metrics.csv").read_text().lower()
        assert "nan" not in text and "inf" not in text
        json.loads((out / "summary.json").read_text())
