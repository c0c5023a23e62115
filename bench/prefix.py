"""Prefix-cache hits and latency of a multi-round chat through several routers, side by side.

Usage: .venv/bin/python bench/prefix.py [--users 8,24] [--rounds 4] [--targets ...]

Two neurons, each running one real vLLM CPU engine with the tiny model
(``scripts/make_tiny_model.py --layers 48``), serve model ``tiny``. A multi-round chat
workload (production-stack's multi-round-qa shape: ``U`` users at once, each ``--rounds``
turns, a long system prompt shared by all, each turn sending the whole history) goes
through each target in turn:

- ``oracle``: everything to engine 1 alone, straight (the hit rate one engine reaches);
- ``cortex-prefix`` / ``cortex-load``: cortex with ``[routing] policy = "prefix"`` / ``"load"``;
  ``cortex-prefix:M:R`` with ``guard_margin = M``, ``guard_ratio = R`` (else the defaults);
- ``router-cache`` / ``router-rr``: vllm-router (PyPI, a venv of its own) with ``--policy
  cache_aware`` / ``round_robin``, given the two engines' URLs.

Each run prefixes the system prompt with the run's own tag, so no run finds another run's
blocks in the engines' caches. From the engines' own counters (``/metrics``, before and
after): the fleet prefix hit rate (hit tokens / queried tokens, both engines) and each
engine's share of prompt tokens. From the client: TTFT p50/p95 (first streamed chunk), and
requests/s. For cortex: its CPU seconds per request (``/proc``). Prints a JSON line per run
and a markdown table.

The machine running it is shared: keep runs short (defaults: about a minute per run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from benchlib import cpu_seconds, free_port, pin, quantile
from gateways import VLLM_ROUTER, cache_dir, ensure_venv

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "tiny"
TARGETS = ("oracle", "cortex-prefix", "cortex-load", "router-cache", "router-rr")
WORDS = (
    "cache block token prefix engine router queue latency batch memory model prompt answer "
    "request stream layer weight vector matrix server client socket thread worker shard"
).split()


@dataclass
class Engine:
    name: str
    url: str


def sentence(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


# ------------------------------------------------------------------------ processes


def neuron_config(path: Path, port: int, model_dir: Path, max_len: int, kv_gib: int) -> Path:
    spec = {
        "model_id": MODEL,
        "source": str(model_dir),
        "dtype": "float32",
        "max_model_len": max_len,
        "engine_args": ["--enforce-eager"],
    }
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_gib), "HF_HUB_OFFLINE": "1"}
    path.write_text(
        f'host = "127.0.0.1"\nport = {port}\nlog_level = "warning"\n'
        "[harness.vllm]\n"
        f"python = {json.dumps(sys.executable)}\nstartup_timeout = 600.0\n"
        f"env = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in env.items())} }}\n"
        f"allowed_paths = {json.dumps([str(model_dir.parent)])}\n"
        "[[default_models]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in spec.items()),
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def process(
    argv: list[str], log: Path, cores: set[int] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` in a session of its own, output to ``log``; on ``cores`` only, if given (its
    children inherit the affinity: a neuron's engine runs on its neuron's cores)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pin(cores),  # only sched_setaffinity between fork and exec
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"{url} not answering after {timeout:g}s")


def engine_of(neuron: str, timeout: float = 900) -> str:
    """The URL of the neuron's ``tiny`` engine, once it is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            models = {m["id"]: m for m in httpx.get(f"{neuron}/models", timeout=5).json()}
            info = models.get(MODEL) or {}
            if info.get("status") == "ready":
                return str(info["engine"]["url"])
            if info.get("status") == "failed":
                raise SystemExit(f"the engine failed to start: {info.get('error')}")
        time.sleep(1)
    raise SystemExit(f"{neuron}: {MODEL} not ready after {timeout:g}s")


def cortex_config(
    work: Path, name: str, policy: str, guard: list[str], neurons: list[str]
) -> tuple[Path, str, str]:
    """The config of a cortex target, its API's URL and its metrics' URL."""
    port, metrics = free_port(), free_port()
    config = work / f"{name}.toml"
    models = work / "models.toml"
    models.write_text("")
    config.write_text(
        f'models_config = "{models}"\nlog_level = "warning"\n'
        f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        "[poll]\ninterval = 1.0\n"
        f'[routing]\npolicy = "{policy}"\n'
        + (f"guard_margin = {float(guard[0])}\nguard_ratio = {float(guard[1])}\n" if guard else "")
        + "".join(
            f'[[neurons]]\nname = "n{i + 1}"\nendpoint = "{url}"\n' for i, url in enumerate(neurons)
        )
    )
    return config, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics"


def decisions(metrics_url: str) -> dict[str, float]:
    """cortex's routing decisions by reason (``cortex_routing_decisions_total``)."""
    out: dict[str, float] = {}
    for line in httpx.get(metrics_url, timeout=30).text.splitlines():
        if line.startswith("cortex_routing_decisions_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


# ------------------------------------------------------------------------ measuring


COUNTERS = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
)


def counters(engine: str) -> dict[str, float]:
    text = httpx.get(f"{engine}/metrics", timeout=30).text
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


async def conversation(
    c: httpx.AsyncClient,
    url: str,
    system: str,
    user: int,
    args: argparse.Namespace,
    ttfts: list[float],
    errors: list[str],
) -> None:
    rng = random.Random(user)
    messages = [{"role": "system", "content": system}]
    for _ in range(args.rounds):
        messages.append({"role": "user", "content": sentence(rng, args.question_chars)})
        body = {
            "model": MODEL,
            "messages": messages,
            "max_tokens": args.answer_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
        }
        started = time.monotonic()
        first: float | None = None
        text: list[str] = []
        async with c.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {(await response.aread())[:200]!r}")
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                if first is None:
                    first = time.monotonic() - started
                with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                    delta = json.loads(line[5:])["choices"][0]["delta"]
                    text.append(delta.get("content") or "")
        if first is not None:
            ttfts.append(first)
        messages.append({"role": "assistant", "content": "".join(text)})
        await asyncio.sleep(rng.uniform(0, args.think))


async def workload(url: str, tag: str, users: int, args: argparse.Namespace) -> dict[str, Any]:
    system = f"[{tag}] " + sentence(random.Random(0), args.system_chars)
    ttfts: list[float] = []
    errors: list[str] = []
    timeout = httpx.Timeout(600, connect=10)
    limits = httpx.Limits(max_connections=users + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as c:
        started = time.monotonic()
        await asyncio.gather(
            *(conversation(c, url, system, u, args, ttfts, errors) for u in range(users))
        )
        wall = time.monotonic() - started
    return {"ttfts": ttfts, "errors": errors, "wall": wall}


def run(
    target: str,
    url: str,
    users: int,
    engines: list[Engine],
    args: argparse.Namespace,
    pid: int | None,
) -> dict[str, Any]:
    before = [counters(e.url) for e in engines]
    cpu0 = cpu_seconds(pid) if pid else 0.0
    tag = f"{target} {users} {time.time_ns()}"
    result = asyncio.run(workload(f"{url}/v1/chat/completions", tag, users, args))
    cpu1 = cpu_seconds(pid) if pid else 0.0
    after = [counters(e.url) for e in engines]
    delta = [{k: a[k] - b[k] for k in COUNTERS} for a, b in zip(after, before, strict=True)]
    queries = sum(d["vllm:prefix_cache_queries_total"] for d in delta)
    hits = sum(d["vllm:prefix_cache_hits_total"] for d in delta)
    prompt = sum(d["vllm:prompt_tokens_total"] for d in delta) or 1.0
    requests = users * args.rounds
    ttfts = sorted(result["ttfts"])
    row = {
        "target": target,
        "users": users,
        "requests": requests,
        "errors": len(result["errors"]),
        "hit_rate": round(hits / queries, 3) if queries else None,
        "ttft_p50_ms": round(quantile(ttfts, 0.5) * 1000),
        "ttft_p95_ms": round(quantile(ttfts, 0.95) * 1000),
        "req_per_s": round(requests / result["wall"], 2),
        "token_shares": [round(d["vllm:prompt_tokens_total"] / prompt, 2) for d in delta],
        "cpu_ms_per_request": round((cpu1 - cpu0) / requests * 1000, 3) if pid else None,
    }
    if result["errors"]:
        row["first_error"] = result["errors"][0]
    print(json.dumps(row), flush=True)
    row["ttfts"] = ttfts  # kept for the pooled summary, not printed per run
    return row


def pooled(rows: list[dict[str, Any]], seed: int = 1, draws: int = 2000) -> list[str]:
    """Markdown rows: per concurrency and target, the TTFT of every run of it pooled; and
    against ``cortex-load`` at the same concurrency, the ratio of p95s with a bootstrap 95%
    interval (resampling each pooled sample with replacement ``draws`` times). One run's
    p95 is a handful of samples (3 of 64 at 16 users x 4 rounds); pooling the alternated
    runs and saying how sure the ratio is beats comparing single runs."""
    rng = random.Random(seed)
    groups: dict[tuple[int, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["users"], r["target"]), []).extend(r["ttfts"])

    def p95(sample: list[float]) -> float:
        return quantile(sorted(sample), 0.95)

    lines = [
        "| users | target | runs | samples | pooled TTFT p50 ms | pooled p95 ms "
        "| p95 / load's p95 - 1 | 95% interval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (users, target), sample in sorted(groups.items()):
        runs = sum(1 for r in rows if r["users"] == users and r["target"] == target)
        base = groups.get((users, "cortex-load"))
        ratio, interval = "-", "-"
        if base and target != "cortex-load" and sample:
            ratio = f"{p95(sample) / p95(base) - 1:+.1%}"
            boot = sorted(
                p95(rng.choices(sample, k=len(sample))) / p95(rng.choices(base, k=len(base))) - 1
                for _ in range(draws)
            )
            interval = f"{boot[int(0.025 * draws)]:+.1%} … {boot[int(0.975 * draws)]:+.1%}"
        lines.append(
            f"| {users} | {target} | {runs} | {len(sample)} | "
            f"{round(quantile(sorted(sample), 0.5) * 1000)} | {round(p95(sample) * 1000)} | "
            f"{ratio} | {interval} |"
        )
    return lines


# ------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", default="8,24", help="users at once, one run per value")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--system-chars", type=int, default=3000)
    parser.add_argument("--question-chars", type=int, default=300)
    parser.add_argument("--answer-tokens", type=int, default=24)
    parser.add_argument("--think", type=float, default=0.5, help="max seconds between turns")
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--kv-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each neuron and its engine on half of the CPU cores, apart (sched_setaffinity); "
        "without it vLLM's CPU build binds both engines' compute to the same core",
    )
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--router-bin",
        type=Path,
        default=None,
        help="a vllm-router executable (default: "
        f"{VLLM_ROUTER} installed into a venv under the cache folder on first use)",
    )
    args = parser.parse_args()
    targets = args.targets.split(",")
    unknown = {t.split(":")[0] for t in targets} - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    router = None
    if args.router_bin:
        router = args.router_bin
    elif any(t.startswith("router") for t in targets):
        router = ensure_venv("vllm-router", VLLM_ROUTER, cache_dir()) / "bin" / "vllm-router"
    work = args.work or Path(tempfile.mkdtemp(prefix="prefix-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "models" / f"tiny-{args.layers}"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_tiny_model.py"),
            str(model_dir),
            "--layers",
            str(args.layers),
        ],
        check=True,
        capture_output=True,
    )
    cores = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs two CPU cores")
        half = len(cpus) // 2
        cores = [set(cpus[:half]), set(cpus[half : 2 * half])]
        print(f"# neuron 1 and its engine on cores {cores[0]}, neuron 2 on {cores[1]}")
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        neurons = []
        for i in (1, 2):
            port = free_port()
            config = neuron_config(
                work / f"neuron{i}.toml", port, model_dir, args.max_model_len, args.kv_gib
            )
            log = work / f"neuron{i}.log"
            argv = [str(BIN / "neuron"), "--config", str(config)]
            proc = stack.enter_context(process(argv, log, cores[i - 1] if cores else None))
            wait_http(f"http://127.0.0.1:{port}/health", 60, proc, log)
            neurons.append(f"http://127.0.0.1:{port}")
        began = time.monotonic()
        engines = [Engine(f"engine{i + 1}", engine_of(n)) for i, n in enumerate(neurons)]
        print(f"# engines ready in {time.monotonic() - began:.0f}s: {engines}", flush=True)
        for users in [int(u) for u in args.users.split(",")]:
            for target in targets:
                if target == "oracle":
                    rows.append(run(target, engines[0].url, users, engines, args, None))
                    continue
                if target.startswith("cortex"):
                    policy, *guard = target.split("-")[1].split(":")
                    config, url, metrics_url = cortex_config(work, target, policy, guard, neurons)
                    argv = [str(BIN / "cortex"), "serve", "--config", str(config)]
                else:
                    assert router is not None  # noqa: S101 - installed above
                    port = free_port()
                    url = f"http://127.0.0.1:{port}"
                    argv = [
                        str(router), "--host", "127.0.0.1", "--port", str(port),
                        "--worker-urls", *(e.url for e in engines),
                        "--policy", "cache_aware" if target == "router-cache" else "round_robin",
                        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
                        "--log-level", "warning",
                    ]  # fmt: skip
                log = work / f"{target.replace(':', '_')}-{users}.log"
                with process(argv, log) as proc:
                    wait_http(f"{url}/health", 60, proc, log)
                    if target.startswith("cortex"):
                        time.sleep(2.5)  # a poll of both neurons' load first
                    rows.append(run(target, url, users, engines, args, proc.pid))
                    if target.startswith("cortex"):
                        rows[-1]["decisions"] = decisions(metrics_url)
                        print(f"# {target} {users} users: {rows[-1]['decisions']}", flush=True)
    print(
        f"\n{args.users} users at once, {args.rounds} rounds, system prompt "
        f"{args.system_chars} chars, questions {args.question_chars} chars, answers "
        f"{args.answer_tokens} tokens; 2 engines, {args.layers} layers, KV {args.kv_gib} GiB each\n"
    )
    print(
        "| users | target | fleet hit rate | TTFT p50 ms | TTFT p95 ms | req/s | prompt-token "
        "shares | gateway CPU ms/req | errors |\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['users']} | {r['target']} | {r['hit_rate']} | {r['ttft_p50_ms']} | "
            f"{r['ttft_p95_ms']} | {r['req_per_s']} | {' / '.join(map(str, r['token_shares']))}"
            f" | {r['cpu_ms_per_request'] if r['cpu_ms_per_request'] is not None else '-'}"
            f" | {r['errors']} |"
        )
    if len(rows) > len({(r["users"], r["target"]) for r in rows}):
        print("\nPooled over the runs of each target (alternated):\n")
        print("\n".join(pooled(rows)))


if __name__ == "__main__":
    main()
