"""Credentials in camera URLs never survive redaction."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dp.errors import ConfigError
from streams.redact import redact_text, redact_url, url_secrets
from streams.sources import parse_source

# Passwords as people type them, including characters that must be percent-encoded in a URL.
# '*' is left out: it is the redaction marker itself.
secret = st.text(alphabet=string.ascii_letters + string.digits + "!$%&'()+,;=-._~", min_size=3, max_size=24)
# The same typed raw, with the characters that end a URL's userinfo early under RFC 3986 (a strict parse
# then reads 'user:pa' as host and port, and '/ss@host' as the path).
typed = st.text(alphabet=string.ascii_letters + string.digits + "!$&()+,;=-._~/?#@:", min_size=3, max_size=24)
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


@given(user=secret, password=typed, host=st.sampled_from(["10.0.0.5", "cam.local", "[::1]"]))
def test_a_password_typed_with_raw_reserved_characters_is_redacted_everywhere(user, password, host):
    url = f"rtsp://{user}:{password}@{host}:554/stream1"
    for out in (redact_url(url), redact_text(f"connecting to {url} failed").split()[2]):
        assert out == f"rtsp://***@{host}:554/stream1"
    assert {user, password} <= set(url_secrets(url))
    try:
        display = parse_source(url).display
    except ConfigError as exc:  # '/', '?', '#' or '@' in it: refused, and the refusal quotes only the redacted URL
        assert any(c in password for c in "/?#@")
        display = str(exc).split("'")[1]
    assert display == f"rtsp://***@{host}:554/stream1"


@pytest.mark.parametrize("url", ["rtsp://admin:12/s3cret@127.0.0.1/live", "rtsp://admin:pa/ss@127.0.0.1/live",
                                 "rtsp://admin:pa#ss@127.0.0.1/live", "rtsp://admin:pa?ss@127.0.0.1/live",
                                 "rtsp://admin:pa@ss@127.0.0.1/live"])
def test_an_rtsp_url_with_an_at_sign_after_the_host_is_refused_without_its_secret(url):
    with pytest.raises(ConfigError, match="percent-encode") as info:
        parse_source(url)
    message = str(info.value)
    assert "rtsp://***@127.0.0.1/live" in message
    assert not any(part in message for part in ("s3cret", "pa/ss", "pa#ss", "pa?ss", "pa@ss", "admin", "'pa'"))


def test_a_password_with_a_raw_at_sign_is_redacted_whole_and_refused_as_a_source():
    assert redact_text("open rtsp://admin:p@ss@10.0.0.5/live failed") == "open rtsp://***@10.0.0.5/live failed"
    # GStreamer ends the password at the first '@' (it would dial host 'ss@10.0.0.5'), Python at the last
    with pytest.raises(ConfigError, match="percent-encode") as info:
        parse_source("rtsp://admin:p@ss@10.0.0.5/live")
    assert "rtsp://***@10.0.0.5/live" in str(info.value) and "ss" not in str(info.value).replace("ssword", "")


@pytest.mark.parametrize(
    "url, shown",
    [  # credentials in the path, as XMeye/Sofia DVRs and some NVRs take them
        ("rtsp://10.0.0.5:554/user=admin&password=S3cretPw&channel=1&stream=0.sdp",
         "rtsp://10.0.0.5:554/user=***&password=***&channel=1&stream=0.sdp"),
        ("rtsp://10.0.0.5:554/user=admin_password=S3cretPw_channel=1_stream=0.sdp?real_stream",
         "rtsp://10.0.0.5:554/user=***?real_stream"),
        ("rtsp://10.0.0.5/live;password=S3cretPw", "rtsp://10.0.0.5/live;password=***"),
        ("rtsp://10.0.0.5/live;PWD=S3cretPw;ch=2", "rtsp://10.0.0.5/live;PWD=***;ch=2"),
        ("rtsp://10.0.0.5/live?apikey=S3cretPw&pw=S3cretPw&usr=admin&ch=1",
         "rtsp://10.0.0.5/live?apikey=***&pw=***&usr=***&ch=1"),
    ],
)
def test_credentials_in_a_path_or_params_are_redacted(url, shown):
    assert redact_url(url) == shown
    text = redact_text(f"could not open {url}: refused")
    assert "S3cretPw" not in text and "admin" not in text
    assert "S3cretPw" in url_secrets(url)
    assert "S3cretPw" not in redact_text("the server said: wrong password S3cretPw", *url_secrets(url))


def test_a_path_credential_never_reaches_the_source_display():
    spec = parse_source("rtsp://10.0.0.5:554/user=admin&password=S3cretPw&channel=1&stream=0.sdp")
    assert "S3cretPw" not in spec.display and "admin" not in spec.display
