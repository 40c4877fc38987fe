"""A Flower federation with TLS and SuperNode authentication on localhost, and what it refuses.

The credentials come from fl_lib.runtime.certs (a throw-away CA, the SuperLink's
certificate for 127.0.0.1 and localhost, one P-384 key pair per SuperNode). The
SuperLink runs with `--ssl-*` and `--enable-supernode-auth`; the SuperNodes' public
keys are registered with `flwr supernode register` (Flower 1.42's Control API; the
CSV of keys of older versions is gone). One round through it equals the in-process
engine; then a SuperNode with an unregistered key, a SuperNode that trusts another
CA and a `flwr` CLI that trusts only the system's CAs are each refused, and each
test pins the line the user reads.
"""
import contextlib
import os
import re
import signal
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.42')")
pytest.importorskip("cryptography", reason="the credentials are made with cryptography (pip install cryptography)")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.serialization import load_ssh_private_key  # noqa: E402

from fl_lib.core.errors import ConfigError  # noqa: E402
from fl_lib.runtime import certs, flower, flower_faults, flower_local, results  # noqa: E402
from tests.servers import free_port  # noqa: E402
from tests.test_flower import BIN, ROOT, flower_cmd, tiny  # noqa: E402

TOOLS = ("flower-superlink", "flower-supernode", "flwr")


def plain(text: str) -> str:
    """Flower's CLI draws errors in a box and wraps them: the words alone, one space apart."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# -- the credentials, checked by OpenSSL and by Flower's own key loaders (no servers) ----------
def handshake(cafile: Path, paths: dict, server_name: str) -> None:
    """A TLS handshake in memory between a server holding server.pem and a client trusting `cafile`."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths["server.pem"], paths["server.key"])
    client_ctx = ssl.create_default_context(cafile=str(cafile))  # verifies the chain and the host name
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(to_server, to_client, server_side=True)
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname=server_name)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done.values()):
            return
    raise AssertionError("the in-memory handshake did not finish")


def test_the_server_certificate_is_trusted_through_the_ca_only(tmp_path):
    paths = certs.write_credentials(tmp_path / "a", hosts=("127.0.0.1", "localhost"), nodes=2)
    other = certs.write_credentials(tmp_path / "b")
    for name in ("127.0.0.1", "localhost"):
        handshake(paths["ca.crt"], paths, name)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        handshake(other["ca.crt"], paths, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        handshake(paths["ca.crt"], paths, "127.0.0.2")
    server = x509.load_pem_x509_certificate(paths["server.pem"].read_bytes())
    server.verify_directly_issued_by(x509.load_pem_x509_certificate(paths["ca.crt"].read_bytes()))
    for private in ("server.key", "node-0", "node-1"):
        assert paths[private].stat().st_mode & 0o077 == 0  # readable by its owner only


def test_node_keys_are_what_flower_loads(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    paths = certs.write_credentials(tmp_path, nodes=2)
    keys = [load_ssh_private_key(paths[f"node-{k}"].read_bytes(), None) for k in range(2)]  # as flower-supernode
    registered = [try_load_public_key(paths[f"node-{k}.pub"]) for k in range(2)]  # as flwr supernode register
    assert [public_key_to_bytes(key.public_key()) for key in keys] == registered
    assert registered[0] != registered[1] and keys[0].curve.name == "secp384r1"


def test_bad_requests_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"nodes=-1 is not allowed: must be an int >= 0"):
        certs.write_credentials(tmp_path / "x", nodes=-1)
    assert certs.main([str(tmp_path / "c"), "--host", "127.0.0.1", "--nodes", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ca.crt", "node-0", "node-0.pub", "server.key",
                                                                 "server.pem"]
    before = (tmp_path / "c" / "ca.crt").read_bytes()
    assert certs.main([str(tmp_path / "c")]) == 2  # a second CA over the first would lock the nodes out
    assert "ca.crt exists already" in capsys.readouterr().err
    assert (tmp_path / "c" / "ca.crt").read_bytes() == before


# -- a TLS federation with SuperNode authentication on localhost --------------------------
def supernode_cmd(port: int, key: Path, k: int, *tls: str, runtime_port: int | None = None) -> list:
    """A SuperNode holding fl_lib client k; `tls` names the CA it trusts (nothing: the system's). With
    `runtime_port`, its Runtime API listens there for long-lived ClientApps (`--isolation process`)."""
    isolation = ["--isolation", "process"] if runtime_port else []
    return [*flower_local.supernode_command(), *tls, "--superlink", f"127.0.0.1:{port}",
            "--auth-supernode-private-key", str(key), "--host", "127.0.0.1",
            "--port", str(runtime_port or free_port()), *isolation,
            "--node-config", f"partition-id={k} num-partitions=2"]


def ended(cmd, env, log: Path, timeout: float = 90.0) -> tuple[int, str]:
    """Run a command expected to end by itself; (exit status, its output), stopped by PID however it ends.

    The output goes to a file, not a pipe: a SuperNode's SuperExec (detached, watching
    its parent's PID) would hold a pipe open, and the SuperNode, never reaped while we
    wait for the pipe's end, would stay a zombie that the SuperExec takes for alive.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            flower.stop_tree(proc)
        stop_orphans(proc.pid)
    return proc.returncode, log.read_text()


def _running_with(entry: Path, needle: bytes) -> bool:
    """Whether /proc/PID `entry` is a live process (not a zombie) whose command line holds `needle`."""
    try:
        state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and needle in (entry / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def stop_orphans(parent: int, grace: float = 10.0) -> None:
    """SIGKILL what `parent` started detached with `--parent-pid parent` (a SuperExec) if it outlives `grace` s."""
    needle = f"--parent-pid\0{parent}\0".encode()
    deadline = time.time() + grace
    while True:
        left = [int(entry.name) for entry in Path("/proc").glob("[0-9]*") if _running_with(entry, needle)]
        if not left:
            return
        if time.time() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.2)


def node_states(env, log: Path) -> list[str]:
    """The status of every SuperNode the SuperLink knows (`flwr supernode ls` through the trusted connection)."""
    status, out = ended([BIN / "flwr", "supernode", "ls", "secure"], env, log)
    assert status == 0, out
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]
    return [row[2] for row in rows if row and row[0].isdigit()]  # a row per node: id, owner, status, ...


def wait_online(env, log: Path, count: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while node_states(env, log).count("online") < count:
        if time.time() > deadline:
            raise AssertionError(f"fewer than {count} SuperNodes online after {timeout:.0f} s: {log.read_text()}")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """A SuperLink with TLS and --enable-supernode-auth on 127.0.0.1, its state in a database file, and 2
    registered SuperNodes with long-lived ClientApps; `start_superlink()` starts the SuperLink again (same port,
    same database), as the restart test does after killing it."""
    if not Path("/proc").is_dir():
        pytest.skip("stopping Flower's child processes needs /proc (flower.stop_tree)")
    missing = [tool for tool in TOOLS if not (BIN / tool).exists()]
    if missing:
        pytest.skip(f"Flower's commands {missing} are not in {BIN}")
    home = tmp_path_factory.mktemp("flwr_secure")
    # node-2's key is made but never registered
    paths = certs.write_credentials(home / "certs", hosts=("127.0.0.1", "localhost"), nodes=3)
    other = certs.write_credentials(home / "other-ca")  # a CA that signed nothing this SuperLink shows
    port = free_port()
    # `secure` trusts the CA; `untrusted` names no root-certificates, so only the system's CAs
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "secure"\n\n[superlink.secure]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{paths["ca.crt"]}"\n\n[superlink.untrusted]\naddress = "127.0.0.1:{port}"\n')
    env = {**os.environ, "FLWR_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "COLUMNS": "200", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",  # as `flower local` sets it: a ServerApp starts sooner
           # a ServerApp that has saved round 1 holds there (the restart test kills the SuperLink then)
           flower_faults.HOLD: flower_faults.hold_value("saved", flower_faults.SERVER, 1, home / "saved-round-1")}
    logs = home / "logs"
    logs.mkdir()
    procs = []
    superlink = [BIN / "flower-superlink", "--ssl-ca-certfile", paths["ca.crt"], "--ssl-certfile",
                 paths["server.pem"], "--ssl-keyfile", paths["server.key"], "--enable-supernode-auth",
                 "--host", "127.0.0.1", "--port", str(port), "--database", str(home / "superlink.db"),
                 "--disable-runtime-dependency-installation"]

    def start_superlink():
        proc = subprocess.Popen(superlink, env=env, stdout=open(logs / "superlink.log", "a"), stderr=subprocess.STDOUT)
        flower.wait_for_port(port)
        return proc

    try:
        procs.append(start_superlink())
        with ThreadPoolExecutor(2) as pool:  # the two registrations side by side
            registered = list(pool.map(lambda k: ended([BIN / "flwr", "supernode", "register",
                                                        paths[f"node-{k}.pub"], "secure"], env,
                                                       logs / f"register{k}.log"), range(2)))
        for status, out in registered:
            assert status == 0 and "registered successfully" in out, out
        runtime_ports = [free_port() for _ in range(2)]
        for k, runtime_port in enumerate(runtime_ports):
            procs.append(subprocess.Popen(supernode_cmd(port, paths[f"node-{k}"], k, "--root-certificates",
                                                        str(paths["ca.crt"]), runtime_port=runtime_port),
                                          env=env, stdout=open(logs / f"supernode{k}.log", "w"),
                                          stderr=subprocess.STDOUT))
        for k, runtime_port in enumerate(runtime_ports):
            flower.wait_for_port(runtime_port)
            procs.append(subprocess.Popen(flower_local.clientapps_command(runtime_port, procs[1 + k].pid), env=env,
                                          stdout=open(logs / f"clientapps{k}.log", "w"), stderr=subprocess.STDOUT))
        wait_online(env, logs / "ls.log", 2)
        yield {"env": env, "port": port, "paths": paths, "other": other, "logs": logs, "procs": procs,
               "start_superlink": start_superlink, "saved": home / "saved-round-1"}
    finally:
        for proc in procs:
            flower.stop_tree(proc)


def deploy(secure, cfg, out, when_saved=None) -> tuple[int, str]:
    """`fl_lib flower deploy` to the fixture's SuperLink through the trusted connection: (exit status, its log).
    `when_saved(proc)` runs once the ServerApp holds after saving round 1 (the fixture's flower_faults.HOLD)."""
    with open(out.with_name(out.name + ".log"), "w") as log:  # a file: a pipe would wait for the stream's end
        proc = subprocess.Popen(flower_cmd("deploy", cfg, out, "--round-timeout", "60", "--superlink", "secure"),
                                cwd=ROOT, env=secure["env"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if when_saved is not None and secure["saved"].exists():
                when_saved(proc)
                break
            time.sleep(0.05)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            flower.stop_tree(proc)
    return proc.returncode, out.with_name(out.name + ".log").read_text()


@pytest.mark.slow
def test_dp_over_tls_equals_in_process_and_survives_a_superlink_restart(secure, tmp_path, one_thread):
    """DP-FedAvg (the ClientApps clip, the server adds the seeded noise and keeps the accountant) between the 2
    registered SuperNodes over TLS. Round 1 equals the in-process round. Once the ServerApp has saved it, the
    SuperLink is SIGKILLed (with the ServerApp it runs) and restarted on its database file; the SuperNodes reconnect
    by themselves; the resubmitted run goes on from the run folder's checkpoint, and round 2, its noise and its
    epsilon equal the in-process round 2."""
    cfg = tiny(num_clients=2, num_rounds=2, checkpoint_every=1, client_fraction=1.0, upload="delta", dp_clip=1.0,
               dp_noise=0.5)
    out = tmp_path / "deployed"

    def kill_the_superlink(proc):  # between rounds 1 and 2: no message of the run is on its way
        flower.stop_tree(secure["procs"][0])
        flower.stop_tree(proc)

    code, log = deploy(secure, cfg, out, when_saved=kill_the_superlink)
    assert secure["saved"].exists() and not (out / "summary.json").exists(), log[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["round-000001.pt"], log[-3000:]
    secure["procs"][0] = secure["start_superlink"]()
    code, log = deploy(secure, cfg, out)
    assert code == 0, log[-3000:]
    assert "resuming from round 1" in log
    assert "https://127.0.0.1" in (secure["logs"] / "superlink.log").read_text()  # the SuperLink served TLS
    got = results.load_run(out)  # a valid run folder: its checksums agree
    assert got.config.key() == cfg.key()  # the command's flags say what `cfg` says
    assert got.summary["runtime"] == "flower-deployment" and got.summary["flower_nodes"] == 2
    ref = results.run(cfg, tmp_path / "in-process", progress=False)
    columns = ["upload_bytes", "sampled_clients", "dropped_clients", "epsilon"]
    assert got.metrics[columns].equals(ref.metrics[columns]), (got.metrics[columns], ref.metrics[columns])
    assert got.metrics.sampled_clients.tolist() == [2, 2] and got.summary["epsilon"] == ref.summary["epsilon"] > 0
    assert (got.metrics["test_acc"] - ref.metrics["test_acc"]).abs().max() <= 0.005


@pytest.fixture(scope="module")
def refused(secure, tmp_path_factory) -> dict:
    """{case: (exit status, output)} of three commands the secure SuperLink must refuse, run side by side."""
    logs, paths, port = tmp_path_factory.mktemp("refused"), secure["paths"], secure["port"]
    cases = {
        "unregistered key": supernode_cmd(port, paths["node-2"], 0, "--root-certificates", str(paths["ca.crt"])),
        "another CA": supernode_cmd(port, paths["node-0"], 0, "--root-certificates", str(secure["other"]["ca.crt"])),
        "flwr without the CA": [BIN / "flwr", "supernode", "register", paths["node-2.pub"], "untrusted"],
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        done = {case: pool.submit(ended, cmd, secure["env"], logs / f"{case}.log") for case, cmd in cases.items()}
        return {case: future.result() for case, future in done.items()}


@pytest.mark.slow
def test_a_supernode_with_an_unregistered_key_is_refused(refused):
    status, out = refused["unregistered key"]
    assert status != 0 and "Exit Code: 305" in out
    assert "Failed to initialize the connection to the SuperLink.\n[code: 2004] Failed to activate SuperNode." in out


@pytest.mark.slow
def test_a_supernode_that_trusts_another_ca_is_refused(refused):
    status, out = refused["another CA"]
    assert status != 0 and "Exit Code: 305" in out
    assert "SSL/TLS handshake error detected." in out
    assert ("Failed to initialize the connection to the SuperLink.\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
            "verify failed: unable to get local issuer certificate") in out


@pytest.mark.slow
def test_a_flwr_cli_that_does_not_trust_the_ca_is_refused(refused, secure, tmp_path):
    """Without `root-certificates`, `flwr` trusts only the system's CAs: it cannot register a node (or run)."""
    status, out = refused["flwr without the CA"]
    assert status != 0
    assert ("Connection to the SuperLink is unavailable. Please check your network connection and 'address' in "
            "the SuperLink connection configuration.") in plain(out)
    assert node_states(secure["env"], tmp_path / "ls.log") == ["online", "online"]  # node-2 was not registered


@pytest.mark.slow
def test_supernode_auth_without_tls_is_refused_at_start(tmp_path):
    if not (BIN / "flower-superlink").exists():
        pytest.skip(f"flower-superlink is not in {BIN}")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    status, out = ended([BIN / "flower-superlink", "--insecure", "--enable-supernode-auth", "--host", "127.0.0.1",
                         "--port", str(free_port())], env, tmp_path / "superlink.log", timeout=60)
    assert status != 0
    assert "The `--enable-supernode-auth` flag requires encrypted TLS communications." in out
