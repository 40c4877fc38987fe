"""`python -m fl_lib flower local`: a whole Flower federation on this machine, in one command.

README's "A real federation" starts a SuperLink, N SuperNodes and `flower deploy`
in separate terminals, which is what several machines need. On one machine this
module does the same from one process: it starts the SuperLink and one SuperNode
per fl_lib client (partition-id 0..N-1) on 127.0.0.1, each SuperNode with its
long-lived ClientApp process (flower_clientapps.py; `--clientapps per-message`
leaves Flower's fresh process per message) and Flower's waits shortened
(flower_supernode.py; `--supernode flower`: as they are), each in a process group of
its own so that a Ctrl-C in the terminal reaches only this process; names the
SuperLink in a private FLWR_HOME (the user's ~/.flwr is never read or written);
runs `flower.deploy` against it; and stops every process it started, and all
that they started, however it ends: normally, on an error, on Ctrl-C or SIGTERM.

What it started is written to OUT/federation-logs/: one log per process and
`pids` (name and PID of each, so a test or a user can check that none survives).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..core.config import Config
from ..core.errors import ConfigError, FLError

MAX_NODES = 32  # one SuperNode process per client (~150 MB each): more belongs on several machines
LOGS = "federation-logs"  # inside the run folder
UP = "federation up"  # the line printed once every process listens (tests wait for it)
STOP_GRACE = 3.0  # seconds a process gets to end on SIGTERM before SIGKILL
LONG_LIVED, PER_MESSAGE = "long-lived", "per-message"
CLIENTAPPS = (LONG_LIVED, PER_MESSAGE)  # one ClientApp process per SuperNode for the whole run, or Flower's default
IN_MEMORY = ":flwr-in-memory:"  # flower-superlink --database: its state in memory (Flower's default)
SHORT_WAITS, STOCK = "short-waits", "flower"
# Flower's SuperNode with its 3 s / 1 s / 0.5 s waits shortened (flower_supernode.py), or the command as it is
SUPERNODES = (SHORT_WAITS, STOCK)


def add_arguments(p) -> None:
    """The flags `flower local` has beyond the config's and the run flags (--out, --round-timeout, ...)."""
    p.add_argument("--port", type=int, default=None,
                   help="the SuperLink's port on 127.0.0.1 (default: a free one)")
    p.add_argument("--keep-db", default=None, metavar="PATH",
                   help="the SuperLink's database file, kept afterwards (default: none, the state kept in memory)")
    p.add_argument("--clientapps", default=LONG_LIVED, choices=CLIENTAPPS,
                   help="long-lived: one ClientApp process per SuperNode runs all its messages, torch and the "
                        "client's data loaded once (default); per-message: Flower's default, a fresh process "
                        "for every message")
    p.add_argument("--supernode", default=SHORT_WAITS, choices=SUPERNODES,
                   help="short-waits: Flower's SuperNode, asking for the next message every 0.2 s instead of "
                        "every 3 s (flower_supernode.py; default); flower: the flower-supernode command as is")


def check(cfg: Config, port: int | None) -> None:
    """Refuse, before anything starts, what cannot run as one local federation."""
    if not 1 <= cfg.num_clients <= MAX_NODES:
        raise ConfigError(f"num_clients={cfg.num_clients} is not allowed for `flower local` (one SuperNode "
                          f"process per client): must be int in [1, {MAX_NODES}]; for more, start SuperNodes "
                          f"on several machines (README: A real federation)")
    if port is None:
        return
    if not 1 <= port <= 65535:
        raise ConfigError(f"port={port} is not allowed: must be int in [1, 65535]")
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise ConfigError(f"port={port} is in use on 127.0.0.1: pick a free port, or leave --port out")


def run(cfg: Config, out, port: int | None = None, keep_db=None, round_timeout: float = 600.0,
        connect_timeout: float = 120.0, clientapps: str = LONG_LIVED, supernode: str = SHORT_WAITS) -> int:
    """Start the federation, deploy `cfg` to it, stop it all. Returns deploy's status, 130 on Ctrl-C, 143 on SIGTERM."""
    from . import flower  # here, not above: `--help` need not import Flower

    flower.check_flower_config(cfg)
    check(cfg, port)
    out = Path(out).resolve()
    local = LocalFederation(out / LOGS, port, Path(keep_db).resolve() if keep_db else None, clientapps, supernode)
    with _Signals() as signals:
        local.signals = signals
        try:
            local.start(cfg.num_clients)
            print(f"{UP}: SuperLink on 127.0.0.1:{local.port}, {cfg.num_clients} SuperNode(s) with partition-id "
                  f"0..{cfg.num_clients - 1}; their logs in {local.logs}", flush=True)
            with _environ(FLWR_HOME=str(local.home), PATH=local.env["PATH"]):  # deploy's flwr inherits both
                return flower.deploy(cfg, out, "local", round_timeout, connect_timeout)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
            code = 143 if isinstance(e, Terminated) else 130
            print(f"interrupted: stopping the local federation; rerun the same command to resume from the "
                  f"last checkpoint in {out}", file=sys.stderr, flush=True)
            return code
        finally:
            signals.hold()  # a second Ctrl-C must not cut the cleanup short
            local.stop()


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound as Ctrl-C is (subprocess.run then stops the flwr it waits on)."""


class _Signals:
    """SIGINT and SIGTERM raise in the main thread, except while held (starting a process, stopping them all).

    A signal that arrives while held is remembered and raised when released, so a
    Popen is never left half-recorded; during the final cleanup it is not raised at all.
    """

    def __init__(self):
        self.held, self.pending, self._saved = False, None, {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave the signals alone
                self._saved[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _on_signal(self, sig, frame):
        if self.pending is None:
            self.pending = sig
        if not self.held:
            self.release()

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False
        sig, self.pending = self.pending, None
        if sig is not None:
            raise Terminated() if sig == signal.SIGTERM else KeyboardInterrupt()


class LocalFederation:
    """A SuperLink and SuperNodes on 127.0.0.1, with a private FLWR_HOME, stopped by PID in `stop`."""

    def __init__(self, logs: Path, port: int | None, keep_db: Path | None, clientapps: str = LONG_LIVED,
                 supernode: str = SHORT_WAITS):
        if clientapps not in CLIENTAPPS:
            raise ConfigError(f"clientapps={clientapps!r} is not allowed: must be one of {', '.join(CLIENTAPPS)}")
        if supernode not in SUPERNODES:
            raise ConfigError(f"supernode={supernode!r} is not allowed: must be one of {', '.join(SUPERNODES)}")
        self.logs, self.port, self.keep_db, self.clientapps = logs, port, keep_db, clientapps
        self.supernode = supernode
        self.home = Path(tempfile.mkdtemp(prefix="fl_lib-flwr-home-"))  # FLWR_HOME
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.signals = None
        bin_dir = Path(sys.executable).parent  # the SuperLink starts flower-superexec from PATH
        self.env = {**os.environ, "FLWR_HOME": str(self.home),
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    # the SuperLink's executor looks for a ServerApp to start every 0.2 s, not every 1 s
                    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": os.environ.get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")}

    def start(self, num_nodes: int, node_env: dict[int, dict[str, str]] | None = None) -> None:
        """The SuperLink, then the SuperNodes; returns once every one of them listens on its port.
        `node_env`: {k: variables} added to SuperNode k's environment (and so to its ClientApps')."""
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.logs / "pids").write_text("")
        self.port = self.port or _free_port()
        (self.home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                               f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        # Without --keep-db the state dies with this command anyway (the run folder is what a rerun resumes
        # from), so it stays in memory: on SQLite every message part is a database row, and the SuperNodes'
        # pulls of a round's model took 3x as long (smoke: 2.5 s against 0.8 s).
        if self.keep_db is not None:
            self.keep_db.parent.mkdir(parents=True, exist_ok=True)
        db = self.keep_db or IN_MEMORY
        link = self._start("superlink", [_command("flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                         "--port", str(self.port), "--database", str(db),
                                         "--disable-runtime-dependency-installation"])
        # Flower's SuperNode tries a SuperLink that is not up yet again after up to 20 s: it starts once the
        # SuperLink listens; short-waits ones try again within 1 s, so they start alongside it
        link_first = self.supernode == STOCK
        if link_first:
            self._wait(link, "superlink", self.port)
        nodes = []
        isolation = ["--isolation", "process"] if self.clientapps == LONG_LIVED else []
        for k in range(num_nodes):
            port = _free_port()
            proc = self._start(f"supernode{k}", [
                *supernode_command(self.supernode), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                "--host", "127.0.0.1", "--port", str(port), *isolation,
                "--node-config", f"partition-id={k} num-partitions={num_nodes}"], (node_env or {}).get(k))
            nodes.append((k, proc, port))
        if not link_first:
            self._wait(link, "superlink", self.port)
        for k, proc, port in nodes:
            self._wait(proc, f"supernode{k}", port)
        if self.clientapps == LONG_LIVED:  # one process per SuperNode runs all its ClientApps (flower_clientapps.py)
            for k, proc, port in nodes:
                self._start(f"clientapps{k}", clientapps_command(port, proc.pid), (node_env or {}).get(k))

    def _start(self, name: str, cmd: list, env: dict[str, str] | None = None) -> subprocess.Popen:
        self.signals.hold()  # recorded before a signal can unwind past it
        try:
            with open(self.logs / f"{name}.log", "w") as log:
                proc = subprocess.Popen(cmd, env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append((name, proc))
            with open(self.logs / "pids", "a") as f:
                f.write(f"{name} {proc.pid}\n")
        finally:
            self.signals.release()
        return proc

    def _wait(self, proc, name: str, port: int, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FLError(f"the {name} exited with status {proc.returncode}: see {self.logs / name}.log")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise FLError(f"the {name} did not listen on 127.0.0.1:{port} within {seconds:.0f} s: "
                      f"see {self.logs / name}.log")

    def stop(self) -> None:
        """SIGTERM every process started and all they started (Flower detaches its executors into sessions of
        their own, so they are found as descendants, not by group), SIGKILL what is left after STOP_GRACE s."""
        tree = self._tree([])
        _signal_all(self._unreaped(), tree, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        _signal_all(self._unreaped(), self._tree(tree), signal.SIGKILL)
        for _, proc in self.procs:
            proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)

    def _unreaped(self) -> list[int]:
        """Our processes not yet waited for: their PIDs (and group ids) cannot belong to anyone else."""
        return [proc.pid for _, proc in self.procs if proc.returncode is None]

    def _tree(self, known: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """`known` plus the processes now below ours or below `known`, each new one added to the pids file."""
        new = [p for p in _descendants(self._unreaped(), known) if p not in known]
        if new:
            with open(self.logs / "pids", "a") as f:
                f.writelines(f"child {pid}\n" for pid, _ in new)
        return known + new


def _command(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise FLError(f"the {name} command is not installed: pip install 'flwr[simulation]>=1.42'")
    return found


def supernode_command(kind: str = SHORT_WAITS) -> list[str]:
    """How a SuperNode is started, before its flags: Flower's command, or the same through flower_supernode.py."""
    if kind == STOCK:
        return [_command("flower-supernode")]
    return [sys.executable, "-m", "fl_lib.runtime.flower_supernode"]


def clientapps_command(runtime_port: int, supernode_pid: int) -> list[str]:
    """The long-lived ClientApp process of the SuperNode (started with `--isolation process`) whose Runtime API
    listens on 127.0.0.1:`runtime_port` (its `--port`); it ends with that SuperNode."""
    return [sys.executable, "-m", "fl_lib.runtime.flower_clientapps", "--runtime-api-address",
            f"127.0.0.1:{runtime_port}", "--insecure", "--parent-pid", str(supernode_pid)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, start time in clock ticks)} of every process, from /proc (Linux; elsewhere none)."""
    found = {}
    proc_dir = Path("/proc")
    for entry in proc_dir.iterdir() if proc_dir.is_dir() else []:
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                found[int(entry.name)] = (int(fields[1]), int(fields[19]))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _descendants(ours: list[int], found_before=()) -> list[tuple[int, int]]:
    """(pid, start time) of every process below `ours` (our unreaped children) and below those of
    `found_before` that still run; the start time tells a reused PID from the process we found."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    same = [pid for pid, start in found_before if pid in table and table[pid][1] == start]
    found, todo = {}, list(ours) + same
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                todo.append(child)
    return list(found.items())


def _signal_all(roots: list[int], others: list[tuple[int, int]], sig) -> None:
    for pid in roots:  # each root leads its own group: whatever it started without detaching goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
    table = _processes()
    for pid, start in others:
        if pid in table and table[pid][1] == start:  # still the process we found, not a reused PID
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


@contextlib.contextmanager
def _environ(**values):
    """Set environment variables for the duration of a block, then put the old ones back."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
