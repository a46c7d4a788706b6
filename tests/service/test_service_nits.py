"""Small promises of the service's edges: settings refused at startup, help texts that tell the truth, error
messages that say what works, and an OpenAPI schema that documents what the API really answers."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from service.api import create_app
from service.audits import attacks_available
from service.cli import app as cli_app
from service.settings import MIN_ADMIN_TOKEN_CHARS, Settings
from tests.service.conftest import LiveServer, free_port

REPO = Path(__file__).resolve().parents[2]
SOURCE = "test:ball?width=64&height=64&fps=10"


def dpstream(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DPSTREAM_") and k != "REDIS_URL"}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def flat(text: str) -> str:
    """Help text with rich's box drawing and line wrapping taken out."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# --- 1. the admin token ----------------------------------------------------------------------------------

def test_an_admin_token_shorter_than_the_minimum_is_refused_at_startup_saying_how_to_make_one() -> None:
    with pytest.raises(ValidationError, match="token_urlsafe"):
        Settings(admin_token="x" * (MIN_ADMIN_TOKEN_CHARS - 1))
    assert Settings(admin_token="x" * MIN_ADMIN_TOKEN_CHARS).admin_token is not None

    short = "hunter2-secret"  # 14 characters
    run = dpstream("serve", "--port", str(free_port()), env={"DPSTREAM_ADMIN_TOKEN": short})
    assert run.returncode == 2, run.stderr
    assert f"DPSTREAM_ADMIN_TOKEN must have at least {MIN_ADMIN_TOKEN_CHARS} characters" in run.stderr
    assert "openssl rand -hex 24" in run.stderr and short not in run.stderr


# --- 2. --redis-url's help ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["worker"], ["serve"], ["token", "create"]])
def test_redis_url_help_gives_the_settings_default_port_and_the_variable_that_changes_it(command) -> None:
    result = CliRunner().invoke(cli_app, [*command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    port = Settings.model_fields["embedded_redis_port"].default
    assert f"PORT from env DPSTREAM_EMBEDDED_REDIS_PORT, default {port}" in flat(result.output)


# --- 3. dpstream audit's usage -------------------------------------------------------------------------------

@pytest.mark.skipif(not attacks_available(), reason="attacks (python -m attacks) is not installed")
@pytest.mark.parametrize(("args", "usage"), [(["--help"], "Usage: dpstream audit [OPTIONS] COMMAND"),
                                             (["mechanism", "--help"], "Usage: dpstream audit mechanism [OPTIONS]")])
def test_dpstream_audit_help_calls_the_command_dpstream_audit(args: list[str], usage: str) -> None:
    run = dpstream("audit", *args, env={"COLUMNS": "120"})
    assert run.returncode == 0, run.stderr
    assert usage in flat(run.stdout) and "python -m attacks" not in run.stdout


# --- 4. the CA file of rtsps:// cameras --------------------------------------------------------------------

def test_no_cli_option_reads_an_environment_variable_behind_the_settings_back() -> None:
    offenders = []
    for path in sorted((REPO / "service").glob("cli*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg in ("envvar", "auto_envvar_prefix"):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


def test_pixelize_takes_the_ca_file_of_rtsps_cameras_from_dpstream_tls_ca_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    run = dpstream("pixelize", f"rtsps://127.0.0.1:{free_port()}/cam", str(tmp_path / "out.mp4"), "--frames", "1",
                   env={"DPSTREAM_TLS_CA_FILE": str(missing)}, cwd=tmp_path)
    assert run.returncode != 0
    assert f"tls_ca_file {str(missing)!r} does not exist" in run.stderr, run.stderr


# --- 5. audits where the attacks package is absent -----------------------------------------------------------

def test_audits_answer_503_with_what_works_where_attacks_is_not_installed(
        admin: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "attacks", None)  # as in the container image: no attacks package
    assert not attacks_available()
    r = admin.post("/api/v1/audits", json={"eps_pix": 1, "m_pixels": 1})
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert "scripts/setup" in detail and "dpstream audit mechanism" in detail
    assert "dpstream[audit]" not in detail


# --- 6. /metrics never answers 503 ------------------------------------------------------------------------------

def test_metrics_documents_only_the_answer_it_gives_also_while_redis_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", data_dir=tmp_path)
    app = create_app(settings)
    assert set(app.openapi()["paths"]["/metrics"]["get"]["responses"]) == {"200"}
    server = LiveServer(app)
    try:
        r = httpx.get(f"{server.url}/metrics", timeout=30)
        assert r.status_code == 200 and "dpstream_redis_errors_total" in r.text
    finally:
        server.close()


# --- 7. NaN and infinities ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["eps_pix", "eps_window", "eps_layout", "window_s", "release_fps"])
@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_a_non_finite_number_is_refused_as_not_finite_rather_than_by_a_bound(
        admin: httpx.Client, field: str, value: str) -> None:
    admin.post("/api/v1/cameras", json={"id": "hall", "source": SOURCE})
    for method, path, body in (("POST", "/api/v1/cameras", f'{{"source": "{SOURCE}", "{field}": {value}}}'),
                               ("PATCH", "/api/v1/cameras/hall", f'{{"{field}": {value}}}')):
        r = admin.request(method, path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (method, r.text)
        [error] = r.json()["detail"]
        assert error["loc"][-1] == field and "finite number" in error["msg"], (method, error)


def test_an_audit_with_a_nan_epsilon_is_refused_as_not_finite(admin: httpx.Client) -> None:
    r = admin.post("/api/v1/audits", content='{"eps_pix": NaN}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "finite number" in r.json()["detail"][0]["msg"], r.text


# --- 8. null in a PATCH ---------------------------------------------------------------------------------------------

def test_the_patch_schema_says_what_null_means_and_the_api_does_that(admin: httpx.Client) -> None:
    schema = admin.get("/openapi.json").json()["components"]["schemas"]["CameraPatch"]
    assert "fields given as null" in schema["description"]
    assert "null keeps the current value" in schema["properties"]["eps_pix"]["description"]
    assert "null sets it to null" in schema["properties"]["retention_s"]["description"]

    admin.post("/api/v1/cameras", json={"id": "hall", "source": SOURCE, "eps_pix": 0.5})
    cam = admin.patch("/api/v1/cameras/hall", json={"eps_pix": None, "source": None, "retention_s": None}).json()
    assert (cam["eps_pix"], cam["source"], cam["retention_s"], cam["version"]) == (0.5, SOURCE, None, 2)


# --- 9. the budget window and the release rate ---------------------------------------------------------------

def test_a_window_shorter_than_one_release_interval_is_refused(admin: httpx.Client) -> None:
    r = admin.post("/api/v1/cameras", json={"source": SOURCE, "window_s": 1e-9})
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "window_s"] and "use window_s >= 1 s" in error["msg"], error

    # one interval is enough, and the rate counts: a slower camera needs a longer window
    assert admin.post("/api/v1/cameras", json={"id": "hall", "source": SOURCE, "window_s": 0.1,
                                               "release_fps": 10.0}).status_code == 201
    r = admin.patch("/api/v1/cameras/hall", json={"release_fps": 5.0})
    assert r.status_code == 422 and "use window_s >= 0.2 s" in r.text, r.text
    assert admin.get("/api/v1/cameras/hall").json()["version"] == 1


# --- an RTSP server beyond loopback without credentials ---------------------------------------------------

@pytest.mark.parametrize(("host", "credentials", "warned"), [
    ("0.0.0.0", False, True), ("::", False, True), ("10.1.2.3", False, True), ("node-7.lan", False, True),
    ("127.0.0.1", False, False), ("127.0.0.2", False, False), ("::1", False, False), ("localhost", False, False),
    ("0.0.0.0", True, False),
])
def test_a_re_stream_open_beyond_this_machine_without_credentials_is_warned_about(host, credentials, warned):
    from service.worker_process import open_rtsp_warning

    auth = {"rtsp_user": "viewer", "rtsp_password": "eight+chars"} if credentials else {}
    warning = open_rtsp_warning(Settings(host=host, **auth))
    assert (warning is not None) == warned
    if warned:
        assert host in warning and "DPSTREAM_RTSP_PASSWORD" in warning


# --- up --no-demo and the demo camera of an earlier run ----------------------------------------------------

def test_up_without_its_demo_disables_the_demo_camera_of_an_earlier_run_and_up_enables_it(redis_url) -> None:
    from service.store import SyncStore
    from service.up import DEMO_ID, _disable_demo_camera, _ensure_demo_camera

    store = SyncStore(redis_url)
    ours = "rtsp://127.0.0.1:8554/demo-source"
    _ensure_demo_camera(store, ours)
    assert store.get_camera(DEMO_ID).enabled
    _disable_demo_camera(store)  # `up --no-demo`: nothing serves the demo source, so it would only fail
    cam = store.get_camera(DEMO_ID)
    assert (cam.enabled, cam.version) == (False, 2)
    _ensure_demo_camera(store, "rtsp://127.0.0.1:8600/demo-source")  # `up` again, on another port
    cam = store.get_camera(DEMO_ID)
    assert (cam.enabled, cam.version, cam.source) == (True, 3, "rtsp://127.0.0.1:8600/demo-source")
    # a real camera an operator named "demo" is not the demo: --no-demo leaves it as it is
    store.put_camera(cam.model_copy(update={"source": "rtsp://10.0.0.5/live", "version": 4}))
    _disable_demo_camera(store)
    assert store.get_camera(DEMO_ID).enabled and store.get_camera(DEMO_ID).version == 4
