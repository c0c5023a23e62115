"""A neuron with default models activates past a failure, real vLLM.

Defaults: ``broken`` (its engine exits while starting), then ``tiny``. The first default
failing must not stop the next one. The neuron is the session's ``defaults_neuron``: in file
order the prefix test uses it next, as its second engine of ``tiny``, and
``test_e2e_shutdown.py`` stops it (SIGTERM) last.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from e2e_support import (
    ENGINE_START_TIMEOUT,
    SharedNeuron,
    chat_body,
    client,
    list_models,
    record,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


async def test_activation_loads_defaults_past_a_failure(defaults_neuron: SharedNeuron) -> None:
    neuron = defaults_neuron.fresh()
    async with client(neuron) as c:
        # Right after start: the first default (broken) takes seconds to fail.
        health = (await c.get("/health")).json()
        assert health["status"] == "activating"
        models = await list_models(c, neuron)
        assert models["tiny"]["status"] == "loading"
        assert models["broken"]["status"] == "loading"
        early = await c.post("/v1/chat/completions", json=chat_body("tiny"))
        assert early.status_code == 503, early.text
        assert early.json()["error"]["code"] == "model_loading"
        assert "Retry-After" in early.headers

        deadline = time.monotonic() + ENGINE_START_TIMEOUT * 2
        while (await c.get("/health")).json()["status"] != "ready":
            neuron.check_running()
            assert time.monotonic() < deadline, f"not ready: {await list_models(c, neuron)}"
            await asyncio.sleep(0.5)
        record("activation: broken + tiny", time.monotonic() - neuron.started)

        models = await list_models(c, neuron)
        assert models["broken"]["status"] == "failed"
        assert "nonexistent" in models["broken"]["error"]
        assert models["tiny"]["status"] == "ready", models["tiny"]
        served = await c.post("/v1/chat/completions", json=chat_body("tiny"))
        assert served.status_code == 200, served.text

    log = neuron.log()
    assert re.search(r"WARNING neuron\.lifecycle: default model broken failed to load", log)
    ready = re.search(r"INFO neuron\.lifecycle: default model tiny ready in ([\d.]+)s", log)
    assert ready, "no 'default model tiny ready in' line in the log"
    record("engine start: tiny (default model)", float(ready.group(1)))
