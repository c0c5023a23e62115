"""The autouse fixture that fails a test in which cortex logged an ERROR sees the event
loop's records too: an exception out of ``Connection.data_received`` (which catches
nothing) is logged under ``asyncio``, not ``cortex.http``."""

from __future__ import annotations

import logging
import sys

import pytest
from logged_errors import raised_in_cortex

from cortex.upstream.sse import EventSplitter, EventTooLarge


def record(name: str, exc_info: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, "Fatal error", None, exc_info)  # type: ignore[arg-type]


def test_an_asyncio_error_raised_in_cortexs_code_counts() -> None:
    with pytest.raises(EventTooLarge) as info:
        EventSplitter(max_bytes=1).whole(b"data: more than one byte")
    raised = (info.type, info.value, info.tb)
    assert raised_in_cortex(record("asyncio", raised))
    assert not raised_in_cortex(record("aiohttp", raised)), "other loggers: by name only"


def test_an_asyncio_error_from_elsewhere_does_not() -> None:
    try:
        raise ValueError("not cortex")
    except ValueError:
        raised = sys.exc_info()
    assert not raised_in_cortex(record("asyncio", raised))
    assert not raised_in_cortex(record("asyncio", None))
