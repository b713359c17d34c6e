"""Python clients for Hatchery (DESIGN §9): ``ApiClient`` (sync) and ``AsyncApiClient``.

    from clients import ApiClient

    with ApiClient("http://127.0.0.1:8000") as client:
        run = client.run_test("bdh-shakespeare", "smoke")
        print(client.monitor_test(run.id).result)

Both clients have the same methods (the async ones are coroutines or async iterators), work
against the unified server and against each component's own server, retry safely, and raise
the exceptions below.
"""

from clients._retry import RetryPolicy
from clients._transcript import RunTranscript
from clients.aio import AsyncApiClient
from clients.errors import (
    Conflict,
    HatcheryError,
    MonitorTimeout,
    NotFound,
    RateLimited,
    RequestTimeout,
    ServerError,
    TransportError,
    Unauthorized,
    ValidationFailed,
)
from clients.models import (
    ChatCompletion,
    Completion,
    Health,
    InteractiveEvent,
    ModelCard,
    ModelTemplate,
    RunEventPublic,
    RunPublic,
    RunResults,
    RunsPublic,
    RunStatus,
    SuiteInfo,
    Tokenized,
)
from clients.sync import ApiClient

__all__ = [
    "ApiClient",
    "AsyncApiClient",
    "ChatCompletion",
    "Completion",
    "Conflict",
    "HatcheryError",
    "Health",
    "InteractiveEvent",
    "ModelCard",
    "ModelTemplate",
    "MonitorTimeout",
    "NotFound",
    "RateLimited",
    "RequestTimeout",
    "RetryPolicy",
    "RunEventPublic",
    "RunPublic",
    "RunResults",
    "RunStatus",
    "RunTranscript",
    "RunsPublic",
    "ServerError",
    "SuiteInfo",
    "Tokenized",
    "TransportError",
    "Unauthorized",
    "ValidationFailed",
]
