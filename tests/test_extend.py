"""A run folder holds a run at any length: longer runs continue from it, shorter ones are its prefix."""
import pytest

from fl_lib.runtime import checkpoint
from fl_lib.runtime import results
from fl_lib.cli import main
from fl_lib.core.config import Config
from tests.tiny import tiny_config


def tiny(**kw) -> Config:
    """The shared tiny federation with momentum and weight decay, five rounds."""
    return tiny_config(**{**dict(alpha=0.5, momentum=0.9, weight_decay=5e-4, num_rounds=5), **kw})


@pytest.mark.parametrize("kw", [dict(eval_every=2), dict(link="mobile", bits_policy="adaptive", bits=32),
                                dict(link="iot", algorithm="fedbuff", buffer_size=2),
                                dict(dp_clip=1.0, dp_noise=0.5)],
                         ids=["eval-every-2", "adaptive", "fedbuff", "dp"])
def test_extending_3_rounds_to_5_equals_5_in_one_go(tmp_path, kw):
    whole = results.run(tiny(**kw), tmp_path / "whole", progress=False)
    short = results.run(tiny(num_rounds=3, **kw), tmp_path / "grown", progress=False)
    if "eval_every" in kw:
        assert short.metrics["test_acc"].notna().tolist() == [False, True, True]  # round 3 ends this run
    logs = []
    grown = results.run(tiny(**kw), tmp_path / "grown", progress=False, log=logs.append)
    assert logs == ["extending the stored 3 rounds to 5"]
    assert (tmp_path / "grown" / "metrics.csv").read_bytes() == (tmp_path / "whole" / "metrics.csv").read_bytes()
    assert grown.summary["rounds"] == 5 and grown.summary["final_test_acc"] == whole.summary["final_test_acc"]
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "grown" / "checkpoints")] == ["round-000005.pt"]


def test_fewer_rounds_than_stored_return_the_prefix_without_computing(tmp_path, monkeypatch):
    whole = results.run(tiny(), tmp_path / "run", progress=False)
    from fl_lib.simulator import federation as fedavg
    monkeypatch.setattr(fedavg.Federation, "round", lambda *a: pytest.fail("a stored round was computed again"))
    prefix = results.run(tiny(num_rounds=2), tmp_path / "run", progress=False)
    assert prefix.config.num_rounds == 2 and prefix.summary["rounds"] == 2
    assert prefix.metrics.drop(columns="seconds").equals(whole.metrics.drop(columns="seconds").iloc[:2])
    assert prefix.summary["final_test_acc"] == whole.metrics["test_acc"].iloc[1]
    assert prefix.summary["total_upload_bytes"] == whole.metrics["cum_upload_bytes"].iloc[1]
    assert results.load_run(tmp_path / "run").summary["rounds"] == 5  # the folder still holds all 5


def test_the_cli_extends_a_stored_run(tmp_path, capsys):
    flags = ["run", "--preset", "smoke", "--dataset", "synthetic-mnist", "--model", "2nn", "--device", "cpu",
             "--no-progress", "--out", str(tmp_path / "cli")]
    assert main(flags + ["--num-rounds", "2"]) == 0
    assert main(flags + ["--num-rounds", "3"]) == 0
    captured = capsys.readouterr()
    assert "extending the stored 2 rounds to 3" in captured.err
    assert ": 3 rounds" in captured.out.splitlines()[-1]
