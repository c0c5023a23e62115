"""``cortex status``: the fleet as a readable table (from the gateway's ``/fleet``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def admin(
    endpoint: str, admin_key: str | None, action: str, body: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """POST ``{endpoint}/admin/models/{action}``; RuntimeError with the gateway's message."""
    url = endpoint.rstrip("/") + f"/admin/models/{action}"
    if not url.startswith(("http://", "https://")):
        raise RuntimeError(f"endpoint must be an http(s) URL, got {endpoint!r}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    if admin_key:
        request.add_header("Authorization", f"Bearer {admin_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            data: dict[str, Any] = json.load(response)
            return data
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"HTTP {exc.code}: {_message(exc)}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RuntimeError(f"cannot reach cortex at {url}: {exc}") from None


def fetch_fleet(endpoint: str, admin_key: str | None) -> dict[str, Any]:
    """GET ``{endpoint}/fleet``; RuntimeError with a readable reason on any failure."""
    url = endpoint.rstrip("/") + "/fleet"
    if not url.startswith(("http://", "https://")):
        raise RuntimeError(f"endpoint must be an http(s) URL, got {endpoint!r}")
    request = urllib.request.Request(url)  # noqa: S310 - scheme checked above
    if admin_key:
        request.add_header("Authorization", f"Bearer {admin_key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            data: dict[str, Any] = json.load(response)
            return data
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url}: HTTP {exc.code}: {_message(exc)}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RuntimeError(f"cannot reach cortex at {url}: {exc}") from None


def _message(exc: urllib.error.HTTPError) -> str:
    """The gateway's error envelope's ``message``, else the body as it came."""
    raw = exc.read().decode(errors="replace")
    try:
        message: str = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw
    return message


def render(fleet: dict[str, Any]) -> str:
    neurons = [
        [
            n["name"],
            n["status"],
            str(n["gpus"]),
            f"{n['vram_used_mb']}/{n['vram_total_mb']} MiB" if n["gpus"] else "-",
            str(n["in_flight"]),
            n["endpoint"] if n["up"] else f"{n['endpoint']} ({n.get('error') or 'down'})",
        ]
        for n in fleet["neurons"]
    ]
    models = [
        [
            model_id,
            ", ".join(f"{loc['node']} ({loc['status']})" for loc in locations) or "not loaded",
        ]
        for model_id, locations in sorted(fleet["models"].items())
    ]
    return (
        table(["NEURON", "STATUS", "GPUS", "VRAM USED/TOTAL", "IN FLIGHT", "ENDPOINT"], neurons)
        + "\n"
        + table(["NEURON", "AWAKE", "ASLEEP", "STOPPED"], ladder(fleet))
        + "\n"
        + table(["MODEL", "LOCATIONS"], models)
    )


AWAKE = frozenset({"loading", "ready", "waking", "unloading"})


def ladder(fleet: dict[str, Any]) -> list[list[str]]:
    """Per neuron: the models awake and asleep there, and how many of the fleet's other
    models (catalogued or reported anywhere) are stopped there."""
    known = len(fleet["models"])
    rows = []
    for n in fleet["neurons"]:
        if not n["up"]:
            continue
        awake = sorted(m["id"] for m in n["models"] if m["status"] in AWAKE)
        asleep = sorted(m["id"] for m in n["models"] if m["status"] == "sleeping")
        stopped = max(0, known - len(awake) - len(asleep))
        rows.append([n["name"], ", ".join(awake) or "-", ", ".join(asleep) or "-", str(stopped)])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        rows = [["(none)"] + [""] * (len(header) - 1)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines) + "\n"
