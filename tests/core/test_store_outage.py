"""The PostgreSQL connection dropped under a real server, then restored, with no restart.

A TCP proxy stands between the server and PostgreSQL; the test cuts it (every connection
dropped, new ones refused) while a run is in flight, checks how the server answers meanwhile,
restores it and checks that everything recovers: the figures are printed for the note.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import make_settings, postgres_schema
from tests.support.poll import poll_until
from tests.support.sample_component import create_app
from tests.support.sample_runs import finished, stored_events, submit
from tests.support.server import LiveServer, serve
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres
OUTAGE_S = 4.0


@pytest.fixture
def proxied() -> Iterator[tuple[TcpProxy, LiveServer]]:
    with postgres_schema() as direct:
        url = make_url(direct)
        proxy = TcpProxy(url.port or 5432).start()
        through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = make_settings(through, **{"executor.max_attempts": 3})
        try:
            with serve(create_app(settings)) as live:
                yield proxy, live
        finally:
            proxy.stop()


def test_a_store_outage_answers_503_and_recovers_without_losing_a_run(
    proxied: tuple[TcpProxy, LiveServer],
) -> None:
    proxy, live = proxied
    with httpx.Client(base_url=live.url, timeout=30) as client:
        assert client.get("/ready").status_code == 200
        done_before = submit(client, {"kind": "sleep", "steps": 2})
        finished(client, done_before)
        long_run = submit(client, {"kind": "sleep", "steps": 60, "step_s": 0.1})
        poll_until(
            lambda: client.get(f"/api/sample/status/{long_run}").json()["status"],
            lambda status: status == "running",
            what="the long run to start",
        )

        cut_at = time.monotonic()
        proxy.cut()
        poll_until(lambda: client.get("/ready").status_code, lambda code: code == 503)
        to_503 = time.monotonic() - cut_at
        for response in (
            client.get("/api/sample/runs"),
            client.get(f"/api/sample/status/{long_run}"),
            client.post("/api/sample/run", json={"kind": "sleep", "steps": 1}),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] in ("store_unavailable", "not_ready")
            assert int(response.headers["retry-after"]) >= 1
        assert client.get("/health").status_code == 200  # liveness does not need the store
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))

        restored_at = time.monotonic()
        proxy.restore()
        poll_until(lambda: client.get("/ready").status_code, lambda code: code == 200, timeout=30)
        to_recover = time.monotonic() - restored_at
        after = submit(client, {"kind": "sleep", "steps": 2})

        # The run in flight either rode out the outage or was re-queued and ran again.
        long_final = finished(client, long_run, timeout=120)
        assert long_final["status"] == "succeeded", long_final
        assert finished(client, after)["status"] == "succeeded"
        listed = {run["id"] for run in client.get("/api/sample/runs").json()["data"]}
        assert {done_before, long_run, after} <= listed  # no run lost
        events = stored_events(client, long_run)  # asserts seq 1..n with no gap
        attempts = [event for event in events if event["type"] == "attempt"]
        assert len(attempts) == long_final["attempts"] - 1
    print(
        f"store outage: /ready 503 after {to_503:.2f} s, ready again {to_recover:.2f} s after "
        f"the restore, the run in flight finished on attempt {long_final['attempts']}, "
        f"{len(events)} contiguous events, runs lost: 0"
    )
