"""The other component servers (``services.*``): models fetched from them, their health.

In the split topology each component runs as its own server; they find each other through
``services.generator_url``, ``services.test_url`` and ``services.benchmark_url`` and present
``services.api_key`` to each other. Everything here blocks (HTTP, files): callers run it in
worker threads, never on the event loop.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from core.api.outbound import peer_headers
from core.config import Settings
from core.engine.model_files import ModelFetchError, fetch_model
from core.engine.registry import ModelRegistry

logger = logging.getLogger(__name__)

PEER_TIMEOUT_S = 2.0  # /info must answer quickly even when a peer is down


def ensure_model(registry: ModelRegistry, name: str, settings: Settings) -> bool:
    """Whether ``name`` is in ``registry``, fetching it from the generator when it is not.

    Without ``services.generator_url`` nothing is fetched. A generator that cannot be reached,
    or sends files that do not match its manifest, is logged and counts as "not there".
    """
    if registry.exists(name):
        return True
    generator = settings.services.generator_url
    if generator is None:
        return False
    try:
        return fetch_model(
            registry,
            name,
            generator_url=generator,
            headers=peer_headers(settings, generator),
        )
    except (httpx.HTTPError, ModelFetchError, OSError) as exc:
        logger.warning("could not fetch model %s from %s: %s", name, generator, exc)
        return False


def peer_status(settings: Settings, timeout_s: float = PEER_TIMEOUT_S) -> list[dict[str, Any]]:
    """Each configured peer with whether its ``/health`` answers, probed in parallel."""
    peers = settings.services.peers()
    if not peers:
        return []
    with ThreadPoolExecutor(max_workers=len(peers)) as pool:
        probes = {name: pool.submit(_probe, url, timeout_s) for name, url in peers.items()}
        return [{"component": name, "url": peers[name], **probes[name].result()} for name in peers]


def _probe(url: str, timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        response = httpx.get(f"{url}/health", timeout=timeout_s, follow_redirects=False)
    except httpx.HTTPError as exc:
        return {"reachable": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    reachable = response.status_code == 200
    result: dict[str, Any] = {"reachable": reachable, "latency_ms": elapsed_ms}
    if not reachable:
        result["error"] = f"HTTP {response.status_code}"
    return result
