"""Security and input audit of the REST API, over real HTTP against a real Valkey: request body bounds, what a
caller without a token learns, the order of the scope check and body parsing, and metric labels callers
choose."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import uvicorn

from service.api import create_app
from service.api.app import MAX_BODY_BYTES
from service.auth import create_token
from service.settings import Settings
from service.store import SyncStore
from tests.service.conftest import ADMIN_TOKEN, LiveServer, free_port, wait_for

TEST_SOURCE = "test:ball?width=160&height=120&fps=10"
JSON = {"content-type": "application/json"}


def _oversized() -> bytes:
    return json.dumps({"source": TEST_SOURCE, "x": "a" * (MAX_BODY_BYTES + 1)}).encode()


def test_an_oversized_body_is_413_without_a_token_and_with_one(anon: httpx.Client, admin: httpx.Client) -> None:
    # FastAPI reads and parses a JSON body before it checks the token: unbounded, anyone who reaches the port
    # could make the API hold and parse a body of any size (before: 100 MB read and parsed, then a 401)
    big = _oversized()
    r = anon.post("/api/v1/cameras", content=big, headers=JSON)
    assert r.status_code == 413, r.text
    r = admin.post("/api/v1/cameras", content=big, headers=JSON)
    assert r.status_code == 413, r.text
    r = admin.patch("/api/v1/cameras/lobby", content=big, headers=JSON)
    assert r.status_code == 413, r.text
    assert admin.get("/api/v1/cameras").json() == []


def test_a_chunked_body_is_counted_as_it_arrives(admin: httpx.Client) -> None:
    def chunks():  # no Content-Length: the limit cannot be checked up front
        yield b'{"source": "test:ball", "x": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    try:
        r = admin.post("/api/v1/cameras", content=chunks(), headers=JSON)
    except httpx.TransportError:  # the API answered and closed while the client was still sending
        pass
    else:
        assert r.status_code == 413, r.text
    assert admin.get("/api/v1/cameras").json() == []


def test_the_largest_camera_config_fits_the_body_limit(admin: httpx.Client) -> None:
    body = {"id": "big-map", "source": TEST_SOURCE, "layout": "map", "layout_map": [[32] * 256] * 256}
    text = json.dumps(body, indent=2).encode()  # a 65,536-block map (the most a camera holds), pretty-printed
    assert len(text) < MAX_BODY_BYTES
    r = admin.post("/api/v1/cameras", content=text, headers=JSON)
    assert r.status_code == 201, r.text[:300]


def test_a_body_that_is_not_json_gets_the_scope_check_first(anon: httpx.Client, admin: httpx.Client,
                                                           redis_url: str) -> None:
    # the body is parsed before the route's dependencies run: a caller without a token got a 422 that
    # describes the body, where every other request without a token gets a 401
    store = SyncStore(redis_url)
    read = create_token(store, "read")
    store.close()
    bad = b'{"source": '
    deep = b'{"source": "test:ball", "layout_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for method, path in [("POST", "/api/v1/cameras"), ("PATCH", "/api/v1/cameras/lobby"),
                         ("POST", "/api/v1/audits")]:
        for body in (bad, deep):
            r = anon.request(method, path, content=body, headers=JSON)
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            r = anon.request(method, path, content=body,
                             headers={**JSON, "Authorization": "Bearer not-a-token"})
            assert r.status_code == 401, (method, path, r.text)
            r = anon.request(method, path, content=body, headers={**JSON, "Authorization": f"Bearer {read}"})
            assert r.status_code == 403, (method, path, r.text)
        # with the scope, the answer is still about the body
        r = admin.request(method, path, content=bad, headers=JSON)
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid", r.text
        assert admin.request(method, path, content=deep, headers=JSON).status_code == 400


def test_a_store_outage_does_not_tell_callers_where_redis_is(tmp_path) -> None:
    port = free_port()
    settings = Settings(redis_url=f"redis://dpstream:redis-pass-123@127.0.0.1:{port}/0", admin_token=ADMIN_TOKEN,
                        data_dir=tmp_path)
    server = LiveServer(create_app(settings))
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            # a made-up token is looked up in the store: the caller gets its 503 without any token of worth
            for headers in ({"Authorization": "Bearer made-up"}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
                r = c.get("/api/v1/cameras", headers=headers)
                assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
                assert "Redis" in r.json()["detail"]
                for leak in ("127.0.0.1", str(port), "Error", "redis-pass", "Connection refused"):
                    assert leak not in r.text, (leak, r.text)
    finally:
        server.close()


def test_a_made_up_method_adds_no_metric_series(settings: Settings) -> None:
    # the method label comes from the caller before any token is checked; uvicorn's h11 parser (used when
    # httptools is absent) takes any token as a method: each one was a new series, without bound
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           http="h11"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout_s=10, what="uvicorn (h11) to start")
        for n in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"MADEUP{n} /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                assert s.recv(64).startswith(b"HTTP/1.1 405")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "MADEUP" not in text
        assert 'dpstream_api_request_duration_seconds_count{method="other",route="/healthz",status="405"}' in text
    finally:
        server.should_exit = True
        thread.join(timeout=10)
