"""Executor recovery: stale heartbeats, attempts, graceful stop, lost leases, and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from core.runs.events import EventBus
from core.runs.executor import LocalExecutor
from core.runs.service import RunService
from core.store import crud
from core.store.db import Store
from core.store.models import Run, RunStatus
from tests.conftest import make_settings
from tests.support.poll import poll_until
from tests.support.sample_component import SAMPLE
from tests.support.server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def service(store: Store) -> RunService:
    return RunService(store=store, bus=EventBus())


@pytest.fixture
def make_executor(service: RunService, store_url: str) -> Iterator[Callable[..., LocalExecutor]]:
    executors: list[LocalExecutor] = []

    def make(**overrides: Any) -> LocalExecutor:
        settings = make_settings(store_url, **{"executor.heartbeat_s": 0.2} | overrides)
        executor = LocalExecutor(
            service=service, tables={"sample": SAMPLE.job_table()}, settings=settings, poll_s=0.05
        )
        service.executor = executor
        executors.append(executor)
        return executor

    yield make
    for executor in executors:
        executor.stop(grace_s=0)


def create(service: RunService, **params: Any) -> str:
    run, _ = service.create(component="sample", kind="sleep", params={"kind": "sleep"} | params)
    return run.id


def wait_status(service: RunService, run_id: str, *statuses: str, timeout: float = 15) -> Run:
    return poll_until(
        lambda: service.get(run_id=run_id),
        lambda run: run.status in statuses,
        timeout=timeout,
        what=f"run {run_id} to be {' or '.join(statuses)}",
    )


def orphan(store: Store, run_id: str, *, attempts: int = 1) -> None:
    """Make the run look like its worker died a while ago."""
    with store.write_session() as session:
        assert crud.claim_next_queued(session, component="sample", lease="dead-worker")
        session.execute(
            update(Run)
            .where(Run.id == run_id)  # type: ignore[arg-type]
            .values(attempts=attempts, heartbeat_at=datetime.now(UTC) - timedelta(minutes=5))
        )


def status_events(service: RunService, run_id: str) -> list[dict[str, Any]]:
    events, _ = service.events_after(run_id=run_id, after=0)
    seqs = [event.seq for event in events]
    assert seqs == list(range(1, len(seqs) + 1))
    return [event.data for event in events if event.type == "status"]


def test_orphaned_run_is_requeued_and_finished(
    store: Store, service: RunService, make_executor: Callable[..., LocalExecutor]
) -> None:
    run_id = create(service, steps=2)
    orphan(store, run_id)
    make_executor().start()
    run = wait_status(service, run_id, "succeeded")
    assert run.attempts == 2
    assert {"status": "queued", "reason": "worker_lost"} in status_events(service, run_id)


def test_orphaned_run_out_of_attempts_fails_interrupted(
    store: Store, service: RunService, make_executor: Callable[..., LocalExecutor]
) -> None:
    run_id = create(service)
    orphan(store, run_id, attempts=2)
    make_executor().start()
    run = wait_status(service, run_id, "failed")
    assert run.error is not None and run.error["code"] == "interrupted"
    assert status_events(service, run_id)[-1]["status"] == "failed"


def test_graceful_stop_requeues_with_the_attempt_refunded(
    service: RunService, make_executor: Callable[..., LocalExecutor]
) -> None:
    executor = make_executor()
    executor.start()
    run_id = create(service, steps=500, step_s=0.02)
    wait_status(service, run_id, "running")
    executor.stop(grace_s=0.1)
    run = service.get(run_id=run_id)
    # Attempts count starts; the refunded one does not count against max_attempts.
    assert (run.status, run.attempts, run.attempts_refunded, run.worker_id) == (
        "queued",
        1,
        1,
        None,
    )
    poll_until(lambda: executor.active_count, lambda active: active == 0, timeout=5)
    assert status_events(service, run_id)[-1] == {"status": "queued", "reason": "shutdown"}

    successor = make_executor()
    successor.start()
    service.cancel(run_id=wait_status(service, run_id, "running").id)
    assert wait_status(service, run_id, "cancelled").attempts == 2
    events, _ = service.events_after(run_id=run_id, after=0)
    marker = next(event for event in events if event.type == "attempt")
    assert marker.data == {"attempt": 2, "reason": "shutdown"} and marker.attempt == 2


def test_job_that_lost_its_lease_stops_and_its_outcome_is_discarded(
    store: Store, service: RunService, make_executor: Callable[..., LocalExecutor]
) -> None:
    executor = make_executor(**{"executor.concurrency": {"sample": 1}})
    executor.start()
    run_id = create(service, steps=60, step_s=0.02)
    first = wait_status(service, run_id, "running")
    with store.write_session() as session:  # another replica decided this worker was dead
        assert crud.requeue(session, run_id=run_id, reason="worker_lost")
    run = wait_status(service, run_id, "succeeded")
    assert run.attempts == 2 and run.worker_id is None and first.worker_id
    assert run.result == {"kind": "sleep", "done": 60, "attempt": 2}


def test_concurrency_is_bounded_per_component(
    service: RunService, make_executor: Callable[..., LocalExecutor]
) -> None:
    make_executor(**{"executor.concurrency": {"sample": 2}}).start()
    ids = [create(service, steps=3, step_s=0.03) for _ in range(6)]
    running: list[int] = []

    def succeeded() -> int:
        running.append(service.list_runs(component="sample", status="running")[1])
        return service.list_runs(component="sample", status="succeeded")[1]

    poll_until(succeeded, lambda count: count == 6, interval=0.005, what="all six runs")
    assert 1 <= max(running) <= 2
    assert {service.get(run_id=run_id).attempts for run_id in ids} == {1}


# A real server process, killed with SIGKILL mid-run and restarted on the same store ---------


class ServerProcess:
    def __init__(self, store_url: str, log: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = (
            os.environ
            | {
                "HATCHERY_STORE__URL": store_url,
                "HATCHERY_EXECUTOR__HEARTBEAT_S": "0.3",
                "HATCHERY_EXECUTOR__CONCURRENCY": '{"sample": 1}',
                "PYTHONPATH": str(REPO_ROOT),
            }
            | (extra_env or {})
        )
        command = [
            sys.executable, "-m", "uvicorn", "--factory",
            "tests.support.sample_component:create_app",
            "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_healthy(log)

    def _wait_healthy(self, log: Path) -> None:
        def health() -> int:
            assert self.process.poll() is None, f"server exited:\n{log.read_text()}"
            return httpx.get(f"{self.url}/health", timeout=1).status_code

        poll_until(
            health,
            lambda status: status == 200,
            timeout=60,
            interval=0.1,
            what=lambda: f"the server to become healthy:\n{log.read_text()}",
            ignore=(httpx.TransportError,),
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def test_sigkilled_server_restarts_and_finishes_its_runs(store_url: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    first = ServerProcess(store_url, log)
    try:
        with httpx.Client(base_url=first.url, timeout=10) as client:
            long_id = client.post(
                "/api/sample/run", json={"kind": "sleep", "steps": 20, "step_s": 0.1}
            ).json()["id"]
            queued_id = client.post("/api/sample/run", json={"kind": "sleep", "steps": 2}).json()[
                "id"
            ]
            poll_until(
                lambda: client.get(f"/api/sample/status/{long_id}").json(),
                lambda run: run["progress"] >= 0.15,
                timeout=30,
                what="the long run to make progress",
            )
    finally:
        first.kill()

    store = Store(store_url)
    with store.read_session() as session:
        assert crud.get_run(session, run_id=long_id).status == "running"  # type: ignore[union-attr]
        assert crud.get_run(session, run_id=queued_id).status == "queued"  # type: ignore[union-attr]
    store.dispose()

    second = ServerProcess(store_url, log)
    try:
        with httpx.Client(base_url=second.url, timeout=10) as client:
            for run_id in (long_id, queued_id):

                def status(run_id: str = run_id) -> str:
                    run = client.get(f"/api/sample/status/{run_id}").json()
                    assert run["status"] in ("queued", "running", RunStatus.succeeded), run
                    return str(run["status"])

                poll_until(
                    status,
                    lambda status: status == RunStatus.succeeded,
                    timeout=30,
                    interval=0.05,
                    what=f"run {run_id} to succeed after the restart",
                )
            assert client.get(f"/api/sample/status/{long_id}").json()["attempts"] == 2
            assert client.get(f"/api/sample/status/{queued_id}").json()["attempts"] == 1
            result = client.get(f"/api/sample/results/{long_id}").json()["result"]
            assert result == {"kind": "sleep", "done": 20, "attempt": 2}
            events = client.get(f"/api/sample/events/{long_id}").text
            assert '"reason":"worker_lost"' in events
    finally:
        second.stop()


def test_emit_many_writes_contiguous_events_in_one_go(service: RunService) -> None:
    run_id = create(service)
    with service.store.write_session() as session:
        claimed = crud.claim_next_queued(session, component="sample", lease="L")
    assert claimed is not None
    seqs = service.emit_many(
        run_id=run_id, events=[("token", {"text": t}) for t in "abc"], lease="L"
    )
    assert seqs == [3, 4, 5]
    assert service.emit_many(run_id=run_id, events=[("token", {})], lease="other") is None
    events, ended = service.events_after(run_id=run_id, after=2)
    assert [e.data for e in events] == [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    assert not ended


def test_a_cancel_acknowledged_before_the_outcome_wins_over_success(
    service: RunService,
) -> None:
    run_id = create(service)
    claimed = service.claim(component="sample", lease="worker-1")
    assert claimed is not None and claimed.id == run_id
    assert service.cancel(run_id=run_id).cancel_requested  # the job has not noticed yet
    ended = service.finish(
        run_id=run_id,
        lease="worker-1",
        status=RunStatus.succeeded,
        result={"kind": "sleep", "done": 5, "attempt": 1},
    )
    assert ended is not None and ended.status == "cancelled"
    assert ended.result == {"kind": "sleep", "done": 5, "attempt": 1}  # the work is kept
    assert status_events(service, run_id)[-1]["status"] == "cancelled"


def test_a_cancelled_run_whose_worker_is_lost_ends_cancelled_not_requeued(
    store: Store, service: RunService, make_executor: Callable[..., LocalExecutor]
) -> None:
    run_id = create(service)
    orphan(store, run_id)
    service.cancel(run_id=run_id)
    make_executor().start()
    run = wait_status(service, run_id, "cancelled", "succeeded", "failed")
    assert run.status == "cancelled" and run.attempts == 1
