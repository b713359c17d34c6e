"""The twins cannot drift: same public methods, same parameters, sync vs async shapes."""

from __future__ import annotations

import inspect

import clients
from clients import ApiClient, AsyncApiClient
from clients._base import BaseClient


def public_methods(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_")
    }


def test_same_public_methods() -> None:
    sync, aio = public_methods(ApiClient), public_methods(AsyncApiClient)
    assert sorted(sync) == sorted(aio)
    assert {
        "run_test",
        "get_test_status",
        "get_test_results",
        "list_test_runs",
        "cancel_test",
        "monitor_test",
        "monitor_test_ws",
        "generate_text",
        "generate_model",
        "get_generation_status",
        "get_generation_results",
        "list_generation_runs",
        "cancel_generation",
        "monitor_generation",
        "monitor_generation_ws",
        "run_benchmark",
        "get_benchmark_status",
        "get_benchmark_results",
        "list_benchmark_runs",
        "cancel_benchmark",
        "monitor_benchmark",
        "monitor_benchmark_ws",
        "complete",
        "chat",
        "models",
        "health",
        "list_runs",
        "templates",
        "suites",
        "tokenize",
        "detokenize",
        "generate_interactive_ws",
        "close",
    } <= set(sync)


def test_same_signatures() -> None:
    sync, aio = public_methods(ApiClient), public_methods(AsyncApiClient)
    for name in sync:
        sync_parameters = inspect.signature(sync[name]).parameters  # type: ignore[arg-type]
        async_parameters = inspect.signature(aio[name]).parameters  # type: ignore[arg-type]
        assert [(p.name, p.kind, p.default) for p in sync_parameters.values()] == [
            (p.name, p.kind, p.default) for p in async_parameters.values()
        ], name


def test_async_methods_are_awaitable_or_async_iterators() -> None:
    shared = public_methods(BaseClient)  # URL and header helpers: no I/O, not async
    assert set(shared) == {"url", "ws_url", "request_headers"}
    for name, member in public_methods(AsyncApiClient).items():
        if name in shared:
            continue
        if name.endswith("_ws"):
            returns = inspect.signature(member).return_annotation  # type: ignore[arg-type]
            assert "AsyncIterator" in str(returns), name
        else:
            assert inspect.iscoroutinefunction(member), name
    for name, member in public_methods(ApiClient).items():
        assert not inspect.iscoroutinefunction(member), name


def test_exports() -> None:
    for name in ("ApiClient", "AsyncApiClient", "HatcheryError", "NotFound", "Unauthorized"):
        assert name in clients.__all__
    for name in ("RateLimited", "Conflict", "ValidationFailed", "ServerError"):
        assert issubclass(getattr(clients, name), clients.HatcheryError)
