"""JSON built to hurt (nesting past the recursion limit, integers too long to read) is a 400.

Not a 500 with a traceback, on inference and on the control routes, and the neuron keeps
serving afterwards.
"""

from __future__ import annotations

import pytest
from neuron_testing import Running

DEEP = b"[" * 50_000  # under the admin routes' 64 KiB limit, far past any depth limit
LONG = b'{"model": "m1", "n": ' + b"9" * 5000 + b"}"
DEEP_IN_OBJECT = b'{"model": "m1", "messages": ' + b"[" * 25_000 + b"]" * 25_000 + b"}"


@pytest.mark.parametrize("body", [DEEP, LONG, DEEP_IN_OBJECT], ids=["deep", "long", "nested"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/models/load", "/models/unload"])
async def test_hostile_json_is_a_400(neuron: Running, body: bytes, path: str) -> None:
    response = await neuron.client.post(path, content=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "not valid JSON" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (await neuron.client.get("/health")).status_code == 200
