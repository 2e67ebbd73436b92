"""Serving the app with uvicorn (uvloop + httptools when installed)."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from flotilla.config import Settings
from flotilla.server.app import create_app

GRACEFUL_SHUTDOWN_SECONDS = 3


def serve(
    host: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    database_url: str | None = None,
    local_gpus: str | None = None,
) -> None:
    try:
        settings = Settings.from_env(
            host=host,
            port=port,
            data_dir=data_dir,
            database_url=database_url,
            local_gpus=local_gpus,
        )
    except ValueError as e:  # a setting that does not read: say which, no traceback
        raise SystemExit(f"flo server: {e}") from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(
        f"flotilla: data in {settings.data_dir}; admin token in {settings.admin_token_file}",
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        log_level="warning",
        access_log=False,
        # Ctrl-C with a `flo logs -f` open would otherwise wait for that run to end:
        # open streams get this long, then they are closed (the client says so).
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
