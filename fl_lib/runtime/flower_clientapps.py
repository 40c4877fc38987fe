"""Long-lived ClientApps: one process per SuperNode that runs all of its ClientApp tasks, torch already loaded.

By default a SuperNode starts a fresh `flwr-clientapp` process for every message
(`--isolation subprocess`). That process imports torch and fl_lib and rebuilds the
client's data and model, which costs seconds per message: a deployed localhost round
was 10x an in-process one. With `flower-supernode --isolation process`, the SuperNode
starts nothing and hands each task's token to whatever process asks its Runtime API
(`AcquireTask`), as Flower's own `flower-superexec` does. This module is such a
process:

    python -m fl_lib.runtime.flower_clientapps --runtime-api-address 127.0.0.1:PORT --insecure \
        --parent-pid SUPERNODE_PID

It asks for ClientApp tasks every `--poll` seconds and runs each in this process with
Flower's own steps (`flwr.supernode.runtime.run_clientapp`: pull the message, context,
run and FAB; install the FAB; load the ClientApp; push the reply and the context; a
heartbeat meanwhile), without the process exit that ends `flwr-clientapp`, and with a
short first wait for message parts still on their way (`PULL_BACKOFF`). fl_lib's
ClientApp keeps the client's Federation between messages (`flower._federation`), so a
round costs what it costs in process plus Flower's messaging.

A ClientApp that raises answers with Flower's error reply, as in `flwr-clientapp`;
the process goes on. It ends with its SuperNode (`--parent-pid`), or on SIGTERM.
`flower local` starts one per SuperNode (flower_local.py); README: "A real federation".
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from logging import ERROR, INFO

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=E0611
from flwr.supercore.inflatable.inflatable_protobuf_utils import (make_confirm_message_received_fn_protobuf,
                                                                 make_pull_object_fn_protobuf)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

# The SuperNode offers the task before it has pulled the message's arrays from the SuperLink, so a prompt
# ClientApp often asks too early; with Flower's first wait of 1 s (PULL_INITIAL_BACKOFF) that cost a second per
# message. It waits as the short-waits SuperNode does: PULL_BACKOFF first, doubling, at most PULL_BACKOFF_CAP.
from .flower_supernode import PULL_BACKOFF, PULL_BACKOFF_CAP

POLL = 0.25  # seconds between two AcquireTask calls on an idle node (a local HTTP call; flower-superexec: 1 s)
COMPONENT = "flwr-clientapp"  # the version interceptor's name: the SuperNode sees a ClientApp, as it is one


def _client(address: str, certificates: bytes | None, token: str | None = None) -> RuntimeHttpClient:
    interceptors = [RuntimeVersionHttpInterceptor(component_name=COMPONENT)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=certificates is None,
                                                 root_certificates=certificates, interceptors=interceptors,
                                                 retry_invoker=make_simple_http_retry_invoker())


def pull_task_input(client: RuntimeHttpClient):
    """The task's message, context, run, FAB and identity (task, run, node): Flower's
    `run_clientapp.pull_task_input`, with a short first wait for parts still on their way (`PULL_BACKOFF`)."""
    res = client.PullTaskInput(PullTaskInputRequest())
    identity = (res.task_id, res.run.run_id, res.context.node_id)
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PULL_BACKOFF, backoff_cap=PULL_BACKOFF_CAP)
    message.metadata.__dict__["_message_id"] = tree.object_id  # the deflated message does not carry its own id
    return message, context, run, fab, identity


def acquire(client: RuntimeHttpClient) -> str | None:
    """A ClientApp task's token, or None when the SuperNode has none waiting."""
    res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
    return res.token if res.HasField("task") and res.token else None


class Runner:
    """Runs ClientApp tasks in this process, each in a thread of its own, their ClientApps one at a time.

    A task waits for its message outside the lock: a SuperNode can offer a task whose message never arrives
    (one pulled as a restarted SuperLink ended its run), and that wait must not hold up the next task, as it
    does not when each task has a process of its own. The ClientApp, the install of its FAB and the reply run
    under the lock, as the SuperNode serves one message at a time; fl_lib's client state is not shared by two.
    """

    def __init__(self, address: str, certificates: bytes | None):
        self.address, self.certificates = address, certificates
        self.installed: set[str] = set()
        self.load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        self.lock = threading.Lock()

    def run(self, token: str) -> bool:
        """One task, as `flwr-clientapp --token` runs it; True when the ClientApp answered without error."""
        client = _client(self.address, self.certificates, token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        try:
            heartbeat.start()
            try:
                message, context, run, fab, identity = pull_task_input(client)
            except Exception as ex:  # no message to answer: the task ends as failed, as in flwr-clientapp
                log(ERROR, "the task's message could not be pulled", exc_info=ex)
                push_task_output(client=client, context=None, sub_status=SubStatus.FAILED,
                                 details=f"{type(ex)}:<'{ex}'>")
                return False
            with self.lock:
                TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = identity
                try:
                    if fab.hash_str not in self.installed:
                        install_from_fab(fab.content, skip_prompt=True)
                        self.installed.add(fab.hash_str)
                    app = self.load(run.fab_id, run.fab_version, fab.hash_str)
                    reply, status, details = app(message=message, context=context), SubStatus.COMPLETED, ""
                except Exception as ex:  # the ClientApp's error goes back to the server, as flwr-clientapp sends it
                    code = (ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(ex, LoadClientAppError)
                            else ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
                    status, details = SubStatus.FAILED, f"{type(ex)}:<'{ex}'>"
                    log(ERROR, "ClientApp raised an exception", exc_info=ex)
                    reply = Message(Error(code=code, reason=details), reply_to=message)
                self._send(client, reply, context, status, details)
            return status == SubStatus.COMPLETED
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()

    @staticmethod
    def _send(client, reply, context, status, details) -> None:
        """The reply and the task's end, as flwr-clientapp pushes them."""
        push_message(client, reply, context)
        push_task_output(client=client, context=context, sub_status=status, details=details)


def _run(runner: Runner, token: str) -> None:
    try:
        runner.run(token)
    except Exception as ex:  # a task that could not even report its failure: the others still run
        log(ERROR, "ClientApp task could not run: %r", ex)


def serve(address: str, certificates: bytes | None = None, poll: float = POLL, stop=lambda: False) -> int:
    """Run the SuperNode's ClientApp tasks until `stop()` (or SIGTERM, or the parent's end), then wait for those
    started; returns how many were started."""
    runner, running, started = Runner(address, certificates), [], 0
    acquirer = _client(address, certificates)
    try:
        while not stop():
            token = acquire(acquirer)
            if token is None:
                time.sleep(poll)
                continue
            running = [t for t in running if t.is_alive()]  # the finished ones' threads are let go
            running.append(threading.Thread(target=_run, args=(runner, token), name=f"task-{token[:8]}", daemon=True))
            running[-1].start()
            started += 1
    finally:
        acquirer.close()
    for task in running:
        task.join()
    return started


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    p.add_argument("--insecure", action="store_true", help="the Runtime API without TLS (127.0.0.1 only)")
    p.add_argument("--root-certificates", default=None, help="CA of the Runtime API's certificate")
    p.add_argument("--parent-pid", type=int, default=None, help="end when this process (the SuperNode) ends")
    p.add_argument("--poll", type=float, default=POLL, help=f"seconds between asks when idle (default {POLL})")
    args = p.parse_args(argv)
    if not 0.001 <= args.poll <= 60:
        print(f"error: poll={args.poll} is not allowed: must be float in [0.001, 60]", file=sys.stderr)
        return 2
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    import fl_lib.runtime.flower  # noqa: F401  torch, fl_lib and the ClientApp, loaded once before the first task
    import torch._dynamo  # noqa: F401  what the first optimizer imports (~2 s): now, not in round 1's step
    log(INFO, "long-lived ClientApps (pid %d) for the SuperNode's Runtime API at %s", os.getpid(),
        args.runtime_api_address)
    serve(args.runtime_api_address, validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
          args.poll)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
