"""A rich progress bar following one run, for monitors and the CLI.

Shown only where someone can see it: on a terminal. In notebooks piped to files, CI logs and
tests it does nothing, so ``monitor_*`` stays quiet there without a flag.
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from clients.models import RunEventPublic, RunPublic


def on_terminal() -> bool:
    return sys.stdout.isatty()


class RunProgress:
    """``with RunProgress(label, enabled=...) as bar: bar.update(run)``."""

    def __init__(self, label: str, *, enabled: bool, console: Console | None = None) -> None:
        self.label = label
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[status]}"),
                TextColumn("[dim]{task.fields[message]}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )

    def __enter__(self) -> RunProgress:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=1.0, status="", message="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, run: RunPublic) -> None:
        self._show(run.progress, run.status.value, run.message)

    def event(self, event: RunEventPublic) -> None:
        """Move the bar on ``progress`` and ``status`` events of a followed run; a retry
        (``attempt`` event) starts the bar over."""
        if event.type == "attempt":
            self._show(0.0, f"attempt {event.data.get('attempt')}", "")
        elif event.type == "progress":
            self._show(event.data.get("progress"), None, event.data.get("message"))
        elif event.type == "status":
            status = event.data.get("status")
            done = 1.0 if status == "succeeded" else None
            self._show(done, str(status), None)

    def _show(self, fraction: object, status: str | None, message: object) -> None:
        if self._progress is None or self._task is None:
            return
        fields: dict[str, object] = {}
        if status is not None:
            fields["status"] = status
        if message is not None:
            fields["message"] = str(message)[:60]
        if isinstance(fraction, int | float):
            fields["completed"] = float(fraction)
        self._progress.update(self._task, **fields)  # type: ignore[arg-type]
