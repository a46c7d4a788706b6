"""`dpstream up`, `dpstream serve`, `dpstream worker` and `dpstream token create|list|revoke`.

Settings come from the environment (service.settings); the options here override them for one run.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from typing import TYPE_CHECKING, Annotated

import typer

from service.embedded import EMBEDDED_PORT, embedded_url

if TYPE_CHECKING:  # pydantic-settings loads in ~0.1 s: only the service commands pay for it
    from service.settings import Settings

# EMBEDDED_PORT is Settings.embedded_redis_port's default; reading the settings here would slow every command
DEFAULT_REDIS_HELP = (f"Redis/Valkey URL (env REDIS_URL); default: the embedded Valkey of `dpstream up` "
                      "(redis://127.0.0.1:PORT/0, PORT from env DPSTREAM_EMBEDDED_REDIS_PORT, default "
                      f"{EMBEDDED_PORT}, with the password it keeps under DPSTREAM_DATA).")

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
    return settings.model_copy(update={"redis_url": embedded_url(settings.data_dir, settings.embedded_redis_port)})


def register(app: typer.Typer) -> None:
    """Mount this module's commands on the root app."""

    @app.command("up")
    def up(
        host: Host = None, port: Port = None,
        redis_url: Annotated[str | None, typer.Option(
            "--redis-url", help="Use this Redis instead of the embedded Valkey (env REDIS_URL).")] = None,
        demo: Annotated[bool, typer.Option(help="Add a demo camera served by the local RTSP server (--no-demo: serve "
                                           "none, and disable the demo camera of an earlier run).")] = True,
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
        from service.logsetup import UVICORN_LOGGING, setup_logging

        settings = _with_default_redis(_settings(host=host, port=port, redis_url=redis_url))
        setup_logging(settings.log_level)
        # uvicorn's own lines at the settings' level: where it listens, startup and shutdown (`up` prints a banner)
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    **dict(UVICORN_LOGGING, log_level=settings.log_level.lower()))

    @app.command("worker")
    def worker(
        redis_url: RedisUrl = None,
        worker_id: Annotated[str | None, typer.Option(help="Name in leases (env DPSTREAM_WORKER_ID).")] = None,
        metrics_port: Annotated[int | None, typer.Option(
            help="Serve this worker's /metrics on this port (0: off) (env DPSTREAM_WORKER_METRICS_PORT).",
            min=0, max=65535)] = None,
        rtsp_port: Annotated[int | None, typer.Option(
            help="Re-stream each camera's releases as H.264 at rtsp://HOST:PORT/<camera>/private "
                 "(default: off; credentials: env DPSTREAM_RTSP_USER and DPSTREAM_RTSP_PASSWORD).",
            min=1, max=65535)] = None,
    ) -> None:
        """A worker: claims cameras through Redis leases and runs them until SIGTERM/Ctrl-C."""
        from service.logsetup import setup_logging
        from service.worker_process import WorkerProcess, start_rtsp_server

        settings = _with_default_redis(_settings(redis_url=redis_url, worker_id=worker_id,
                                                 worker_metrics_port=metrics_port))
        setup_logging(settings.log_level)
        if settings.worker_metrics_port:
            from prometheus_client import start_http_server

            start_http_server(settings.worker_metrics_port, addr=settings.host)
        rtsp = start_rtsp_server(settings, rtsp_port) if rtsp_port else None
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

    @contextlib.contextmanager
    def key_store(redis_url: str | None):
        from dp.errors import StoreUnavailable
        from service.store import SyncStore

        settings = _with_default_redis(_settings(redis_url=redis_url))
        store = SyncStore(settings.redis_url, prefix=settings.key_prefix)
        try:
            yield store
        except StoreUnavailable as err:
            typer.echo(f"error: {err}. Is `dpstream up` running, or REDIS_URL set?", err=True)
            raise typer.Exit(1) from None
        finally:
            store.close()

    @token.command("create")
    def token_create(
        scope: Annotated[str, typer.Option(help="read (GET routes) or admin (everything).")] = "read",
        name: Annotated[str, typer.Option(help="A note stored with the key (who it is for).")] = "",
        ttl: Annotated[float | None, typer.Option(
            help="Seconds until the key stops working (default: until revoked).", min=1.0)] = None,
        redis_url: RedisUrl = None,
    ) -> None:
        """Create an API key and print it once; only its SHA-256 is stored."""
        from service.auth import create_token

        if scope not in ("read", "admin"):
            raise typer.BadParameter("scope must be read or admin", param_hint="--scope")
        if ttl is not None and not math.isfinite(ttl):
            raise typer.BadParameter("must be a finite number of seconds", param_hint="--ttl")
        with key_store(redis_url) as store:
            typer.echo(create_token(store, scope, name=name, ttl_s=ttl))  # type: ignore[arg-type]

    @token.command("list")
    def token_list(
        as_json: Annotated[bool, typer.Option("--json", help="One JSON document instead of a table.")] = False,
        redis_url: RedisUrl = None,
    ) -> None:
        """List the API keys: id, scope, name, created, expires. The keys themselves are never stored."""
        from service.auth import list_tokens

        with key_store(redis_url) as store:
            rows = list_tokens(store)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        when = lambda t: "never" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))  # noqa: E731
        typer.echo(f"{'id':<12}  {'scope':<5}  {'created':<23}  {'expires':<23}  name")
        for r in rows:
            typer.echo(f"{r['id']:<12}  {r['scope'] or '?':<5}  {when(r['created_s']):<23}  "
                       f"{when(r['expires_s']):<23}  {r['name']}")

    @token.command("revoke")
    def token_revoke(
        key: Annotated[str, typer.Argument(help="The key (dps_...) or its id from `dpstream token list`.",
                                           show_default=False)],
        redis_url: RedisUrl = None,
    ) -> None:
        """Revoke an API key: the API refuses it within 2 s."""
        from service.auth import revoke_token

        with key_store(redis_url) as store:
            gone = revoke_token(store, key)
        typer.echo(f"revoked {gone['id']} ({gone['scope']}{', ' + gone['name'] if gone['name'] else ''})")
