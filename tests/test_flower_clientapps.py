"""Long-lived ClientApps (flower_clientapps.py): each task runs Flower's steps in this process, an error in one
goes back to the server as Flower's error reply, and the next task still runs. The deployments in test_flower*.py
run every message of theirs through this process; here its error path, without a SuperNode."""
import threading

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.42')")

from flwr.app import Context, Message, RecordDict  # noqa: E402
from flwr.common.constant import ErrorCode, SubStatus  # noqa: E402

from fl_lib.runtime import flower_clientapps  # noqa: E402
from tests.test_flower import task_identity  # noqa: E402, F401  (a fixture)


class FakeRuntime:
    """What a SuperNode's Runtime API receives from the ClientApp process, for tasks whose ClientApp is `app`."""

    def __init__(self, app):
        self.app, self.pushed, self.outputs, self.closed = app, [], [], 0

    def install(self, monkeypatch):
        fake = self

        class Run:
            fab_id, fab_version = "fl-lib/fl-lib-flower", "0.5.0"

        class Fab:
            hash_str, content = "h", b""

        def pull(client):
            message = Message(RecordDict(), dst_node_id=10, message_type="query")
            message.metadata.__dict__["_message_id"] = f"m{len(fake.outputs)}"
            context = Context(run_id=1, node_id=10, node_config={}, state=RecordDict(), run_config={})
            return message, context, Run, Fab, (len(fake.outputs) + 1, 1, 10)

        class Client:
            def close(self):
                fake.closed += 1

        class Heartbeat:
            is_running = False

            def __init__(self, fn):
                pass

            def start(self):
                self.is_running = True

            def stop(self):
                self.is_running = False

        monkeypatch.setattr(flower_clientapps, "_client", lambda *a, **k: Client())
        monkeypatch.setattr(flower_clientapps, "HeartbeatSender", Heartbeat)
        monkeypatch.setattr(flower_clientapps, "make_task_heartbeat_fn_http", lambda client: None)
        monkeypatch.setattr(flower_clientapps, "pull_task_input", pull)
        monkeypatch.setattr(flower_clientapps, "install_from_fab", lambda content, skip_prompt: None)
        monkeypatch.setattr(flower_clientapps, "push_message", lambda c, reply, ctx: fake.pushed.append(reply))
        monkeypatch.setattr(flower_clientapps, "push_task_output",
                            lambda client, context, sub_status, details: fake.outputs.append((sub_status, details)))
        monkeypatch.setattr(flower_clientapps, "get_load_client_app_fn", lambda **kw: lambda *a: fake.app)


def test_an_error_goes_back_and_the_next_task_runs(monkeypatch, task_identity):  # noqa: F811
    calls = []

    def app(message, context):
        calls.append(message.metadata.message_id)
        if len(calls) == 1:
            raise ValueError("no data for this partition")
        return Message(RecordDict(), reply_to=message)

    runtime = FakeRuntime(app)
    runtime.install(monkeypatch)
    runner = flower_clientapps.Runner("127.0.0.1:1", None)
    assert runner.run("token-1") is False and runner.run("token-2") is True
    assert calls == ["m0", "m1"]  # the same process ran both
    first, second = runtime.pushed
    assert first.has_error() and first.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "no data for this partition" in first.error.reason and not second.has_error()
    assert [status for status, _ in runtime.outputs] == [SubStatus.FAILED, SubStatus.COMPLETED]
    assert runtime.closed == 2  # each task's connection is closed


def test_a_bad_poll_is_refused_in_one_line(capsys):
    assert flower_clientapps.main(["--runtime-api-address", "127.0.0.1:1", "--insecure", "--poll", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "poll=0.0 is not allowed: must be float in [0.001, 60]" in err


def test_serve_goes_on_after_a_task_that_could_not_run(monkeypatch):
    """A task whose connection cannot even be opened is logged; the others still run."""
    tokens = iter(["t1", None, "t2", "t3"])
    ran = []

    class Client:
        def close(self):
            pass

    def run(self, token):
        ran.append(token)
        if token == "t1":
            raise ConnectionError("Runtime API unreachable")
        return True

    monkeypatch.setattr(flower_clientapps, "_client", lambda *a, **k: Client())
    monkeypatch.setattr(flower_clientapps, "get_load_client_app_fn", lambda **kw: None)
    monkeypatch.setattr(flower_clientapps, "acquire", lambda client: next(tokens, None))
    monkeypatch.setattr(flower_clientapps.Runner, "run", run)
    started = flower_clientapps.serve("127.0.0.1:1", poll=0.001, stop=lambda: len(ran) == 3)
    assert sorted(ran) == ["t1", "t2", "t3"] and started >= 1


def test_a_task_whose_message_never_comes_does_not_hold_up_the_next(monkeypatch, task_identity):  # noqa: F811
    """A SuperNode can offer a task whose message never arrives (a run ended by a restarted SuperLink): the next
    task's ClientApp runs and answers while that one still waits."""
    release = threading.Event()

    def app(message, context):
        return Message(RecordDict(), reply_to=message)

    runtime = FakeRuntime(app)
    runtime.install(monkeypatch)
    pull = flower_clientapps.pull_task_input

    def pull_or_wait(client):
        if threading.current_thread().name.startswith("task-stale"):
            release.wait(10)  # the stale task's parts never come (until the test ends)
            raise RuntimeError("timeout or retry limit reached")
        return pull(client)

    monkeypatch.setattr(flower_clientapps, "pull_task_input", pull_or_wait)
    tokens = iter(["stale-1", "fresh-2"])
    done = []
    monkeypatch.setattr(flower_clientapps, "acquire", lambda client: next(tokens, None))
    original = flower_clientapps.Runner.run

    def run(self, token):
        ok = original(self, token)
        done.append((token, ok))
        return ok

    monkeypatch.setattr(flower_clientapps.Runner, "run", run)

    def stop():  # once the fresh task has answered, the stale one's wait ends
        if done:
            assert done[0] == ("fresh-2", True) and len(runtime.pushed) == 1  # answered while the stale one waited
            release.set()
        return bool(done)

    try:
        started = flower_clientapps.serve("127.0.0.1:1", poll=0.001, stop=stop)
    finally:
        release.set()
    assert started == 2 and sorted(done) == [("fresh-2", True), ("stale-1", False)]
    assert runtime.outputs[-1][0] == flower_clientapps.SubStatus.FAILED  # the stale task ends as failed
