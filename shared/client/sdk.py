"""Client: conveyor's job API from Python: submit, get, wait, cancel, events, run.

    from pathlib import Path
    from shared.client import Client

    with Client("http://127.0.0.1:8000") as client:
        job = client.run("smollm2-135m", {"prompt": "What is the capital of France?"})
        print(job.output["text"])
        job = client.submit("echo", {"image": Path("photo.jpg")})  # sent as a file part
        for event in client.events(job.id):
            print(event.event, event.data)

Errors the server answers with raise APIError subclasses carrying the error envelope;
run() and wait() raise JobFailedError, JobCanceledError or JobTimeoutError.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from shared.client.errors import (
    APIConnectionError,
    JobCanceledError,
    JobFailedError,
    JobTimeoutError,
    api_error,
)
from shared.client.sse import Event, is_terminal_event, parse_sse
from shared.jobs import JobRecord, JobStatus
from shared.media import MEDIA_FIELDS

log = logging.getLogger(__name__)

MAX_SERVER_WAIT_S = 60  # the server holds a request at most this long (Prefer: wait)
RETRIES = 3  # for idempotent calls, on connection errors and 503
_BROKEN = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    APIConnectionError,
)


# records
class Job(JobRecord):
    """A job record as the API returns it, with its URLs and queue position."""

    urls: dict[str, str] = {}
    queue_position: int | None = None


# the client
class Client:
    """Talk to one conveyor server; every request has a timeout."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = "conveyor-client"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    # jobs
    def submit(
        self,
        model: str,
        input: dict[str, Any] | None = None,
        *,
        task: str | None = None,
        priority: str | None = None,
        timeout_s: float | None = None,
        webhook: str | None = None,
        webhook_events_filter: list[str] | None = None,
        wait: float | None = None,
    ) -> Job:
        """Queue a job. Media fields (image, images, audio, video) may hold bytes, a Path or
        an open binary file: they are sent as file parts; strings are sent as they are
        (base64 or a data: URL). `wait` (≤ 60 s) holds the request until the job ends.

        :raises APIError: when the server refuses the job.
        """
        body: dict[str, Any] = {"model": model, "input": {}}
        files: list[tuple[str, tuple[str, bytes]]] = []
        for key, value in (input or {}).items():
            if key in MEDIA_FIELDS and _is_file(value):
                files.append((key, (key, _read(value))))
            elif key == "images" and isinstance(value, list) and any(map(_is_file, value)):
                files.extend((key, (key, _read(v))) for v in value)
            else:
                body["input"][key] = value
        extras = {
            "task": task,
            "priority": priority,
            "timeout_s": timeout_s,
            "webhook": webhook,
            "webhook_events_filter": webhook_events_filter,
        }
        body.update({k: v for k, v in extras.items() if v is not None})
        headers = {"Prefer": f"wait={min(math.ceil(wait), MAX_SERVER_WAIT_S)}"} if wait else {}
        read_s = self.timeout + (min(wait, MAX_SERVER_WAIT_S) if wait else 0)
        if files:
            parts = [("request", (None, json.dumps(body), "application/json")), *files]
            resp = self._request(
                "POST", "/v1/jobs", files=parts, headers=headers, timeout=read_s, retry=False
            )
        else:
            resp = self._request(
                "POST", "/v1/jobs", json=body, headers=headers, timeout=read_s, retry=False
            )
        return Job.model_validate(resp.json())

    def get(self, job_id: str) -> Job:
        """Return a job's record. :raises NotFoundError: unknown or expired id."""
        return Job.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Return the job once it ended (in any terminal state).

        :raises JobTimeoutError: when it has not ended after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = MAX_SERVER_WAIT_S if deadline is None else deadline - time.monotonic()
            hold = max(1, min(MAX_SERVER_WAIT_S, math.ceil(left)))
            job = Job.model_validate(
                self._request(
                    "GET",
                    f"/v1/jobs/{job_id}",
                    headers={"Prefer": f"wait={hold}"},
                    timeout=self.timeout + hold,
                ).json()
            )
            if job.status.is_terminal():
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(
                    job, f"job {job_id} still {job.status.value} after {timeout:g} s"
                )

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: at once when queued, at its next step when running."""
        return Job.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def run(
        self,
        model: str,
        input: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        **submit_args: Any,
    ) -> Job:
        """Submit a job and wait for it; return it when it succeeded.

        :raises JobFailedError, JobCanceledError, JobTimeoutError: when it did not.
        """
        job = self.submit(model, input, **submit_args)
        return raise_for_outcome(self.wait(job.id, timeout))

    def list(
        self, *, status: str | None = None, model: str | None = None, limit: int = 20
    ) -> list[Job]:
        """Return recent jobs, newest first."""
        params = {k: v for k, v in (("status", status), ("model", model)) if v}
        data = self._request("GET", "/v1/jobs", params={**params, "limit": limit}).json()
        return [Job.model_validate(j) for j in data["data"]]

    def models(self) -> list[dict[str, Any]]:
        """Return the registry's models with live facts (queue depth, workers, loaded)."""
        return self._request("GET", "/v1/models").json()["data"]

    def events(
        self, job_id: str, *, last_event_id: str | None = None, reconnects: int = 5
    ) -> Iterator[Event]:
        """Yield the job's events (replayed from the start, or after last_event_id) until
        its terminal status event; reconnects with Last-Event-ID when the stream breaks.
        """
        tries = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            try:
                resp = self._request(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    stream=True,
                    timeout=(self.timeout, 120),
                )
                with resp:
                    for event in parse_sse(resp.iter_lines(decode_unicode=True)):
                        tries = 0
                        last_event_id = event.id or last_event_id
                        yield event
                        if is_terminal_event(event):
                            return
                # Closed without a terminal event: it ended before last_event_id, or expired.
                if self.get(job_id).status.is_terminal():
                    return
            except _BROKEN as exc:
                if tries >= reconnects:
                    raise APIConnectionError(f"event stream of job {job_id} broke: {exc}") from exc
                log.info("event stream of job %s broke (%s); reconnecting", job_id, exc)
            tries += 1
            if tries > reconnects:
                raise APIConnectionError(f"event stream of job {job_id} keeps closing early")
            time.sleep(min(2.0, 0.2 * 2**tries))

    # plumbing
    def _request(
        self, method: str, path: str, *, retry: bool = True, timeout: Any = None, **kwargs: Any
    ) -> requests.Response:
        url = self.base_url + path
        for attempt in range(1, (RETRIES if retry else 1) + 1):
            try:
                resp = self.session.request(method, url, timeout=timeout or self.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= (RETRIES if retry else 1):
                    raise APIConnectionError(f"{method} {url}: {exc}") from exc
                time.sleep(0.5 * 2**attempt)
                continue
            if resp.status_code == 503 and retry and attempt < RETRIES:
                time.sleep(0.5 * 2**attempt)
                continue
            if resp.status_code >= 400:
                raise api_error(resp)
            return resp
        raise AssertionError("unreachable")


def raise_for_outcome(job: Job) -> Job:
    """Return a succeeded job; raise the matching JobOutcomeError otherwise."""
    if job.status == JobStatus.FAILED:
        err = job.error
        raise JobFailedError(
            job,
            f"job {job.id} failed: {err.type}: {err.message}" if err else f"job {job.id} failed",
        )
    if job.status == JobStatus.CANCELED:
        raise JobCanceledError(job, f"job {job.id} was canceled")
    if not job.status.is_terminal():
        raise JobTimeoutError(job, f"job {job.id} is still {job.status.value}")
    return job


def _is_file(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | os.PathLike) or hasattr(value, "read")


def _read(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, os.PathLike):
        return Path(value).read_bytes()
    data = value.read()
    return data if isinstance(data, bytes) else data.encode()
