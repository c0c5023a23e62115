"""A neuron's token counts are not trusted: a negative one is ignored, never raised on."""

from __future__ import annotations

from cortex_testing import cortex
from fake_neuron import FakeNeuron

from cortex.upstream.sse import Usage

CHAT = "/v1/chat/completions"


async def test_a_negative_token_count_is_not_counted_and_the_answer_still_arrives() -> None:
    async with cortex(FakeNeuron("n1", chunks=2, prompt_tokens=-5)) as c:
        whole = await c.client.post(CHAT, json={"model": "m1"})
        assert whole.status_code == 200 and whole.json()["usage"]["prompt_tokens"] == -5
        stream = await c.client.post(CHAT, json={"model": "m1", "stream": True})
        assert stream.status_code == 200 and stream.text.endswith("data: [DONE]\n\n")
        metrics = await c.metrics()
        assert (
            'cortex_requests_total{endpoint="/v1/chat/completions",key="_anonymous",model="m1",node="n1",status="200"} 2.0'
            in metrics
        )
        assert 'cortex_completion_tokens_total{key="_anonymous",model="m1"} 4.0' in metrics
        assert 'cortex_prompt_tokens_total{key="_anonymous",model="m1"}' not in metrics


def test_only_positive_whole_numbers_count() -> None:
    usage = Usage()
    for junk in (-1, True, 2.5, "7", None, [3]):
        usage.add({"prompt_tokens": junk, "completion_tokens": junk})
    assert (usage.prompt, usage.completion) == (0, 0)
    usage.add({"input_tokens": 4, "output_tokens": 9})
    assert (usage.prompt, usage.completion) == (4, 9)
