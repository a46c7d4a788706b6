"""`dpstream up`, `dpstream serve`, `dpstream worker` and `dpstream token create`.

Settings come from the environment (service.settings); the options here override them for one run.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Annotated

import typer

from service.embedded import EMBEDDED_PORT

if TYPE_CHECKING:  # pydantic-settings loads in ~0.1 s: only the service commands pay for it
    from service.settings import Settings

DEFAULT_REDIS_HELP = (f"Redis/Valkey URL (env REDIS_URL); default: the embedded Valkey of `dpstream up` "
                      f"(redis://127.0.0.1:{EMBEDDED_PORT}/0).")

RedisUrl = Annotated[str | None, typer.Option("--redis-url", help=DEFAULT_REDIS_HELP, show_default=False)]
Host = Annotated[str | None, typer.Option("--host", help="Address the API listens on (default 127.0.0.1).")]
Port = Annotated[int | None, typer.Option("--port", help="Port of the API (default 8000).", min=0, max=65535)]


def _settings(**overrides) -> Settings:
    from service.settings import check_redis_url, get_settings

    base = get_settings()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "redis_url" in changes:  # model_copy does not validate
        check_redis_url(changes["redis_url"])
    return base.model_copy(update=changes) if changes else base


def _with_default_redis(settings: Settings) -> Settings:
    if settings.redis_url:
        return settings
    return settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{settings.embedded_redis_port}/0"})


def register(app: typer.Typer) -> None:
    """Mount this module's commands on the root app."""

    @app.command("up")
    def up(
        host: Host = None, port: Port = None,
        redis_url: Annotated[str | None, typer.Option(
            "--redis-url", help="Use this Redis instead of the embedded Valkey (env REDIS_URL).")] = None,
        demo: Annotated[bool, typer.Option(help="Add a demo camera served by the local RTSP server.")] = True,
    ) -> None:
        """Everything on one machine: embedded Valkey, the API, one worker and a demo camera. Ctrl-C stops."""
        from service.logsetup import setup_logging
        from service.up import run_up

        settings = _settings(host=host, port=port, redis_url=redis_url)
        setup_logging(settings.log_level)
        raise typer.Exit(run_up(settings, demo=demo))

    @app.command("serve")
    def serve(host: Host = None, port: Port = None, redis_url: RedisUrl = None) -> None:
        """The REST API only (cameras, releases, budgets, audits, /metrics)."""
        import uvicorn

        from service.api import create_app
        from service.logsetup import setup_logging

        settings = _with_default_redis(_settings(host=host, port=port, redis_url=redis_url))
        setup_logging(settings.log_level)
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                    access_log=False)

    @app.command("worker")
    def worker(
        redis_url: RedisUrl = None,
        worker_id: Annotated[str | None, typer.Option(help="Name in leases (env DPSTREAM_WORKER_ID).")] = None,
        metrics_port: Annotated[int | None, typer.Option(
            help="Serve this worker's /metrics on this port (0: off) (env DPSTREAM_WORKER_METRICS_PORT).",
            min=0, max=65535)] = None,
        rtsp_port: Annotated[int | None, typer.Option(
            help="Re-stream each camera's releases as H.264 at rtsp://HOST:PORT/<camera>/private "
                 "(default: off).", min=1, max=65535)] = None,
    ) -> None:
        """A worker: claims cameras through Redis leases and runs them until SIGTERM/Ctrl-C."""
        from service.logsetup import setup_logging
        from service.worker_process import WorkerProcess

        settings = _with_default_redis(_settings(redis_url=redis_url, worker_id=worker_id,
                                                 worker_metrics_port=metrics_port))
        setup_logging(settings.log_level)
        if settings.worker_metrics_port:
            from prometheus_client import start_http_server

            start_http_server(settings.worker_metrics_port, addr=settings.host)
        rtsp = None
        if rtsp_port:
            from streams.rtsp_server import LocalRtspServer

            rtsp = LocalRtspServer(port=rtsp_port, host=settings.host).start()
        proc = WorkerProcess(settings, rtsp_server=rtsp)
        signal.signal(signal.SIGTERM, lambda *_: proc.request_stop())
        signal.signal(signal.SIGINT, lambda *_: proc.request_stop())
        try:
            proc.run()
        finally:
            if rtsp is not None:
                rtsp.stop()

    token = typer.Typer(help="API keys.", no_args_is_help=True)
    app.add_typer(token, name="token")

    @token.command("create")
    def token_create(
        scope: Annotated[str, typer.Option(help="read (GET routes) or admin (everything).")] = "read",
        name: Annotated[str, typer.Option(help="A note stored with the key (who it is for).")] = "",
        redis_url: RedisUrl = None,
    ) -> None:
        """Create an API key and print it once; only its SHA-256 is stored."""
        from dp.errors import StoreUnavailable
        from service.auth import create_token
        from service.store import SyncStore

        if scope not in ("read", "admin"):
            raise typer.BadParameter("scope must be read or admin", param_hint="--scope")
        settings = _with_default_redis(_settings(redis_url=redis_url))
        store = SyncStore(settings.redis_url, prefix=settings.key_prefix)
        try:
            typer.echo(create_token(store, scope, name=name))  # type: ignore[arg-type]
        except StoreUnavailable as err:
            typer.echo(f"error: {err}. Is `dpstream up` running, or REDIS_URL set?", err=True)
            raise typer.Exit(1) from None
        finally:
            store.close()
