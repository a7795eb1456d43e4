"""Print a comparison as a table and describe the machine it ran on."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from importlib import metadata

import psutil

from bench.stats import Row
from shared.processes.redis_server import find_redis_server

PACKAGES = ("celery", "kombu", "redis", "flask", "gunicorn", "llama_cpp_python", "requests")


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def table(title: str, rows: list[Row]) -> str:
    """Return rows as a Markdown table: conveyor, baseline, ratio, goal."""
    lines = [
        f"### {title}",
        "",
        "| metric | conveyor | baseline | ratio | goal |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        goal = (
            "" if row.goal is None else (f"{row.goal.describe()} {'met' if row.met else 'MISSED'}")
        )
        lines.append(
            f"| {row.metric} ({row.unit}) | {_num(row.conveyor)} | "
            f"{_num(row.baseline)} | {row.ratio:.3f}x | {goal} |"
        )
    return "\n".join(lines)


def machine() -> dict:
    """Return the CPU, cores, memory, Python and package versions of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    binary = find_redis_server()
    redis_server = None
    if binary:
        try:
            out = subprocess.run(
                [binary, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
            redis_server = out.split()[2].removeprefix("v=")
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "redis_server": redis_server,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }
