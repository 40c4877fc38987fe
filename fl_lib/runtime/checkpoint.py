"""Atomic file writes and checksummed checkpoints that load without running code."""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch

from ..core.errors import FLError

MAGIC = b"FLCKPT1\n"  # format tag; a sha256 of the payload follows it
KEEP = 2  # checkpoints kept, so a damaged newest one still leaves a good one
_NAME = re.compile(r"round-(\d{6,})\.pt$")


def atomic_write(path, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file and a rename: all or nothing.

    On a full disk or a read-only folder the old file stays as it was and the error
    says so.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise FLError(f"could not write {path}: {e.strerror or e}; "
                      f"files written before are left as they were") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def save(folder, round_: int, state: dict) -> Path:
    """Save `state` (tensors, numbers, strings, lists, dicts) as round-NNNNNN.pt; prune old ones."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    path = Path(folder) / f"round-{round_:06d}.pt"
    atomic_write(path, MAGIC + hashlib.sha256(payload).digest() + payload)
    for old in list_checkpoints(folder)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def load(path) -> dict:
    """Load one checkpoint, checking its checksum; never unpickles arbitrary objects."""
    raw = Path(path).read_bytes()
    head = len(MAGIC) + 32
    if len(raw) < head or not raw.startswith(MAGIC):
        raise FLError(f"{path} is not an fl_lib checkpoint (bad header)")
    if hashlib.sha256(raw[head:]).digest() != raw[len(MAGIC):head]:
        raise FLError(f"{path} is damaged (checksum mismatch)")
    return torch.load(io.BytesIO(raw[head:]), map_location="cpu", weights_only=True)


def list_checkpoints(folder) -> list[Path]:
    """Checkpoint files in `folder`, newest round first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.search(p.name)]
    return sorted(found, key=lambda p: int(_NAME.search(p.name).group(1)), reverse=True)


def latest(folder, key: str) -> dict | None:
    """The newest good checkpoint of the run named `key`; damaged ones are reported and skipped."""
    for path in list_checkpoints(folder):
        try:
            state = load(path)
        except Exception as e:  # torch/pickle raise many kinds on damaged bytes
            warnings.warn(f"skipping checkpoint {path}: {e}; trying the previous one")
            continue
        if state.get("config_key") == key:
            return state
        warnings.warn(f"skipping checkpoint {path}: it belongs to another config")
    return None
