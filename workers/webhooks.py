"""`conveyor webhook-worker`: deliver queued webhook events, signed, with retries.

Light on purpose (no model, no torch): it runs in the web image. Each message names one
event by its webhook-id; the frozen body lives in Redis under that id, so every retry
sends the same bytes with a fresh timestamp and signature.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

import redis
import requests
from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutdown
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from shared.celery_app import DELIVER_WEBHOOK, WEBHOOK_QUEUE, enqueue_webhook, make_celery
from shared.config import Settings
from shared.jobs import JobRecord, WebhookDelivery, now
from shared.logs import bind_log_fields, log_scope
from shared.metrics.store import MetricsStore
from shared.registry import load_registry
from shared.store.fleet import PUBLISH_INTERVAL_S, Fleet
from shared.store.jobs import JobStore, connect
from shared.store.webhook_snapshots import WebhookSnapshots
from shared.webhooks import (
    Resolver,
    WebhookTargetRefused,
    backoff_s,
    check_target,
    checked_addresses,
    secret_key,
    signed_headers,
)
from workers.memory import memory_stats

log = logging.getLogger(__name__)

KEEP_DELIVERIES = 100  # past this many, the oldest `output` attempts leave the record


class Deliverer:
    """One delivery attempt: sign, POST with a timeout, record it, schedule a retry."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        app: Celery,
        *,
        resolve: Resolver = socket.getaddrinfo,
    ) -> None:
        self.settings = settings
        self.store = store
        self.snapshots = WebhookSnapshots.from_store(store)
        self.app = app
        self.resolve = resolve
        self.key = secret_key(settings.webhook_secret) if settings.webhook_secret else None
        if self.key is None:
            log.warning("CONVEYOR_WEBHOOK_SECRET is not set: webhooks are sent unsigned")

    def deliver(self, msg_id: str, attempt: int) -> str:
        """Make attempt number `attempt` at one event; return what happened."""
        raw = self.snapshots.get(msg_id)
        snap = json.loads(raw) if raw else {"done": True}
        if snap.get("done"):
            return "done"  # delivered or given up already, or expired with its job
        job_id, event, url = snap["job_id"], snap["event"], snap["url"]
        bind_log_fields(job_id=job_id, model=snap.get("model"))
        if event == "output" and _ended(self.store.get(job_id)):
            self._close(msg_id)  # `completed` carries the whole output now
            return "dropped"
        try:
            # Refuse early and clearly; the transport checks again what it connects to.
            check_target(
                url, allow_private=self.settings.webhook_allow_private, resolve=self.resolve
            )
            status, error, retry_after = self._post(url, msg_id, snap["body"].encode())
        except WebhookTargetRefused as exc:
            self._record(job_id, msg_id, event, attempt, "refused", exc.message)
            self._close(msg_id)
            log.warning("job %s: webhook %s refused: %s", job_id, event, exc.message)
            return "refused"
        self._record(job_id, msg_id, event, attempt, status, error)
        if isinstance(status, int) and 200 <= status < 300:
            self._close(msg_id)
            log.info(
                "job %s: webhook %s delivered (attempt %s, %s)", job_id, event, attempt, status
            )
            return "delivered"
        retryable = status == "network_error" or status == 429 or status >= 500
        if retryable and attempt < self.settings.webhook_max_attempts:
            delay = backoff_s(
                attempt,
                base_s=self.settings.webhook_backoff_s,
                max_s=self.settings.webhook_backoff_max_s,
                retry_after=retry_after,
            )
            enqueue_webhook(self.app, msg_id, attempt + 1, countdown=delay)
            log.info(
                "job %s: webhook %s attempt %s got %s; retry in %.2fs",
                job_id,
                event,
                attempt,
                status,
                delay,
            )
            return "retrying"
        self._close(msg_id)
        log.warning(
            "job %s: webhook %s to %s gave up after attempt %s (%s)",
            job_id,
            event,
            url,
            attempt,
            error or status,
        )
        return "gave_up"

    def _post(self, url: str, msg_id: str, body: bytes) -> tuple[int | str, str | None, str | None]:
        """POST once over a fresh session, so every attempt resolves and checks anew.

        :raises WebhookTargetRefused: when the host now resolves to a non-public address.
        """
        headers = signed_headers(self.key, msg_id, body)
        session = webhook_session(
            allow_private=self.settings.webhook_allow_private, resolve=self.resolve
        )
        try:
            # Redirects are not followed: they could lead to a private address.
            with (
                session,
                session.post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self.settings.webhook_timeout_s,
                    stream=True,
                ) as resp,
            ):
                return resp.status_code, None, resp.headers.get("Retry-After")
        except requests.RequestException as exc:
            return "network_error", f"{type(exc).__name__}: {exc}"[:500], None

    def _record(
        self,
        job_id: str,
        msg_id: str,
        event: str,
        attempt: int,
        status: int | str,
        error: str | None,
    ) -> None:
        entry = WebhookDelivery(
            id=msg_id, event=event, status=status, attempt=attempt, at=now(), error=error
        )

        def add(rec: JobRecord) -> bool:
            if rec.webhook is None:
                return False
            rec.webhook.deliveries.append(entry)
            _trim(rec.webhook.deliveries)
            return True

        self.store.update(job_id, add)

    def _close(self, msg_id: str) -> None:
        # Keep a marker, not nothing: a late trigger of the same event then stays a no-op.
        self.snapshots.close(msg_id)


# transport
class _PinnedConnection:
    """Mixin for urllib3 connections: resolve the host once, check every address, connect to
    one of exactly those.

    Only the socket's destination changes: `host` stays the name, so the Host header, TLS
    SNI and certificate verification are the name's, as without the mixin.
    """

    addresses: Callable[[str, int], list]  # set per adapter, see _pool_classes
    host: str
    port: int
    timeout: object
    source_address: tuple[str, int] | None
    socket_options: list | None

    def _new_conn(self) -> socket.socket:
        try:
            infos = self.addresses(self.host, self.port)
        except (OSError, UnicodeError) as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        error: OSError = OSError(f"{self.host!r} resolved to no address")
        for family, socktype, proto, _name, sockaddr in infos:
            try:
                sock = self._connect(family, socktype, proto, sockaddr)
            except OSError as exc:  # try the next address, as urllib3 itself does
                error = exc
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error

    def _connect(self, family: int, socktype: int, proto: int, sockaddr: tuple) -> socket.socket:
        sock = socket.socket(family, socktype, proto)
        try:
            for option in self.socket_options or ():
                sock.setsockopt(*option)
            # urllib3 hands a sentinel (not a number) when no timeout was given.
            if self.timeout is None or isinstance(self.timeout, (int, float)):
                sock.settimeout(self.timeout)
            if self.source_address:
                sock.bind(self.source_address)
            sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock


def _pool_classes(addresses: Callable[[str, int], list]) -> dict[str, type]:
    class PinnedHTTPConnection(_PinnedConnection, HTTPConnection):
        pass

    class PinnedHTTPSConnection(_PinnedConnection, HTTPSConnection):
        pass

    PinnedHTTPConnection.addresses = PinnedHTTPSConnection.addresses = staticmethod(addresses)

    class PinnedHTTPPool(HTTPConnectionPool):
        ConnectionCls = PinnedHTTPConnection

    class PinnedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = PinnedHTTPSConnection

    return {"http": PinnedHTTPPool, "https": PinnedHTTPSPool}


class PinnedAdapter(HTTPAdapter):
    """A requests transport whose every connection goes to an address checked as it is made.

    Checking a name and then letting the HTTP client resolve it again is open to DNS
    rebinding: the second answer can be 127.0.0.1 or 169.254.169.254.
    """

    def __init__(self, *, allow_private: bool, resolve: Resolver = socket.getaddrinfo) -> None:
        # Set before super().__init__, which builds the pool manager.
        self._addresses = functools.partial(
            checked_addresses, allow_private=allow_private, resolve=resolve
        )
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._addresses)

    def send(self, request, **kwargs):
        # Never through a proxy (from the environment or elsewhere): a proxy would resolve
        # the name itself, out of reach of the check.
        kwargs["proxies"] = {}
        return super().send(request, **kwargs)


def webhook_session(
    *, allow_private: bool, resolve: Resolver = socket.getaddrinfo
) -> requests.Session:
    """Return a requests session that sends webhooks only over PinnedAdapter connections."""
    session = requests.Session()
    adapter = PinnedAdapter(allow_private=allow_private, resolve=resolve)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _ended(job: JobRecord | None) -> bool:
    return job is None or job.status.is_terminal()


def _trim(deliveries: list[WebhookDelivery]) -> None:
    while len(deliveries) > KEEP_DELIVERIES:
        oldest = next((i for i, d in enumerate(deliveries) if d.event == "output"), None)
        if oldest is None:
            return
        del deliveries[oldest]


def build_webhook_app(settings: Settings) -> Celery:
    """Return the Celery app of the webhook worker, with its task and heartbeat."""
    app = make_celery(settings, load_registry(settings.registry))
    store = JobStore(connect(settings.redis_url), ttl_s=settings.result_ttl_s)
    deliverer = Deliverer(settings, store, app)
    metrics = MetricsStore.from_store(store)
    fleet = Fleet.from_store(store)
    worker_id = f"webhooks@{socket.gethostname()}:{os.getpid()}"
    stop = threading.Event()

    @app.task(name=DELIVER_WEBHOOK, ignore_result=True)
    def deliver_webhook(msg_id: str, attempt: int = 1) -> str:
        try:
            with log_scope():
                outcome = deliverer.deliver(msg_id, attempt)
            if outcome != "done":  # "done": a duplicate message of a closed event
                try:
                    metrics.count_webhook(outcome)
                except redis.RedisError as exc:  # never redeliver an event to count it
                    log.warning("webhook %s: %s not counted: %s", msg_id, outcome, exc)
            return outcome
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The store is unreachable: hand the message back rather than lose the event.
            log.error("webhook %s: Redis unavailable (%s); requeueing the message", msg_id, exc)
            time.sleep(1.0)
            raise Reject(exc, requeue=True) from exc

    def facts() -> dict:
        return {
            "worker": worker_id,
            "model": None,
            "role": "webhooks",
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "loaded": True,
            "memory": memory_stats(),
            "at": time.time(),
        }

    def heartbeat() -> None:
        while True:
            try:
                fleet.publish(worker_id, facts())
            except Exception:  # Redis blips must not kill the heartbeat
                log.warning("webhook worker heartbeat failed", exc_info=True)
            if stop.wait(PUBLISH_INTERVAL_S):
                return

    def on_ready(**_kwargs) -> None:
        threading.Thread(target=heartbeat, name="conveyor-heartbeat", daemon=True).start()

    def on_shutdown(**_kwargs) -> None:
        stop.set()
        fleet.remove(worker_id)

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
    return app


def run_webhook_worker(settings: Settings, *, concurrency: int = 8, loglevel: str = "INFO") -> None:
    """Consume the webhooks queue with a pool of threads until stopped."""
    app = build_webhook_app(settings)
    app.worker_main(
        [
            "worker",
            "--queues",
            WEBHOOK_QUEUE,
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--hostname",
            "webhooks@%h",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )
