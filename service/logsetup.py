"""One logging setup for every process role: key=value records, no payloads."""

from __future__ import annotations

import logging


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # the redis client logs nothing sensitive, but uvicorn's access log would name tokens in query strings
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
