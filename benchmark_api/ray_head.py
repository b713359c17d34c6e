"""A local Ray head of our own, for `make bench` and the test suite.

``ray start --head --block`` in a process this one owns, on free ports and a private temp dir,
so it neither collides with another Ray on the machine nor needs ``ray stop`` (which stops
every Ray here): terminating that one process takes its cluster down. Workers import the
project through PYTHONPATH, as an installed package would.

Token auth guards clusters reachable from elsewhere; this one listens on loopback for one
session, and a token file shared with other Ray users of the machine would only clash, so it
is off (``RAY_AUTH_MODE=disabled``, also set in this process for its driver).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmark_api.generator_process import REPO_ROOT, free_port

NO_AUTH = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


WORKER_PORTS = 41  # the range Ray's workers listen on: --min-worker-port and the 40 above


def _ports(count: int) -> tuple[list[int], int]:
    """`count` distinct free ports, and the first of a worker port range none of them falls
    in: Ray refuses to start when two of its components would share a port."""
    ports: list[int] = []
    while len(ports) < count:
        candidate = free_port()
        if candidate not in ports:
            ports.append(candidate)
    workers = free_port()
    while any(workers <= p < workers + WORKER_PORTS for p in ports):
        workers = free_port()
    return ports, workers


@contextlib.contextmanager
def local_ray_head(num_cpus: int = 2, timeout_s: float = 90.0) -> Iterator[str]:
    """Run a Ray head with ``num_cpus`` CPUs; yields its address ("127.0.0.1:PORT")."""
    components = ("node-manager", "object-manager", "metrics-export")
    agent_ports = ("dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent")
    (port, *others), worker_ports = _ports(1 + len(components) + len(agent_ports))
    named = zip((*components, *agent_ports), others, strict=True)
    temp_dir = tempfile.mkdtemp(prefix="hatchery-ray-")
    saved = {name: os.environ.get(name) for name in NO_AUTH}
    os.environ.update(NO_AUTH)
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    command = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
        f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1", f"--port={port}",
        *(f"--{name}-port={p}" for name, p in named),
        f"--min-worker-port={worker_ports}",
        f"--max-worker-port={worker_ports + WORKER_PORTS - 1}",
        "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    log = Path(temp_dir) / "ray-start.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            command,
            env=os.environ | {"PYTHONPATH": path},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not _port_open(port):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
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
    """Disconnect this process's driver, if it connected (Ray is imported only then)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
