from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from core.api.middleware import JsonLogFormatter, configure_logging, request_id_var
from core.config import LoggingSettings


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logging")
def test_configure_logging_json_with_request_ids() -> None:
    configure_logging(LoggingSettings.model_validate({"json": True, "level": "debug"}))
    configure_logging(LoggingSettings.model_validate({"json": True, "level": "debug"}))
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == "hatchery"]
    assert len(ours) == 1 and isinstance(ours[0].formatter, JsonLogFormatter)
    assert root.level == logging.DEBUG

    token = request_id_var.set("req-42")
    try:
        record = logging.getLogger("hatchery.test").makeRecord(
            "hatchery.test", logging.INFO, __file__, 1, "hello %s", ("world",), None
        )
    finally:
        request_id_var.reset(token)
    line = json.loads(ours[0].format(record))
    assert line["message"] == "hello world" and line["request_id"] == "req-42"
    assert line["level"] == "INFO" and line["logger"] == "hatchery.test"
