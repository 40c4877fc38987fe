"""Gradient leakage: DLG/iDLG and the cosine attack on tiny synthetic images, through the real codec.

Thresholds were measured on this project's 2-core CPU with the attacks run to their plateau
(DLG, LeNet on a smooth 1x3x8x8 image, label 3, seeds 0 / 1): FP32 without noise 75.8 / 84.3 dB
after 25 L-BFGS steps (D = 2.9e-9 / 1.2e-9); with noise std 0.01 on a gradient of RMS ~0.05:
15.4 / 15.3 dB; std 0.1: 5.3 / 5.4 dB. Over seeds 0-11 (label = seed mod 10) all 12 FP32 attacks
reached 60-80 dB. The cosine attack (FedAvg delta of 5 steps, tv 0.01, plateau window 50) gave
16.8 / 19.3 / 19.0 dB against a gray guess's 13.9 / 14.4 / 15.1 dB (seeds 0-2, label 4).
"""
import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fl_lib.core import codec
from fl_lib.privacy import leakage
from fl_lib.core.errors import ConfigError
from fl_lib.core.rng import Stream, torch_generator

SIZE = 8
FP32_MIN_PSNR = 40.0  # measured 75.8 / 84.3 dB: a wide margin, yet far above any blurry guess (~14 dB)


def smooth_image(seed, batch=1, size=SIZE):
    """A smooth random RGB image in [0, 1] (bilinear upsampling of 4x4 noise), like a tiny photo."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(batch, 3, 4, 4, generator=g), size=size, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def clean():
    """DLG at FP32, batch size 1, no noise (seed 0), run to its plateau."""
    return leakage.attack(smooth_image(0), torch.tensor([3]), "lenet", bits=32, noise=0.0, seed=0)


def test_fp32_dlg_reconstructs_the_image(clean):
    """Near-exact reconstruction of a synthetic image at FP32, batch size 1."""
    assert clean.psnr > FP32_MIN_PSNR
    assert clean.match_loss < 1e-6  # measured 2.9e-9: the gradients match to float32 precision
    assert clean.label_correct and clean.labels.tolist() == [3]
    assert clean.reconstruction.shape == (1, 3, SIZE, SIZE)
    assert clean.history[-1] < clean.history[0] * 1e-3  # the gradient distance really fell
    gray = leakage.psnr(torch.full_like(smooth_image(0), 0.5), smooth_image(0))
    assert gray < 15  # what no attack at all scores


def test_psnr_falls_as_noise_grows(clean):
    x, y = smooth_image(0), torch.tensor([3])
    noisy = [leakage.attack(x, y, "lenet", 32, noise, seed=0).psnr for noise in (0.01, 0.1)]
    assert clean.psnr > noisy[0] + 10 > noisy[1] + 10  # measured 75.8 > 15.4 > 5.3 dB


def test_plateau_stalls_once_the_best_loss_stops_falling():
    """The stopping rule on known sequences: stalled once the best loss fell by less than tol over window steps."""
    flat = leakage.Plateau(window=5, tol=0.01)
    assert [flat.update(1.0) for _ in range(7)] == [False] * 5 + [True, True]  # the 6th loss closes 5 steps
    falling = leakage.Plateau(window=5, tol=0.01)
    assert not any(falling.update(0.99 ** t) for t in range(1000))  # 4.9% per window: still progress
    coarse = leakage.Plateau(window=5, tol=0.1)
    assert [coarse.update(0.99 ** t) for t in range(6)] == [False] * 5 + [True]  # 4.9% < 10%: stalled
    jitter = leakage.Plateau(window=3, tol=0.01)  # a lower best counts, later higher losses do not undo it
    assert [jitter.update(v) for v in (1.0, 0.5, 0.9, 0.8, 0.7)] == [False] * 4 + [True]
    jitter.reset()  # after a step-size decay the next window is judged on its own
    assert [jitter.update(v) for v in (0.6, 0.6, 0.6, 0.6)] == [False] * 3 + [True]
    zero = leakage.Plateau(window=3, tol=0.01)
    assert [zero.update(v) for v in (1.0, 0.0, 0.0, 0.0, 0.0)] == [False] * 4 + [True]  # stuck at 0 is stalled


def test_dlg_stops_on_its_plateau_before_the_cap(clean):
    assert clean.stop == "plateau" and clean.steps_run == len(clean.history)
    assert clean.steps_run < leakage.DEFAULT_STEPS["dlg"]  # measured 25 of 1,000
    assert clean.settings["steps"] == leakage.DEFAULT_STEPS["dlg"]
    assert (clean.settings["window"], clean.settings["tol"]) == leakage.PLATEAU["dlg"]
    # a looser rule (window 2, tol 0.5) stops sooner, on the same path: its history is a prefix of clean's
    loose = leakage.attack(smooth_image(0), torch.tensor([3]), "lenet", 32, 0.0, seed=0, window=2, tol=0.5)
    assert loose.stop == "plateau" and loose.steps_run < clean.steps_run  # measured 7 < 25
    assert loose.history == clean.history[:loose.steps_run]


def test_attack_runs_on_while_its_loss_falls():
    """At a cap of 4 steps the loss is still falling 10x per step: the attack stops at the cap, not on a plateau."""
    r = leakage.attack(smooth_image(0), torch.tensor([3]), "lenet", 32, 0.0, steps=4, seed=0)
    assert r.stop == "cap" and r.steps_run == 4 and r.settings["steps"] == 4
    assert all(b < 0.1 * a for a, b in zip(r.history, r.history[1:]))  # measured 2.0, 0.044, 3.6e-4, 4.0e-6


def test_cosine_attack_decays_its_step_at_each_plateau_then_stops():
    """Three x0.1 decays, then a fourth plateau stops it: at least 4 (window + 1) steps, far below the cap."""
    window = 20
    r = leakage.attack(smooth_image(1), torch.tensor([4]), "lenet", 32, 0.0, seed=1, method="cosine", tv=0.01,
                       window=window)
    assert r.stop == "plateau"
    assert (leakage.LR_DECAYS + 1) * (window + 1) <= r.steps_run < leakage.DEFAULT_STEPS["cosine"]  # measured 262
    assert 0 <= r.match_loss < 0.01  # 1 - cos at the returned image, without the TV term


def test_each_attack_feeds_its_references_inputs():
    """dlg: pixels in [0, 1] even when the dataset's mean/std are given (DLG, iDLG); cosine: (x - mean) / std."""
    x, y = smooth_image(0), torch.tensor([3])
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    net = leakage.build_victim("lenet", 10, 3, SIZE, 0)
    d = leakage.attack(x, y, "lenet", 32, 0.0, steps=1, seed=0, mean=mean, std=std)
    raw = leakage.client_upload(net, x, y)
    assert d.settings["inputs"] == "pixels" and all(torch.equal(d.observed[n], raw[n]) for n in raw)
    c = leakage.attack(x, y, "lenet", 32, 0.0, steps=1, seed=0, method="cosine", mean=mean, std=std)
    normalized = leakage.client_upload(net, (x - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1), y, 5)
    assert c.settings["inputs"] == "normalized"
    assert all(torch.equal(c.observed[n], normalized[n]) for n in normalized)
    assert json.loads(json.dumps(leakage.defaults()))["version"] == leakage.VERSION  # a cache key can hold it


@pytest.mark.parametrize("model", ["lenet", "cifar_cnn"])
def test_idlg_recovers_every_label(model):
    x = smooth_image(1)
    for label in range(10):
        net = leakage.build_victim(model, 10, 3, SIZE, seed=label)
        grad = leakage.client_upload(net, x, torch.tensor([label]))
        assert leakage.recover_labels(net, grad, 1, x).tolist() == [label]


def test_batch_labels_are_recovered_as_a_multiset():
    x, y = smooth_image(2, batch=4), torch.tensor([7, 1, 5, 1])
    for model in ("lenet", "cifar_cnn"):
        net = leakage.build_victim(model, 10, 3, SIZE, seed=0)
        grad = leakage.client_upload(net, x, y)
        assert leakage.recover_labels(net, grad, 4, torch.rand(4, 3, SIZE, SIZE)).tolist() == [1, 1, 5, 7]


@pytest.mark.parametrize("bits", [32, 16, 8, 4, 2])
def test_attacker_sees_exactly_the_decoded_upload(bits):
    x, y = smooth_image(0), torch.tensor([3])
    r = leakage.attack(x, y, "lenet", bits, 0.0, steps=1, seed=0)
    upload = leakage.client_upload(leakage.build_victim("lenet", 10, 3, SIZE, 0), x, y)
    blob = codec.encode(upload, bits=bits)
    expected = codec.decode(blob)
    assert r.upload_bytes == len(blob)
    assert expected.keys() == r.observed.keys()
    for name in expected:
        assert torch.equal(r.observed[name], expected[name]), name
    if bits == 32:  # float32 arrives bit for bit; a quantized upload does not
        assert all(torch.equal(r.observed[n], upload[n]) for n in upload)
    else:
        assert not all(torch.equal(r.observed[n], upload[n]) for n in upload)


def test_noise_is_added_before_encoding_from_the_dp_stream():
    x, y = smooth_image(0), torch.tensor([3])
    r = leakage.attack(x, y, "lenet", 8, 0.05, steps=1, seed=7)
    upload = leakage.client_upload(leakage.build_victim("lenet", 10, 3, SIZE, 7), x, y)
    g = torch_generator(7, 0, 0, Stream.DP_NOISE)
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in upload.items()}
    expected = codec.decode(codec.encode(noisy, bits=8))
    assert all(torch.equal(r.observed[n], expected[n]) for n in expected)


def test_fedavg_delta_is_what_the_server_decodes():
    """The cosine attack's upload is w_after - w_before of 5 plain SGD steps, quantized as a delta would be."""
    x, y = smooth_image(0), torch.tensor([3])
    net = leakage.build_victim("lenet", 10, 3, SIZE, 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    delta = leakage.client_upload(net, x, y, local_steps=5, lr=0.01)
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)  # the broadcast model is untouched
    after = {k: before[k] + delta[k] for k in before}
    # encode(w_after, reference=w_before) quantizes the same delta the attacker is handed
    via_reference = codec.decode_codes(codec.encode(after, bits=8, reference=before))
    direct = codec.decode_codes(codec.encode(delta, bits=8))
    assert all(torch.equal(via_reference[k].q, direct[k].q) for k in direct)
    r = leakage.attack(x, y, "lenet", 8, 0.0, steps=1, seed=0, method="cosine")
    assert r.settings["local_steps"] == 5
    assert all(torch.equal(r.observed[k], codec.decode(codec.encode(delta, bits=8))[k]) for k in delta)


def test_cosine_attack_beats_a_gray_guess():
    x = smooth_image(1)
    # tv 0.01: the default 0.1 (best on 32x32 CIFAR-10) over-smooths an 8x8 image; window 50 keeps it ~2 s
    r = leakage.attack(x, torch.tensor([4]), "lenet", 32, 0.0, seed=1, method="cosine", tv=0.01, window=50)
    gray = leakage.psnr(torch.full_like(x, 0.5), x)
    assert r.label_correct
    assert r.psnr > gray + 3  # measured 19.3 dB against a gray image's 14.4 dB


def test_same_seed_same_result_other_seed_other_result():
    x, y = smooth_image(0, batch=2), torch.tensor([3, 6])
    a, b = (leakage.attack(x, y, "lenet", 8, 0.01, steps=3, seed=5) for _ in range(2))
    assert torch.equal(a.reconstruction, b.reconstruction) and a.history == b.history
    c = leakage.attack(x, y, "lenet", 8, 0.01, steps=3, seed=6)
    assert not torch.equal(a.reconstruction, c.reconstruction)


@pytest.mark.parametrize("kwargs, flag", [
    (dict(bits=1), "bits=1"), (dict(bits=17), "bits=17"), (dict(bits=32.0), "bits=32.0"), (dict(noise=-0.1), "noise=-0.1"),
    (dict(noise=float("nan")), "noise=nan"), (dict(steps=0), "steps=0"), (dict(model="resnet"), "model='resnet'"),
    (dict(method="adam"), "method='adam'"), (dict(seed=-1), "seed=-1"), (dict(lr=0.0), "lr=0.0"),
    (dict(method="dlg", local_steps=5), "local_steps=5"), (dict(window=0), "window=0"), (dict(tol=0.6), "tol=0.6"),
    (dict(tol=-0.01), "tol=-0.01"),
])
def test_bad_values_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match="^" + flag.replace("(", r"\(").replace(".", r"\.") + " is not allowed"):
        leakage.attack(smooth_image(0), torch.tensor([3]), **{"steps": 1, **kwargs})


def _cli(argv):
    p = argparse.ArgumentParser()
    leakage.add_arguments(p)
    return leakage.main(p.parse_args(argv))


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = (smooth_image(0, batch=12).numpy() * 255).round().astype(np.uint8)
    y = rng.integers(0, 10, 12)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:])
    return str(path)


def test_cli_prints_rows_and_saves_figures(npz, tmp_path, capsys):
    out = tmp_path / "fig"
    assert _cli(["--dataset", npz, "--batch-size", "1", "2", "--bits", "32", "4", "--noise", "0", "--steps", "2",
                 "--json", "--out", str(out)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["batch_size"], r["bits"]) for r in rows] == [(1, 32), (1, 4), (2, 32), (2, 4)]
    assert {"bits", "batch_size", "noise", "model", "psnr", "match_loss", "steps", "steps_run", "stop", "inputs",
            "label_correct", "seconds"} <= rows[0].keys()
    assert all(r["steps"] == 2 and r["steps_run"] <= 2 and r["stop"] in ("cap", "plateau", "exact") for r in rows)
    assert rows[1]["upload_bytes"] < rows[0]["upload_bytes"]
    assert (out / "leakage_lenet_B1.png").stat().st_size > 0 and (out / "leakage_lenet_B2.png").is_file()
    assert json.loads((out / "leakage_rows.json").read_text()) == rows
    histories = json.loads((out / "leakage_histories.json").read_text())  # one loss per step that ran
    assert [len(histories[f"lenet_B{r['batch_size']}_bits{r['bits']}_noise0"]) for r in rows] == [
        r["steps_run"] for r in rows]
    with np.load(out / "reconstructions.npz") as f:
        assert f["lenet_B2_bits4_noise0"].shape == (2, 3, SIZE, SIZE)


@pytest.mark.parametrize("argv, flag", [
    (["--batch-size", "0"], "batch_size=0"), (["--bits", "32", "5x"], None), (["--bits", "1"], "bits=1"),
    (["--noise", "-1"], "noise=-1.0"), (["--model", "vgg"], "model='vgg'"), (["--steps", "0"], "steps=0"),
    (["--method", "sgd"], "method='sgd'"), (["--window", "0"], "window=0"), (["--tol", "1"], "tol=1.0"),
])
def test_cli_bad_values_raise_config_error(npz, tmp_path, argv, flag):
    if flag is None:  # not even a number: argparse's own one-line error (exit status 2)
        with pytest.raises(SystemExit) as e:
            _cli(["--dataset", npz, *argv])
        assert e.value.code == 2
        return
    with pytest.raises(ConfigError, match="^" + flag.replace(".", r"\.") + " is not allowed"):
        _cli(["--dataset", npz, "--out", str(tmp_path), *argv])


def test_an_attack_runs_on_one_thread_and_gives_the_callers_threads_back(monkeypatch):
    seen, real = [], leakage._dlg

    def watched(*args):
        seen.append(torch.get_num_threads())
        return real(*args)

    monkeypatch.setattr(leakage, "_dlg", watched)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        leakage.attack(smooth_image(0), torch.tensor([3]), steps=2)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
