"""Clustered FL in the results cache (runtime/clustered_results.py): stored once and read back without training,
resumed after an interruption and extended to more rounds, with the same files as a run made in one go."""
import numpy as np
import pytest
import torch

from fl_lib.core.errors import ConfigError, FLError
from fl_lib.runtime.clustered_results import clustered_dir, clustered_key, load_clustered, run_clustered
from fl_lib.simulator import clustered
from tests.tiny import tiny_config, tiny_data

# test_clustered.py's population: six clients, two label groups; on this data the one split comes in round 4
CFL = dict(num_clients=6, partition="iid", num_rounds=8, cfl_eps1=0.11, cfl_eps2=0.18, cfl_min_rounds=3)
FILES = ("metrics.csv", "norms.csv", "assignments.csv", "config.json")
quiet = lambda msg: None  # noqa: E731


@pytest.fixture(scope="module")
def data():
    return tiny_data(320, 200)


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    """Eight rounds in one go, checkpointed every other round."""
    root = tmp_path_factory.mktemp("whole")
    return run_clustered(tiny_config(**CFL, checkpoint_every=2), data, root=root, log=quiet)


def counted_rounds(monkeypatch) -> list:
    """Record the round number of every ClusteredFederation.round call (the training)."""
    calls, real = [], clustered.ClusteredFederation.round

    def counting(self, t):
        calls.append(t)
        return real(self, t)

    monkeypatch.setattr(clustered.ClusteredFederation, "round", counting)
    return calls


def texts(folder) -> dict:
    return {name: (folder / name).read_text() for name in FILES}


def same_models(a, b) -> bool:
    return [(c.id, c.members) for c in a] == [(c.id, c.members) for c in b] and all(
        torch.equal(x.state[n], y.state[n]) for x, y in zip(a, b) for n in x.state)


def test_the_cached_run_is_the_uncached_one_and_splits(whole, data):
    plain = clustered.run_clustered(tiny_config(**CFL), data)
    assert np.array_equal(whole.assignments, plain.assignments)
    assert whole.metrics.test_acc.tolist() == plain.metrics.test_acc.tolist()
    assert whole.metrics.num_clusters.tolist() == plain.metrics.num_clusters.tolist() == [1] * 3 + [2] * 5
    assert whole.norms.max_norm.tolist() == plain.norms.max_norm.tolist()
    assert whole.groups == plain.groups == [0, 1, 0, 1, 0, 1]
    assert same_models(whole.clusters, plain.clusters)
    assert [p.name for p in (whole.folder / "checkpoints").iterdir()] == ["round-000008.pt"]  # the last only


def test_a_second_call_is_read_from_the_cache(whole, data, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    cfg = tiny_config(**CFL, checkpoint_every=2)
    first = run_clustered(cfg, data, root=root, log=quiet)
    calls = counted_rounds(monkeypatch)
    again = run_clustered(cfg, data, root=root, log=quiet)
    prefix = run_clustered(cfg.replace(num_rounds=3), data, root=root, log=quiet)
    assert calls == []  # nothing trained
    assert again.metrics.equals(first.metrics) and again.norms.equals(first.norms)
    assert np.array_equal(again.assignments, first.assignments) and same_models(again.clusters, first.clusters)
    assert again.seconds == first.seconds  # the stored timings, not new ones
    assert len(prefix.metrics) == 3 and prefix.assignments.shape == (3, 6) and prefix.clusters == []
    assert prefix.config.num_rounds == 3 and set(prefix.norms["round"]) == {1, 2, 3}
    assert first.folder == clustered_dir(cfg, 2, root)
    assert load_clustered(first.folder).metrics.equals(first.metrics)


@pytest.mark.parametrize("stop_after, resumed_from", [(3, 2), (5, 4)])
def test_an_interrupted_run_resumes_to_the_same_files(whole, data, tmp_path, monkeypatch, stop_after,
                                                      resumed_from):
    """Stopped after round 3 (before the split) or 5 (after it), with checkpoints every other round: the rerun
    trains from the checkpoint on and writes metrics, norms and assignments byte for byte as the whole run."""
    root, cfg = tmp_path / "runs", tiny_config(**CFL, checkpoint_every=2)

    def stop(t):
        if t == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_clustered(cfg, data, root=root, log=quiet, on_round=stop)
    folder = clustered_dir(cfg, 2, root)
    assert not (folder / "summary.json").exists()
    calls = counted_rounds(monkeypatch)
    resumed = run_clustered(cfg, data, root=root, log=quiet)
    assert calls == list(range(resumed_from + 1, 9))
    assert texts(folder) == texts(whole.folder)
    assert same_models(resumed.clusters, whole.clusters)


def test_more_rounds_continue_from_the_checkpoint(whole, data, tmp_path, monkeypatch):
    root, cfg = tmp_path / "runs", tiny_config(**CFL, checkpoint_every=2)
    run_clustered(cfg.replace(num_rounds=5), data, root=root, log=quiet)
    calls = counted_rounds(monkeypatch)
    longer = run_clustered(cfg, data, root=root, log=quiet)
    assert calls == [6, 7, 8]
    assert texts(clustered_dir(cfg, 2, root)) == texts(whole.folder)
    assert same_models(longer.clusters, whole.clusters)


def test_an_extended_run_drops_the_evaluation_a_shorter_run_ended_with(data, tmp_path):
    """eval_every = 2: round 3 was evaluated only because it ended a 3-round run; extended to 4 it is not."""
    cfg = tiny_config(**{**CFL, "num_rounds": 4}, eval_every=2)
    one_go = run_clustered(cfg, data, root=tmp_path / "a", log=quiet)
    run_clustered(cfg.replace(num_rounds=3), data, root=tmp_path / "b", log=quiet)
    extended = run_clustered(cfg, data, root=tmp_path / "b", log=quiet)
    assert one_go.metrics.test_acc.isna().tolist() == [True, False, True, False]
    assert texts(clustered_dir(cfg, 2, tmp_path / "a")) == texts(clustered_dir(cfg, 2, tmp_path / "b"))
    assert extended.metrics.equals(one_go.metrics)


def test_the_key_holds_the_thresholds_and_the_groups_but_not_the_length():
    cfg = tiny_config(**CFL)
    assert clustered_key(cfg, 2) == clustered_key(cfg.replace(num_rounds=30, checkpoint_every=1), 2)
    others = {clustered_key(cfg, 3), clustered_key(cfg.replace(cfl_eps1=0.2), 2),
              clustered_key(cfg.replace(cfl_eps2=0.3), 2), clustered_key(cfg.replace(cfl_min_rounds=5), 2),
              clustered_key(cfg.replace(seed=1), 2)}
    others.add(clustered_key(cfg, 2, subset="head=300,100"))  # data only part of the config's dataset
    assert len(others) == 6 and clustered_key(cfg, 2) not in others
    assert clustered_key(cfg, 2) != cfg.key()  # never a plain run's folder name


def test_refusals_come_before_anything_is_stored(data, tmp_path):
    with pytest.raises(ConfigError, match="bits=8 is not run by clustered FL"):
        run_clustered(tiny_config(**CFL, bits=8), data, root=tmp_path)
    assert not any(tmp_path.iterdir())
    cfg = tiny_config(**{**CFL, "num_rounds": 2})
    run_clustered(cfg, data, out=tmp_path / "one", log=quiet)
    with pytest.raises(FLError, match="holds a clustered run of another config"):
        run_clustered(cfg.replace(seed=1), data, out=tmp_path / "one", log=quiet)
