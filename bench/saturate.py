"""CPU per request with the gateway's one core saturated: wrk against each target, in turn.

``sidebyside.py`` drives its load from Python (aiohttp) on CPU 0, next to its aiohttp
upstream. On a slow machine that side runs out of CPU first, so a gateway on CPU 1 is not kept
busy, and its CPU per request then includes the cost of waking up for little work. Here the
load comes from wrk (C, one thread) and the upstream answers from bytes built in advance
(httptools), so the gateway's core is full and CPU per request is what a busy gateway spends.

Targets: ``direct`` (wrk at the upstream); ``relay`` (the minimal relay of ``burst_floor.py``:
what relaying costs in Python with nothing else done); ``cortex`` (this checkout);
``cortex@REV`` (cortex as of git revision REV, from a worktree under the cache folder, run by
the same ``.venv`` with that revision's ``cortex/src`` first on ``PYTHONPATH``; or REV is a
folder holding a copy, e.g. from ``git archive REV cortex/src | tar -x -C DIR``);
``vllm-router``. Comparing two revisions of cortex in one run is the point of ``cortex@REV``:
rounds alternate, so a slow minute on a shared machine lands on both.

    .venv/bin/python bench/saturate.py                                # direct, cortex, vllm-router
    .venv/bin/python bench/saturate.py --targets cortex@HEAD~1,cortex --rounds 6

Needs wrk (``apt-get install wrk`` / ``dnf install wrk``) and two CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import (
    API_KEY,
    REPO,
    cell,
    chat_body,
    cpu_model,
    cpu_seconds,
    free_port,
    json_bodies,
    new_loop,
    pin,
    results_file,
    revision,
)
from gateways import VLLM_ROUTER, Running, cache_dir, ensure_venv, start_cortex, start_vllm_router

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def upstream_answers() -> dict[tuple[bytes, bytes], bytes]:
    """What the fast upstream sends, whole, for each ``(method, path)``: benchlib's bodies."""
    answers = {}
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    for (method, path), value in json_bodies(int(time.time())).items():
        body = json.dumps(value).encode()
        answers[method.encode(), path.encode()] = head % len(body) + body
    return answers


def run_fast_upstream(port: int) -> None:
    """An upstream that costs next to nothing: httptools, whole answers built in advance.

    ``benchlib``'s aiohttp upstream needs more CPU per request than the gateways do, and it
    shares CPU 0 with the load; this one lets the gateway's core be the limit.
    """
    import asyncio

    import httptools

    answers = upstream_answers()
    missing = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"

    class Fast(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_message_complete(self) -> None:
            path = self.url.split(b"?", 1)[0]
            self.url = b""
            self.transport.write(answers.get((self.parser.get_method(), path), missing))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Fast, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    new_loop().run_until_complete(serve())


def wrk_script(path: Path) -> Path:
    """The request every wrk connection sends, the same body as the other benchmarks."""
    body = chat_body().decode()
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n'
    )
    return path


def worktree(rev: str, root: Path) -> Path:
    """A checkout of ``rev`` (a commit, tag or branch) under ``root/worktrees``, made once."""
    git = shutil.which("git")
    if git is None:
        raise SystemExit("cortex@REV needs git")
    sha = subprocess.run(
        [git, "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    where = root / "worktrees" / sha[:12]
    if not (where / "cortex" / "src" / "cortex").is_dir():
        where.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [git, "worktree", "add", "--force", "--detach", str(where), sha],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
    return where


def start(name: str, upstream: str, work: Path, root: Path) -> Running:
    if name == "direct":
        return Running("direct", upstream)
    if name == "cortex":
        return start_cortex(upstream, work, 1)
    if name.startswith("cortex@"):
        rev = name.split("@", 1)[1]
        tree = Path(rev) if Path(rev, "cortex", "src").is_dir() else worktree(rev, root)
        env = {"PYTHONPATH": str(tree / "cortex" / "src")}
        return start_cortex(upstream, work, 1, env=env)
    if name == "vllm-router":
        return start_vllm_router(upstream, work, 1, root)
    if name == "relay":  # burst_floor.py's minimal relay: the floor for a relay in Python
        port = free_port()
        floor = REPO / "bench" / "burst_floor.py"
        argv = [sys.executable, str(floor), "serve", "relay", str(port), upstream.rsplit(":", 1)[1]]
        # (it reports each connection wrk drops mid-answer at the end of a run: not ours)
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pin(1),
            start_new_session=True,
        )
        return Running("relay", f"http://127.0.0.1:{port}", proc)
    raise SystemExit(f"unknown target {name!r}: direct, relay, cortex, cortex@REV, vllm-router")


def ready(url: str, limit: float) -> None:
    """Until ``url`` answers a chat request with a 200 (a gateway may need to find its worker)."""
    deadline = time.monotonic() + limit
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
        url,
        data=chat_body(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer 200 within {limit:g}s")
        time.sleep(0.2)


def wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, Any]:
    """One wrk run on CPU 0: requests, failures and latency quantiles (ms)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script)]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, preexec_fn=pin(0)
    ).stdout
    found = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if found is None:
        raise SystemExit(f"wrk printed no request count:\n{out}")
    latency = {
        q: float(v) * UNITS[u]
        for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": int(found.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
        "latency_p50_ms": latency.get("50", float("nan")),
        "latency_p99_ms": latency.get("99", float("nan")),
    }


def measure(
    name: str, upstream: str, upstream_pid: int, args: argparse.Namespace, root: Path
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="saturate-") as tmp:
        work = Path(tmp)
        (work / "models.toml").write_text("")
        script = wrk_script(work / "chat.lua")
        target = start(name, upstream, work, root)
        try:
            url = target.chat
            ready(url, 60)
            wrk(url, script, args.warmup, args.connections)
            pid = target.proc.pid if target.proc is not None else upstream_pid
            before = cpu_seconds(pid)
            started = time.monotonic()
            result = wrk(url, script, args.seconds, args.connections)
            wall = time.monotonic() - started
            cpu = cpu_seconds(pid) - before
            if not target.alive():
                raise SystemExit(f"{name} died:\n{target.log_tail()}")
        finally:
            target.stop()
    done = max(result["requests"], 1)
    return {
        "target": name,
        **result,
        "rps": result["requests"] / wall,
        "cpu_us_per_request": cpu / done * 1e6,
        "core_busy_pct": cpu / wall * 100,
    }


def table(rows: list[dict[str, Any]], names: list[str]) -> str:
    def of(name: str, key: str, fmt: str) -> str:
        return cell([r[key] for r in rows if r["target"] == name], fmt)

    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key, fmt in (
        ("requests/s", "rps", "{:,.0f}"),
        ("CPU per request, µs", "cpu_us_per_request", "{:.0f}"),
        ("its core busy, %", "core_busy_pct", "{:.0f}"),
        ("latency p50, ms", "latency_p50_ms", "{:.2f}"),
        ("latency p99, ms", "latency_p99_ms", "{:.2f}"),
        ("non-2xx answers + socket errors", "failures", "{:.0f}"),
    ):
        lines.append(f"| {label} | " + " | ".join(of(n, key, fmt) for n in names) + " |")
    return "\n".join(lines)


def main() -> int:
    if sys.argv[1:2] == ["upstream"]:  # the fast upstream, in a process of its own
        run_fast_upstream(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="direct,cortex,vllm-router")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", help="also append the JSON lines to this file")
    parser.add_argument("--cache-dir", type=Path, default=cache_dir())
    args = parser.parse_args()
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or dnf install wrk)")
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two CPUs: the gateway on CPU 1, wrk and the upstream on CPU 0")
    if "vllm-router" in names:
        ensure_venv("vllm-router", VLLM_ROUTER, args.cache_dir)
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, __file__, "upstream", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pin(0),
    )
    out = results_file(args.json)
    rows: list[dict[str, Any]] = []
    begun = time.monotonic()
    try:
        ready(f"http://127.0.0.1:{port}/v1/chat/completions", 30)
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                result = measure(
                    name, f"http://127.0.0.1:{port}", upstream.pid, args, args.cache_dir
                )
                row = {"round": round_ + 1, **result}
                row["failures"] = row["non_2xx"] + row["socket_errors"]
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                if out is not None:
                    out.write(line + "\n")
    finally:
        upstream.terminate()
        upstream.wait()
        if out is not None:
            out.close()
    print()
    print(f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {sys.version.split()[0]}")
    print(
        f"- cortex: {revision('cortex')}; wrk -t1 -c{args.connections}, {args.seconds:g} s per run"
    )
    print(f"- {args.rounds} rounds, rotated; took {(time.monotonic() - begun) / 60:.1f} min")
    print()
    print(table(rows, names))
    print()
    print("direct: CPU rows are the fast upstream's own, which shares CPU 0 with wrk.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
