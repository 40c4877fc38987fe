"""Every config field refuses bad values with one line naming the field, the value and the range."""
import dataclasses

import pytest

from fl_lib.core.config import FIELD_NAMES, PRESETS, RULES, Config, parse_value, preset
from fl_lib.core.errors import ConfigError

BAD = {
    "dataset": ["imagenet", "", 3],
    "data_root": [None, 1],
    "model": ["resnet50", None],
    "num_clients": [0, -3, 2.5, True, "10", 10**6],
    "partition": ["pathological", 1],
    "alpha": [0, 0.0, -0.5, float("nan"), float("inf"), "0.5", True, 1e7],
    "shards_per_client": [0, -1, 1.5],
    "min_size": [-1, 0.5],
    "client_fraction": [0, 0.0, -0.1, 1.5, float("nan")],
    "local_epochs": [0, -1, 1.0],
    "batch_size": [0, -64, 64.0, "64"],
    "lr": [0, -0.1, float("nan"), float("inf"), 1000],
    "momentum": [-0.1, 1.0, 5],
    "weight_decay": [-1e-4, 2],
    "num_rounds": [0, -5, 3.0],
    "algorithm": ["fedprox", None],
    "bits": [0, 1, 17, 31, 33, 64, 8.0, True, "16"],
    "upload": ["gradients", None],
    "rounding": ["floor", None],
    "augment": [1, "yes", None],
    "seed": [-1, 2**31, 1.5],
    "device": ["tpu", "cuda:x", ""],
    "engine": ["parallel"],
    "workers": [-1, 1.5, 2000, "2"],
    "channels_last": [True, "yes"],
    "precision": ["fp16", "int8"],
    "link": ["wifi7", "lognormal:", "lognormal:-1,0.5", "lognormal:5", "lognormal:5,9", "", None],
    "deadline": [-1, -0.5, float("nan"), float("inf"), "60", True],
    "bits_policy": ["dynamic", None],
    "min_bits": [1, 17, 32, 8.0, "4"],
    "buffer_size": [-1, 2.5, True],
    "concurrency": [-1, 2.5, True, 10**6],
    "server_lr": [0, -1.0, float("nan"), 1000, "1"],
    "buffer_weights": ["mean", None],
    "dp_clip": [-1.0, float("nan"), "1"],
    "dp_noise": [-0.5, float("inf"), 1e4],
    "dp_delta": [0, 0.0, 1, 1.0, -1e-5],
    "dp_sampling": ["bernoulli", None],
    "aggregator": ["trimmed", None, 1],
    "server_opt": ["sgd", None],
    "server_momentum": [-0.1, 1.0, "x"],
    "server_beta2": [-0.1, 1.0],
    "server_tau": [0, 0.0, 2.0],
    "prox_mu": [-1.0, float("nan"), 1e4],
    "epoch_schedule": ["linear", None, 1],
    "scaffold": ["yes", 1, None],
    "epoch_halving": [0, 2.5, True],
    "epoch_min_drop": [-0.1, 1.5, float("nan")],
    "batch_schedule": ["shrink", None, 1],
    "batch_doubling": [0, 2.5, True],
    "batch_max": [-1, 2.5, "64"],
    "trim_fraction": [-0.1, 0.5, 0.7],
    "cosine_temperature": [0, 0.0, -1.0],
    "soft_clip": [0, 0.0, -2.0],
    "cfl_eps1": [-0.1, float("nan"), "0.4"],
    "cfl_eps2": [-1.0, float("inf"), None],
    "cfl_min_rounds": [-1, 2.5, True],
    "secure_aggregation": [1, "yes", None],
    "eval_every": [0, -1],
    "checkpoint_every": [-1, 0.5],
}


def test_every_field_has_a_rule_and_bad_values():
    assert set(RULES) == set(FIELD_NAMES) == set(BAD)


@pytest.mark.parametrize("field,value", [(f, v) for f, vs in BAD.items() for v in vs])
def test_bad_value_gets_one_line_naming_field_value_and_range(field, value):
    with pytest.raises(ConfigError) as err:
        Config(**{field: value})
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{field}=")
    assert repr(value) in msg
    assert RULES[field].describe() in msg


@pytest.mark.parametrize("fields,needle", [
    (dict(bits_policy="adaptive"), "bits_policy='adaptive' needs a link"),
    (dict(algorithm="fedbuff"), "algorithm='fedbuff' needs a clock"),
    (dict(deadline=60.0), "deadline=60.0 needs a clock"),
    (dict(algorithm="fedbuff", link="mobile", deadline=60.0), "fedbuff waits for no round"),
])
def test_clock_fields_that_need_each_other(fields, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        Config(**fields)
    assert "\n" not in str(err.value)


def test_presets_are_valid_and_sized_as_documented():
    assert set(PRESETS) == {"paper", "quick", "smoke", "fedavg-mnist-cnn", "fedavg-mnist-2nn",
                            "fedavg-shakespeare", "fedsgd-shakespeare"}
    p = PRESETS["paper"]
    assert (p.dataset, p.model, p.num_clients, p.partition, p.alpha, p.client_fraction, p.local_epochs,
            p.num_rounds) == ("cifar10", "squeezenet1_0", 10, "dirichlet", 0.5, 1.0, 5, 300)
    for name in ("fedavg-mnist-cnn", "fedavg-mnist-2nn"):
        m = PRESETS[name]
        assert (m.dataset, m.num_clients, m.client_fraction, m.partition) == ("mnist", 100, 0.1, "shards")
        assert m.clients_per_round == 10


def test_preset_overrides_are_checked():
    assert preset("quick", alpha=0.1).alpha == 0.1
    with pytest.raises(ConfigError, match="alpha=0"):
        preset("quick", alpha=0)
    with pytest.raises(ConfigError, match="preset='nope'"):
        preset("nope")


def test_parse_value_reads_cli_strings():
    assert parse_value("batch_size", "full") is None
    assert parse_value("batch_size", "32") == 32
    assert parse_value("augment", "false") is False
    assert parse_value("alpha", "1e-2") == 0.01
    with pytest.raises(ConfigError, match="num_rounds='ten'"):
        parse_value("num_rounds", "ten")
    with pytest.raises(ConfigError, match="unknown config field"):
        parse_value("colour", "red")


def test_from_dict_refuses_unknown_fields():
    with pytest.raises(ConfigError, match="colour"):
        Config.from_dict({"colour": "red"})


def test_key_ignores_where_things_run_but_not_what_is_run(tmp_path):
    base = Config()
    assert base.key() == base.replace(device="cpu", checkpoint_every=3, data_root="elsewhere", workers=3).key()
    assert base.key() == base.replace(num_rounds=7).key()  # one folder holds a run at every length
    assert base.key() != base.replace(bits=16).key()
    assert base.key() != base.replace(seed=1).key()


def test_workers_auto_means_one_per_core():
    assert parse_value("workers", "auto") == 0 and parse_value("workers", "3") == 3
    with pytest.raises(ConfigError, match="fedbuff"):
        Config(engine="pool", algorithm="fedbuff", link="mobile")


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().alpha = 3
