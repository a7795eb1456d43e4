"""The `conveyor` command line: run the stack or one component, and manage models."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import click

from shared.cli.client import (
    json_option,
    key_option,
    live_url_option,
    print_live_models,
    register_client_commands,
)
from shared.config import Settings
from shared.logs import setup_logging
from shared.registry import MAX_CONCURRENCY

log = logging.getLogger("conveyor")


def _settings(**overrides) -> Settings:
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValueError as exc:
        raise click.ClickException(f"invalid settings: {exc}") from None


@click.group()
def main() -> None:
    """conveyor: a self-hosted inference backend for open models."""


@main.command()
@click.option("--model", "models", multiple=True, help="Model id to serve (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where payloads, logs and the embedded Redis live [default: ./data].",
)
@click.option("--redis-url", default=None, help="Use this Redis instead of starting one.")
@click.option("--flower", is_flag=True, help="Also start the Flower dashboard.")
@click.option("--flower-port", default=5555, show_default=True, type=int)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=None,
    help="CPU threads per llama.cpp worker [default: the physical cores; "
    "CONVEYOR_CPU_THREADS]. Lower it when several models share the machine.",
)
@click.option(
    "--keep-alive",
    "keep_alive",
    type=click.FloatRange(0, 7 * 86_400),
    default=None,
    help="Seconds an on-demand worker stays idle before it stops; 0: never "
    "[default: 300; CONVEYOR_KEEP_ALIVE_S].",
)
@click.option(
    "--max-workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Most model workers at once, --model ones included; an on-demand start stops the "
    "least recently used idle one first [default: 3; CONVEYOR_MAX_WORKERS].",
)
@click.option(
    "--on-demand/--no-on-demand",
    default=True,
    show_default=True,
    help="Start a worker when a job arrives for a model whose weights are here.",
)
def up(
    models,
    host,
    port,
    data_dir,
    redis_url,
    flower,
    flower_port,
    threads,
    keep_alive,
    max_workers,
    on_demand,
) -> None:
    """Run the whole stack on this machine: Redis, web, workers (and Flower).

    Models named with --model get a worker at once and keep it. Any other registered model
    whose weights are on this machine gets one when a job arrives for it, which stops after
    --keep-alive seconds idle.
    """
    from shared.processes.supervisor import Interrupted, Stack, StackConfig, StartupFailed
    from shared.registry import load_registry

    settings = _settings(data_dir=data_dir)
    setup_logging(settings.log_level, settings.log_format, capture_output=True)
    registry = load_registry(settings.registry)
    models = list(models) or [registry.default_for("chat").id]
    unknown = [m for m in models if m not in registry]
    if unknown:
        raise click.ClickException(f"unknown model(s) {unknown}; known: {[s.id for s in registry]}")
    stack = Stack(
        StackConfig(
            models=models,
            host=host,
            port=port,
            data_dir=settings.data_dir,
            redis_url=redis_url,
            flower=flower,
            flower_port=flower_port,
            cpu_threads=threads,
            on_demand=on_demand,
            keep_alive_s=settings.keep_alive_s if keep_alive is None else keep_alive,
            max_workers=max_workers or settings.max_workers,
        )
    )

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stack.request_stop())
    try:
        stack.start()
        chat = next((m for m in models if "chat" in registry.get(m).tasks), None)
        if settings.log_format == "json":
            _say(
                settings,
                "conveyor is up",
                url=f"http://{host}:{port}",
                models=models,
                redis=stack.redis_url,
                logs=str(stack.logs),
            )
        else:
            _banner(host, port, models, chat or models[0], stack, flower, flower_port)
        stack.supervise()
    except StartupFailed as exc:
        stack.stop()
        _say(settings, f"conveyor up: {exc}", error=True)
        sys.exit(1)
    except Interrupted:
        pass
    _say(settings, "\nconveyor: stopping...", err=True)
    stack.stop()


def _say(
    settings: Settings, text: str, *, error: bool = False, err: bool = False, **fields
) -> None:
    """Tell the operator something: as text (on stderr with err or error), or as a log
    record with CONVEYOR_LOG_FORMAT=json."""
    if settings.log_format == "json":
        log.log(logging.ERROR if error else logging.INFO, "%s", text.strip(), extra=fields)
    else:
        click.echo(text, err=error or err)


def _banner(host, port, models, model, stack, flower, flower_port) -> None:
    base = f"http://{host}:{port}"
    later = ""
    if stack.on_demand is not None:
        others = [m for m in stack.on_demand.startable() if m not in models]
        later = (
            f"on demand: {', '.join(others) or '(no other model has its weights here)'} "
            f"(a worker starts when a job arrives; stops after {stack.cfg.keep_alive_s:g} s "
            f"idle; at most {stack.cfg.max_workers} workers)\n"
        )
    click.echo(
        f"""
conveyor is up at {base}   (models: {", ".join(models)}; redis: {stack.redis_url})
{later}page: {base}/   (open it in a browser: playground and live fleet view)
logs: {stack.logs}
{f"flower: http://{host}:{flower_port}" if flower else ""}
try it:
  curl -s {base}/v1/jobs -H 'Content-Type: application/json' -H 'Prefer: wait=30' \\
    -d '{{"model": "{model}", "input": {{"prompt": "What is the capital of France?"}}}}'

Ctrl-C stops everything.
""",
        err=False,
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=int,
    help="gunicorn processes; each holds up to CONVEYOR_MAX_HELD_REQUESTS streams.",
)
def web(host, port, workers) -> None:
    """Serve the HTTP API with gunicorn (what the web container runs)."""
    import os

    from shared.processes.gunicorn import (
        gunicorn_command,
        open_files_needed,
        raise_open_files_limit,
    )

    settings = _settings()
    raise_open_files_limit(open_files_needed(settings))
    os.execvp(sys.executable, gunicorn_command(settings, f"{host}:{port}", workers=workers))


@main.command()
@click.option("--model", required=True, help="The one model this worker serves.")
@click.option(
    "--concurrency",
    default=None,
    type=click.IntRange(1, MAX_CONCURRENCY),
    help="Jobs run at once against the one loaded copy of the model "
    "(default: the model's max_concurrency in the registry, else its backend's default).",
)
def worker(model, concurrency) -> None:
    """Run a Celery worker that consumes only model.<ID>."""
    from workers.main import WorkerStartError, run_worker

    settings = _settings()
    setup_logging(settings.log_level, settings.log_format, capture_output=True, model=model)
    try:
        run_worker(settings, model, concurrency=concurrency, loglevel=settings.log_level)
    except WorkerStartError as exc:
        _say(settings, f"conveyor worker: {exc}", error=True)
        sys.exit(2)


@main.command("webhook-worker")
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=int,
    help="Deliveries in flight at once (threads; each request has a timeout).",
)
def webhook_worker(concurrency) -> None:
    """Run the light worker that delivers signed webhooks from the `webhooks` queue."""
    from workers.webhooks import run_webhook_worker

    settings = _settings()
    setup_logging(settings.log_level, settings.log_format, capture_output=True)
    run_webhook_worker(settings, concurrency=concurrency, loglevel=settings.log_level)


@main.group(invoke_without_command=True)
@live_url_option
@key_option
@json_option
@click.pass_context
def models(ctx, url, api_key, as_json) -> None:
    """List the registry's models (live from a server with --url/CONVEYOR_URL), or pull one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(models_list, url=url, api_key=api_key, as_json=as_json)


@models.command("list")
@live_url_option
@key_option
@json_option
def models_list(url=None, api_key=None, as_json=False) -> None:
    """Print the registry: id, backend, tasks, source (a server's live facts with --url)."""
    from shared.registry import load_registry

    if url:
        print_live_models(url, api_key, as_json)
        return
    specs = list(load_registry(_settings().registry))
    if as_json:
        click.echo(json.dumps([spec.model_dump(mode="json") for spec in specs]))
        return
    for spec in specs:
        mark = "*" if spec.default else " "
        click.echo(
            f"{mark} {spec.id:<24} {spec.backend:<22} {','.join(spec.tasks):<18} "
            f"{spec.source.describe()}"
        )


@models.command("pull")
@click.argument("model_id")
def models_pull(model_id) -> None:
    """Download a hub model into the local cache (resumable)."""
    from shared.errors import ConveyorError
    from shared.hub import pull
    from shared.registry import load_registry

    spec = load_registry(_settings().registry).get(model_id)
    if spec is None:
        raise click.ClickException(f"unknown model {model_id!r}")
    try:
        path = pull(spec)
    except ConveyorError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"{model_id}: {path}")


register_client_commands(main)

if __name__ == "__main__":
    main()
