"""Reference runs (study/reference.py): every published folder loads, its checksums hold, its config resolves."""
import json
import shutil

import pytest

from fl_lib.core.config import Config
from fl_lib.core.errors import ConfigError, FLError
from fl_lib.runtime import results
from fl_lib.study import reference

PUBLISHED = reference.names()


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_reference_loads_with_its_checksums_and_todays_config(name):
    run = reference.load(name)
    record = reference.read_index()[name]
    assert int(run.summary["rounds"]) == record["rounds"] == len(run.metrics)
    raw = json.loads((reference.ROOT / name / "config.json").read_text())
    raw.pop("key", None)
    assert Config.from_dict(raw) == run.config  # still a valid config under today's rules
    assert record["command"].startswith(("python -m fl_lib", "sh ", "./"))


def test_shakespeare_reference_is_published():
    assert reference.names(prefix="shakespeare/"), "the full-scale Shakespeare runs (issue 22) are missing"


def _published_copy(tiny, tmp_path):
    run = results.run(tiny(num_rounds=2), out=tmp_path / "run", progress=False)
    root = tmp_path / "reference"
    reference.publish(run.dir, "demo/tiny", command="python -m fl_lib run --preset smoke", data="synthetic", root=root)
    return root


def test_publish_then_load_round_trips(tiny, tmp_path):
    root = _published_copy(tiny, tmp_path)
    loaded = reference.load("demo/tiny", root=root)
    assert loaded.metrics.equals(results.load_run(tmp_path / "run").metrics)
    best, final = loaded.metrics.test_acc.max(), loaded.metrics.test_acc.dropna().iloc[-1]
    assert f"| demo/tiny | 2 | {best:.4f} | {final:.4f} |" in (root / "README.md").read_text()


def test_the_shipped_readme_is_the_one_the_index_writes():
    assert (reference.ROOT / "README.md").read_text() == reference.readme(reference.read_index())


def test_a_changed_file_is_refused_naming_the_file(tiny, tmp_path):
    root = _published_copy(tiny, tmp_path)
    path = root / "demo" / "tiny" / "config.json"
    path.write_text(path.read_text().replace("\"seed\": 0", "\"seed\": 1"))
    with pytest.raises(FLError, match="config.json .*checksum"):
        reference.load("demo/tiny", root=root)


def test_an_unknown_name_lists_the_published_ones(tiny, tmp_path):
    root = _published_copy(tiny, tmp_path)
    with pytest.raises(FLError, match="published: demo/tiny"):
        reference.load("nope", root=root)
    shutil.rmtree(root / "demo")
    with pytest.raises(FLError, match="missing"):
        reference.load("demo/tiny", root=root)


def test_the_cli_lists_every_published_run(capsys):
    from fl_lib.cli import main

    assert main(["reference"]) == 0
    out = capsys.readouterr().out
    for name in PUBLISHED:
        assert f"{name}: " in out and "extend: " in out


def test_extend_replays_the_published_config_through_its_checkpoints(tiny, tmp_path):
    """Two more rounds: the first two are the stored ones (not recomputed), the result is republished and verified."""
    root = _published_copy(tiny, tmp_path)
    runs = tmp_path / "runs"
    record = reference.extend("demo/tiny", None, runs=runs, root=root, progress=False, log=lambda m: None)
    assert record["rounds"] == 2 and record["command"] == reference.extend_command("demo/tiny")
    first = results.load_run(runs / "demo" / "tiny")
    record = reference.extend("demo/tiny", 4, runs=runs, root=root, progress=False, log=lambda m: None)
    assert record["rounds"] == 4
    longer = reference.load("demo/tiny", root=root)
    assert len(longer.metrics) == 4
    assert longer.metrics.head(2).equals(first.metrics)  # the stored rounds, extended rather than rerun
    once = results.run(tiny(num_rounds=4), out=tmp_path / "once", progress=False).metrics
    assert longer.metrics.drop(columns="seconds").equals(once.drop(columns="seconds"))  # as 4 rounds in one go


def test_a_run_carried_on_to_another_machine_names_both_with_their_rounds(tiny, tmp_path):
    """Rounds computed elsewhere (a lent GPU) keep their machine in the index when the run is extended here."""
    run = results.run(tiny(num_rounds=2), out=tmp_path / "run", progress=False)
    root = tmp_path / "reference"
    gpu = "Linux x86_64, 2 CPU cores; rounds 2-2 on one NVIDIA H100 80GB HBM3"
    assert reference.publish(run.dir, "demo/tiny", command="c", data="synthetic", root=root, machine=gpu)["machine"] == gpu
    assert f"fl_lib {reference.__version__} on {gpu};" in (root / "README.md").read_text()
    record = reference.extend("demo/tiny", 3, runs=tmp_path / "runs", root=root, progress=False, log=lambda m: None)
    assert record["machine"] == f"{gpu}; rounds 3-3 on {reference.this_machine()}"
    assert reference.machines("A", 5, 5, now="B") == "A" and reference.machines("A", 5, 9, now="A") == "A"


def test_extend_refuses_to_shorten_or_an_unknown_name(tiny, tmp_path):
    root = _published_copy(tiny, tmp_path)
    with pytest.raises(ConfigError, match="rounds=1 would shorten reference demo/tiny: it has 2"):
        reference.extend("demo/tiny", 1, runs=tmp_path / "runs", root=root, progress=False)
    with pytest.raises(FLError, match="published: demo/tiny"):
        reference.extend("nope", 3, runs=tmp_path / "runs", root=root, progress=False)


def test_reference_cli_refuses_bad_rounds_in_one_line(capsys):
    from fl_lib.cli import main
    assert main(["reference", "--extend", "x", "--rounds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --rounds=0: must be at least 1"


def test_frame_and_table_read_every_run_under_a_prefix(tiny, tmp_path):
    root = _published_copy(tiny, tmp_path)
    metrics = reference.frame("demo/", fields=("bits", "seed"), root=root)
    assert list(metrics.reference.unique()) == ["demo/tiny"] and len(metrics) == 2
    assert (metrics.bits == tiny().bits).all() and (metrics.seed == 0).all()
    row = reference.table("demo/", root=root).iloc[0]
    assert row["rounds"] == 2 and row["data"] == "synthetic" and row["final acc"] == round(metrics.test_acc.iloc[-1], 4)
    assert reference.frame("none/", root=root).empty


def test_find_matches_a_longer_run_of_the_same_config_only(tiny, tmp_path):
    root = _published_copy(tiny, tmp_path)  # demo/tiny: tiny(num_rounds=2)
    assert reference.find(tiny(num_rounds=1), root=root) == "demo/tiny"  # the live run is a prefix of it
    assert reference.find(tiny(num_rounds=2), root=root) == "demo/tiny"
    assert reference.find(tiny(num_rounds=3), root=root) is None  # shorter than the live run: not a reference
    assert reference.find(tiny(num_rounds=1, seed=1), root=root) is None  # another experiment
    assert reference.find(tiny(num_rounds=1, device="cpu", workers=1), root=root) == "demo/tiny"  # not in the key


def test_longer_keeps_only_runs_carried_past_the_live_rounds_and_stacked_labels_them(tiny, tmp_path):
    root = _published_copy(tiny, tmp_path)  # demo/tiny: tiny(num_rounds=2)
    wanted = {("a", 0): tiny(num_rounds=1), ("b", 0): tiny(num_rounds=2), ("c", 1): tiny(num_rounds=1, seed=1)}
    found = reference.longer(wanted, root=root)
    assert found == {("a", 0): "demo/tiny"}  # b: as long as the live run, so nothing more to show; c: none
    table = reference.stacked(found, ("label", "seed"), root=root)
    assert list(table.label.unique()) == ["a"] and (table.seed == 0).all() and len(table) == 2
    assert table.drop(columns=["label", "seed"]).equals(reference.load("demo/tiny", root=root).metrics)
    assert list(reference.stacked({}, ("label", "seed"), root=root).columns) == ["label", "seed"]
