"""Audits through the real API: the limit on running audits, what a shutdown (or a killed API) leaves
behind, and the verdict a client reads. Real uvicorn on loopback, real `python -m attacks` children."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from service.api import create_app
from service.audits import attacks_available, mechanism_command
from service.keys import Keys
from service.models import AUDIT_ALPHA, AuditRequest
from service.settings import Settings
from tests.service.conftest import ADMIN_TOKEN, LiveServer, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# the smallest audit the API accepts
MIN_N_EVAL = next(m.ge for m in AuditRequest.model_fields["n_eval"].metadata if hasattr(m, "ge"))
# runs far longer than any test: every test stops it (a shutdown) long before it could finish
LONG_AUDIT = {"eps_pix": 1, "m_pixels": 1, "n_eval": 5_000_000}

needs_attacks = pytest.mark.skipif(not attacks_available(), reason="attacks (python -m attacks) is not installed")


def _ppid_and_cmdline(pid: int) -> tuple[int, list[str]] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return (int(ppid), cmdline) if state != "Z" else None  # a zombie has exited


def attacks_processes(parent: int | None = None) -> set[int]:
    """Live `python -m attacks` processes (children of `parent` only, when given)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        info = _ppid_and_cmdline(int(entry.name))
        if info is None:
            continue
        ppid, cmd = info
        if cmd[1:3] == ["-m", "attacks"] and (parent is None or ppid == parent):
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    return _ppid_and_cmdline(pid) is not None


def kill_leftovers(pids: set[int]) -> None:
    """Tests that fail may leave audit processes behind: end those (by pid) so they do not eat the CPU."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def client(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=HEADERS, timeout=30)


def start_audit(c: httpx.Client, body: dict) -> str:
    r = c.post("/api/v1/audits", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def put_doc(redis_url: str, settings: Settings, doc: dict) -> None:
    import json

    r = redis.Redis.from_url(redis_url)
    r.set(Keys(settings.key_prefix).audit(doc["id"]), json.dumps(doc))
    r.close()


# --- the limit on running audits ---------------------------------------------------------------------

@needs_attacks
def test_concurrent_posts_start_no_more_audits_than_the_limit(settings: Settings) -> None:
    app = create_app(settings)
    limit = app.state.audits.max_running
    server = LiveServer(app)
    children: set[int] = set()
    try:
        async def post_all(n: int) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, headers=HEADERS, timeout=30) as c:
                return await asyncio.gather(*(c.post("/api/v1/audits", json=LONG_AUDIT) for _ in range(n)))

        codes = sorted(r.status_code for r in asyncio.run(post_all(4 * limit + 2)))
        assert codes.count(202) == limit and set(codes[limit:]) == {503}, codes
        children = wait_for(lambda: len(p := attacks_processes(os.getpid())) >= limit and p,
                            timeout_s=30, what=f"{limit} audit processes")
        time.sleep(1.0)  # a request that slipped past the limit would have started its child by now
        children = attacks_processes(os.getpid())
        assert len(children) == limit, children
        with client(server) as c:  # and the sequential path agrees while they run
            r = c.post("/api/v1/audits", json=LONG_AUDIT)
            assert r.status_code == 503 and "busy" in r.json()["detail"] and r.headers["Retry-After"]
    finally:
        children |= attacks_processes(os.getpid())  # before they could be orphaned, should the test fail
        server.close()
        kill_leftovers(children)


# --- shutdown and dead owners -----------------------------------------------------------------------

@needs_attacks
def test_api_shutdown_kills_a_running_audit_and_marks_it_failed(settings: Settings) -> None:
    server = LiveServer(create_app(settings))
    children: set[int] = set()
    try:
        with client(server) as c:
            audit_id = start_audit(c, LONG_AUDIT)
        children = wait_for(lambda: attacks_processes(os.getpid()), timeout_s=30, what="the audit process")
    finally:
        server.close()
    try:
        assert not any(alive(pid) for pid in children), "the audit's process outlived the API"
        doc = read_with_a_new_api(settings, audit_id)
        assert doc["state"] == "failed" and "shut down during the audit" in doc["error"], doc
        assert doc["finished_s"] is not None and doc["verdict"] is None
    finally:
        kill_leftovers(children)


def serve_with_an_audit(redis_url: str, data_dir: Path) -> tuple[subprocess.Popen, str, set[int]]:
    """`dpstream serve` as a real process, running a long audit: (the API, the audit's id, its processes)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DPSTREAM_PORT")}
    env.update(DPSTREAM_ADMIN_TOKEN=ADMIN_TOKEN, DPSTREAM_DATA=str(data_dir))
    api = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--redis-url",
                            redis_url], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout_s=60, interval_s=0.2, what="dpstream serve")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=30) as c:
            audit_id = start_audit(c, LONG_AUDIT)
        children = wait_for(lambda: attacks_processes(api.pid), timeout_s=30, what="the audit process")
    except BaseException:
        kill_leftovers(attacks_processes(api.pid))
        api.kill()
        api.wait(timeout=10)
        raise
    return api, audit_id, children


def read_with_a_new_api(settings: Settings, audit_id: str) -> dict:
    server = LiveServer(create_app(settings))
    try:
        with client(server) as c:
            return c.get(f"/api/v1/audits/{audit_id}").json()
    finally:
        server.close()


@needs_attacks
def test_sigterm_to_dpstream_serve_kills_its_audit_and_marks_it_failed(
        settings: Settings, redis_url: str, tmp_path: Path) -> None:
    api, audit_id, children = serve_with_an_audit(redis_url, tmp_path / "var")
    try:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)  # uvicorn shuts down, then re-raises the signal: the status is -15 either way
        assert not any(alive(pid) for pid in children), "the audit's process outlived the API"
    finally:
        if api.poll() is None:
            api.kill()
            api.wait(timeout=10)
        kill_leftovers(children)
    doc = read_with_a_new_api(settings, audit_id)
    assert doc["state"] == "failed" and "shut down during the audit" in doc["error"], doc


@needs_attacks
def test_an_audit_left_running_by_a_killed_api_reads_failed_after_a_new_api_starts(
        settings: Settings, redis_url: str, tmp_path: Path) -> None:
    api, audit_id, children = serve_with_an_audit(redis_url, tmp_path / "var")
    try:
        api.send_signal(signal.SIGKILL)  # no shutdown runs: the doc stays 'running' in Redis
        api.wait(timeout=10)
        # nothing of the API is left to stop its audit: the audit notices its parent is gone (within 1 s)
        wait_for(lambda: not any(alive(pid) for pid in children), timeout_s=10, what="the orphaned audit stopping")
    finally:
        kill_leftovers(children)
    doc = read_with_a_new_api(settings, audit_id)
    assert doc["state"] == "failed" and "stopped during it" in doc["error"], doc


def _running_doc(audit_id: str, *, owner: dict | None, heartbeat_age_s: float | None) -> dict:
    now = time.time()
    doc = {"id": audit_id, "kind": "mechanism", "state": "running", "request": AuditRequest().model_dump(),
           "started_s": now - 3600, "finished_s": None, "error": None, "passed": None, "report": None}
    if owner is not None:
        doc.update(owner=owner, heartbeat_s=now - heartbeat_age_s, stale_after_s=60.0)
    return doc


@pytest.mark.parametrize(("heartbeat_age_s", "state"), [(600.0, "failed"), (1.0, "running")])
def test_an_audit_owned_by_another_machine_is_running_while_its_heartbeat_is_fresh(
        admin: httpx.Client, settings: Settings, redis_url: str, heartbeat_age_s: float, state: str) -> None:
    owner = {"id": "0123456789abcdef", "machine": "another-host|boot|pid:[1]", "pid": 4242, "pid_start": "1"}
    put_doc(redis_url, settings, _running_doc("aud-00000000beef", owner=owner, heartbeat_age_s=heartbeat_age_s))
    doc = admin.get("/api/v1/audits/aud-00000000beef").json()
    assert doc["state"] == state, doc
    assert "owner" not in doc and "heartbeat_s" not in doc  # bookkeeping of the runner, not of the API


def test_a_running_audit_from_before_owners_were_stored_fails_once_past_the_audit_timeout(
        admin: httpx.Client, settings: Settings, redis_url: str) -> None:
    doc = _running_doc("aud-0000000000aa", owner=None, heartbeat_age_s=None)
    doc["started_s"] = time.time() - 3 * 3600  # far past the runner's 30 min limit on an audit
    put_doc(redis_url, settings, doc)
    assert admin.get("/api/v1/audits/aud-0000000000aa").json()["state"] == "failed"


# --- the verdict ------------------------------------------------------------------------------------

def test_a_pass_whose_broken_control_was_not_flagged_reads_inconclusive(
        admin: httpx.Client, settings: Settings, redis_url: str) -> None:
    # a doc as the runner stored it before the verdict existed (and audits of 1000 were accepted): the report
    # holds both answers
    doc = {"id": "aud-0000000000cc", "kind": "mechanism", "state": "done",
           "request": {**AuditRequest().model_dump(), "n_eval": 1000}, "started_s": time.time() - 30,
           "finished_s": time.time(), "error": None, "passed": True,
           "report": {"command": "mechanism", "passed": True, "control_flagged": False, "eps_lower_bound": 0.4}}
    put_doc(redis_url, settings, doc)
    got = admin.get("/api/v1/audits/aud-0000000000cc").json()
    assert got["verdict"] == "inconclusive" and got["control_flagged"] is False


@pytest.mark.parametrize("n_eval", [1000, MIN_N_EVAL - 1])
def test_an_audit_too_small_to_flag_the_broken_control_is_refused(admin: httpx.Client, n_eval: int) -> None:
    # at n_eval=1000 about one audit in five missed the half-noise control at the API's defaults
    r = admin.post("/api/v1/audits", json={**LONG_AUDIT, "n_eval": n_eval})
    assert r.status_code == 422 and "n_eval" in r.text


@pytest.mark.parametrize("n_eval", [MIN_N_EVAL, 200_000])
def test_a_claim_the_audit_could_not_disprove_is_refused_before_it_starts(admin: httpx.Client, n_eval: int) -> None:
    # ln(q / (1 - q)), q = 0.005^(1 / n_eval): 8.3 at 20,000 samples, 10.5 at 200,000
    q = 0.005 ** (1 / n_eval)
    top = float(np.log(q / (1 - q)))
    r = admin.post("/api/v1/audits", json={"eps_pix": top + 0.01, "m_pixels": 1, "n_eval": n_eval})
    assert r.status_code == 422 and "could not fail" in r.text and "raise n_eval" in r.text
    assert AuditRequest(eps_pix=top - 0.01, m_pixels=1, n_eval=n_eval)  # just under it: auditable


@needs_attacks
def test_the_api_refuses_exactly_what_the_audit_would(tmp_path: Path) -> None:
    from attacks.mechanism import max_detectable_eps

    for n_eval in (MIN_N_EVAL, 200_000, 5_000_000):
        top = max_detectable_eps(n_eval, AUDIT_ALPHA)
        AuditRequest(eps_pix=top * (1 - 1e-9), m_pixels=1, n_eval=n_eval)
        with pytest.raises(ValueError, match="could not fail"):
            AuditRequest(eps_pix=top * (1 + 1e-9), m_pixels=1, n_eval=n_eval)
    # and the audit process runs at the confidence the API assumes (it is not passed on the command line)
    cmd = mechanism_command(AuditRequest(), tmp_path / "out.json")
    assert "--confidence" not in cmd
    from attacks.cli import mechanism

    assert inspect.signature(mechanism).parameters["confidence"].default.default == 1 - AUDIT_ALPHA


@pytest.mark.slow
@needs_attacks
def test_the_smallest_audit_reports_its_control_and_a_verdict_that_needs_it(admin: httpx.Client) -> None:
    audit_id = start_audit(admin, {"eps_pix": 1, "m_pixels": 1, "n_eval": MIN_N_EVAL})
    doc = wait_for(lambda: (a := admin.get(f"/api/v1/audits/{audit_id}").json())["state"] != "running" and a,
                   timeout_s=300, interval_s=1.0, what="the audit to finish")
    assert doc["state"] == "done", doc["error"]
    report = doc["report"]
    assert doc["control_flagged"] is report["control_flagged"]
    expected = ("failed" if not report["passed"] else "passed" if report["control_flagged"] else "inconclusive")
    assert doc["verdict"] == expected
