"""The attack cache: a stored grid is read back without attacking again; any change to what shapes it misses."""
import shutil

import numpy as np
import pandas as pd
import pytest

from fl_lib.core.data import synthetic
from fl_lib.privacy import leakage
from fl_lib.study import attacks

GRID = dict(model="lenet", steps=1, seed=0)  # one attack step on 8x8 images: a second per grid


@pytest.fixture
def npz(tmp_path):
    ds = synthetic(num_train=20, num_test=10, size=8, seed=0)
    path = tmp_path / "images.npz"
    np.savez(path, x_train=ds.x_train.numpy(), y_train=ds.y_train.numpy(), x_test=ds.x_test.numpy(),
             y_test=ds.y_test.numpy())
    return str(path)


@pytest.fixture
def calls(monkeypatch):
    """Every leakage.run_grid call, counted (and still made)."""
    made, real = [], leakage.run_grid

    def counted(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(leakage, "run_grid", counted)
    return made


def test_a_stored_grid_is_read_back_without_attacking(npz, tmp_path, calls):
    root = tmp_path / "runs"
    first = attacks.attack_grid(npz, [1], [32, 4], [0.0], root=root, **GRID)
    assert len(calls) == 1 and first.parent == root / "leakage" and (first / attacks.DONE).is_file()
    before = attacks.Attacks.load(first)
    copy = tmp_path / "elsewhere.npz"  # the same file under another name: its content is the key
    shutil.copy(npz, copy)
    again = attacks.attack_grid(str(copy), [1], [32, 4], [0.0], root=root, **GRID)
    assert again == first and len(calls) == 1
    after = attacks.Attacks.load(again)
    pd.testing.assert_frame_equal(after.rows, before.rows)
    assert after.histories == before.histories and after.images.keys() == before.images.keys()
    assert not (first / "partial").exists()


@pytest.mark.parametrize("change", [dict(seed=1), dict(steps=2), dict(noises=[0.5]), dict(bit_widths=[32]),
                                    dict(batch_sizes=[2])])
def test_a_changed_setting_misses(npz, tmp_path, calls, change):
    settings = dict(batch_sizes=[1], bit_widths=[32, 4], noises=[0.0], **GRID)
    first = attacks.attack_grid(npz, root=tmp_path, **settings)
    other = attacks.attack_grid(npz, root=tmp_path, **(settings | change))
    assert other != first and len(calls) == 2 and (other / attacks.DONE).is_file()


def test_a_changed_attack_or_dataset_misses(npz, tmp_path, monkeypatch):
    key = attacks.grid_key(npz, [1], [32], [0.0], "lenet", 1, 0)
    assert attacks.grid_key("synthetic", [1], [32], [0.0], "lenet", 1, 0) != key
    monkeypatch.setattr(leakage, "VERSION", "another attack")
    assert attacks.grid_key(npz, [1], [32], [0.0], "lenet", 1, 0) != key


def test_an_interrupted_grid_is_computed_again(npz, tmp_path, calls):
    key = attacks.grid_key(npz, [1], [32], [0.0], "lenet", 1, 0)
    partial = tmp_path / "leakage" / key / "partial"
    partial.mkdir(parents=True)
    (partial.parent / "leakage_rows.json").write_text("[]")  # moved in, but reconstructions.npz never was
    folder = attacks.attack_grid(npz, [1], [32], [0.0], root=tmp_path, **GRID)
    assert len(calls) == 1 and len(attacks.Attacks.load(folder).rows) == 1


def test_stored_looks_up_one_setting(npz, tmp_path):
    a = attacks.attack_grid(npz, [1], [32, 4], [0.0], root=tmp_path, **GRID)
    b = attacks.attack_grid(npz, [1], [32], [0.5], data=synthetic(num_train=20, num_test=10, size=8, seed=0),
                            root=tmp_path, **GRID)
    grids = attacks.Attacks.load(a, b)
    image, row = grids.stored(1, 4, 0.0)
    assert image.dtype == np.uint8 and image.shape == (1, 3, 8, 8) and (row.bits, row.noise) == (4, 0.0)
    assert grids.stored(1, 32, 0.5)[1].noise == 0.5
    assert grids.stored(2, 32, 0.0) == (None, None) and grids.stored(1, 8, 0.0) == (None, None)
    assert set(grids.histories) == {"lenet_B1_bits32_noise0", "lenet_B1_bits4_noise0", "lenet_B1_bits32_noise0.5"}


SPECS = [([1], [32, 4], [0.0], 0), ([2], [32], [0.0], 0), ([1], [32, 4], [0.0], 1)]


def _same_grids(a, b):
    for x, y in zip(a, b):
        left, right = attacks.Attacks.load(x), attacks.Attacks.load(y)
        pd.testing.assert_frame_equal(left.rows.drop(columns="seconds"), right.rows.drop(columns="seconds"))
        assert left.histories == right.histories
        assert all(np.array_equal(left.images[k], right.images[k]) for k in left.images)


@pytest.mark.slow
def test_grids_side_by_side_equal_grids_in_turn_and_are_read_back(npz, tmp_path, calls):
    """Two processes give the numbers one loop gives (every attack on one thread), in the order asked; a rerun
    computes nothing, and only the missing grids of a list go to the processes."""
    kwargs = dict(model="lenet", steps=3)
    in_turn = attacks.attack_grids(npz, SPECS, root=tmp_path / "a", workers=1, log=lambda m: None, **kwargs)
    assert len(calls) == 3
    side = attacks.attack_grids(npz, SPECS, root=tmp_path / "b", workers=2, log=lambda m: None, **kwargs)
    assert len(calls) == 3  # computed in the workers, not here
    _same_grids(in_turn, side)
    assert [attacks.Attacks.load(f).rows.seed.iloc[0] for f in side] == [0, 0, 1]
    assert attacks.attack_grids(npz, SPECS, root=tmp_path / "b", workers=2, **kwargs) == side
    assert len(calls) == 3


def test_one_missing_grid_runs_here_and_a_duplicate_spec_runs_once(npz, tmp_path, calls):
    kwargs = dict(model="lenet", steps=1, root=tmp_path, log=lambda m: None)
    attacks.attack_grids(npz, SPECS[:1], workers=2, **kwargs)
    assert len(calls) == 1  # one grid to compute: no process is started for it
    folders = attacks.attack_grids(npz, [SPECS[1], SPECS[1]], workers=1, **kwargs)
    assert len(calls) == 2 and folders[0] == folders[1]
