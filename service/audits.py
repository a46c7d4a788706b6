"""Audits run by `python -m attacks` in a child process.

The service never imports `attacks` (architecture.md: arrows only go down), and the face attack must not
share a process with GStreamer, so an audit is a subprocess whose JSON report is stored in Redis.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from service.models import AuditRequest
from service.redaction import redact_text
from service.store import AsyncStore

log = logging.getLogger("dpstream.audits")


def attacks_available() -> bool:
    """Whether `python -m attacks` can run here (found without importing it)."""
    try:
        return importlib.util.find_spec("attacks.__main__") is not None
    except (ImportError, ValueError):
        return False


def _error_message(stderr: str, limit: int = 600) -> str:
    """The audit tool's error from its stderr: the last line starting with 'error:' and the lines it was
    wrapped onto (else the last line), so that a long message is not cut mid-sentence."""
    lines = [line.strip() for line in stderr.strip().splitlines()]
    starts = [i for i, line in enumerate(lines) if line.lower().startswith("error")]
    text = " ".join(lines[starts[-1]:]) if starts else (lines[-1] if lines else "")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def new_audit_id() -> str:
    return "aud-" + secrets.token_hex(6)


def mechanism_command(req: AuditRequest, out: Path) -> list[str]:
    return [sys.executable, "-m", "attacks", "mechanism", "--eps-pix", repr(float(req.eps_pix)),
            "--m-pixels", str(int(req.m_pixels)), "--cell-size", str(int(req.cell_size)),
            "--channels", str(int(req.channels)), "--n-eval", str(int(req.n_eval)), "--json", str(out)]


class AuditRunner:
    """Starts audits and records their outcome; at most `max_running` at once per API process."""

    def __init__(self, store: AsyncStore, *, timeout_s: float = 1800.0, max_running: int = 2) -> None:
        self._store = store
        self._timeout_s = timeout_s
        self._tasks: set[asyncio.Task] = set()
        self._max_running = max_running

    @property
    def busy(self) -> bool:
        return len(self._tasks) >= self._max_running

    async def start(self, req: AuditRequest) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": new_audit_id(), "kind": "mechanism", "state": "running",
                               "request": req.model_dump(), "started_s": time.time(), "finished_s": None,
                               "error": None, "passed": None, "report": None}
        await self._store.put_audit(doc["id"], doc)
        task = asyncio.create_task(self._run(doc, req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return doc

    async def _run(self, doc: dict[str, Any], req: AuditRequest) -> None:
        with tempfile.TemporaryDirectory(prefix="dpstream-audit-") as tmp:
            out = Path(tmp) / "report.json"
            try:
                proc = await asyncio.create_subprocess_exec(
                    *mechanism_command(req, out), stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE)
                try:
                    _, err = await asyncio.wait_for(proc.communicate(), self._timeout_s)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    raise RuntimeError(f"audit ran past {self._timeout_s:.0f} s and was stopped") from None
                # exit 1 is a finished audit that found a violation: a result, reported as passed=false
                if proc.returncode not in (0, 1) or not out.exists():
                    tail = redact_text(_error_message(err.decode(errors="replace")))
                    raise RuntimeError(f"attacks exited with {proc.returncode}: {tail}")
                doc["report"] = json.loads(out.read_text())
                doc["passed"] = bool(doc["report"].get("passed", proc.returncode == 0))
                doc["state"] = "done"
            except Exception as exc:  # an audit failing is a state, never a crashed API
                log.warning("audit failed audit_id=%s error=%s", doc["id"], exc)
                doc["state"], doc["error"] = "failed", redact_text(str(exc))[:2000]
            doc["finished_s"] = time.time()
            try:
                await self._store.put_audit(doc["id"], doc)
            except Exception as exc:
                log.warning("audit result not stored audit_id=%s error=%s", doc["id"], exc)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
