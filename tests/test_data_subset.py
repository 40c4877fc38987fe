"""Class-balanced subsets by name (SOURCE:train=N,test=M): counts, the documented rule, errors, cache keys."""
import shutil

import numpy as np
import pytest
import torch

from fl_lib.cli import main
from fl_lib.core import dataset_name
from fl_lib.core.config import Config
from fl_lib.core.data import balanced_indices, load_dataset, synthetic
from fl_lib.core.errors import ConfigError, DataError
from fl_lib.study import report

TINY = ["--preset", "smoke", "--model", "2nn", "--num-rounds", "2", "--no-progress"]


def first_of_each_class(y, n):
    """The docstring's rule written as a loop: walk y in order, keep a sample while its label is under its share."""
    labels = sorted(set(y.tolist()))
    share = {c: n // len(labels) + (i < n % len(labels)) for i, c in enumerate(labels)}
    kept = {c: 0 for c in labels}
    keep = []
    for i, c in enumerate(y.tolist()):
        if kept[c] < share[c]:
            kept[c] += 1
            keep.append(i)
    return keep


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """An .npz set with unequal classes in a shuffled order (11 labels, so shares do not divide evenly)."""
    rng = np.random.default_rng(3)
    y_train = rng.choice(11, size=700, p=np.r_[[0.2], np.full(10, 0.08)])
    y_test = rng.permutation(np.arange(330) % 11)
    arrays = dict(x_train=rng.integers(0, 256, (700, 1, 8, 8), dtype=np.uint8), y_train=y_train,
                  x_test=rng.integers(0, 256, (330, 1, 8, 8), dtype=np.uint8), y_test=y_test)
    path = tmp_path_factory.mktemp("subset") / "set.npz"
    np.savez(path, **arrays)
    return path, arrays


def test_counts_are_balanced_and_the_smallest_labels_take_the_remainder():
    ds = load_dataset("synthetic:train=503,test=100")
    assert ds.name == "synthetic:train=503,test=100"
    assert torch.bincount(ds.y_train).tolist() == [51, 51, 51] + [50] * 7
    assert torch.bincount(ds.y_test).tolist() == [10] * 10
    assert ds.num_classes == 10


def test_either_split_may_be_left_whole():
    whole = synthetic(seed=0)
    ds = load_dataset("synthetic:test=50")
    assert torch.equal(ds.x_train, whole.x_train) and torch.equal(ds.y_train, whole.y_train)
    assert len(ds.y_test) == 50


def test_the_subset_is_the_documented_rule_and_equals_that_rule_saved_as_npz(npz, tmp_path):
    path, a = npz
    ds = load_dataset(f"{path}:train=300,test=110")
    tr, te = first_of_each_class(a["y_train"], 300), first_of_each_class(a["y_test"], 110)
    assert balanced_indices(a["y_train"], 300).tolist() == tr
    np.savez(tmp_path / "by_hand.npz", x_train=a["x_train"][tr], y_train=a["y_train"][tr],
             x_test=a["x_test"][te], y_test=a["y_test"][te])
    by_hand = load_dataset(str(tmp_path / "by_hand.npz"))
    for field in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        assert torch.equal(getattr(ds, field), getattr(by_hand, field)), field
    assert torch.bincount(ds.y_train).tolist() == [28] * 3 + [27] * 8  # 300 = 11 * 27 + 3


def test_the_same_samples_every_time_whatever_the_seed(npz):
    path, _ = npz
    first = load_dataset(f"{path}:train=220", seed=0)
    for seed in (0, 7):
        again = load_dataset(f"{path}:train=220", seed=seed)
        assert torch.equal(again.x_train, first.x_train) and torch.equal(again.y_train, first.y_train)


def test_a_subset_of_every_sample_is_the_whole_set_in_its_order(npz):
    path, a = npz
    y = torch.as_tensor(a["y_test"])
    assert torch.equal(balanced_indices(y, len(y)), torch.arange(len(y)))  # 330 = 30 of each of 11


def test_more_than_a_class_holds_is_refused_not_clipped(npz):
    path, a = npz
    fewest = np.bincount(a["y_train"]).min()
    with pytest.raises(DataError, match=rf"train=700 takes .* which has .*; train={11 * fewest} or fewer") as e:
        load_dataset(f"{path}:train=700")
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    load_dataset(f"{path}:train={11 * fewest}")  # the largest it names is accepted
    with pytest.raises(DataError, match="test=10 is fewer than the 11 classes"):
        load_dataset(f"{path}:test=10")


@pytest.mark.parametrize("spec,needle", [
    ("cifar10:train=0", "'train=0', not a subset option"),
    ("cifar10:train=-5", "'train=-5', not a subset option"),
    ("cifar10:train=5k", "'train=5k', not a subset option"),
    ("cifar10:size=500", "'size=500', not a subset option"),
    ("cifar10:train=500;test=100", "not a subset option"),
    ("cifar10:train=500,train=600", "gives train twice"),
    ("cifar10:", "'', not a subset option"),
    ("shakespeare:train=5", "'shakespeare' or 'shakespeare:N'"),
])
def test_bad_specs_are_refused_in_one_line(spec, needle):
    for call, error in ((lambda: Config(dataset=spec), ConfigError), (lambda: load_dataset(spec), DataError)):
        with pytest.raises(error) as e:
            call()
        text = str(e.value)
        assert needle in text and repr(spec) in text and "\n" not in text
        if not spec.startswith("shakespeare"):
            assert dataset_name.SUBSET_FORM in text


def test_an_unknown_source_is_refused_with_the_allowed_names():
    with pytest.raises(ConfigError, match=r"dataset='imagenet:train=5' is not allowed: .*SOURCE:train=N,test=M"):
        Config(dataset="imagenet:train=5")
    with pytest.raises(DataError, match=r"unknown dataset 'imagenet:train=5'; allowed: cifar10, .*SOURCE:train=N"):
        load_dataset("imagenet:train=5")


def test_subset_and_text_do_not_mix():
    with pytest.raises(ConfigError, match="shakespeare goes with model char_lstm"):
        Config(dataset="synthetic:train=100", model="char_lstm", partition="roles")


def test_the_cache_key_separates_subsets_and_ignores_their_spelling(npz, tmp_path):
    def key(dataset):
        return Config(dataset=dataset, model="cnn").key()
    assert key("cifar10:train=5000,test=1000") == key("cifar10:test=1000,train=5000")
    assert len({key("cifar10"), key("cifar10:train=5000,test=1000"), key("cifar10:train=5000"),
                key("cifar10:train=4000,test=1000")}) == 4
    path, _ = npz
    copy = tmp_path / "elsewhere.npz"
    shutil.copy(path, copy)
    assert key(f"{path}:train=300") == key(f"{copy}:train=300") != key(f"{path}:train=400")
    assert key(f"{path}:train=300") != key(str(path))


def test_the_cli_refuses_a_bad_subset_with_exit_2(capsys, tmp_path):
    for spec, needle in (("synthetic-mnist:train=x", "not a subset option"),
                         ("synthetic-mnist:train=100000", "which has")):
        assert main(["run", *TINY, "--dataset", spec, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("params_file", sorted((report.NOTEBOOKS_DIR / "params").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_params_file_plans_and_names_valid_datasets(params_file):
    """The report accepts every shipped params file, and each dataset line is a name Config accepts."""
    steps = report.plan(params_file)
    datasets = {values["dataset"] for _, values in steps if "dataset" in values}
    assert datasets
    for name in datasets:
        Config(dataset=name, model="char_lstm" if name.startswith("shakespeare") else "cnn",
               partition="roles" if name.startswith("shakespeare") else "iid")
