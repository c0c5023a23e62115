"""A real `cortex serve` process: two listeners, `cortex status`, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cortex_testing import free_port, served
from fake_neuron import FakeNeuron


async def test_serve_status_and_sigterm(tmp_path: Path) -> None:
    fake = FakeNeuron("n1", chunks=40, chunk_delay=0.05)  # a 2 s stream
    neuron_port, api, metrics = free_port(), free_port(), free_port()
    config = tmp_path / "cortex.toml"
    config.write_text(
        f'models_config = "{tmp_path / "models.toml"}"\n'
        f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f"[poll]\ninterval = 0.5\n"
        f'[[neurons]]\nname = "n1"\nendpoint = "http://127.0.0.1:{neuron_port}"\n'
    )
    cortex = str(Path(sys.executable).with_name("cortex"))
    log = tmp_path / "cortex.log"
    async with served((fake.app(), neuron_port)):
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [cortex, "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api}", timeout=10) as c:
                for _ in range(100):
                    with contextlib.suppress(httpx.TransportError):
                        if (await c.get("/health")).json()["status"] == "ok":
                            break
                    await asyncio.sleep(0.1)
                status = await asyncio.to_thread(
                    subprocess.run,
                    [cortex, "status", "--endpoint", f"http://127.0.0.1:{api}"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                assert status.returncode == 0, status.stderr
                assert "n1" in status.stdout and "m1" in status.stdout

                body = {"model": "m1", "stream": True}
                async with c.stream("POST", "/v1/chat/completions", json=body) as stream:
                    lines = stream.aiter_lines()
                    await anext(lines)
                    proc.send_signal(signal.SIGTERM)
                    signalled = time.monotonic()
                    async with httpx.AsyncClient() as plain:  # still scraped while draining
                        scraped = (await plain.get(f"http://127.0.0.1:{metrics}/metrics")).text
                    assert 'cortex_inflight_requests{model="m1",node="n1"} 1.0' in scraped
                    rest = [line async for line in lines if line]
                assert rest[-1] == "data: [DONE]"  # the in-flight stream finished
                assert len(rest) == 40
            assert await asyncio.to_thread(proc.wait, 20) == 0
            assert time.monotonic() - signalled < 10
            assert "SIGTERM received" in log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
