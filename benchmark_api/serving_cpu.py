"""Where the cores went during a serving level, and the engine's own figure to hold it against.

`CpuClock` reads the CPU seconds taken so far by the load generator (this process), by the
server's event-loop thread (uvicorn runs its loop on the main thread, whose thread id is the
process id) and by the server's other threads (the scheduler's lanes: decode, sampling and
delivery, plus the decode helpers and the store); the difference of two readings is a
`CpuShare`, beside what the whole machine was busy with (neighbours' work shows there).
`EngineReference` is the engine's own batch decode throughput, measured in this
process on the same model, so that the serving figures have a ceiling taken side by side.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field

import psutil
import torch

from benchmark_api.engine_bench import measure_decode
from core.engine.model import BDH

REFERENCE_CONTEXT = 256  # as `make bench`'s decode-vs-batch table
REFERENCE_STEPS = 32


@dataclass(frozen=True)
class CpuShare:
    """CPU seconds over one stretch of wall time, by who took them."""

    wall_s: float = 0.0
    client_s: float = 0.0  # the load generator (this process)
    loop_s: float = 0.0  # the server's event-loop thread: HTTP, SSE chunks, the stream bridge
    engine_s: float = 0.0  # the server's other threads: lanes (decode, sampling), helpers
    prober_s: float = 0.0  # the /health prober's process, when one ran
    machine_s: float = 0.0  # every process on the machine (all CPUs busy, system-wide)

    def __add__(self, other: CpuShare) -> CpuShare:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
        return CpuShare(*(a + b for a, b in pairs))

    @property
    def server_s(self) -> float:
        return self.loop_s + self.engine_s

    @property
    def ours_s(self) -> float:
        return self.client_s + self.prober_s + self.server_s

    @property
    def others_s(self) -> float:
        """What other processes took meanwhile: on a shared machine, neighbours' work."""
        return max(self.machine_s - self.ours_s, 0.0)

    def cores(self, seconds: float) -> float:
        """`seconds` of CPU as a number of cores busy over the wall time."""
        return seconds / self.wall_s if self.wall_s > 0 else 0.0


class CpuClock:
    """Reads the CPU time of this process and of the server process `server_pid`."""

    def __init__(self, server_pid: int) -> None:
        self._server = psutil.Process(server_pid)
        self._pid = server_pid
        self._last = self._read()

    def _read(self) -> tuple[float, float, float, float, float]:
        total = self._server.cpu_times()  # includes threads that have ended
        loop = next(
            (t.user_time + t.system_time for t in self._server.threads() if t.id == self._pid),
            0.0,
        )
        engine = total.user + total.system - loop
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return time.perf_counter(), time.process_time(), loop, engine, busy

    def lap(self, prober_s: float = 0.0) -> CpuShare:
        """The CPU taken since the last reading (or since the clock was made)."""
        now = self._read()
        then, self._last = self._last, now
        wall, client, loop, engine, machine = (a - b for a, b in zip(now, then, strict=True))
        return CpuShare(wall, client, loop, engine, prober_s, machine)


@dataclass
class EngineReference:
    """The engine's own decode throughput at one batch size, over several measurements."""

    batch: int
    tokens_per_s: list[float] = field(default_factory=list)
    cpu_s_per_token: list[float] = field(default_factory=list)

    @property
    def median_tokens_per_s(self) -> float:
        return statistics.median(self.tokens_per_s) if self.tokens_per_s else 0.0

    @property
    def median_cpu_s_per_token(self) -> float:
        return statistics.median(self.cpu_s_per_token) if self.cpu_s_per_token else 0.0

    def measure(self, model: BDH, *, steps: int = REFERENCE_STEPS) -> None:
        """One measurement: `steps` batched decode steps at context `REFERENCE_CONTEXT`, on
        the default decode threads (one per core, as the server's lanes), in this process;
        tokens/s from the median step, CPU per token from the process's CPU over the steps."""
        measured = measure_decode(
            model, batch_size=self.batch, context=REFERENCE_CONTEXT, new_tokens=steps
        )
        self.tokens_per_s.append(measured.decode_tokens_per_s)
        self.cpu_s_per_token.append(sum(measured.step_cpu_s) / (self.batch * steps))


def warm_up_engine(model: BDH) -> None:
    """Compile (or load) the decode kernel before anything is timed."""
    with torch.inference_mode():
        tokens = torch.zeros(1, dtype=torch.long)
        model.decode_step(tokens, tokens, model.new_state(1))
