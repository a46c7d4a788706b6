"""One logging setup for every process role: key=value records, no payloads, no credentials."""

from __future__ import annotations

import logging

from service.redaction import redact_text


class RedactingFormatter(logging.Formatter):
    """Each record as text with every credential taken out at the last moment: the message and the traceback
    of ``log.exception`` (an exception's text can quote a camera URL that no caller redacted: a library's
    error, a bug), in the format of :func:`setup_logging`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
    # the redis client logs nothing sensitive, but uvicorn's access log would name tokens in query strings
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


# uvicorn.run / uvicorn.Config keywords: no logging config of uvicorn's own, whose handlers bypass the
# redacting formatter (its "Exception in ASGI application" tracebacks among them); its loggers go to the root
UVICORN_LOGGING = {"log_config": None, "log_level": "warning", "access_log": False}
