"""vLLM's sleep-mode routes, called on an engine's loopback address only (never proxied).

``POST /sleep?level=N&mode=wait``, ``POST /wake_up``, and the canary: a greedy one-token
completion of a fixed prompt, whose answer must not change across a sleep (level 2 can
return garbage after a wake: vllm#29341). Every failure is :class:`EngineFailed`.
"""

from __future__ import annotations

import httpx

from neuron.errors import EngineFailed


async def sleep(client: httpx.AsyncClient, url: str, level: int, limit_s: float) -> None:
    # mode=wait: the neuron sends a sleep only with no request in flight; should one race
    # in at the engine anyway, it finishes rather than being aborted.
    await _post(client, f"{url}/sleep", {"level": str(level), "mode": "wait"}, limit_s, "sleep")


async def wake(client: httpx.AsyncClient, url: str, limit_s: float) -> None:
    await _post(client, f"{url}/wake_up", {}, limit_s, "wake")


async def canary(
    client: httpx.AsyncClient, url: str, model_id: str, prompt: str, limit_s: float
) -> str:
    """The engine's greedy first token for ``prompt`` (its text)."""
    body = {"model": model_id, "prompt": prompt, "max_tokens": 1, "temperature": 0, "seed": 0}
    try:
        response = await client.post(f"{url}/v1/completions", json=body, timeout=limit_s)
    except httpx.HTTPError as exc:
        raise EngineFailed(f"canary for {model_id}: engine unreachable: {exc!r}") from None
    if response.status_code != 200:
        raise EngineFailed(f"canary for {model_id}: engine answered {response.status_code}")
    try:
        text = response.json()["choices"][0]["text"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise EngineFailed(f"canary for {model_id}: not a completion") from None
    if not isinstance(text, str):
        raise EngineFailed(f"canary for {model_id}: not a completion")
    return text


async def _post(
    client: httpx.AsyncClient, url: str, params: dict[str, str], limit_s: float, what: str
) -> None:
    try:
        response = await client.post(url, params=params, timeout=limit_s)
    except httpx.HTTPError as exc:
        raise EngineFailed(f"engine {what} failed: {exc!r}") from None
    if response.status_code != 200:
        raise EngineFailed(f"engine {what} failed: status {response.status_code}")
