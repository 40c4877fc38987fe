"""The metrics of one round: one typed record, one field per column of metrics.csv.

A column is a field here, with its meaning beside it (as `Config` documents its
fields); `COLUMNS` is metrics.csv's header, in field order. A new column is one new
field at the end (the header's order is part of what tests/test_unchanged.py pins).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def _column(doc: str, default=None):
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass
class RoundMetrics:
    """One row of metrics.csv: what round (or FedBuff server update) `round` did. None: not measured."""

    round: int = _column("t, 1-based: a synchronous round, or FedBuff's t-th server update")
    test_acc: float | None = _column("accuracy of the global model on the test split (evaluated rounds only)")
    test_loss: float | None = _column("mean cross-entropy on the test split (evaluated rounds only)")
    train_loss: float | None = _column("mean of the kept clients' mean training losses")
    upload_bytes: int = _column("bytes the clients uploaded this round (codec bytes, or masked shares)", 0)
    download_bytes: int = _column("bytes of the float32 models sent to the round's clients", 0)
    cum_upload_bytes: int | None = _column("upload_bytes summed up to this round")
    quant_error: float | None = _column("mean relative quantization error ||w_hat - w|| / ||w|| of the uploads")
    dropped_clients: int = _column("sampled clients left out: late, diverged, or refused uploads", 0)
    sim_seconds: float | None = _column("simulated duration of the round on the link model (no link: None)")
    cum_sim_seconds: float | None = _column("sim_seconds summed up to this round")
    mean_bits: float | None = _column("mean upload width of the kept clients")
    mean_staleness: float | None = _column("mean staleness of the aggregated updates (synchronous: 0)")
    epsilon: float | None = _column("DP epsilon spent up to this round, at dp_delta (DP with noise only)")
    sampled_clients: int | None = _column("clients sampled this round (under Poisson sampling it varies)")
    seconds: float | None = dataclasses.field(default=None, metadata={
        "doc": "wall-clock seconds the round took: timings.csv, not metrics.csv (it varies run to run)",
        "timing": True})

    def as_dict(self) -> dict:
        """The metrics.csv columns, by name."""
        return {name: getattr(self, name) for name in COLUMNS}

    # rows were plain dicts before 0.5: row["test_acc"] still reads and writes a field
    def __getitem__(self, name: str):
        if name not in _FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def __setitem__(self, name: str, value) -> None:
        if name not in _FIELDS:
            raise KeyError(name)
        setattr(self, name, value)


_FIELDS = {f.name for f in dataclasses.fields(RoundMetrics)}
COLUMNS = tuple(f.name for f in dataclasses.fields(RoundMetrics) if not f.metadata.get("timing"))  # metrics.csv
COLUMN_DOCS = {f.name: f.metadata["doc"] for f in dataclasses.fields(RoundMetrics)}
