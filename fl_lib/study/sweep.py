"""A grid of runs as one tidy table: `sweep(base, axes)` runs every combination and returns all their metrics.

A lesson asks its question of many runs: every bit width on every seed, every alpha with every
bit width. `sweep` applies each combination of the axes to a base config, runs them all through
the results cache (`runtime.results.run_many`: side by side, each computed once and read back
after), and returns one DataFrame holding every metrics row of every run, with one column per
axis saying which run the row came from. Plots and tables then group by those columns, and the
configs are exactly `base.replace(**combination)`, so their cache keys are those of the same
runs made by hand.

`axes` maps a column name to its values:

    {"seed": [0, 1], "bits": [32, 16, 4]}       a list: a Config field and its values
    {"bits": 16, "seed": [0, 1]}                 one value: a fixed field, still a column
    {"policy": {"INT16": {"bits": 16},           a dict: named settings; the column holds the name
                "adaptive": {"bits": 16, "bits_policy": "adaptive"}}}

Every combination is made, the first axis outermost. A grid that is not a product is a list of
such mappings: their combinations one after another, all run together.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

from ..core.config import FIELD_NAMES, Config
from ..core.errors import ConfigError, FLError
from ..runtime import results

TAKEN = (*results.METRICS, "seconds", "error")  # columns a run or sweep itself writes: no axis may use them


def grid(base: Config, axes) -> list[tuple[dict, Config]]:
    """The runs a sweep makes: (its axis columns, its config) for every combination, in order.

    A column of a Config field holds the config's value in every row, also for grids of a list
    that leave that field at the base's value; a named axis's column is empty there.
    """
    grids = _grids(axes)
    columns = list(dict.fromkeys(name for g in grids for name in g))  # every axis, in the order first given
    out = []
    for names, changes in (c for g in grids for c in _product(g)):
        cfg = base.replace(**changes)
        out.append(({c: names.get(c) if c not in FIELD_NAMES else getattr(cfg, c) for c in columns}, cfg))
    return out


def sweep(base: Config, axes, *, label: Callable[[dict], str] | None = None, root=None, workers: int = 0,
          progress: bool = True, data=None, errors: str = "raise"):
    """Every metrics row of every run of `axes` applied to `base`, with one column per axis (see the module).

    label(columns) -> str adds a `label` column, the name a plot's legend shows. Runs are cached
    in `root` (results.RUNS_ROOT if None) and computed on `workers` processes (0: one per core).
    With `data` (an in-memory Dataset) they run one after another in this process instead, on
    that data, as `results.run` does. A run that fails raises its FLError once the others have
    finished; with errors="keep" it gives one row instead, its axis columns and the error in an
    `error` column (None in every other row).
    """
    import pandas as pd

    if errors not in ("raise", "keep"):
        raise ConfigError(f"errors={errors!r} is not allowed: must be 'raise' or 'keep'")
    runs = grid(base, axes)
    if label is not None and any("label" in cols for cols, _ in runs):
        raise ConfigError("an axis is named 'label' and label= is given: keep one of them")
    done = _run_all([cfg for _, cfg in runs], root, workers, progress, data, keep=errors == "keep")
    frames = []
    for (cols, _), r in zip(runs, done):
        cols = cols | ({"label": label(cols)} if label is not None else {})
        if isinstance(r, FLError):
            frames.append(pd.DataFrame([cols | {"error": r}]))
        else:
            frames.append(r.metrics.assign(**cols, **({"error": None} if errors == "keep" else {})))
    return pd.concat(frames, ignore_index=True)


def _run_all(configs, root, workers, progress, data, keep: bool) -> list:
    """results.run_many's Runs (and, with `keep`, its FLErrors) in order; with `data`, run here one by one."""
    if data is None:
        return results.run_many(configs, workers=workers, root=root, progress=progress, return_errors=keep)
    done, failed = [], None
    for cfg in configs:
        try:
            done.append(results.run(cfg, root=root, progress=progress, data=data))
        except FLError as e:
            done.append(e)
            failed = failed or e
    if failed is not None and not keep:
        raise failed
    return done


def _grids(axes) -> list[Mapping]:
    """`axes` as a list of grids, each checked."""
    grids = [axes] if isinstance(axes, Mapping) else list(axes) if isinstance(axes, (list, tuple)) else None
    if not grids or not all(isinstance(g, Mapping) and g for g in grids):
        raise ConfigError(f"axes={axes!r} is not allowed: must be a mapping of axis names to values, or a "
                          f"non-empty list of such mappings")
    for g in grids:
        for name, values in g.items():
            _check_axis(name, values)
    return grids


def _check_axis(name, values) -> None:
    """One line naming a bad axis and what is allowed."""
    if name in TAKEN:
        raise ConfigError(f"axis {name!r} is not allowed: a run's metrics already have that column")
    if isinstance(values, Mapping):  # named settings
        if name in FIELD_NAMES:
            raise ConfigError(f"axis {name!r} holds named settings, so it needs a name that is not a Config "
                              f"field (such as 'label' or 'policy')")
        for key, fields in values.items():
            bad = [f for f in fields if f not in FIELD_NAMES] if isinstance(fields, Mapping) else [fields]
            if bad:
                raise ConfigError(f"axis {name!r}, {key!r}: {bad[0]!r} is not a Config field; allowed fields: "
                                  f"{', '.join(FIELD_NAMES)}")
    elif name not in FIELD_NAMES:
        raise ConfigError(f"axis {name!r} is not a Config field; allowed fields: {', '.join(FIELD_NAMES)} "
                          f"(or give a dict of named settings)")
    if isinstance(values, (list, tuple, Mapping)) and not values:
        raise ConfigError(f"axis {name!r} has no values")


def _product(g: Mapping) -> list[tuple[dict, dict]]:
    """(named columns, config changes) of every combination of one grid, the first axis outermost."""
    levels = []
    for name, values in g.items():
        if isinstance(values, Mapping):
            levels.append([({name: key}, dict(fields)) for key, fields in values.items()])
        else:
            values = values if isinstance(values, (list, tuple)) else [values]
            levels.append([({}, {name: v}) for v in values])
    out = []
    for combo in itertools.product(*levels):
        names, changes = {}, {}
        for n, c in combo:
            for field, v in c.items():
                if field in changes and changes[field] != v:
                    raise ConfigError(f"two axes set {field} ({changes[field]!r} and {v!r}) in one combination")
                changes[field] = v
            names |= n
        out.append((names, changes))
    return out
