"""`preftune serve` (the API under uvicorn plus N local runners) and `preftune worker` (one runner alone).

Both run against the database `PREFTUNE_DATABASE_URL` points at (default: SQLite in PREFTUNE_HOME),
so extra `preftune worker` processes, here or on another machine sharing the database and the
home directory, add training capacity.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from typing import Any

import typer
from rich.console import Console

from preftune.cli.common import handle_errors

console = Console(stderr=True)

# How long runners get to stop their jobs and requeue them after the server stops.
RUNNER_STOP_SECONDS = 30.0


def _settings(**overrides: Any) -> Any:
    from preftune.config import Settings

    settings = Settings()
    values = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**(settings.model_dump() | values)) if values else settings


def _bootstrap(settings: Any) -> None:
    from preftune.service.bootstrap import bootstrap

    db, _, new_key = bootstrap(settings)
    db.dispose()
    if new_key is not None:
        console.print(
            f"Created the local admin API key and saved it to [bold]{settings.credentials_path}[/] (mode 0600); "
            "the CLI and SDK on this machine use it when PREFTUNE_API_KEY is not set."
        )


def _start_runners(settings: Any, count: int) -> list[Any]:
    from preftune.runner.worker import run_runner_process

    context = mp.get_context("spawn")
    processes = []
    for index in range(count):
        process = context.Process(
            target=run_runner_process,
            args=(settings.model_dump(), index, os.getpid()),
            name=f"preftune-runner-{index}",
        )
        process.start()
        processes.append(process)
    return processes


def _stop_runners(processes: list[Any]) -> None:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + RUNNER_STOP_SECONDS
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.1))
        if process.is_alive():
            console.print(f"runner {process.name} did not stop in {RUNNER_STOP_SECONDS:.0f}s; killing it")
            process.kill()
            process.join()


@handle_errors
def serve(
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port to listen on (default 8600)."),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="Local runner processes that train jobs (default 1; 0: API only)."
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: debug, info, warning."),
) -> None:
    """Start the server: the REST API (native and OpenAI-compatible) and local runners."""
    import uvicorn

    from preftune.api.app import create_app

    settings = _settings(host=host, port=port, workers=workers)
    _bootstrap(settings)
    runners = _start_runners(settings, settings.workers)
    console.print(
        f"preftune serving on http://{settings.host}:{settings.port} with {len(runners)} runner(s); "
        f"home {settings.home}. Ctrl-C stops."
    )
    try:
        # Keep idle connections open longer than clients do (httpx drops them after 5 s): with equal
        # timeouts a client can reuse a connection just as the server closes it, and the request fails.
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            timeout_keep_alive=65,
        )
    finally:
        _stop_runners(runners)


@handle_errors
def worker(
    runner_id: str | None = typer.Option(None, "--id", help="A name for this runner (default host:pid)."),
) -> None:
    """Run one job runner alone against the server's database (more capacity, or another machine)."""
    from preftune.runner.worker import Runner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    _bootstrap(settings)
    runner = Runner(settings, runner_id=runner_id)
    runner.install_signal_handlers()
    console.print(f"runner {runner.runner_id} waiting for jobs ({settings.resolved_database_url})")
    try:
        runner.run_forever()
    finally:
        runner.db.dispose()


@handle_errors
def runner(
    runner_id: str | None = typer.Option(None, "--id", help="A name for this runner (default host:pid)."),
) -> None:
    """Run one job runner, no API, on this machine: it shares only the database (PREFTUNE_DATABASE_URL)
    and the blob store (PREFTUNE_BLOB_URL) with the servers and the other runners."""
    from preftune.runner.worker import Runner
    from preftune.service.bootstrap import bootstrap_runner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    db, blobs = bootstrap_runner(settings)  # a wrong endpoint or key stops the runner now, named
    try:
        job_runner = Runner(settings, runner_id=runner_id, db=db, blobs=blobs)
        job_runner.install_signal_handlers()
        where = db.engine.url.render_as_string(hide_password=True)
        console.print(
            f"runner {job_runner.runner_id} waiting for jobs (database {where}; blobs {blobs.describe()})"
        )
        job_runner.run_forever()
    finally:
        db.dispose()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("runner")(runner)
    app.command("worker")(worker)
