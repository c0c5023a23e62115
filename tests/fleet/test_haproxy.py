"""The README's HAProxy example (ops/haproxy/haproxy.cfg) in front of two real cortex replicas.

Without ``haproxy`` on PATH the test skips, unless ``CI`` is set: then it fails (``.ci/run``
installs it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from replica_support import Replica, fleet, free_port, stop, wait_for

CONFIG = Path(__file__).resolve().parents[2] / "ops" / "haproxy" / "haproxy.cfg"


def haproxy() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not installed (CI is set: .ci/run installs it)")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return found


async def served_by(client: httpx.AsyncClient, replica: Replica) -> float:
    text = (await client.get(f"http://127.0.0.1:{replica.metrics_port}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cortex_requests_total{") and 'status="200"' in line
    )


async def test_haproxy_spreads_over_two_replicas_and_survives_one_stopping(
    tmp_path: Path,
) -> None:
    binary = haproxy()
    async with fleet(tmp_path, replicas=2, neurons=1) as f:
        await f.load(0, "m1")
        await f.settled()
        a, b = f.replicas
        port = free_port()
        config = (
            CONFIG.read_text()
            .replace("0.0.0.0:31313", f"127.0.0.1:{port}")
            .replace("cortex-a.example:31313", f"127.0.0.1:{a.port}")
            .replace("cortex-b.example:31313", f"127.0.0.1:{b.port}")
        )
        assert config.count("127.0.0.1:") == 3, "the example's addresses changed"
        (tmp_path / "haproxy.cfg").write_text(config)
        check = await asyncio.to_thread(
            subprocess.run,
            [binary, "-c", "-f", str(tmp_path / "haproxy.cfg")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with (tmp_path / "haproxy.log").open("wb") as log:
            proxy = subprocess.Popen(
                [binary, "-db", "-f", str(tmp_path / "haproxy.cfg")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}

            async def answering() -> bool:
                return (await f.client.post(url, json=body)).status_code == 200

            await wait_for("haproxy answering", answering, 20)
            await asyncio.sleep(2.5)  # both servers through "rise 2" of the health checks
            answers = await asyncio.gather(*(f.client.post(url, json=body) for _ in range(40)))
            assert [r.status_code for r in answers] == [200] * 40
            assert await served_by(f.client, a) > 0 and await served_by(f.client, b) > 0

            stop(a.proc)  # SIGTERM: it drains and exits
            for _ in range(30):
                answers = await asyncio.gather(*(f.client.post(url, json=body) for _ in range(4)))
                assert [r.status_code for r in answers] == [200] * 4
                await asyncio.sleep(0.1)
        finally:
            proxy.terminate()
            proxy.wait(10)
