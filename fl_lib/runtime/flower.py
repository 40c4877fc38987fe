"""fl_lib's rounds on Flower: real processes, and a real network when there is one.

The in-process engine runs round t as four calls (`Federation.plan_round`,
`ClientSide.upload` through a backend, `finish_round`, `evaluate_row`). Here the
client half runs in Flower ClientApps and the server half in a Flower ServerApp,
talking through Flower's Message API:

  server                                        client (a SuperNode, partition-id k)
  plan_round(t): the same sampled clients  ---> train message: the global model (ArrayRecord),
                 and bit widths                  {round, client k, bits, config} (ConfigRecord)
                                                 ClientSide.upload(job, model): fl_lib's own local
                                                 training, client stages and codec
  finish_round(plan, uploads): decode,     <--- the codec's bytes (ConfigRecord) and n_k, loss
  refuse a corrupted upload, aggregate
  evaluate_row(t): central test accuracy

Under secure_aggregation the train message is step 3 of fl_lib's secure sum, and
steps 1, 2 and 4 (keys, sealed shares, unmasking) are message rounds of their own
(flower_secagg.py): the server sees masked vectors, never a client's weights.

Client k's data is its fl_lib partition, built on the client from the Config
(data never leaves the server or the client). A client that does not answer
within `round_timeout` seconds (a SuperNode that died) is counted in
`dropped_clients`, and the round goes on with the others. The server writes the
same run folder as `results.run`, plus the bytes of Flower's own messages.

Runtimes: `run_simulation` uses Flower's Simulation Runtime (Ray actors on this
machine, one virtual SuperNode per client); `server_app` / `client_app` are the
same apps for the Deployment Runtime (a SuperLink and SuperNodes over gRPC; see
README "Beyond one machine" and `flower_app/pyproject.toml`).
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from ..core.config import Config
from ..core.errors import ConfigError, FLError
from ..core.stages import Job, Upload
from ..simulator.federation import Federation
from . import flower_secagg, flower_supernode
from .flower_faults import SERVER, hold_if_asked
from .flower_model import pack_global, unpack_global
from .results import keep_last_checkpoint, record_round, resume, save_round, write_run

QUERY = "query"  # message type asking a node which fl_lib client (partition-id) it holds
TRAIN = "train"


def check_flower_config(cfg: Config) -> None:
    """What the Flower runtime supports: synchronous FedAvg / FedSGD uploads through the codec or a secure sum."""
    from ..simulator.build import check

    check(cfg)
    if cfg.algorithm == "fedbuff":
        raise ConfigError("algorithm='fedbuff' runs on fl_lib's simulated clock only; on Flower use fedavg or fedsgd")
    if cfg.secure_aggregation and cfg.dp_clip > 0:
        raise ConfigError("secure_aggregation with dp_clip > 0 (DP's rotated grid) runs in process only; on Flower "
                          "use one of the two (secure_aggregation with dp_clip=0, or dp_clip without it)")
    if cfg.epoch_schedule == "loss":  # decay needs nothing but t, which every client knows
        raise ConfigError("epoch_schedule='loss' follows the server's recorded losses, which Flower's clients do not "
                          "see; on Flower use epoch_schedule fixed or decay")
    if cfg.scaffold:
        raise ConfigError("scaffold=True keeps every client's control variate c_k in the simulator's process; "
                          "on Flower use scaffold=False")


# -- client side ------------------------------------------------------------------
_federations: dict[str, Federation] = {}  # one per config in a client process: data and model built once


def _federation(config_json: str) -> Federation:
    cfg = Config.from_dict(json.loads(config_json)).replace(engine="sequential")
    key = cfg.key()
    if key not in _federations:
        _federations.clear()
        _federations[key] = Federation(cfg)
    return _federations[key]


def _partition_id(context: Context) -> int:
    try:
        return int(context.node_config["partition-id"])
    except (KeyError, ValueError):
        raise FLError('this SuperNode has no integer partition-id: start it with --node-config '
                      '"partition-id=K num-partitions=N"') from None


client_app = ClientApp()


@client_app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the server which fl_lib client this node holds."""
    return Message(RecordDict({"node": ConfigRecord({"partition-id": _partition_id(context)})}), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Client k's round: load the global model, train with fl_lib's seeded streams, send the codec's bytes."""
    job = msg.content["job"]
    fed = _federation(str(job["config"]))
    k, t, bits = int(job["client"]), int(job["round"]), int(job["bits"])
    if k != _partition_id(context):
        raise FLError(f"asked to train client {k} on the node holding partition {_partition_id(context)}")
    hold_if_asked("train", k, t)  # test-only (flower_faults.py): unset in any real run
    up = fed.client_side.upload(Job(k, t, bits), unpack_global(msg.content["global"], fed.global_state))
    upload = ConfigRecord({"client": k, "bits": bits, "blob": up.blob or b"", "diverged": up.blob is None,
                           "error": up.error if up.error is not None else 0.0})
    metrics = MetricRecord({"num-examples": up.num_samples, "loss": up.loss})
    return Message(RecordDict({"upload": upload, "metrics": metrics}), reply_to=msg)


# Secure aggregation: fl_lib's protocol, one message per step (flower_secagg.py)
@client_app.query(flower_secagg.ADVERTISE)
def secagg_advertise(msg: Message, context: Context) -> Message:
    return flower_secagg.advertise(msg, context)


@client_app.query(flower_secagg.SHARE)
def secagg_share(msg: Message, context: Context) -> Message:
    return flower_secagg.share_keys(msg, context)


@client_app.train(flower_secagg.MASKED)
def secagg_train(msg: Message, context: Context) -> Message:
    """Client k's round under secure aggregation: train, then send its masked weighted codes."""
    fed = _federation(str(msg.content["job"]["config"]))
    return flower_secagg.masked_input(fed, msg, context, _partition_id(context))


@client_app.query(flower_secagg.UNMASK)
def secagg_unmask(msg: Message, context: Context) -> Message:
    return flower_secagg.unmask(msg, context)


# -- server side ------------------------------------------------------------------
def message_bytes(msg: Message) -> int:
    """Bytes of a message as Flower serializes it for the wire (every object of its tree)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


class FLStrategy(Strategy):
    """fl_lib's synchronous round as a Flower strategy: same sampling, codec, weights and evaluation."""

    def __init__(self, fed: Federation, nodes: dict[int, int], progress=None, out=None, resumed: dict | None = None,
                 timeout: float | None = None):
        """`out`: the run folder, checkpointed as `results.run` does; `resumed`: its checkpoint to go on from;
        `timeout`: seconds each step of secure aggregation waits for its answers."""
        self.fed, self.nodes, self.progress = fed, nodes, progress  # nodes: client k -> Flower node id
        self.config_json = json.dumps(fed.cfg.to_dict())
        self.out, self.key = (Path(out) if out is not None else None), fed.cfg.key()
        r = resumed or {}
        self.rows, self.timings = r.get("metrics", []), r.get("timings", [])
        self.done = r.get("round", 0)  # Flower counts this submission's rounds from 1; fl_lib's go on from here
        self.bytes_down, self.bytes_up = r.get("flower_bytes_down", 0), r.get("flower_bytes_up", 0)
        self._round, self.grid, self.timeout = None, None, timeout
        self.secure = flower_secagg.SecureRounds(fed, nodes, self._exchange) if fed.cfg.secure_aggregation else None

    def summary(self) -> None:
        pass

    def _exchange(self, messages: list[Message]) -> list[Message]:
        """One step of secure aggregation: send, wait for the answers, count both ways' bytes."""
        self.bytes_down += sum(message_bytes(m) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout)) if messages else []
        self.bytes_up += sum(message_bytes(r) for r in replies)
        return replies

    def configure_train(self, server_round, arrays, config, grid):
        t = self.done + server_round
        start = time.perf_counter()
        plan = self.fed.plan_round(t)
        chosen, bits = plan.chosen, plan.bits
        absent = [k for k in chosen if k not in self.nodes]
        if absent:
            warnings.warn(f"round {t}: no SuperNode holds client(s) {absent}; counted as dropped")
        self._round = dict(t=t, start=start, plan=plan, chosen=chosen, absent=absent)
        global_model = pack_global(self.fed.global_state)
        if self.secure is not None:  # steps 1 and 2 (keys, sealed shares) before the train messages of step 3
            self.grid = grid
            messages = self.secure.setup(t, plan.sampled, chosen, self.config_json, global_model, bits)
            self.bytes_down += sum(message_bytes(m) for m in messages)
            return messages
        messages = []
        for k in chosen:
            if k in absent:
                continue
            job = ConfigRecord({"config": self.config_json, "round": t, "client": k, "bits": int(bits[k])})
            msg = Message(RecordDict({"global": global_model, "job": job}), dst_node_id=self.nodes[k],
                          message_type=TRAIN, group_id=str(t))
            self.bytes_down += message_bytes(msg)
            messages.append(msg)
        return messages

    def aggregate_train(self, server_round, replies):
        r = self._round
        if self.secure is not None:
            replies = list(replies)
            self.bytes_up += sum(message_bytes(reply) for reply in replies)
            ordered, missing = self.secure.finish(replies)  # step 4 runs here: unmasking
            return self._finish(ordered, missing)
        uploads = {}
        for reply in replies:
            self.bytes_up += message_bytes(reply)
            if reply.has_error():
                warnings.warn(f"round {r['t']}: a client failed ({reply.error.reason}); left out of the round")
                continue
            up, metrics = reply.content["upload"], reply.content["metrics"]
            k = int(up["client"])
            uploads[k] = Upload(k, int(up["bits"]), int(metrics["num-examples"]), float(metrics["loss"]),
                                None if up["diverged"] else bytes(up["blob"]),
                                None if up["diverged"] else float(up["error"]))
        missing = [k for k in r["chosen"] if k not in uploads]
        ordered = [uploads[k] for k in r["chosen"] if k in uploads]  # client order, as in process
        return self._finish(ordered, missing)

    def _finish(self, ordered: list[Upload], missing: list[int]):
        """The round's metrics from the uploads (finish_round), evaluation, checkpoint; the next global model."""
        r, fed = self._round, self.fed
        if missing:
            warnings.warn(f"round {r['t']}: no answer from client(s) {missing} within the timeout; "
                          f"the round goes on without them")
        row = fed.finish_round(r["plan"], ordered, r["plan"].late + missing)
        row = fed.evaluate_row(r["t"], row)
        record_round(self.rows, self.timings, row, time.perf_counter() - r["start"])
        if self.out is not None:  # a SuperLink that dies after this line costs no finished round
            save_round(fed, self.out / "checkpoints", self.key, r["t"], self.rows, self.timings,
                       flower_bytes_down=self.bytes_down, flower_bytes_up=self.bytes_up, flower_nodes=len(self.nodes))
            hold_if_asked("saved", SERVER, r["t"])  # test-only (flower_faults.py): a SuperLink killed between rounds
        if self.progress is not None:
            self.progress.update(1)
        global_model = ArrayRecord({n: v.detach().cpu() for n, v in fed.global_state.items()})
        return global_model, MetricRecord({"test_acc": row["test_acc"] if row["test_acc"] is not None else -1.0})

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []  # fl_lib evaluates the global model centrally, in aggregate_train

    def aggregate_evaluate(self, server_round, replies):
        return None


def node_map(grid: Grid, num_clients: int, wait: float) -> dict[int, int]:
    """client k -> node id, asking every connected node for its partition-id (waits up to `wait` s for all)."""
    deadline = time.time() + wait
    nodes = list(grid.get_node_ids())
    while len(nodes) < num_clients and time.time() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    queries = [Message(RecordDict(), dst_node_id=n, message_type=QUERY) for n in nodes]
    found = {}
    for reply in grid.send_and_receive(queries, timeout=max(deadline - time.time(), 30.0)):
        if not reply.has_error():
            found[int(reply.content["node"]["partition-id"])] = reply.metadata.src_node_id
    return found


def federate(grid: Grid, cfg: Config, out, runtime: str, round_timeout: float = 600.0,
             connect_timeout: float = 120.0, progress: bool = True) -> None:
    """Run `cfg` on the nodes behind `grid` and write its run folder to `out`."""
    check_flower_config(cfg)
    out = Path(out)
    fed = Federation(cfg.replace(engine="sequential"))
    resumed = resume(fed, out, fed.cfg.key(), log=print)  # a resubmitted run goes on from its last round
    done = resumed["round"] if resumed else 0
    nodes = node_map(grid, cfg.num_clients, connect_timeout) if done < cfg.num_rounds else {}
    if done < cfg.num_rounds and not nodes:
        raise FLError(f"no SuperNode answered within {connect_timeout:.0f} s")
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.num_rounds, initial=done, desc=f"rounds ({runtime})", unit="round")
    strategy = FLStrategy(fed, nodes, bar, out=out, resumed=resumed, timeout=round_timeout)
    try:
        if done < cfg.num_rounds:
            strategy.start(grid, ArrayRecord({n: v.cpu() for n, v in fed.global_state.items()}),
                           num_rounds=cfg.num_rounds - done, timeout=round_timeout)
    finally:
        if bar is not None:
            bar.close()
    write_run(out, cfg, strategy.rows, strategy.timings, fed.device, extra_summary={
        "runtime": runtime, "flower_nodes": len(nodes) if nodes else (resumed or {}).get("flower_nodes", 0),
        "flower_bytes_down": strategy.bytes_down, "flower_bytes_up": strategy.bytes_up})
    keep_last_checkpoint(out / "checkpoints")


# -- the two runtimes ---------------------------------------------------------------
server_app = ServerApp()


class PromptGrid(Grid):
    """A Grid that looks for the replies every `PULL` s. The Deployment Runtime's own `send_and_receive` looks
    every 3 s, a second and a half of idle waiting per message step on average, whatever the round costs.
    A reply is listed before all its parts have reached the SuperLink; the Grid's module then pulls them with
    the SuperNode's short first wait (flower_supernode.short_pulls), not Flower's 1 s."""

    PULL = 0.1  # seconds between two pulls while replies are due (a call to the SuperLink on this server)

    def __init__(self, grid: Grid):
        self.grid = grid
        module = sys.modules.get(type(grid).__module__)
        if module is not None:
            flower_supernode.short_pulls(module)

    def set_run(self, run_id):
        return self.grid.set_run(run_id)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, *args, **kwargs):
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        """Flower's contract: push, then pull until every reply is in or `timeout` s have passed."""
        due = set(self.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies = []
        while due:
            found = list(self.pull_messages(due))
            replies.extend(found)
            due -= {m.metadata.reply_to_message_id for m in found}
            if not due or (timeout is not None and time.time() >= end):
                break
            time.sleep(self.PULL)
        return replies


@server_app.main()
def deployment_main(grid: Grid, context: Context) -> None:
    """The Deployment Runtime's entry (`flwr run`): config and output folder come from the run config."""
    rc = context.run_config
    cfg = Config.from_dict(json.loads(str(rc["config"])))
    federate(PromptGrid(grid), cfg, Path(str(rc["out"])), "flower-deployment", float(rc.get("round-timeout", 600.0)),
             float(rc.get("connect-timeout", 120.0)), progress=False)


APP_DIR = Path(__file__).parent / "flower_app"  # the Flower App (pyproject.toml) that `flwr run` submits


def deploy(cfg: Config, out, superlink: str | None = None, round_timeout: float = 600.0,
           connect_timeout: float = 120.0) -> int:
    """Submit `cfg` to a running SuperLink with `flwr run` and stream its log; returns flwr's exit status.

    The ServerApp runs where the SuperLink runs it and writes `out` there; every
    SuperNode must hold fl_lib and a partition-id (see README "Beyond one machine").
    """
    import shutil
    import subprocess
    import sys
    import tempfile

    check_flower_config(cfg)
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or shutil.which("flwr")
    if flwr is None:
        raise FLError("the flwr command is not installed: pip install 'flwr[simulation]>=1.42'")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        # TOML literal strings: the JSON needs no escaping
        f.write(f"config = '{json.dumps(cfg.to_dict())}'\nout = '{Path(out).resolve()}'\n"
                f"round-timeout = {float(round_timeout)}\nconnect-timeout = {float(connect_timeout)}\n")
    try:
        cmd = [flwr, "run", str(APP_DIR)] + ([superlink] if superlink else []) + ["--run-config", f.name, "--stream"]
        return subprocess.run(cmd).returncode
    finally:
        Path(f.name).unlink(missing_ok=True)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 60.0) -> None:
    """Block until something listens on host:port (a SuperLink that is starting), or FLError."""
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise FLError(f"nothing listens on {host}:{port} after {timeout:.0f} s (did the SuperLink start?)")


def stop_tree(proc) -> None:
    """SIGKILL a process started for a local federation (a SuperLink, a SuperNode) and all it started.

    Flower starts its executors (flower-superexec, flwr-clientapp) detached, in their
    own sessions, so they are found as descendants through /proc (Linux); elsewhere
    only `proc` itself is stopped.
    """
    import os
    import signal

    children: dict[int, list[int]] = {}
    proc_dir = Path("/proc")
    for entry in proc_dir.iterdir() if proc_dir.is_dir() else []:
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [proc.pid], [proc.pid]
    while todo:
        for child in children.get(todo.pop(), []):
            tree.append(child)
            todo.append(child)
    for pid in reversed(tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def run_simulation(cfg: Config, out, round_timeout: float = 600.0, progress: bool = True) -> None:
    """Run `cfg` in Flower's Simulation Runtime on this machine: one virtual SuperNode per client.

    Flower runs the ClientApps in Ray actors (each a process that builds its own
    Federation from the Config once); the ServerApp runs in this process.
    """
    from flwr.simulation import run_simulation as flower_run_simulation

    check_flower_config(cfg)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        federate(grid, cfg, Path(out), "flower-simulation", round_timeout, progress=progress)

    cores = max(1, torch.get_num_threads())
    flower_run_simulation(server_app=app, client_app=client_app, num_supernodes=cfg.num_clients,
                          backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                          "init_args": {"num_cpus": cores}})
    if not (Path(out) / "summary.json").exists():
        raise FLError(f"the Flower simulation ended without writing {out}/summary.json (see Flower's log above)")
