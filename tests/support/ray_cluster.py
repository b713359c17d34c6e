"""A real local Ray cluster for the Ray executor tests, started once per test session.

``ray start --head --block`` in a process of our own, on free ports and a private temp dir, so
it neither collides with another Ray on the machine nor needs ``ray stop`` (which would stop
every Ray here): terminating that one process takes its cluster down. Two CPUs, the size of
the CI box. Workers import the repository through PYTHONPATH, as an installed package would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_CPUS = 2


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """The address ("127.0.0.1:PORT") of a running local Ray head with RAY_CPUS CPUs."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[dev]')")
    port = free_port()
    worker_ports = free_port()  # a base: Ray takes a small range above it
    temp_dir = tempfile.mkdtemp(prefix="hatchery-ray-")
    # Token auth guards clusters reachable from elsewhere; this one listens on loopback for
    # one test session, and a token file shared with other Ray users here would only clash.
    no_auth = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {name: os.environ.get(name) for name in no_auth}
    os.environ.update(no_auth)  # the test process connects as a driver
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        f"--num-cpus={RAY_CPUS}",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--min-worker-port={worker_ports}",
        f"--max-worker-port={worker_ports + 40}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    log = Path(temp_dir) / "ray-start.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while not _port_open(port):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        _disconnect()
        head.send_signal(signal.SIGTERM)  # our own process: it stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
