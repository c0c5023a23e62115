"""Talking to neurons: the shared HTTP client, the streaming relay, SSE helpers."""
