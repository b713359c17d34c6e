"""`hatchery serve` as a real subprocess: config file + environment + flags, health, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from core.errors import ConfigError
from core.store.db import Store
from tests.support.poll import poll_until
from tests.support.server import LiveServer, free_port
from tests.unified_api.helpers import installed_components, nano_settings
from unified_api.app import create_app

ROOT = Path(__file__).resolve().parents[2]
GRACEFUL_S = 2  # --graceful-timeout: open connections
GRACE_S = 2  # executor.grace_s: running jobs
# SIGTERM must end the process within both bounds plus the time to stop schedulers and exit.
SHUTDOWN_BOUND_S = GRACEFUL_S + GRACE_S + 20


@pytest.fixture
def served(tmp_path: Path, models_dir: Path) -> Iterator[dict[str, Any]]:
    """A `hatchery serve all` process: file for the model and store, env for port and logs."""
    port = free_port()
    store_url = f"sqlite:///{tmp_path / 'served.db'}"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"port": 1},  # the environment overrides it
                "model": {"models_dir": str(models_dir), "preload": ["bdh-nano"]},
                "store": {"url": store_url},
                "executor": {"grace_s": GRACE_S, "heartbeat_s": 0.5},
                "data_dir": str(tmp_path / "data"),
            }
        ),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHERY_")}
    env |= {"HATCHERY_SERVER__PORT": str(port), "HATCHERY_LOGGING__JSON": "true"}
    log = (tmp_path / "serve.log").open("w+", encoding="utf-8")
    command = [sys.executable, "-m", "hatchery_cli", "serve", "all", "--config", str(config)]
    command += ["--model", "bdh-nano", "--threads", "1", "--graceful-timeout", str(GRACEFUL_S)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {
            "process": process,
            "url": f"http://127.0.0.1:{port}",
            "port": port,
            "log": log,
            "store_url": store_url,
        }
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        log.close()


def wait_healthy(served: dict[str, Any], timeout: float = 120.0) -> None:
    def health() -> int:
        assert served["process"].poll() is None, log_text(served)
        return httpx.get(served["url"] + "/health", timeout=2).status_code

    poll_until(
        health,
        lambda status: status == 200,
        timeout=timeout,
        interval=0.2,
        what=lambda: "the server to come up:\n" + log_text(served),
        ignore=(httpx.TransportError,),
    )


def log_text(served: dict[str, Any]) -> str:
    served["log"].flush()
    return Path(served["log"].name).read_text(encoding="utf-8")


def start_long_run(
    client: httpx.Client, served: dict[str, Any], stack: contextlib.ExitStack
) -> tuple[str, ClientConnection]:
    """A generation run that is still running at SIGTERM, followed over a WebSocket."""
    # 32 sequences of 4096 tokens: far more than bdh-nano decodes within the grace periods.
    body = {"kind": "text", "model": "bdh-nano", "prompts": ["x"] * 8, "n": 4, "max_tokens": 4096}
    run_id: str = client.post("/api/generator/run", json=body).json()["id"]
    url = f"ws://127.0.0.1:{served['port']}/api/generator/ws/{run_id}"
    ws = stack.enter_context(connect(url))
    poll_until(
        lambda: json.loads(ws.recv(timeout=60)),
        lambda message: message.get("type") == "token",
        timeout=60,
        interval=0,
        what="a token event",
    )
    return run_id, ws


def test_serve_layers_settings_answers_and_stops_cleanly_on_sigterm(
    served: dict[str, Any],
) -> None:
    wait_healthy(served)
    with (
        contextlib.ExitStack() as stack,
        httpx.Client(base_url=served["url"], timeout=30) as client,
    ):
        info = client.get("/info").json()
        assert info["default_model"] == "bdh-nano"  # --model beats the default
        assert info["torch_threads"] == 1  # --threads
        assert info["components"] == installed_components()
        run_id, ws = start_long_run(client, served, stack)

        started = time.monotonic()
        served["process"].send_signal(signal.SIGTERM)
        returncode = served["process"].wait(timeout=SHUTDOWN_BOUND_S)
        took = time.monotonic() - started
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
        assert ws.close_code in (1001, 1012)  # going away / service restart, not an error

    output = log_text(served)
    # uvicorn re-raises the signal once it has shut down, so a parent sees "ended by SIGTERM".
    assert returncode in (0, -signal.SIGTERM), output
    assert took < SHUTDOWN_BOUND_S
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    messages = [record["message"] for record in records]
    assert "Application shutdown complete." in messages  # JSON logs, from the environment
    assert any("serving all on http://127.0.0.1:" in message for message in messages)
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], output
    store = Store(served["store_url"])
    try:
        run = store_run(store, run_id)
    finally:
        store.dispose()
    # The interrupted run went back to the queue for the next start, not to "failed".
    assert run["status"] == "queued", run


def store_run(store: Store, run_id: str | None) -> dict[str, Any]:
    from core.store.models import Run

    with store.read_session() as session:
        run = session.get(Run, run_id)
        assert run is not None
        return {"status": run.status, "attempts": run.attempts, "error": run.error}


def test_binding_beyond_loopback_without_auth_refuses_to_start(
    tmp_path: Path,
    models_dir: Path,
    live_server: Callable[[FastAPI], LiveServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The live server binds loopback whatever the settings say; the check reads the settings.
    exposed = nano_settings(tmp_path, models_dir, **{"server.host": "0.0.0.0", "model.preload": []})
    refused = create_app(exposed)

    async def start_up() -> None:
        async with refused.router.lifespan_context(refused):
            pass

    with pytest.raises(ConfigError, match=r"server\.allow_insecure"):
        asyncio.run(start_up())  # the app's own start-up, as uvicorn runs it
    assert any("server.allow_insecure" in r.getMessage() for r in caplog.records)
    caplog.clear()
    # `hatchery serve` says so before it builds anything, and exits 2.
    command = [sys.executable, "-m", "hatchery_cli", "serve", "test", "--host", "0.0.0.0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHERY_")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "server.allow_insecure" in done.stdout + done.stderr
    insecure = nano_settings(
        tmp_path,
        models_dir,
        **{"server.host": "0.0.0.0", "model.preload": [], "server.allow_insecure": True},
    )
    with caplog.at_level(logging.WARNING, logger="core.api.app"):
        live_server(create_app(insecure))
    assert any("auth disabled" in r.getMessage() for r in caplog.records)
    caplog.clear()
    guarded = nano_settings(
        tmp_path,
        models_dir,
        **{
            "server.host": "0.0.0.0",
            "model.preload": [],
            "auth.enabled": True,
            "auth.api_keys": ["k"],
        },
    )
    with caplog.at_level(logging.WARNING, logger="core.api.app"):
        live_server(create_app(guarded))
    assert not any("auth disabled" in r.getMessage() for r in caplog.records)
