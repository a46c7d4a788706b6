"""Camera URLs are redacted fail-closed: every parameter value is masked unless its name is a known public one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp.errors import IngestError
from streams.gst import GLib, Gst, ensure_init, parse_pipeline, set_state_or_raise, shutdown_pipeline
from streams.ingest import _classify_error
from streams.redact import PUBLIC_PARAMS, carries_redaction_mask, redact_text, redact_url, url_secrets
from streams.sources import parse_source

SECRET = "Hunter2Secret"
# names real cameras and NVRs use for credentials that no fixed list of secret names held
UNLISTED = ["authtoken", "accesstoken", "apitoken", "sessiontoken", "authkey", "jwt", "credential",
            "credentials", "loginpas", "authcode", "authbasic", "sid", "hash", "nonce", "clé"]


@pytest.mark.parametrize("name", UNLISTED)
@pytest.mark.parametrize("scheme", ["rtsp", "rtsps", "RTSP", "https"])
def test_a_parameter_with_an_unlisted_secret_name_is_masked(scheme, name):
    url = f"{scheme}://10.0.0.5:554/cam/realmonitor?channel=1&subtype=0&{name}={SECRET}"
    shown = f"{scheme}://10.0.0.5:554/cam/realmonitor?channel=1&subtype=0&{name}=***"
    assert redact_url(url) == shown
    assert redact_text(f"connecting to {url} failed") == f"connecting to {shown} failed"
    assert SECRET in url_secrets(url)
    assert SECRET not in redact_text(f"the server said: {SECRET} is wrong", *url_secrets(url))


def test_an_authbasic_value_in_base64_is_masked_whole():
    url = "rtsp://10.0.0.5/cam/realmonitor?channel=1&authbasic=YWRtaW46aHVudGVyMg=="  # admin:hunter2
    assert redact_url(url) == "rtsp://10.0.0.5/cam/realmonitor?channel=1&authbasic=***"


@pytest.mark.parametrize("url", [
    f"rtsp://10.0.0.5/live;sessiontoken={SECRET};ch=2",  # ';' path parameters
    f"rtsp://10.0.0.5/authkey={SECRET}&channel=1&stream=0.sdp",  # DVR style credentials in the path
    f"rtsp://10.0.0.5/live#jwt={SECRET}",  # in the fragment
    f"rtsp://10.0.0.5/live?Auth%54oken={SECRET}",  # a percent-encoded name
    f"rtsp://10.0.0.5/live?={SECRET}",  # no name at all
])
def test_path_fragment_and_encoded_parameters_are_masked(url):
    assert SECRET not in redact_url(url)
    assert SECRET not in redact_text(f"open {url} failed")
    assert SECRET not in parse_source(url).display


@pytest.mark.parametrize("url", [
    f"rtsp://10.0.0.5/channel=1_authcode={SECRET}_stream=0.sdp",  # a public name first, '_' form
    f"rtsp://10.0.0.5/live?profile=main%26token%3D{SECRET}",  # a public name holding an encoded secret
    f"rtsp://10.0.0.5/live?channel={SECRET}{'x' * 60}",  # not what a channel looks like
])
def test_a_public_name_with_an_odd_value_is_masked_too(url):
    assert SECRET not in redact_url(url)
    assert SECRET not in redact_text(f"open {url} failed")


def test_public_camera_parameters_are_kept_as_written():
    for url in ["rtsp://10.0.0.5:554/cam/realmonitor?channel=1&subtype=0&unicast=true&proto=Onvif",
                "rtsp://10.0.0.5/Streaming/Channels/101?transportmode=unicast&profile=Profile_1",
                "rtsp://10.0.0.5/axis-media/media.amp?videocodec=h264&resolution=640x480&fps=15&camera=2",
                "rtsps://10.0.0.5:7441/abc?enableSrtp", "rtsp://10.0.0.5/live?tcp&Channel=2&CH=3&StreamType=1"]:
        assert redact_url(url) == url
        assert redact_text(f"open {url} failed") == f"open {url} failed"
        assert parse_source(url).display == url
    assert {"channel", "subtype", "profile", "resolution", "enablesrtp"} <= PUBLIC_PARAMS


def test_test_patterns_and_other_free_text_keep_their_parameters():
    assert parse_source("test:ball?width=160&height=120&fps=10").display == "test:ball?width=160&height=120&fps=10"
    # caps and properties in a GStreamer message are no URL: only secret-looking names are masked there
    text = "caps video/x-raw,width=320,height=240 refused; key=abc123"
    assert redact_text(text) == "caps video/x-raw,width=320,height=240 refused; key=***"


@given(name=st.from_regex(r"[A-Za-z][A-Za-z0-9_\-]{0,15}", fullmatch=True),
       value=st.from_regex(r"[A-Za-z0-9._~\-]{3,24}", fullmatch=True))
def test_a_value_is_shown_only_under_a_public_name(name, value):
    url = f"rtsp://10.0.0.5/live?{name}={value}"
    out = redact_url(url)
    if name.lower() in PUBLIC_PARAMS:
        assert out == url
    else:
        assert out == f"rtsp://10.0.0.5/live?{name}=***"
        assert value in url_secrets(url)


@pytest.mark.parametrize(("source", "masked"), [
    ("rtsp://***@10.0.0.5/live", True),
    ("rtsp://admin:***@10.0.0.5/live", True),
    ("rtsp://admin:%2A%2A%2A@10.0.0.5/live", True),
    ("rtsp://10.0.0.5/live?user=***&password=***", True),
    ("rtsp://10.0.0.5/live;authtoken=***", True),
    ("rtsp://10.0.0.5/user=***&password=***&channel=1", True),
    ("rtsp://admin:hunter2@10.0.0.5/live?channel=1", False),
    ("rtsp://admin:ab***cd@10.0.0.5/live", False),  # a password that merely contains the mask
    ("test:ball?width=160", False),
])
def test_a_source_copied_from_a_redacted_one_is_recognised(source, masked):
    assert carries_redaction_mask(source) is masked
    assert carries_redaction_mask(redact_url("rtsp://admin:hunter2@10.0.0.5/live?authtoken=x&channel=1"))


# --- the debug text of a bus error is redacted before it is cut ------------------------------------------

def test_a_debug_line_cut_inside_a_url_keeps_no_part_of_the_password():
    ensure_init()
    url = "rtsp://admin:CorrectHorseBatteryStaple@cam.example/live"
    err = GLib.Error.new_literal(Gst.ResourceError.quark(), "Could not read from resource.",
                                 int(Gst.ResourceError.READ))
    head = "gstrtspsrc.c(1): f (): /GstPipeline:p/GstRTSPSrc:src: "
    for cut in range(len("rtsp://admin:"), len("rtsp://admin:CorrectHorseBatteryStaple")):
        # pad so that a 200-character cut falls `cut` characters into the URL
        debug = head + "x" * (200 - len(head) - len("error on ") - cut) + f"error on {url}"
        reason = _classify_error(err, debug, url_secrets(url)).reason
        assert "Corr" not in reason and "admin" not in reason, (cut, reason)


def test_a_state_change_refusal_is_redacted_with_the_cameras_secrets():
    ensure_init()
    pipeline = parse_pipeline("filesrc name=src location=/nonexistent/dpstream-test ! fakesink")
    try:
        # what a server may echo outside any URL: the user name
        pipeline.get_bus().post(Gst.Message.new_error(
            pipeline, GLib.Error.new_literal(Gst.ResourceError.quark(), "user viewer42 refused",
                                             int(Gst.ResourceError.NOT_AUTHORIZED)), "debug"))
        with pytest.raises(IngestError) as info:
            set_state_or_raise(pipeline, Gst.State.PLAYING, "source 'rtsp://***@cam/live'",
                               secrets=url_secrets("rtsp://viewer42:pw12345@cam/live"))
        assert "viewer42" not in str(info.value) and "refused" in str(info.value)
    finally:
        shutdown_pipeline(pipeline)
