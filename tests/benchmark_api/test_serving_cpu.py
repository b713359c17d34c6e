"""CPU accounting and the engine reference of `make bench`'s serving section."""

from __future__ import annotations

import os
import threading
import time

from benchmark_api.serving_cpu import CpuClock, CpuShare, EngineReference, warm_up_engine
from tests.conftest import build_nano_model


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_clock_tells_the_main_thread_from_the_others() -> None:
    # This process stands in for the server: its main thread is the "event loop".
    clock = CpuClock(os.getpid())
    _burn(0.2)
    on_main = clock.lap()
    assert on_main.loop_s >= 0.15 and on_main.engine_s < 0.1
    assert on_main.client_s >= 0.15  # this process is the load generator too
    assert on_main.wall_s >= on_main.loop_s * 0.9
    worker = threading.Thread(target=_burn, args=(0.2,))
    worker.start()
    worker.join()
    elsewhere = clock.lap(prober_s=0.5)
    assert elsewhere.engine_s >= 0.15 and elsewhere.loop_s < 0.1
    assert elsewhere.prober_s == 0.5
    # The whole machine was at least as busy as this process, and others never go negative.
    assert elsewhere.machine_s >= elsewhere.engine_s * 0.9 and elsewhere.others_s >= 0
    assert on_main.ours_s == on_main.client_s + on_main.server_s
    total = on_main + elsewhere
    assert total.server_s == on_main.server_s + elsewhere.server_s
    assert total.cores(total.loop_s) == total.loop_s / total.wall_s


def test_an_empty_share_has_no_cores() -> None:
    assert CpuShare().cores(1.0) == 0.0


def test_others_are_what_the_machine_did_beyond_ours() -> None:
    share = CpuShare(wall_s=2, client_s=0.5, loop_s=0.25, engine_s=1, prober_s=0.25, machine_s=3)
    assert share.ours_s == 2 and share.others_s == 1 and share.cores(share.others_s) == 0.5
    assert CpuShare(client_s=1, machine_s=0.5).others_s == 0.0  # sampling skew, never < 0


def test_the_engine_reference_measures_tokens_and_cpu() -> None:
    model = build_nano_model()
    warm_up_engine(model)
    reference = EngineReference(batch=2)
    reference.measure(model, steps=3)
    reference.measure(model, steps=3)
    assert len(reference.tokens_per_s) == len(reference.cpu_s_per_token) == 2
    assert reference.median_tokens_per_s > 0 and reference.median_cpu_s_per_token > 0
    assert EngineReference(batch=1).median_tokens_per_s == 0.0
