"""rtsps:// against a real GstRtspServer speaking RTSP over TLS on 127.0.0.1, with certificates made by openssl.

A private CA signs the server's certificate (SAN IP:127.0.0.1). The client validates against that CA, refuses
the server without it, and accepts it only when validation is switched off explicitly.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dp.errors import ConfigError, IngestError
from streams import iter_frames
from streams.rtsp_server import LocalRtspServer

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (EC P-256, valid 2 days)."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", "/CN=dpstream test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


@pytest.fixture(scope="module")
def tls_server(pki):
    server = LocalRtspServer(port=0, tls=(str(pki["cert"]), str(pki["key"]))).start()
    server.serve_test_pattern("/cam", width=160, height=120)
    yield server
    server.stop()


def test_rtsps_url_yields_moving_frames_validated_against_the_camera_ca(tls_server, pki):
    url = tls_server.url("/cam")
    assert url.startswith("rtsps://127.0.0.1:")
    frames = list(iter_frames(url, max_frames=6, tls_ca_file=pki["ca"]))
    assert len(frames) == 6 and frames[0].array.shape == (120, 160, 3)
    assert not np.array_equal(frames[0].array, frames[-1].array)  # the ball moves


def test_rtsps_server_outside_the_trusted_cas_is_refused(tls_server):
    with pytest.raises(IngestError, match="TLS handshake failed"):
        list(iter_frames(tls_server.url("/cam"), max_frames=1, first_frame_timeout_s=10))


def test_rtsps_without_validation_still_streams_when_asked_explicitly(tls_server):
    assert len(list(iter_frames(tls_server.url("/cam"), max_frames=2, tls_validate=False))) == 2


def test_rtsps_with_credentials_over_tls(pki):
    with LocalRtspServer(port=0, auth=("admin", "s3cret"), tls=(str(pki["cert"]), str(pki["key"]))) as server:
        server.serve_test_pattern("/cam", width=160, height=120)
        url = server.url("/cam", user="admin", password="s3cret")
        assert len(list(iter_frames(url, max_frames=2, tls_ca_file=pki["ca"]))) == 2


def test_missing_tls_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="tls_ca_file"):
        list(iter_frames("rtsps://127.0.0.1:1/cam", max_frames=1, tls_ca_file=tmp_path / "none.pem"))
    with pytest.raises(ConfigError, match="does not exist"):
        LocalRtspServer(port=0, tls=(str(tmp_path / "a.pem"), str(tmp_path / "a.key")))


def test_the_pixelize_command_takes_the_camera_ca(tls_server, pki, tmp_path):
    import os
    import sys

    dpstream = os.path.join(os.path.dirname(sys.executable), "dpstream")
    url = tls_server.url("/cam")
    refused = subprocess.run([dpstream, "pixelize", url, str(tmp_path / "a.mp4"), "--frames", "3"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "TLS handshake failed" in refused.stderr
    for extra, env in ((["--tls-ca-file", str(pki["ca"])], {}), ([], {"DPSTREAM_TLS_CA_FILE": str(pki["ca"])})):
        done = subprocess.run([dpstream, "pixelize", url, str(tmp_path / "b.mp4"), "--frames", "3", *extra],
                              capture_output=True, text=True, timeout=120, env=os.environ | env)
        assert done.returncode == 0 and "3 releases" in done.stderr, done.stderr
