"""With auth_token set, every endpoint but /health needs the bearer token."""

from __future__ import annotations

from neuron_testing import running, settings_for


async def test_token_is_required_everywhere_but_health() -> None:
    async with running(settings_for(auth_token="s3cret")) as neuron:
        assert (await neuron.client.get("/health")).status_code == 200
        for method, path in [
            ("GET", "/models"),
            ("GET", "/discovery"),
            ("GET", "/metrics"),
            ("GET", "/v1/models"),
            ("POST", "/models/load"),
            ("POST", "/v1/chat/completions"),
        ]:
            response = await neuron.client.request(method, path, json={"model_id": "m"})
            assert response.status_code == 401, path
            assert response.json()["error"]["message"].startswith("missing bearer token")
            assert response.json()["error"]["type"] == "authentication_error"
        bad = await neuron.client.get("/models", headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401
        assert bad.json()["error"]["message"].startswith("invalid bearer token")

        good = {"authorization": "Bearer s3cret"}
        assert (await neuron.client.get("/models", headers=good)).status_code == 200
        assert (
            await neuron.client.post("/models/load", json={"model_id": "m"}, headers=good)
        ).status_code == 200
        chat = await neuron.client.post("/v1/chat/completions", json={"model": "m"}, headers=good)
        assert chat.status_code == 200
