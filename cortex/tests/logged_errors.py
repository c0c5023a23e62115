"""Which log records count as a bug of cortex's own (see ``conftest.no_errors_logged``)."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import cortex

CORTEX_SOURCE = str(Path(cortex.__file__).parent)
"""An ``asyncio`` ERROR whose exception was raised in here is a bug of cortex's own too: an
exception out of ``Connection.data_received`` (which catches nothing) is logged by the event
loop under ``asyncio``, not ``cortex.http``, and the connection is closed."""


def raised_in_cortex(record: logging.LogRecord) -> bool:
    """An ``asyncio`` record carrying an exception raised in cortex's own code."""
    if record.name != "asyncio" or not record.exc_info or record.exc_info[2] is None:
        return False
    frames = traceback.extract_tb(record.exc_info[2])
    return any(frame.filename.startswith(CORTEX_SOURCE) for frame in frames)
