"""Lesson 07's leakage widget and figure helpers: stored attacks redrawn, never recomputed."""
import numpy as np
import pytest

from fl_lib.privacy import leakage
from fl_lib.study import plots
from fl_lib.core.data import synthetic
from fl_lib.study.widgets import LeakageExplorer, _rgb, attack_key, load_attacks


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Two run_grid folders on tiny 8x8 images, one attack step each: (rows, images, folders)."""
    tmp = tmp_path_factory.mktemp("attacks")
    ds = synthetic(num_train=20, num_test=10, size=8, seed=0)
    a, b = tmp / "bits", tmp / "noise"
    leakage.run_grid(ds, (1,), (32, 4), (0.0,), "lenet", steps=1, seed=0, out=a)
    leakage.run_grid(ds, (1,), (32,), (0.5,), "lenet", steps=1, seed=0, out=b)
    rows, images = load_attacks(a, b)
    return rows, images, (a, b)


def test_load_attacks_merges_folders_under_run_grids_keys(stored):
    rows, images, _ = stored
    assert len(rows) == 3 and set(rows.noise) == {0.0, 0.5}
    for r in rows.itertuples():
        img = images[attack_key(r.model, r.batch_size, r.bits, r.noise)]
        assert img.dtype == np.uint8 and img.shape == (1, 3, 8, 8)
    assert images["lenet_B1_original"].shape == (1, 3, 8, 8)


def test_leakage_explorer_redraws_stored_images_without_attacking(stored, monkeypatch):
    rows, images, _ = stored

    def no_attack(*args, **kwargs):
        raise AssertionError("the widget must not attack or train")
    monkeypatch.setattr(leakage, "attack", no_attack)
    monkeypatch.setattr(leakage, "run_grid", no_attack)

    ex = LeakageExplorer(rows, images, model="lenet", batch_size=1)
    fig = ex.figure
    assert ex.bits.value == 32 and ex.noise.value == 0.0
    np.testing.assert_array_equal(np.array(fig.data[0].z), _rgb(images["lenet_B1_original"][0]))
    np.testing.assert_array_equal(np.array(fig.data[1].z), _rgb(images[attack_key("lenet", 1, 32, 0.0)][0]))

    ex.bits.value = 4
    assert ex.figure is fig and ex.key() == "lenet_B1_bits4_noise0"
    np.testing.assert_array_equal(np.array(fig.data[1].z), _rgb(images["lenet_B1_bits4_noise0"][0]))
    psnr = rows[(rows.bits == 4)].psnr.iloc[0]
    assert f"{psnr:.2f} dB" in ex.text.value and f"{psnr:.1f} dB" in fig.layout.title.text
    row = rows[(rows.bits == 4)].iloc[0]  # one attack step each: stopped at its cap, with its matching loss
    assert f"1 step (stopped at its step cap), final gradient-matching loss {row.match_loss:.3g}" in ex.text.value

    ex.noise.value = 0.5  # INT4 with noise was never attacked: gray panel, and the text says so
    assert ex.row is None and (np.array(fig.data[1].z) == 128).all()
    assert "not attacked" in ex.text.value and "not attacked" in fig.layout.title.text

    ex.bits.value = 32
    np.testing.assert_array_equal(np.array(fig.data[1].z), _rgb(images["lenet_B1_bits32_noise0.5"][0]))
    assert ex.row["noise"] == 0.5


def test_leakage_explorer_refuses_a_setting_it_has_no_attacks_for(stored):
    rows, images, _ = stored
    with pytest.raises(ValueError, match="batch_size=4"):
        LeakageExplorer(rows, images, batch_size=4)


def test_image_table_and_psnr_panels_write_pngs(stored, tmp_path):
    rows, images, _ = stored
    original = images["lenet_B1_original"]
    path = plots.image_table([[("original", original[0]), ("FP32", images["lenet_B1_bits32_noise0"][0])],
                              [("gray", np.full((1, 8, 8), 0.5))]], "t", tmp_path)
    assert path == tmp_path / "t.png" and path.is_file()
    fig = plots.psnr_panels(rows, reference=10.0, name="p", figures_dir=tmp_path)
    assert (tmp_path / "p.png").is_file()
    by_name = {tr.name: tr for tr in fig.data}
    assert list(by_name["B = 1"].x) == ["32", "4"]  # widest first
    np.testing.assert_allclose(by_name["noise"].x, [0.0, 0.5])
