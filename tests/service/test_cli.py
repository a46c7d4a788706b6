"""The service commands: `token create` against a real Valkey, and `dpstream up` as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
from typer.testing import CliRunner

from dp import Release
from service.cli import app
from service.keys import Keys
from tests.service.conftest import free_port, start_valkey, wait_for

REPO = Path(__file__).resolve().parents[2]


def test_token_create_prints_a_working_key_of_the_asked_scope(redis_url: str, anon: httpx.Client) -> None:
    result = CliRunner().invoke(app, ["token", "create", "--scope", "read", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert token.startswith("dps_")
    h = {"Authorization": f"Bearer {token}"}
    assert anon.get("/api/v1/cameras", headers=h).status_code == 200
    assert anon.post("/api/v1/cameras", headers=h, json={"source": "test:ball"}).status_code == 403


def test_tokens_are_listed_without_the_keys_and_revoked_by_id_or_key(redis_url: str, anon: httpx.Client) -> None:
    cli = lambda *a: CliRunner().invoke(app, ["token", *a, "--redis-url", redis_url])  # noqa: E731
    first, second = (cli("create", "--name", n).output.strip() for n in ("dashboard", "night-shift"))
    listed = json.loads(cli("list", "--json").output)
    assert [(r["name"], r["scope"], r["expires_s"]) for r in listed] == [("dashboard", "read", None),
                                                                        ("night-shift", "read", None)]
    table = cli("list").output
    assert "dashboard" in table and first not in table and second not in table
    h1, h2 = ({"Authorization": f"Bearer {t}"} for t in (first, second))
    assert anon.get("/api/v1/cameras", headers=h1).status_code == 200

    result = cli("revoke", listed[0]["id"])
    assert result.exit_code == 0 and "dashboard" in result.output
    wait_for(lambda: anon.get("/api/v1/cameras", headers=h1).status_code == 401, timeout_s=5,
             what="the revoked key refused")  # the API caches a key's scope for 2 s
    assert anon.get("/api/v1/cameras", headers=h2).status_code == 200
    assert cli("revoke", second).exit_code == 0  # by the key itself
    assert json.loads(cli("list", "--json").output) == []
    assert "no such key" in dpstream("token", "revoke", listed[0]["id"], "--redis-url", redis_url).stderr


def test_a_token_with_a_ttl_stops_working(redis_url: str, anon: httpx.Client) -> None:
    token = CliRunner().invoke(app, ["token", "create", "--ttl", "2", "--redis-url", redis_url]).output.strip()
    h = {"Authorization": f"Bearer {token}"}
    assert anon.get("/api/v1/cameras", headers=h).status_code == 200
    wait_for(lambda: anon.get("/api/v1/cameras", headers=h).status_code == 401, timeout_s=6,
             what="the expired key refused")
    assert CliRunner().invoke(app, ["token", "create", "--ttl", "0", "--redis-url", redis_url]).exit_code != 0


def test_each_dpstream_up_replaces_its_own_key(redis_url: str) -> None:
    from service.auth import create_token, hash_token, replace_tokens_named
    from service.store import SyncStore

    store = SyncStore(redis_url)
    try:
        kept = create_token(store, "read", name="dashboard")
        first = replace_tokens_named(store, "admin", "dpstream up")
        second = replace_tokens_named(store, "admin", "dpstream up")
        assert set(store.apikeys()) == {hash_token(kept), hash_token(second)} and first != second
    finally:
        store.close()


def test_token_create_refuses_an_unknown_scope(redis_url: str) -> None:
    result = CliRunner().invoke(app, ["token", "create", "--scope", "root", "--redis-url", redis_url])
    assert result.exit_code != 0


def test_token_create_says_what_to_do_when_redis_is_down() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(app, ["token", "create", "--redis-url", url])
    assert result.exit_code == 1 and "REDIS_URL" in result.output


def dpstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The console script's path (service.cli.main), which turns errors a user can fix into one line."""
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DPSTREAM_ADMIN_TOKEN", "DPSTREAM_PORT")}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=REPO, env=base | (env or {}),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "env", "says"), [
    (["token", "create", "--redis-url", "notaurl"], {}, "must start with one of redis://"),
    (["token", "create"], {"DPSTREAM_PORT": "abc"}, "DPSTREAM_PORT: Input should be a valid integer"),
    (["token", "create"], {"REDIS_URL": "http://admin:s3cretpw@10.0.0.5/0"}, "REDIS_URL: Value error"),
    (["worker", "--redis-url", "localhost:6379"], {}, "must start with one of redis://"),
    (["serve"], {"DPSTREAM_LOG_LEVEL": "verbose"}, "DPSTREAM_LOG_LEVEL must be one of DEBUG, INFO, WARNING"),
])
def test_bad_settings_are_one_line_errors_without_their_values(args, env, says) -> None:
    result = dpstream(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and says in result.stderr
    assert "Traceback" not in result.stderr and "s3cretpw" not in result.stderr


def test_serve_says_where_it_listens_and_when_it_stopped(redis_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DPSTREAM_ADMIN_TOKEN", "DPSTREAM_PORT")}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--redis-url",
                             redis_url], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: port_open(port), timeout_s=60, what="the API listening")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn re-raises the signal once it has shut down
    assert f"running on http://127.0.0.1:{port}" in err and "shutdown complete" in err, err


def test_up_on_a_taken_port_says_so_before_printing_a_token(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = dpstream("up", "--port", str(port), "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                          env={"DPSTREAM_DATA": str(tmp_path)})
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "token" not in result.stdout


def test_connections_of_a_previous_run_in_time_wait_do_not_hold_the_apis_port() -> None:
    from service.up import _check_port_free

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = listener.accept()
            conn.close()  # the server closes first: its side of the connection waits in TIME_WAIT
            client.recv(1)
    _check_port_free("127.0.0.1", port)  # the previous run has stopped: the port is free again


def test_up_without_its_redis_is_a_one_line_error(tmp_path: Path) -> None:
    result = dpstream("up", "--port", str(free_port()), "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                      env={"DPSTREAM_DATA": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.startswith("error: Redis store unavailable") and "Traceback" not in result.stderr


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_up_runs_the_whole_path_and_stops_cleanly(tmp_path: Path, stop: str) -> None:
    api_port, valkey_port, rtsp_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DPSTREAM_ADMIN_TOKEN")}
    env.update(DPSTREAM_DATA=str(tmp_path / "var"), DPSTREAM_EMBEDDED_REDIS_PORT=str(valkey_port),
               DPSTREAM_RTSP_PORT=str(rtsp_port), PYTHONUNBUFFERED="1")
    out_path = tmp_path / "up.log"
    with open(out_path, "wb") as out:
        # its own process group, like a shell job: Ctrl-C below goes to the whole group, as a terminal sends it
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "up", "--port", str(api_port)], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT, process_group=0)
        try:
            token = wait_for(lambda: (m := re.search(r"(dps_[A-Za-z0-9_-]+)", out_path.read_text())) and m.group(1),
                             timeout_s=30, what="the admin token printed")
            text = out_path.read_text()
            assert f"http://127.0.0.1:{api_port}" in text and "/docs" in text and "Bearer" in text
            h = {"Authorization": f"Bearer {token}"}
            base = f"http://127.0.0.1:{api_port}"

            def demo_release() -> bytes | None:
                try:
                    r = httpx.get(f"{base}/api/v1/cameras/demo/releases/latest", headers=h, timeout=2)
                except httpx.HTTPError:
                    return None
                return r.content if r.status_code == 200 else None

            # a fresh process: the deadline allows for a cold numba compile of dp's kernels on a busy machine
            data = wait_for(demo_release, timeout_s=180, interval_s=0.2, what="a release of the demo camera")
            assert Release.from_bytes(data).camera_id == "demo"
            # the status report is published on change and at a fixed refresh: it may trail the first release
            status = wait_for(lambda: (st := httpx.get(f"{base}/api/v1/cameras/demo/status", headers=h).json())
                              ["state"] == "STREAMING" and st, timeout_s=30, what="the demo camera STREAMING")
            assert status["private_rtsp"] == f"rtsp://127.0.0.1:{rtsp_port}/demo/private"
            cam = httpx.get(f"{base}/api/v1/cameras/demo", headers=h).json()
            assert cam["source"].startswith("rtsp://127.0.0.1:")  # the demo goes through real RTSP
            # the privatized re-stream plays as H.264 over RTSP, at the camera's size
            from streams import iter_frames

            frames = list(iter_frames(status["private_rtsp"], max_frames=2, first_frame_timeout_s=20))
            assert [f.array.shape for f in frames] == [(240, 320, 3)] * 2

            if stop == "ctrl-c":
                os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            else:
                proc.send_signal(signal.SIGTERM)  # docker stop, systemd: the process alone
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for port in (api_port, valkey_port, rtsp_port):
        assert not port_open(port), port
    assert list((tmp_path / "var" / "valkey").rglob("*.aof")), "append-only files under DPSTREAM_DATA"
    log = out_path.read_text()
    assert "stopping" in log and "Traceback" not in log, log[-3000:]
    secret = (tmp_path / "var" / "valkey" / "password").read_text().strip()
    assert secret not in log and "embedded Valkey redis://***@127.0.0.1" in log, "the banner hides its password"
    # The embedded Valkey is outside the terminal's process group, so it outlived the worker's last writes:
    # the worker handed the demo camera's lease back (10 s TTL) and saved the camera's ledger on the way out.
    server = start_valkey(tmp_path / "var" / "valkey")
    try:
        r = redis.Redis(port=server.port)
        assert not r.exists(Keys("dpstream").lease("demo")), "the lease was handed back before the store stopped"
        assert r.zcard(Keys("dpstream").workers) == 0, "the worker left the worker set before the store stopped"
    finally:
        server.stop()
