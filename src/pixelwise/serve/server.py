"""Starting the server: uvicorn with one process, or ``--workers`` processes that each load the model."""

from __future__ import annotations

import os
from typing import Any

from rich.text import Text

from pixelwise.progress import console as err
from pixelwise.progress import notice
from pixelwise.serve import require_extra
from pixelwise.serve.settings import ServeSettings, check_model, make_settings

SETTINGS_ENV = "PIXELWISE_SERVE_SETTINGS"  # the settings as JSON, for worker processes (the key stays out of argv)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def app_from_env() -> Any:
    """The application of one worker process (uvicorn's factory)."""
    from pixelwise.serve.app import create_app

    return create_app(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]))


def serve(settings: ServeSettings) -> None:
    """Serve until interrupted. The model is checked before the port is bound, so a bad one is one message."""
    require_extra()
    path = check_model(settings)
    settings = settings.model_copy(update={"model": str(path)})  # an hf:// model: downloaded once, for every worker
    import uvicorn

    from pixelwise.serve.app import create_app

    # Names are printed as plain text: a path or an IPv6 address in [brackets] is not rich markup.
    if settings.host not in LOOPBACK and not settings.api_key:
        notice("warning", f"serving on {settings.host} without an API key: anyone who can reach this machine can "
               "use the model (set PIXELWISE_API_KEY or --api-key)")
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    err.print(Text(f"serving {path} on http://{shown}:{settings.port} with {settings.workers} worker(s): the page "
                   "at /, the API described at /docs"))
    # Keep-alive connections idle for more than 5 s are closed (uvicorn's default), which bounds idle sockets.
    options: dict[str, Any] = {"host": settings.host, "port": settings.port, "log_level": "info",
                               "timeout_keep_alive": 5}
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    uvicorn.run("pixelwise.serve.server:app_from_env", factory=True, workers=settings.workers, **options)


def serve_options(options: dict[str, Any]) -> None:
    """``serve`` for the command line's options (validated into ``ServeSettings``; an error names its option)."""
    serve(make_settings(**options))
