"""The command line end to end: a real run, the cache, --help, and one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fl_lib.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "smoke", "--dataset", "synthetic-mnist", "--model", "2nn", "--num-rounds", "2",
        "--no-progress"]


def cli(*args, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "fl_lib", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


@pytest.mark.slow
def test_smoke_run_end_to_end_then_cached(tmp_path):
    out = tmp_path / "run"
    first = cli("run", "--preset", "smoke", "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert "rounds" in first.stderr  # the tqdm bar
    for name in ("config.json", "metrics.csv", "timings.csv", "summary.json"):
        assert (out / name).exists(), name
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["round", "test_acc", "test_loss"]
    assert len(lines) == 1 + 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_acc"] > 0.2  # 10 classes; learning, not chance
    per_round = [int(line.split(",")[4]) for line in lines[1:]]  # upload_bytes
    assert summary["upload_bytes_per_round"] == pytest.approx(sum(per_round) / 3)  # the mean, not the last round
    before = (out / "metrics.csv").stat().st_mtime_ns
    second = cli("run", "--preset", "smoke", "--out", str(out))
    assert second.returncode == 0 and (out / "metrics.csv").stat().st_mtime_ns == before  # cached


@pytest.mark.parametrize("args,needle", [
    (["--alpha", "0"], "alpha=0.0 is not allowed: must be float in (0, 1000000]"),
    (["--bits", "17"], "bits=17 is not allowed"),
    (["--num-clients", "many"], "num_clients='many'"),
    (["--preset", "huge"], "preset='huge'"),
    (["--colour", "red"], "unrecognized arguments"),
])
def test_bad_flag_exits_2_with_one_line(capsys, args, needle):
    assert main(["run", *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert "\n" not in err and "Traceback" not in err


def test_argparse_errors_are_one_line_too():
    bad = cli("run", "--alpha")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_help_documents_every_field_and_its_range(capsys):
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--num-clients", "--client-fraction", "--local-epochs", "--batch-size", "--bits",
                 "--checkpoint-every", "--eval-every", "--upload"):
        assert flag in text
    assert "float in (0, 1000000]" in text  # alpha's range
    assert "Dirichlet concentration" in text
    assert "inf, inf" not in text  # free-text fields (--data-root) have no numeric range
    assert "folder torchvision downloads into; any folder" in text


def test_out_holding_another_config_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--out", str(out)]) == 0
    kept = (out / "metrics.csv").read_text()
    assert main(["run", *TINY, "--seed", "1", "--out", str(out)]) == 1
    assert "another config" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == kept


def test_offline_download_failure_is_one_clear_message(tmp_path, capsys, monkeypatch):
    from torchvision import datasets  # fl_lib.core.data imports it when a download is asked for

    class NoNetwork:
        def __init__(self, *a, **k):
            raise OSError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(datasets, "CIFAR10", NoNetwork)
    assert main(["run", "--preset", "quick", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-python.tar.gz" in err and ".npz" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "metrics.csv").exists()


def test_bare_run_asks_for_a_preset_instead_of_starting_the_paper():
    bare = cli("run")
    assert bare.returncode == 2 and "--preset" in bare.stderr
    assert bare.stderr.count("\n") == 1 and "Traceback" not in bare.stderr
