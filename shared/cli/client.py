"""Client commands of the `conveyor` CLI: submit, get, wait, cancel (and live `models`).

Exit codes: 0 succeeded (or done), 1 the server refused or could not be reached,
2 bad usage, 3 the job failed, 4 it was canceled, 5 waiting timed out (the job goes on).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from shared.client import (
    APIConnectionError,
    APIError,
    Client,
    Job,
    is_terminal_event,
)
from shared.jobs import JobStatus

EXIT_FAILED, EXIT_CANCELED, EXIT_TIMEOUT = 3, 4, 5
_EXIT = {"succeeded": 0, "failed": EXIT_FAILED, "canceled": EXIT_CANCELED}
DEFAULT_URL = "http://127.0.0.1:8000"
POLL_S = 1.0

url_option = click.option(
    "--url",
    envvar="CONVEYOR_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Server URL [env CONVEYOR_URL].",
)
live_url_option = click.option(
    "--url",
    envvar="CONVEYOR_URL",
    default=None,
    help="Show live facts from this server [env CONVEYOR_URL].",
)
key_option = click.option(
    "--api-key",
    envvar="CONVEYOR_API_KEY",
    default=None,
    help="Bearer API key [env CONVEYOR_API_KEY].",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (the job record) for scripts."
)
timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds to wait before giving up (exit 5); the job goes on.",
)


def _client(url: str, api_key: str | None) -> Client:
    return Client(url, api_key)


def _fail(exc: Exception) -> None:
    """Report an API or connection error and exit 1."""
    if isinstance(exc, APIError):
        click.echo(f"error: {exc.status_code} {exc.type}: {exc.message}", err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def parse_pairs(pairs: tuple[str, ...]) -> dict[str, Any]:
    """Turn KEY=VALUE pairs into input fields; VALUE is JSON when it parses, else text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--input")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


class Follower:
    """Follow a job to its end: tokens to stdout when streaming, a live line on stderr."""

    def __init__(self, client: Client, job: Job, *, stream: bool, as_json: bool) -> None:
        self.client = client
        self.job = job
        self.stream = stream
        self.as_json = as_json
        self.events: queue.Queue = queue.Queue()
        self.tokens = 0
        self.progress: dict[str, Any] | None = None
        self.tty = sys.stderr.isatty() and not as_json
        self.last_line = ""
        self.started = time.monotonic()

    def _read_events(self) -> None:
        try:
            for event in self.client.events(self.job.id):
                self.events.put(event)
        except Exception as exc:  # the main loop falls back to polling
            self.events.put(exc)

    def run(self, timeout: float | None) -> Job:
        """Return the ended job; raise TimeoutError when timeout passes first."""
        threading.Thread(target=self._read_events, daemon=True).start()
        deadline = None if timeout is None else self.started + timeout
        next_poll = 0.0
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._clear()
                raise TimeoutError
            if now >= next_poll:  # also the fallback when the event stream broke
                self.job = self.client.get(self.job.id)
                next_poll = now + POLL_S
                if self.job.status.is_terminal():
                    break
            try:
                item = self.events.get(timeout=0.2)
            except queue.Empty:
                self._draw()
                continue
            if isinstance(item, Exception):
                continue
            if self._on_event(item):
                self.job = self.client.get(self.job.id)
                break
        self._clear()
        if self.stream and self.tokens and not self.as_json:
            click.echo()
        return self.job

    def _on_event(self, event) -> bool:
        if self.as_json and self.stream:
            click.echo(json.dumps({"id": event.id, "event": event.event, "data": event.data}))
        if event.event == "token":
            self.tokens += 1
            if self.stream and not self.as_json:
                self._clear()
                click.echo(event.data.get("text", ""), nl=False)
                sys.stdout.flush()
        elif event.event == "progress":
            self.progress = event.data
        elif event.event == "status":
            self.job.status = JobStatus(event.data.get("status", self.job.status))
            if not self.tty and not self.as_json:
                click.echo(f"[{self.job.id}] {event.data.get('status')}", err=True)
        self._draw()
        return is_terminal_event(event)

    def _draw(self) -> None:
        if not self.tty or (self.stream and self.tokens):
            return  # streamed tokens own the terminal
        line = f"{self.job.status} · {time.monotonic() - self.started:.1f}s"
        if self.job.status == "queued" and self.job.queue_position is not None:
            line += f" · queue position {self.job.queue_position}"
        if self.tokens:
            line += f" · {self.tokens} tokens"
        if self.progress:
            line += f" · {self.progress.get('done')}/{self.progress.get('total')}"
        if line != self.last_line:
            click.echo(f"\r\x1b[K{line}", nl=False, err=True)
            self.last_line = line

    def _clear(self) -> None:
        if self.tty and self.last_line:
            click.echo("\r\x1b[K", nl=False, err=True)
            self.last_line = ""


def _show(job: Job, as_json: bool, *, streamed: bool = False) -> None:
    """Print a job: its record as JSON, or its output (and error) for people."""
    if as_json:
        click.echo(json.dumps(job.model_dump(mode="json")))
        return
    if job.status == "succeeded":
        out = job.output or {}
        text = out.get("text")
        plain = isinstance(text, str) and set(out) <= {"text", "finish_reason", "language"}
        if not (streamed and plain):  # tool calls, labels, vectors: the whole output
            click.echo(text if plain else json.dumps(out, indent=2))
        return
    if job.status == "failed" and job.error:
        click.echo(f"job {job.id} failed: {job.error.type}: {job.error.message}", err=True)
    elif job.status == "canceled":
        click.echo(f"job {job.id} was canceled", err=True)
    else:
        click.echo(f"job {job.id}: {job.status}", err=True)


def _follow_and_exit(
    client: Client, job: Job, *, stream: bool, as_json: bool, timeout: float | None
) -> None:
    follower = Follower(client, job, stream=stream, as_json=as_json)
    try:
        job = follower.run(timeout)
    except TimeoutError:
        click.echo(
            f"timed out after {timeout:g} s; job {job.id} goes on "
            f"(`conveyor wait {job.id}` or `conveyor cancel {job.id}`)",
            err=True,
        )
        sys.exit(EXIT_TIMEOUT)
    _show(job, as_json, streamed=follower.tokens > 0)
    sys.exit(_EXIT.get(job.status, 1))


@click.command()
@click.argument("model")
@click.option("--task", default=None, help="Task, when the model has several.")
@click.option(
    "--input",
    "-i",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An input field (repeatable); VALUE is JSON when it parses, else text.",
)
@click.option("--prompt", "-p", default=None, help="Shorthand for --input prompt=TEXT.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--audio", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--video", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None)
@click.option("--wait", "wait_", is_flag=True, help="Wait for the result, showing progress.")
@click.option("--stream", is_flag=True, help="Print tokens as they are generated.")
@timeout_option
@json_option
@url_option
@key_option
def submit(
    model,
    task,
    pairs,
    prompt,
    image,
    audio,
    video,
    priority,
    wait_,
    stream,
    timeout,
    as_json,
    url,
    api_key,
) -> None:
    """Submit a job for MODEL; print its id (or follow it with --wait / --stream)."""
    inputs = parse_pairs(pairs)
    if prompt is not None:
        inputs["prompt"] = prompt
    inputs.update(
        {k: v for k, v in (("image", image), ("audio", audio), ("video", video)) if v is not None}
    )
    client = _client(url, api_key)
    try:
        job = client.submit(model, inputs, task=task, priority=priority)
        if not (wait_ or stream):
            click.echo(json.dumps(job.model_dump(mode="json")) if as_json else job.id)
            return
        if not as_json:
            click.echo(f"job {job.id} queued", err=True)
        _follow_and_exit(client, job, stream=stream, as_json=as_json, timeout=timeout)
    except (APIError, APIConnectionError) as exc:
        _fail(exc)


@click.command()
@click.argument("job_id")
@json_option
@url_option
@key_option
def get(job_id, as_json, url, api_key) -> None:
    """Show a job: status and output (--json: the whole record)."""
    try:
        job = _client(url, api_key).get(job_id)
    except (APIError, APIConnectionError) as exc:
        _fail(exc)
    if not as_json:
        click.echo(f"{job.id}  {job.model}  {job.task}  {job.status}", err=True)
    _show(job, as_json)


@click.command()
@click.argument("job_id")
@click.option("--stream", is_flag=True, help="Print tokens as they are generated.")
@timeout_option
@json_option
@url_option
@key_option
def wait(job_id, stream, timeout, as_json, url, api_key) -> None:
    """Wait for a job to end, showing progress; exit 0/3/4/5 for succeeded/failed/
    canceled/timed out."""
    client = _client(url, api_key)
    try:
        job = client.get(job_id)
        _follow_and_exit(client, job, stream=stream, as_json=as_json, timeout=timeout)
    except (APIError, APIConnectionError) as exc:
        _fail(exc)


@click.command()
@click.argument("job_id")
@json_option
@url_option
@key_option
def cancel(job_id, as_json, url, api_key) -> None:
    """Cancel a job (a queued one never runs; a running one stops at its next step)."""
    try:
        job = _client(url, api_key).cancel(job_id)
    except (APIError, APIConnectionError) as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(job.model_dump(mode="json")))
    elif job.status == "running":
        click.echo(f"{job.id}: cancel requested; it stops at its next step")
    else:
        click.echo(f"{job.id}: {job.status}")


def print_live_models(url: str, api_key: str | None, as_json: bool) -> None:
    """Print the server's models with live facts (queue depth, workers, loaded)."""
    try:
        models = _client(url, api_key).models()
    except (APIError, APIConnectionError) as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(models))
        return
    click.echo(f"  {'id':<24} {'tasks':<18} {'workers':>7} {'queued':>6}  loaded")
    for m in models:
        mark = "*" if m.get("default") else " "
        click.echo(
            f"{mark} {m['id']:<24} {','.join(m.get('tasks', [])):<18} "
            f"{m.get('workers_online', 0):>7} {m.get('queue_depth', 0):>6}  "
            f"{'yes' if m.get('loaded') else 'no'}"
        )


def register_client_commands(group: click.Group) -> None:
    """Add submit, get, wait and cancel to the `conveyor` group."""
    for command in (submit, get, wait, cancel):
        group.add_command(command)
