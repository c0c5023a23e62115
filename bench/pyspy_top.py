"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) as tables of hot frames.

Usage: .venv/bin/python bench/pyspy_top.py PROFILE.txt [--top 15] [--own cortex/]

Prints, as shares of all samples (py-spy leaves idle samples out by default, so these are
shares of the time the process was busy):

- the frames with the most self time (the function itself was running);
- self time per package (the top-level module of the file of the running frame);
- the frames of ``--own`` (default: cortex's code) with the most total time (anywhere on
  the stack), and the same for the web stack's libraries.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

LIBRARIES = ("starlette", "hypercorn", "aiohttp", "h11", "uvloop", "uvicorn", "fastapi", "litellm")


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        parts = [f for f in frames.split(";") if not f.startswith("process ")]
        stacks.append((parts, int(count)))
    return stacks


def file_of(frame: str) -> str:
    """``func (pkg/mod.py)`` → ``pkg/mod.py``."""
    return frame.rpartition(" (")[2].rstrip(")") if frame.endswith(")") else ""


def package_of(frame: str) -> str:
    where = file_of(frame)
    if "/src/" in where:  # an editable install shows its source path
        where = where.rsplit("/src/", 1)[1]
    head = where.split("/", 1)[0]
    return head.removesuffix(".py") or "?"


def report(stacks: list[tuple[list[str], int]], top: int, own: str) -> str:
    total = sum(count for _, count in stacks) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        self_time[frames[-1]] += count
        packages[package_of(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def rows(
        counter: Counter[str], keep: Callable[[str], bool] | None = None, limit: int = top
    ) -> list[str]:
        chosen = [(f, c) for f, c in counter.most_common() if keep is None or keep(f)]
        return [f"| {100 * c / total:5.1f}% | `{f}` |" for f, c in chosen[:limit]]

    out = [f"{total} samples (busy time only: py-spy leaves idle samples out)", ""]
    out += ["Self time, top frames (`Runner.run` self time is uvloop's event loop in C:"]
    out += ["polling, socket reads and writes):", "", "| self | frame |", "|---|---|"]
    out += rows(self_time)
    out += ["", "Self time by package:", "", "| self | package |", "|---|---|"]
    out += [f"| {100 * c / total:5.1f}% | {p} |" for p, c in packages.most_common(top)]
    out += ["", f"Total time, frames in `{own}`:", "", "| total | frame |", "|---|---|"]
    out += rows(inclusive, lambda f: own in file_of(f))
    out += [
        "",
        f"Self time, frames in {', '.join(LIBRARIES)}:",
        "",
        "| self | frame |",
        "|---|---|",
    ]
    out += rows(self_time, lambda f: package_of(f) in LIBRARIES)
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--own", default="cortex/", help="path fragment of your own code")
    args = parser.parse_args()
    print(report(parse(args.profile), args.top, args.own))
    return 0


if __name__ == "__main__":
    sys.exit(main())
