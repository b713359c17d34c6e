"""The Ray executor (DESIGN §4): queued runs are claimed here and run by Ray actors.

Same interface as the local executor. This process claims queued runs from the store (the
per-component concurrency limits then hold across the whole cluster: the claim counts running
runs in the store) and starts one detached actor per attempt (``core.runs.ray_worker``), with
the resources ``executor.ray_resources`` gives the component or kind. The actor writes the
events, heartbeats and outcome; this process keeps heart-beating the attempts it dispatched
too (so a run waiting for cluster resources is not taken for lost) and watches their actors:

- an actor that dies (``kill -9``, node lost) → its run is re-queued at once (attempts + 1) or
  failed ``interrupted`` when out of attempts, and a new actor runs the next attempt;
- a cancel reaches the job through the store flag within 0.25 s; an actor that has not
  stopped ``CANCEL_BACKSTOP_S`` later is killed (``ray.kill``), and its run ends cancelled;
- this process stopping or dying leaves the actors running (a restarted API serves their
  events from the store), except a Ray instance it started itself (``ray_address: null``),
  which stops with it: its attempts are re-queued first.

Ray unreachable: nothing is claimed, runs stay queued, ``/ready`` says why (503).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from sqlalchemy.engine import make_url

from core.config import Settings
from core.engine_protocol import EngineFactory
from core.runs.attempt import Held, JobTable, LeaseKeeper
from core.runs.context import StopReason, StopSignal
from core.runs.executor import Executor, recover_stale
from core.runs.ray_worker import RAY_NAMESPACE, AttemptRunner, AttemptSpec, actor_name
from core.runs.service import RunService
from core.store.models import Run

logger = logging.getLogger(__name__)

CANCEL_BACKSTOP_S = 3.0  # a cancelled job still running this long after the flag: kill its actor
CONNECT_RETRY_S = 2.0
PROBE_TIMEOUT_S = 2.0

_RemoteRunner: Any = ray.remote(max_restarts=0, max_task_retries=0)(AttemptRunner)


@dataclass
class _Dispatched:
    run: Run
    lease: str
    actor: Any
    ref: Any
    stop: StopSignal = field(default_factory=StopSignal)
    stop_seen_at: float | None = None
    killed: bool = False


class RayExecutor(Executor):
    def __init__(
        self,
        *,
        service: RunService,
        tables: Mapping[str, JobTable],
        settings: Settings,
        engine_factory: EngineFactory | None = None,
        poll_s: float = 0.25,
    ) -> None:
        self.service = service
        self.tables = dict(tables)
        self.settings = settings
        self.engine_factory = engine_factory or _no_engine
        self.poll_s = poll_s
        self.executor_id = uuid.uuid4().hex[:12]
        self.address = settings.executor.ray_address
        self._limits = {name: settings.executor.concurrency.get(name, 1) for name in self.tables}
        self._worker_settings = _worker_settings(settings)
        self._dispatched: dict[str, _Dispatched] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._problem: str | None = "not connected to Ray yet"  # until connected
        self._failing: str | None = None  # the last round of claiming and watching failed
        self._owns_ray = False
        self._keeper = LeaseKeeper(
            service=service,
            heartbeat_s=settings.executor.heartbeat_s,
            held=self._held,
            after_beat=self._recover,
        )
        self._thread: threading.Thread | None = None

    # Executor interface -------------------------------------------------------------

    def start(self) -> None:
        self._recover()
        self._keeper.start()
        self._thread = threading.Thread(target=self._loop, name="hatchery-ray", daemon=True)
        self._thread.start()

    def submit(self, run_id: str) -> None:
        self._wake.set()

    def cancel(self, run_id: str) -> bool:
        with self._lock:
            dispatched = self._dispatched.get(run_id)
        if dispatched is None:
            return False  # another replica dispatched it: its job still sees the store flag
        dispatched.stop.set(StopReason.cancelled)
        self._wake.set()
        return True

    def stop(self, grace_s: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if self._owns_ray:
            self._stop_own_ray(grace_s)
        self._keeper.close()
        logger.info("ray executor %s stopped", self.executor_id)

    def unavailable_reason(self) -> str | None:
        problem = self._problem or self._failing
        return None if problem is None else f"executor: {problem}"

    @property
    def active_count(self) -> int:
        with self._lock:
            return len(self._dispatched)

    # The loop: connect, claim, watch ------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if self._problem is not None and not self._connect():
                self._stopping.wait(CONNECT_RETRY_S)
                continue
            try:
                self._claim_available()
                self._watch(self.poll_s)
            except Exception as exc:
                logger.exception("ray executor loop failed; retrying")
                self._failing = f"Ray at {self.address or 'a local instance'} failed: {exc}"
                self._stopping.wait(self.poll_s)
            else:
                self._failing = None

    def _connect(self) -> bool:
        try:
            if not ray.is_initialized():
                problem = _probe(self.address)
                if problem is not None:
                    self._problem = problem
                    return False
                self._owns_ray = self.address is None
                ray.init(
                    # "local": always a new instance, never a cluster that happens to run here
                    address=self.address or "local",
                    namespace=RAY_NAMESPACE,
                    configure_logging=False,
                    log_to_driver=False,
                    include_dashboard=False if self.address is None else None,
                )
        except Exception as exc:
            self._problem = f"cannot connect to Ray at {self.address or 'a local instance'}: {exc}"
            logger.warning("%s; retrying", self._problem)
            return False
        self._problem = None
        logger.info("ray executor %s connected to %s", self.executor_id, self.address or "local")
        return True

    def _claim_available(self) -> None:
        for component, limit in self._limits.items():
            while not self._stopping.is_set():
                lease = f"{self.executor_id}-{uuid.uuid4().hex[:8]}"
                run = self.service.claim(component=component, lease=lease, limit=limit)
                if run is None:
                    break
                self._dispatch(run, lease)

    def _dispatch(self, run: Run, lease: str) -> None:
        spec = AttemptSpec(
            run_id=run.id,
            lease=lease,
            table=self.tables[run.component],
            settings=self._worker_settings,
            engine_factory=self.engine_factory,
        )
        options = self.settings.executor.ray_options(run.component, run.kind)
        actor = _RemoteRunner.options(
            name=actor_name(run.id) + f"-{run.attempts}",
            lifetime="detached",
            **options,
        ).remote()
        ref = actor.run.remote(spec)
        with self._lock:
            self._dispatched[run.id] = _Dispatched(run=run, lease=lease, actor=actor, ref=ref)
        logger.info("run %s attempt %d dispatched to Ray (%s)", run.id, run.attempts, options)

    def _watch(self, timeout: float) -> None:
        """Wait up to ``timeout`` for an actor to finish; handle finished ones and stops."""
        with self._lock:
            refs = {d.ref: d for d in self._dispatched.values()}
        if refs:
            done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
            for ref in done:
                self._finished(refs[ref])
        else:
            self._wake.wait(timeout)
            self._wake.clear()
        self._backstop()

    def _finished(self, dispatched: _Dispatched) -> None:
        with self._lock:
            self._dispatched.pop(dispatched.run.id, None)
        try:
            ray.get(dispatched.ref)
        except Exception as exc:  # the actor died: killed, crashed, its node lost, or exited
            logger.info("run %s: its actor ended: %s", dispatched.run.id, type(exc).__name__)
        # A no-op if the worker recorded an outcome (or gave the run up) itself.
        self.service.release_lost(
            run_id=dispatched.run.id,
            lease=dispatched.lease,
            max_attempts=self.settings.executor.max_attempts,
        )
        self._wake.set()

    def _backstop(self) -> None:
        now = time.monotonic()
        for dispatched in self._snapshot():
            if not dispatched.stop.is_set() or dispatched.killed:
                continue
            if dispatched.stop_seen_at is None:
                dispatched.stop_seen_at = now
            elif now - dispatched.stop_seen_at >= CANCEL_BACKSTOP_S:
                logger.warning("run %s did not stop; killing its actor", dispatched.run.id)
                dispatched.killed = True
                ray.kill(dispatched.actor, no_restart=True)

    # Leases and recovery --------------------------------------------------------------

    def _held(self) -> dict[str, Held]:
        return {d.run.id: Held(d.lease, d.stop) for d in self._snapshot()}

    def _recover(self) -> None:
        if not self._stopping.is_set() and recover_stale(self.service, self.settings):
            self._wake.set()

    def _snapshot(self) -> list[_Dispatched]:
        with self._lock:
            return list(self._dispatched.values())

    def _stop_own_ray(self, grace_s: float) -> None:
        """The Ray instance dies with this process: let attempts finish, re-queue the rest."""
        deadline = time.monotonic() + grace_s
        while self._snapshot() and time.monotonic() < deadline:
            self._watch(min(0.2, max(0.0, deadline - time.monotonic())))
        for dispatched in self._snapshot():
            dispatched.stop.set(StopReason.shutdown)
            self.service.requeue(
                run_id=dispatched.run.id, lease=dispatched.lease, reason="shutdown", refund=True
            )
        ray.shutdown()


def _no_engine(_settings: Settings) -> None:
    return None


def _worker_settings(settings: Settings) -> dict[str, Any]:
    """Settings for the workers: relative paths resolved here, models loaded on first use."""
    data = settings.model_dump(mode="json", by_alias=True)
    url = make_url(settings.store.url)
    if url.get_backend_name() == "sqlite" and url.database:
        absolute = str(Path(url.database).expanduser().resolve())
        data["store"]["url"] = url.set(database=absolute).render_as_string(hide_password=False)
    data["model"]["models_dir"] = str(Path(settings.model.models_dir).resolve())
    data["model"]["preload"] = []
    data["data_dir"] = str(Path(settings.data_dir).resolve())
    return data


def _probe(address: str | None) -> str | None:
    """Why the Ray head at ``address`` cannot be reached, or None (it may be).

    ``ray.init`` waits minutes for a head that is not there; a TCP connect says so at once.
    """
    if address is None or address == "auto":
        return None
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            return None
    except (OSError, ValueError) as exc:
        return f"Ray at {address} is unreachable: {exc}"
