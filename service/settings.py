"""Process settings, read from the environment once.

This is the only module of dpstream that reads `os.environ` (style.md). Everything else receives a
`Settings` object. Secrets are `SecretStr`, so a `repr` or a log line never shows them, and `redis_url`
is shown without its password.

Usage::

    settings = Settings()                        # from the environment
    settings = Settings(redis_url="redis://127.0.0.1:6390/0", lease_ttl_s=3.0)   # in tests
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.embedded import EMBEDDED_PORT
from service.redaction import redact_url

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_ADMIN_TOKEN_CHARS = 16  # guessable below that; `openssl rand -hex 24` (docker-compose.yml) gives 48


def env_name(field: str) -> str:
    """The environment variable that sets a `Settings` field ('port' -> 'DPSTREAM_PORT'), else the field."""
    info = Settings.model_fields.get(field)
    choices = getattr(getattr(info, "validation_alias", None), "choices", ())
    return next((c for c in choices if isinstance(c, str) and c.isupper()), field)


def check_redis_url(url: str) -> str:
    """`url` when redis-py can connect with it; else a ConfigError saying what it needs (credentials redacted)."""
    from dp.errors import ConfigError

    if not url.lower().startswith(REDIS_SCHEMES):
        raise ConfigError(f"redis_url {redact_url(url)!r} must start with one of {', '.join(REDIS_SCHEMES)} "
                          "(for example redis://127.0.0.1:6379/0)")
    return url


class Settings(BaseSettings):
    """Settings of the API and worker processes (environment names in brackets)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("redis_url", "REDIS_URL"),
        description="Redis/Valkey URL [REDIS_URL]. Unset: `dpstream up` starts an embedded Valkey.",
    )
    data_dir: Path = Field(
        default=Path("./var"),
        validation_alias=AliasChoices("data_dir", "DPSTREAM_DATA"),
        description="Directory of the embedded Valkey's append-only files [DPSTREAM_DATA].",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("admin_token", "DPSTREAM_ADMIN_TOKEN"),
        description=f"A token accepted with admin scope, for automation and tests, {MIN_ADMIN_TOKEN_CHARS} "
        "characters or more [DPSTREAM_ADMIN_TOKEN].",
    )
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("host", "DPSTREAM_HOST"))
    port: int = Field(default=8000, ge=0, le=65535, validation_alias=AliasChoices("port", "DPSTREAM_PORT"))
    key_prefix: str = Field(
        default="dpstream",
        pattern=r"^[A-Za-z0-9_.-]{1,32}$",
        validation_alias=AliasChoices("key_prefix", "DPSTREAM_KEY_PREFIX"),
        description="Prefix of every Redis key, so several deployments can share one Redis.",
    )
    lease_ttl_s: float = Field(
        default=10.0, gt=0.2, le=600.0,
        validation_alias=AliasChoices("lease_ttl_s", "DPSTREAM_LEASE_TTL_S"),
        description="Seconds a camera lease lives without renewal; a dead worker's cameras move after this.",
    )
    heartbeat_s: float | None = Field(
        default=None, gt=0.05, le=200.0,
        validation_alias=AliasChoices("heartbeat_s", "DPSTREAM_HEARTBEAT_S"),
        description="Seconds between lease renewals; default a third of lease_ttl_s.",
    )
    worker_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        validation_alias=AliasChoices("worker_id", "DPSTREAM_WORKER_ID"),
        description="Name of this worker in leases and status; default host name plus process id.",
    )
    max_cameras_per_worker: int = Field(
        default=64, ge=1, le=4096,
        validation_alias=AliasChoices("max_cameras_per_worker", "DPSTREAM_MAX_CAMERAS_PER_WORKER"),
    )
    release_buffer_s: float = Field(
        default=120.0, gt=0, le=3600,
        validation_alias=AliasChoices("release_buffer_s", "DPSTREAM_RELEASE_BUFFER_S"),
        description="Seconds of releases a worker keeps in memory while Redis is unreachable.",
    )
    release_buffer_max: int = Field(
        default=10_000, ge=1, le=1_000_000,
        validation_alias=AliasChoices("release_buffer_max", "DPSTREAM_RELEASE_BUFFER_MAX"),
        description="Most releases a worker buffers while Redis is unreachable (oldest dropped first).",
    )
    stall_timeout_s: float = Field(
        default=5.0, gt=0, le=600,
        validation_alias=AliasChoices("stall_timeout_s", "DPSTREAM_STALL_TIMEOUT_S"),
    )
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535,
        validation_alias=AliasChoices("worker_metrics_port", "DPSTREAM_WORKER_METRICS_PORT"),
        description="Port of a standalone worker's /metrics (0: none).",
    )
    tls_ca_file: str | None = Field(
        default=None,
        validation_alias=AliasChoices("tls_ca_file", "DPSTREAM_TLS_CA_FILE"),
        description="PEM file of the CAs that rtsps:// cameras' certificates must chain to (default: system roots).",
    )
    backend: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda)$",
        validation_alias=AliasChoices("backend", "DPSTREAM_BACKEND"),
    )
    embedded_redis_port: int = Field(
        default=EMBEDDED_PORT, ge=1, le=65535,
        validation_alias=AliasChoices("embedded_redis_port", "DPSTREAM_EMBEDDED_REDIS_PORT"),
        description="Port of the embedded Valkey that `dpstream up` starts when REDIS_URL is unset.",
    )
    rtsp_port: int = Field(
        default=8554, ge=0, le=65535,
        validation_alias=AliasChoices("rtsp_port", "DPSTREAM_RTSP_PORT"),
        description="Port of the local RTSP server of `dpstream up` (its demo camera and /private re-streams; a "
        "free port if taken). `dpstream worker` re-streams only with --rtsp-port.",
    )
    rtsp_user: str | None = Field(
        default=None, min_length=1,
        validation_alias=AliasChoices("rtsp_user", "DPSTREAM_RTSP_USER"),
        description="With DPSTREAM_RTSP_PASSWORD: RTSP clients of the /private re-streams (and of `dpstream "
        "up`'s demo camera) must give these credentials. Unset: anyone who reaches the port may watch.",
    )
    rtsp_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("rtsp_password", "DPSTREAM_RTSP_PASSWORD"),
        description="The password of DPSTREAM_RTSP_USER.",
    )
    rtsp_public_host: str | None = Field(
        default=None, min_length=1,
        validation_alias=AliasChoices("rtsp_public_host", "DPSTREAM_RTSP_PUBLIC_HOST"),
        description="Host name the camera status gives in /private re-stream URLs (default: the address the "
        "RTSP server listens on, or this machine's host name when that is 0.0.0.0 or ::).",
    )
    latest_cache_s: float = Field(
        default=0.02, ge=0, le=5,
        validation_alias=AliasChoices("latest_cache_s", "DPSTREAM_LATEST_CACHE_S"),
        description="Seconds the API reuses a camera's latest release bytes (0: read Redis every time).",
    )
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("log_level", "DPSTREAM_LOG_LEVEL"),
                           description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case) [DPSTREAM_LOG_LEVEL].")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from dp.errors import ConfigError

        try:
            return check_redis_url(v)
        except ConfigError as exc:  # pydantic reports a ValueError as a validation error of this field
            raise ValueError(str(exc)) from None

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.upper() not in LOG_LEVELS:
            raise ValueError(f"DPSTREAM_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} (any case)")
        return v.upper()

    @field_validator("admin_token")
    @classmethod
    def _admin_token_long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        # the message names the length only, never the value
        if v is not None and len(v.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"DPSTREAM_ADMIN_TOKEN must have at least {MIN_ADMIN_TOKEN_CHARS} characters; generate "
                             "one with `openssl rand -hex 24` or `python -c \"import secrets; "
                             "print(secrets.token_urlsafe(32))\"`")
        return v

    @model_validator(mode="after")
    def _rtsp_credentials_in_pairs(self) -> Settings:
        if (self.rtsp_user is None) != (self.rtsp_password is None):
            raise ValueError("set DPSTREAM_RTSP_USER and DPSTREAM_RTSP_PASSWORD together (or neither)")
        if self.rtsp_password is not None and len(self.rtsp_password.get_secret_value()) < 8:
            raise ValueError("DPSTREAM_RTSP_PASSWORD must have at least 8 characters")
        return self

    @property
    def rtsp_auth(self) -> tuple[str, str] | None:
        """(user, password) for the RTSP server's basic authentication, or None."""
        if self.rtsp_user is None or self.rtsp_password is None:
            return None
        return self.rtsp_user, self.rtsp_password.get_secret_value()

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_s if self.heartbeat_s is not None else self.lease_ttl_s / 3.0

    def __repr__(self) -> str:
        url = redact_url(self.redis_url) if self.redis_url else None
        return (
            f"Settings(redis_url={url!r}, data_dir={str(self.data_dir)!r}, host={self.host!r}, "
            f"port={self.port}, lease_ttl_s={self.lease_ttl_s}, worker_id={self.worker_id!r})"
        )

    __str__ = __repr__


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()
