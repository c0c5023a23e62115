"""What one client may ask of the server (``[gateway]`` in cortex.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the server, and all clients together (see README.md)."""

    max_header_bytes: int = 64 * 1024
    max_header_field_bytes: int = 16 * 1024
    max_connections: int = 8192
    header_timeout: float = 10.0
    keep_alive_timeout: float = 75.0
    send_timeout: float = 120.0
    body_timeout: float = 60.0
    max_body_memory: int = 1024 * 1024 * 1024
    retry_after: int = 5
