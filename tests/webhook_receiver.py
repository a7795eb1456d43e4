"""Test support: a real HTTP webhook receiver on loopback, an SSE reader, a webhook worker.

The signature check here is written from the Standard Webhooks spec, independently of
shared/webhooks.py, so a bug in our signer cannot hide behind the same bug in the test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis

from shared.config import Settings
from shared.processes.child import child_env
from shared.store.fleet import Fleet
from tests.conftest import ROOT, WorkerProcess, wait_for


def verify_standard_webhook(
    secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300
) -> bool:
    """Verify a delivery as a receiver would, from the spec: HMAC-SHA256 over id.ts.body."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    key = base64.b64decode(secret[len("whsec_") :])
    to_sign = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest())
    for candidate in headers.get("webhook-signature", "").split(" "):
        version, _, sig = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(sig.encode(), expected):
            return True
    return False


class Delivery:
    """One request the receiver got (any method: a followed redirect may turn into a GET)."""

    def __init__(
        self, n: int, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> None:
        self.n = n
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.status = 0  # set once `respond` answered
        self.at = time.time()
        self.json = json.loads(body) if body else {}

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def event(self) -> str:
        return self.id.split("_")[2] if self.id.count("_") >= 2 else ""


Reply = int | tuple[int, dict[str, str]]  # a status, or a status and extra headers


class Receiver:
    """A threaded http(s) server on 127.0.0.1 that records every request and answers
    `respond(delivery)`: a status, or a status and headers (Retry-After, Location).

    The port is bound at once (port 0, read back) and kept: with `listening=False` it is
    bound but not listening, so connections are refused until `listen()` — no other
    process can take the port in between.
    """

    def __init__(
        self,
        respond: Callable[[Delivery], Reply] = lambda d: 200,
        *,
        listening: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.respond = respond
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()
        self.scheme = "https" if tls else "http"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                if tls is not None:
                    # Handshake here, in the connection's own thread, not in accept().
                    self.request = tls.wrap_socket(self.request, server_side=True)
                super().setup()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    got = Delivery(
                        len(receiver.deliveries) + 1,
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                    reply = receiver.respond(got)
                    got.status, extra = reply if isinstance(reply, tuple) else (reply, {})
                    receiver.deliveries.append(got)
                self.send_response(got.status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_POST

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.server_bind()
        if tls is not None:
            # A client refusing our certificate is a test's expected outcome, not an error.
            self.server.handle_error = lambda *_args: None
        self.port = self.server.server_address[1]
        self.thread: threading.Thread | None = None
        if listening:
            self.listen()

    def listen(self) -> None:
        """Start accepting connections on the port bound at construction."""
        self.server.server_activate()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return self.url_at("127.0.0.1")

    def url_at(self, host: str) -> str:
        """Return this receiver's URL under another host name (that a resolver maps here)."""
        return f"{self.scheme}://{host}:{self.port}/hook"

    def of(self, job_id: str, event: str | None = None) -> list[Delivery]:
        with self.lock:
            return [
                d
                for d in self.deliveries
                if d.json.get("id") == job_id and (event is None or d.event == event)
            ]

    def all(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def wait(self, job_id: str, event: str, count: int = 1, timeout: float = 30) -> list:
        wait_for(
            lambda: len(self.of(job_id, event)) >= count,
            timeout,
            what=f"{count} {event} webhook(s) for {job_id}",
        )
        return self.of(job_id, event)

    def close(self) -> None:
        if self.thread is not None:
            self.server.shutdown()
        self.server.server_close()


def start_webhook_worker(settings: Settings, log_dir: Path) -> WorkerProcess:
    """Start `conveyor webhook-worker` and wait for its heartbeat."""
    log = log_dir / "webhooks.log"
    env = child_env(settings)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli.main", "webhook-worker", "--concurrency", "4"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    worker = WorkerProcess(proc, "webhooks", settings, log)
    fleet = Fleet(redis.Redis.from_url(settings.redis_url, decode_responses=True))

    def ready() -> bool:
        assert proc.poll() is None, f"webhook worker exited:\n{worker.tail()}"
        return any(
            w.get("role") == "webhooks" and w.get("pid") == proc.pid for w in fleet.workers()
        )

    wait_for(ready, 60, what="the webhook worker")
    return worker


def sse_frames(resp) -> Iterator[dict]:
    """Yield the frames of a streaming SSE response: {id, event, data} or {comment}."""
    frame: dict = {}
    for line in resp.iter_lines(chunk_size=None, decode_unicode=True):
        if line == "":
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            frame[name] = json.loads(value) if name == "data" else value
    if frame:
        yield frame
