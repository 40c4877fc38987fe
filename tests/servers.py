"""What the tests that start local servers (Flower, Voila, JupyterLab) share."""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright cannot download its own browser here


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc, seconds: float, name: str) -> None:
    """Block until `proc` (the server `name`) listens on 127.0.0.1:port; fail if it exits or takes too long."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"{name} did not listen on port {port} within {seconds} s")


def stop_group(server, seconds: float = 20) -> None:
    """Stop the process group of a server we started (its PID is the group's id): the server and its kernel."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=seconds)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def playwright_or_skip():
    """Playwright's sync API for a browser test, or a skip naming what is missing (the package, chromium)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    return sync_api
