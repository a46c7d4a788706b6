"""Credentials in camera URLs never survive redaction."""

from __future__ import annotations

import string

from hypothesis import assume, given
from hypothesis import strategies as st

from streams.redact import redact_text, redact_url, url_secrets

# Passwords as people type them, including characters that must be percent-encoded in a URL.
# '*' is left out: it is the redaction marker itself.
secret = st.text(alphabet=string.ascii_letters + string.digits + "!$%&'()+,;=-._~", min_size=3, max_size=24)
TEMPLATE = "Could not open rtsp://:@cam.local/live: connection refused (user )"


@given(user=secret, password=secret, host=st.sampled_from(["10.0.0.5", "cam.local", "[::1]"]))
def test_redacted_url_never_contains_the_password(user, password, host):
    url = f"rtsp://{user}:{password}@{host}:554/stream1"
    out = redact_url(url)
    # nothing of the userinfo is left (the password may be any text, "rts" for one: look only there)
    assert out.split("://", 1)[1].split("@", 1)[0] == "***"
    assert out == f"rtsp://***@{host}:554/stream1"


@given(user=secret, password=secret)
def test_text_quoting_a_url_with_credentials_is_redacted(user, password):
    assume(
        user not in TEMPLATE and password not in TEMPLATE and password not in user and user not in password
    )
    url = f"rtsp://{user}:{password}@cam.local/live"
    text = f"Could not open {url}: connection refused (user {user})"
    out = redact_text(text, *url_secrets(url))
    assert "rtsp://***@cam.local/live" in out
    assert password not in out and f"user {user})" not in out


def test_secret_query_parameters_are_redacted_and_others_kept():
    assert redact_url("rtsps://cam/live?token=abc123&channel=2") == "rtsps://cam/live?token=***&channel=2"
    assert "abc123" not in redact_text("GET rtsp://cam/x?password=abc123&a=1 failed")


def test_urls_without_credentials_are_unchanged():
    assert redact_url("rtsp://127.0.0.1:8554/cam") == "rtsp://127.0.0.1:8554/cam"
    assert redact_text("plain message") == "plain message"
