"""Audit of streams.redact: quoted URLs, more secret names, bare query strings, a missing '//'."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dp.errors import ConfigError
from streams.redact import redact_text, redact_url, url_secrets
from streams.sources import parse_source


def test_a_quoted_url_keeps_its_closing_quote_and_host():
    assert (redact_text('rtspsrc location="rtsp://cam/live?token=abc123" latency=0')
            == 'rtspsrc location="rtsp://cam/live?token=***" latency=0')
    # compact JSON: the userinfo ends before the closing quote, not at an '@' in the next value
    assert (redact_text('{"source":"rtsp://admin:hunter2@cam/live","owner":"bob@example.com"}')
            == '{"source":"rtsp://***@cam/live","owner":"bob@example.com"}')
    # a quote inside a password is not a closing one
    assert redact_text("open 'rtsp://admin:pa\"ss'wd@cam/live' failed") == "open 'rtsp://***@cam/live' failed"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("srt://10.0.0.5:9000?passphrase=hunter2pass&latency=200",
         "srt://10.0.0.5:9000?passphrase=***&latency=200"),
        ("rtsp://cam/live?client_secret=hunter2pass&ch=1", "rtsp://cam/live?client_secret=***&ch=1"),
        ("rtsp://cam/live?x-auth-token=hunter2pass&ch=1", "rtsp://cam/live?x-auth-token=***&ch=1"),
        ("rtmp://cam/app?stream-key=hunter2pass", "rtmp://cam/app?stream-key=***"),
        ("rtsp://cam/live?ch=1;token=hunter2pass", "rtsp://cam/live?ch=1;token=***"),  # ';' between params
        ("rtsp://cam/live#access_token=hunter2pass", "rtsp://cam/live#access_token=***"),  # in the fragment
    ],
)
def test_passphrases_and_compound_secret_names_are_redacted(url, shown):
    assert redact_url(url) == shown
    assert redact_text(f"could not open {url} (refused)") == f"could not open {shown} (refused)"
    assert "hunter2pass" in url_secrets(url)


def test_rtspsrc_credential_properties_in_a_pipeline_description_are_redacted():
    text = "rtspsrc location=rtsp://10.0.0.5/live user-id=admin user-pw=hunter2 proxy-pw=s3cret latency=0"
    assert redact_text(text) == "rtspsrc location=rtsp://10.0.0.5/live user-id=*** user-pw=*** proxy-pw=*** latency=0"


@pytest.mark.parametrize(
    "text, shown",
    [
        ("password=hunter2&channel=1", "password=***&channel=1"),
        ("token=abc123 expired", "token=*** expired"),
        ("bad query: PWD=hunter2;ch=2", "bad query: PWD=***;ch=2"),
    ],
)
def test_a_bare_query_string_is_redacted(text, shown):
    assert redact_text(text) == shown
    assert redact_url(text) == shown


def test_non_secret_parts_of_a_url_are_kept_as_written():
    # a public parameter (streams.redact.PUBLIC_PARAMS) keeps its percent-encoding; any other value is masked
    assert (redact_url("rtsp://cam/live?token=abc&profile=a%20b&flag&name=x")
            == "rtsp://cam/live?token=***&profile=a%20b&flag&name=***")
    assert redact_url("rtsp://admin:pw@cam/live\nnext") == "rtsp://***@cam/live\nnext"


def test_a_percent_encoded_secret_name_is_redacted_in_a_url():
    assert (redact_url("rtsp://cam/live?Pass%77ord=hunter2&ch=1;client%5Fsecret=hunter2")
            == "rtsp://cam/live?Pass%77ord=***&ch=1;client%5Fsecret=***")


@pytest.mark.parametrize("url", ["rtsp:admin:hunter2@10.0.0.5/live", "rtsp:/admin:hunter2@10.0.0.5/live",
                                 "RTSP:admin:hunter2@10.0.0.5/live", "rtsps:hunter2@10.0.0.5/live"])
def test_an_rtsp_url_without_its_slashes_never_shows_the_password(url):
    scheme = url.split(":", 1)[0] + ":" + "/" * url.startswith("rtsp:/")
    assert redact_url(url) == f"{scheme}***@10.0.0.5/live"
    assert redact_text(f"open {url} failed") == f"open {scheme}***@10.0.0.5/live failed"
    assert "hunter2" in url_secrets(url)
    with pytest.raises(ConfigError) as info:
        parse_source(url)
    assert "hunter2" not in str(info.value) and "admin" not in str(info.value)
    assert "write rtsp://host" in str(info.value)  # what to change, not "no such video file"
    # a word before a URL is not its scheme
    assert redact_text("uri:rtsp://admin:hunter2@10.0.0.5/live") == "uri:rtsp://***@10.0.0.5/live"


def test_a_source_typed_without_a_scheme_never_shows_the_password():
    with pytest.raises(ConfigError) as info:
        parse_source("admin:hunter2@10.0.0.5/live")
    assert "hunter2" not in str(info.value)
    assert redact_url("/videos/cam@2x.mp4") == "/videos/cam@2x.mp4"  # a file name with an '@' is no userinfo


HOSTS = st.sampled_from(["10.0.0.5:554", "cam.local", "[::1]:8554", "[fe80::1]"])
PATHS = st.sampled_from(["live", "stream1", "Streaming/Channels/101", "cam/main.sdp"])
KEYS = st.sampled_from(["password", "passphrase", "pwd", "token", "secret", "key", "auth", "apikey",
                        "access_token", "sig", "signature"])
# the forms a credential takes in a camera URL ({pw} percent-encoded, as a URL carries it), and as shown
FORMS = st.sampled_from([
    ("rtsp://admin:{pw}@{host}/{path}", "rtsp://***@{host}/{path}"),
    ("rtsps://{pw}@{host}/{path}", "rtsps://***@{host}/{path}"),
    ("rtsp:admin:{pw}@{host}/{path}", "rtsp:***@{host}/{path}"),  # '//' forgotten
    ("rtsp://{host}/{path}?{key}={pw}&channel=1", "rtsp://{host}/{path}?{key}=***&channel=1"),
    ("rtsp://{host}/{path};{key}={pw}", "rtsp://{host}/{path};{key}=***"),
])


@given(password=st.text(st.characters(blacklist_categories=("Cs",)), min_size=4, max_size=24), host=HOSTS,
       path=PATHS, key=KEYS, form=FORMS, q=st.sampled_from(['"', "'", ""]))
def test_a_password_in_a_quoted_url_never_survives_and_the_rest_does(password, host, path, key, form, q):
    encoded = quote(password, safe="")
    url, shown = (f.format(pw=encoded, host=host, path=path, key=key) for f in form)
    text = f"element src: location={q}{url}{q} latency=0\nretrying rtsps://viewer:{encoded}@{host}/{path}"
    expected = f"element src: location={q}{shown}{q} latency=0\nretrying rtsps://***@{host}/{path}"
    assume(password not in expected and encoded not in expected)
    out = redact_text(text)
    assert password not in out and encoded not in out
    assert out == expected


# --- secrets quoted outside a URL: a config echoed as JSON or a dict, an Authorization header ------------

@pytest.mark.parametrize(
    "text, shown",
    [
        ('{"source": "rtsp://cam/live", "password": "hunter2", "ch": 1}',
         '{"source": "rtsp://cam/live", "password": "***", "ch": 1}'),
        ("{'url': 'rtsp://cam', 'rtsp_password': 'hun\\'ter2', 'ch': 1}",
         "{'url': 'rtsp://cam', 'rtsp_password': '***', 'ch': 1}"),
        ('{"client_secret":"hunter2","x-auth-token": "hunter2", "pwd": 1234}',
         '{"client_secret":"***","x-auth-token": "***", "pwd": ***}'),
        ("{'Authorization': 'Bearer hunter2'}", "{'Authorization': '***'}"),
        # names that only contain a secret word are not secrets
        ('{"keyframe": 3, "monkey": "x", "passenger": "y"}', '{"keyframe": 3, "monkey": "x", "passenger": "y"}'),
    ],
)
def test_a_secret_in_a_quoted_mapping_is_redacted(text, shown):
    assert redact_text(text) == shown


def test_an_authorization_header_in_a_message_is_redacted():
    request = ("DESCRIBE rtsp://cam/live RTSP/1.0\r\nCSeq: 3\r\n"
               "Authorization: Basic YWRtaW46aHVudGVyMg==\r\nUser-Agent: GStreamer\r\n")
    assert redact_text(request) == ("DESCRIBE rtsp://cam/live RTSP/1.0\r\nCSeq: 3\r\n"
                                    "Authorization: ***\r\nUser-Agent: GStreamer\r\n")
    digest = 'proxy-authorization: Digest username="admin", realm="cam", nonce="1", response="0a1b"'
    assert redact_text(digest) == "proxy-authorization: ***"
    assert redact_text("401 Unauthorized: not authorized") == "401 Unauthorized: not authorized"


@given(password=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24),
       key=st.sampled_from(["password", "rtsp_password", "token", "client_secret", "Authorization"]),
       dump=st.sampled_from(["json", "repr"]))
def test_a_secret_value_in_a_dumped_mapping_never_survives(password, key, dump):
    import json

    # json.dumps / repr of {"source": ..., key: password, "ch": 1}, written out so the expected text is exact
    value = json.dumps(password) if dump == "json" else repr(password)
    q = '"' if dump == "json" else "'"

    def doc(v: str) -> str:
        return "{" + f"{q}source{q}: {q}rtsp://cam/live{q}, {q}{key}{q}: {v}, {q}ch{q}: 1" + "}"

    text = doc(value)
    assert text == (json.dumps if dump == "json" else repr)({"source": "rtsp://cam/live", key: password, "ch": 1})
    assert redact_text(text) == doc(value[0] + "***" + value[0])
