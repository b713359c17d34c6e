"""Test cases: what a suite is made of, and how one case runs.

A case is a small function that returns details when it passes and raises ``CaseFailed`` (the
model or endpoint is wrong) or ``CaseSkipped`` (the case does not apply). Anything else it
raises makes it *errored* (the check itself broke), except the two signals that end the run:
``RunCancelled`` and ``SuiteTimeout``. Long cases call ``Watchdog.check`` often, so a cancel
or the run's ``timeout_s`` stops them within a fraction of a second.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.config import Settings
from core.engine_protocol import ModelEngine
from core.errors import PlatformError, RunCancelled
from test_api.schemas import CaseResult, CaseStatus

logger = logging.getLogger(__name__)

Details = dict[str, Any]
CaseFn = Callable[[], Details | None]
MAX_TEXT_IN_DETAILS = 500


class CaseFailed(Exception):
    """The thing under test does not do what it should."""

    def __init__(self, message: str, /, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class CaseSkipped(Exception):
    """The case does not apply here (and says why)."""

    def __init__(self, reason: str, /, **details: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


class SuiteTimeout(PlatformError):
    """The run went past its ``timeout_s``; the run fails with code ``timeout``."""

    status_code = 504
    error_type = "timeout_error"
    default_code = "timeout"


@dataclass(frozen=True)
class Case:
    name: str
    run: CaseFn


class Watchdog:
    """Cancellation and the run's deadline, checked together."""

    def __init__(
        self,
        check_cancelled: Callable[[], None],
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check_cancelled = check_cancelled
        self._clock = clock
        self.timeout_s = timeout_s
        self.deadline = clock() + timeout_s

    def check(self) -> None:
        """Raise RunCancelled or SuiteTimeout if the run must stop now."""
        self._check_cancelled()
        if self._clock() > self.deadline:
            raise SuiteTimeout(f"the suite did not finish within timeout_s={self.timeout_s:g}")

    def remaining(self) -> float:
        return max(0.0, self.deadline - self._clock())


@dataclass
class SuiteEnv:
    """What a suite gets to work with."""

    settings: Settings
    engine: ModelEngine | None
    watchdog: Watchdog


@dataclass
class Plan:
    """A suite ready to run: its cases, and what it tests (for the report)."""

    model: str | None
    target: Details
    cases: list[Case]
    close: Callable[[], None] = field(default=lambda: None)  # releases what the cases used


def expect(condition: bool, message: str, /, **details: Any) -> None:
    if not condition:
        raise CaseFailed(message, **details)


def run_case(case: Case) -> CaseResult:
    """Run one case and classify the outcome; only stop signals propagate."""
    started = time.perf_counter()
    try:
        details = dict(case.run() or {})
        status = CaseStatus.passed
    except CaseFailed as exc:
        status, details = CaseStatus.failed, {"message": exc.message, **exc.details}
    except CaseSkipped as exc:
        status, details = CaseStatus.skipped, {"reason": exc.reason, **exc.details}
    except (RunCancelled, SuiteTimeout):
        raise
    except Exception as exc:
        logger.warning("test case %s raised", case.name, exc_info=True)
        status, details = CaseStatus.errored, {"error": f"{type(exc).__name__}: {exc}"}
    duration_ms = (time.perf_counter() - started) * 1000
    return CaseResult(
        name=case.name, status=status, duration_ms=round(duration_ms, 3), details=jsonable(details)
    )


def jsonable(value: Any) -> Any:
    """Details as plain JSON: non-finite floats become strings (JSON has no NaN), tensors
    and other objects their ``str``; floats are rounded for reading."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return round(value, 8) if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "numel", lambda: 0)() == 1:
        return jsonable(item())
    return str(value)


def clip(text: str, limit: int = MAX_TEXT_IN_DETAILS) -> str:
    """Generated text for details, cut to a readable length."""
    return text if len(text) <= limit else text[:limit] + "…"


def every(n: int, items: Iterator[Any] | range, check: Callable[[], None]) -> Iterator[Any]:
    """Iterate ``items``, calling ``check`` before every ``n``-th item."""
    for index, item in enumerate(items):
        if index % n == 0:
            check()
        yield item
