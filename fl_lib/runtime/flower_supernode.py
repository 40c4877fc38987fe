"""Flower's SuperNode with short waits: `flower-supernode` as it is, except how long its loop sleeps.

Flower 1.42's SuperNode loop (`flwr.supernode.start_client_internal`) has three waits
that no flag or setting reaches, and on localhost they, not the training, were most
of a deployed round (smoke: 6 s against 2 s in process):
- it sleeps 3 s whenever it asks the SuperLink for a message and none is there.
  Between two rounds a node always finds nothing once (the ServerApp is aggregating);
- it learns of a message before the ServerApp has uploaded the message's arrays, and
  then pulls them with a first wait of 1 s, doubling: 2.5 s per round on smoke;
- it looks for its ClientApp's reply every 0.5 s.
A fourth is in its connection: when the SuperLink does not answer (it restarts), the
SuperNode tries again after a random wait that doubles up to 20 s, so a node could
come back up to 20 s after its SuperLink did (the restart test saw 10 s).

    python -m fl_lib.runtime.flower_supernode [--idle-wait S] [--reply-wait S] [--reconnect-wait S]
                                              FLOWER-SUPERNODE-ARGS...

runs Flower's own `flower-supernode` command (same flags, same protocol, same
state) in this process after giving that loop module a `time` whose `sleep` turns
Flower's 3 s wait into `--idle-wait` and its 0.5 s wait into `--reply-wait`, and a
`pull_objects` (Flower's) whose first wait is PULL_BACKOFF, capped at
PULL_BACKOFF_CAP, and after capping the connection's retry waits at
`--reconnect-wait` (Flower's own retry, jitter and doubling; only the cap changes).
Nothing else of Flower changes. If the installed Flower no longer has one of those
waits (`check_waits`, `check_reconnect`), it says so in one line on stderr and keeps
Flower's wait there.

Asking more often costs the SuperLink one small HTTP request per node per
`--idle-wait` seconds; at the default 0.2 s, 10 idle SuperNodes on a 2-core VM cost
0.39 cores in all (SuperLink, SuperNodes and their ClientApps) against 0.15 with
Flower's waits. `flower local` starts its SuperNodes this way (`--supernode short-waits`).
"""
from __future__ import annotations

import argparse
import functools
import inspect
import sys
import time

IDLE_WAIT = 0.2  # s between asks when the SuperLink had no message (Flower 1.42: 3 s)
REPLY_WAIT = 0.05  # s between looks for the ClientApp's reply, a local lookup (Flower 1.42: 0.5 s)
FLOWER_IDLE, FLOWER_REPLY = 3, 0.5  # the waits written in Flower's loop, replaced here
WAITS = ("time.sleep(3)", "time.sleep(0.5)", "pull_objects(")  # as they read in its source; checked first
# The longest wait between two tries to reach a SuperLink that does not answer (Flower 1.42: MAX_RETRY_DELAY, 20 s).
# A node asks again within a second of its SuperLink's restart; a wait is random below the cap, so N waiting nodes
# come back spread over it, not all at once.
RECONNECT_WAIT = 1.0
FLOWER_RECONNECT = "exponential(max_delay=MAX_RETRY_DELAY)"  # as Flower's HTTP retry reads it; checked first
# First wait, doubling, when a message's parts have not reached the SuperLink (or SuperNode) yet; they come
# within a second on localhost or a LAN (Flower: 1 s, capped at 10 s). flower_clientapps.py pulls with them too.
PULL_BACKOFF = 0.1
PULL_BACKOFF_CAP = 0.25


class ShortWaits:
    """The `time` module as Flower's SuperNode loop sees it: the same, except that its two waits are shorter."""

    def __init__(self, idle: float, reply: float):
        self.idle, self.reply = idle, reply

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE:
            seconds = self.idle
        elif seconds == FLOWER_REPLY:
            seconds = self.reply
        time.sleep(seconds)

    def __getattr__(self, name):
        return getattr(time, name)


def _source(module) -> tuple[str, str | None]:
    """(`module`'s source, None), or ("", why it cannot be read)."""
    try:
        return inspect.getsource(module), None
    except (OSError, TypeError) as err:
        return "", f"its source cannot be read ({err})"


def check_waits(module) -> str | None:
    """None if `module` (Flower's SuperNode loop) has the waits this replaces, else why it cannot be changed."""
    source, unreadable = _source(module)
    if unreadable:
        return unreadable
    missing = [w for w in WAITS if w not in source]
    if getattr(module, "time", None) is not time:
        missing.append("the time module")
    if not _pulls_as_flower(module):
        missing.append("Flower's pull_objects")
    return f"{module.__name__} no longer has {', '.join(missing)}" if missing else None


def check_reconnect(module) -> str | None:
    """None if `module` (Flower's HTTP retry) caps its waits with its global MAX_RETRY_DELAY, else why not."""
    source, unreadable = _source(module)
    if unreadable:
        return unreadable
    if FLOWER_RECONNECT not in source or not isinstance(getattr(module, "MAX_RETRY_DELAY", None), (int, float)):
        return f"{module.__name__} no longer has {FLOWER_RECONNECT}"
    return None


def install(idle: float = IDLE_WAIT, reply: float = REPLY_WAIT, reconnect: float = RECONNECT_WAIT) -> list[str]:
    """Shorten the SuperNode's waits in this process; returns why any of Flower's waits stay (none: [])."""
    from flwr.supercore.retry import http_retry
    from flwr.supernode import start_client_internal as loop
    kept = []
    why = check_waits(loop)
    if why is None:
        loop.time = ShortWaits(idle, reply)
        short_pulls(loop)
    else:
        kept.append(why)
    why = check_reconnect(http_retry)
    if why is None:  # read when a connection makes its retry (fleet_http_connection: once per SuperNode start)
        http_retry.MAX_RETRY_DELAY = reconnect
    else:
        kept.append(why)
    return kept


def _pulls_as_flower(module) -> bool:
    from flwr.supercore.inflatable import inflatable_utils
    return getattr(module, "pull_objects", None) is inflatable_utils.pull_objects


def short_pulls(module) -> bool:
    """Make `module`, a Flower module that calls Flower's `pull_objects` by name, pull with the first wait
    PULL_BACKOFF (capped at PULL_BACKOFF_CAP) instead of 1 s; False, changing nothing, if it calls another."""
    if not _pulls_as_flower(module):
        return False
    from flwr.supercore.inflatable import inflatable_utils
    module.pull_objects = functools.partial(inflatable_utils.pull_objects, initial_backoff=PULL_BACKOFF,
                                            backoff_cap=PULL_BACKOFF_CAP)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fl_lib.runtime.flower_supernode",
                                description=__doc__.splitlines()[0],
                                epilog="Every other argument goes to flower-supernode unchanged.")
    p.add_argument("--idle-wait", type=float, default=IDLE_WAIT,
                   help=f"seconds between asks when no message came, in [0.01, 3] (default {IDLE_WAIT}; Flower: 3)")
    p.add_argument("--reply-wait", type=float, default=REPLY_WAIT,
                   help=f"seconds between looks for the ClientApp's reply, in [0.001, 0.5] (default {REPLY_WAIT}; "
                        f"Flower: 0.5)")
    p.add_argument("--reconnect-wait", type=float, default=RECONNECT_WAIT,
                   help=f"longest seconds between two tries to reach a SuperLink that does not answer, in [0.1, 20] "
                        f"(default {RECONNECT_WAIT}; Flower: 20)")
    args, flower_args = p.parse_known_args(argv)
    for name, value, low, high in (("idle_wait", args.idle_wait, 0.01, 3.0),
                                   ("reply_wait", args.reply_wait, 0.001, 0.5),
                                   ("reconnect_wait", args.reconnect_wait, 0.1, 20.0)):
        if not low <= value <= high:  # also refuses nan
            print(f"error: {name}={value} is not allowed: must be float in [{low}, {high}]", file=sys.stderr)
            return 2
    kept = install(args.idle_wait, args.reply_wait, args.reconnect_wait)
    if kept:
        print(f"fl_lib: Flower's SuperNode keeps some of its own waits: {'; '.join(kept)}", file=sys.stderr)
    from flwr.supernode.cli import flower_supernode
    sys.argv = ["flower-supernode", *flower_args]
    return flower_supernode()


if __name__ == "__main__":
    sys.exit(main())
