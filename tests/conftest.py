"""Fixtures every test file may take: the tiny federation's config factory and its synthetic data.

The data are built once per session and shared, so a test must not change them: no in-place
ops, no share_memory_() (engine="pool" does that to the data it is given). A test that needs
to do either builds its own copy with tests.tiny.tiny_data(). The teardown below checks that
no test did, so a shared-data leak fails the run instead of silently changing later tests.
"""
import dataclasses

import pytest
import torch

from tests.tiny import tiny_config
from tests.tiny import tiny_data as build_tiny_data


@pytest.fixture
def tiny():
    """tiny(**fields) -> Config: the tiny federation (tests/tiny.py BASE) with `fields` on top."""
    return tiny_config


def _tensors(ds) -> dict:
    fields = {f.name: getattr(ds, f.name) for f in dataclasses.fields(ds)}
    return {name: value for name, value in fields.items() if isinstance(value, torch.Tensor)}


def _changes(shared, fresh) -> list:
    """Names of the tensors of `shared` that differ from `fresh` or were moved to shared memory."""
    now, then = _tensors(shared), _tensors(fresh)
    return [name for name in then
            if name not in now or now[name].is_shared() or not torch.equal(now[name].cpu(), then[name])]


@pytest.fixture(scope="session")
def tiny_data():
    """160 training and 40 test images of synthetic-mnist, seed 0, shared by the whole session (read-only)."""
    ds = build_tiny_data()
    yield ds
    changed = _changes(ds, build_tiny_data())
    assert not changed, (f"a test changed the shared tiny_data ({', '.join(changed)}); "
                         "build a private copy with tests.tiny.tiny_data() instead")


@pytest.fixture
def one_thread():
    """torch on one thread for the test. Small steps gain nothing from a second thread and crawl when two threads
    share busy cores (the stacked LSTM: 142 s on two threads beside the study, 7 s on one); and it is the thread
    count of the pool's workers and of Flower's processes (OMP_NUM_THREADS=1), so every client's arithmetic is
    the same in process and there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
