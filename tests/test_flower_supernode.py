"""Flower's SuperNode with short waits (fl_lib/runtime/flower_supernode.py): which waits change, and only those.

The whole SuperNode runs in the Flower tests (test_flower.py, test_flower_security.py,
test_flower_local.py start their SuperNodes this way); here, without processes:
the installed Flower still has the waits that are replaced, the replacement maps
Flower's 3 s and 0.5 s and nothing else, pulls get the short first wait, and bad
flags are refused in one line.
"""
from __future__ import annotations

import functools
import importlib
import types

import pytest

pytest.importorskip("flwr")

from flwr.supercore.inflatable import inflatable_utils  # noqa: E402
from flwr.supercore.retry import http_retry  # noqa: E402
from flwr.supernode import start_client_internal as loop  # noqa: E402

from fl_lib.runtime import flower_supernode as fs  # noqa: E402


def test_the_installed_flower_has_the_waits_that_are_shortened():
    """If a Flower release renames or drops them, this fails (and the SuperNode says it keeps its own waits)."""
    assert fs.check_waits(loop) is None
    assert fs.check_reconnect(http_retry) is None


def test_short_waits_change_flowers_two_waits_and_no_other(monkeypatch):
    slept = []
    monkeypatch.setattr(fs.time, "sleep", slept.append)
    waits = fs.ShortWaits(idle=0.2, reply=0.05)
    for seconds in (3, 0.5, 1, 0.1, 10):
        waits.sleep(seconds)
    assert slept == [0.2, 0.05, 1, 0.1, 10]
    assert waits.monotonic is fs.time.monotonic  # the rest of `time` as it is


def test_install_replaces_the_loops_time_and_pull_and_caps_reconnection(monkeypatch):
    monkeypatch.setattr(loop, "time", loop.time)  # put back after the test
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    monkeypatch.setattr(http_retry, "MAX_RETRY_DELAY", http_retry.MAX_RETRY_DELAY)
    assert fs.install(idle=0.3, reply=0.01, reconnect=0.5) == []
    assert isinstance(loop.time, fs.ShortWaits) and (loop.time.idle, loop.time.reply) == (0.3, 0.01)
    assert isinstance(loop.pull_objects, functools.partial)
    assert loop.pull_objects.func is inflatable_utils.pull_objects
    assert loop.pull_objects.keywords == {"initial_backoff": fs.PULL_BACKOFF, "backoff_cap": fs.PULL_BACKOFF_CAP}
    assert http_retry.MAX_RETRY_DELAY == 0.5
    # a second install finds the loop changed already, says why, and leaves it; the cap is set again
    before = loop.time
    [why] = fs.install(reconnect=2.0)
    assert "no longer has the time module" in why
    assert loop.time is before and http_retry.MAX_RETRY_DELAY == 2.0


def test_reconnection_waits_stay_under_the_cap(monkeypatch):
    """Flower's own retry (random waits, doubling) with the cap: a SuperLink that comes back is tried within it."""
    monkeypatch.setattr(http_retry, "MAX_RETRY_DELAY", 0.5)
    invoker = http_retry.make_simple_http_retry_invoker()
    waits = []
    monkeypatch.setattr(invoker, "wait_function", waits.append)
    tries = []

    def call():
        tries.append(1)
        if len(tries) < 8:
            raise http_retry.httpx.ConnectError("the SuperLink is restarting")
        return "answered"

    assert invoker.invoke(call) == "answered"
    assert len(waits) == 7 and max(waits) <= 0.5  # Flower's cap: 20 s, and 7 doublings from 1 s reach it


def test_a_module_without_flowers_waits_is_left_alone(tmp_path, monkeypatch):
    """A loop of a later Flower: the same sleeps, but its own pull; and one with no source at all."""
    (tmp_path / "later_loop.py").write_text("import time\n\ndef pull_objects(ids, fn):\n    return {}\n\n"
                                            "def loop():\n    time.sleep(3)\n    time.sleep(0.5)\n"
                                            "    pull_objects([], None)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    later = importlib.import_module("later_loop")
    assert fs.check_waits(later) == "later_loop no longer has Flower's pull_objects"
    assert fs.short_pulls(later) is False and not isinstance(later.pull_objects, functools.partial)
    assert fs.check_waits(types.ModuleType("built_in")).startswith("its source cannot be read")
    assert fs.check_reconnect(later) == f"later_loop no longer has {fs.FLOWER_RECONNECT}"


def test_short_pulls_really_retry_soon(monkeypatch):
    """A part that is not there on the first ask is asked for again after ~PULL_BACKOFF s, not Flower's 1 s."""
    module = types.ModuleType("grid_like")
    module.pull_objects = inflatable_utils.pull_objects
    assert fs.short_pulls(module)
    asks = []

    def pull(object_id):
        asks.append(fs.time.monotonic())
        if len(asks) < 3:
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return b"content"

    assert module.pull_objects(["a"], pull) == {"a": b"content"}
    assert len(asks) == 3
    assert asks[-1] - asks[0] < 3 * fs.PULL_BACKOFF_CAP  # Flower's own waits: 1 s, then 2 s


@pytest.mark.parametrize("argv, line", [
    (["--idle-wait", "5"], "error: idle_wait=5.0 is not allowed: must be float in [0.01, 3.0]"),
    (["--idle-wait", "nan"], "error: idle_wait=nan is not allowed: must be float in [0.01, 3.0]"),
    (["--reply-wait", "0", "--insecure"], "error: reply_wait=0.0 is not allowed: must be float in [0.001, 0.5]"),
    (["--reconnect-wait", "30"], "error: reconnect_wait=30.0 is not allowed: must be float in [0.1, 20.0]"),
])
def test_bad_waits_are_refused_in_one_line(argv, line, capsys):
    assert fs.main(argv) == 2
    assert capsys.readouterr().err.strip() == line
