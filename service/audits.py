"""Audits run by `python -m attacks` in a child process.

The service never imports `attacks` (architecture.md: arrows only go down), and the face attack must not
share a process with GStreamer, so an audit is a subprocess whose JSON report is stored in Redis.

An audit's doc names the API process that runs it (`owner`) and carries a heartbeat that process renews.
A doc still `running` that no live process owns (the API was killed, or its machine went away) reads as
failed, never as running for the seven days it is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp.errors import DpstreamError
from service.models import AuditRequest
from service.redaction import redact_text
from service.store import AsyncStore

log = logging.getLogger("dpstream.audits")

SHUTDOWN_ERROR = "the API shut down during the audit; start it again"
OWNER_GONE_ERROR = "the API process that ran the audit stopped during it; start it again"
# the doc's fields only the runner reads: which process runs the audit and when it last said so
_INTERNAL = ("owner", "heartbeat_s", "stale_after_s")


class AuditsBusy(DpstreamError):
    """This API process already runs as many audits as it allows at once, or it is shutting down."""


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
            "--channels", str(int(req.channels)), "--n-eval", str(int(req.n_eval)), "--json", str(out),
            "--exit-with-parent", str(os.getpid())]  # an API killed outright (SIGKILL, OOM) cannot stop it


def verdict(passed: bool | None, control_flagged: bool | None) -> str | None:
    """`passed` only when the claim held *and* the deliberately broken control was flagged: a run too small
    to catch half the noise cannot vouch for the real mechanism either (`attacks mechanism` exits 1 there)."""
    if passed is None:
        return None
    if not passed:
        return "failed"
    return "passed" if control_flagged is True else "inconclusive"


def public_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The doc as the API shows it: without the runner's bookkeeping, with the verdict (also for docs stored
    before the verdict existed)."""
    out = {k: v for k, v in doc.items() if k not in _INTERNAL}
    report = out.get("report") or {}
    if out.get("state") == "done":
        out.setdefault("control_flagged", report.get("control_flagged"))
        out.setdefault("verdict", verdict(out.get("passed"), out.get("control_flagged")))
    return out


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux), None if there is no such process: with
    the pid it tells a live process from a later one that reuses its pid."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # the command name in parentheses may hold spaces: fields count from after its closing ')'
    return stat.rsplit(")", 1)[1].split()[19]


def _machine() -> str:
    """Which pid namespace of which boot of which host a pid is valid in."""
    pid_ns = ""
    with contextlib.suppress(OSError):
        pid_ns = os.readlink("/proc/self/ns/pid")
    return f"{socket.gethostname()}|{_read('/proc/sys/kernel/random/boot_id') or ''}|{pid_ns}"


def _pid_alive(pid: int, started: str | None) -> bool:
    if Path("/proc/self/stat").exists():
        now = _process_start(pid)
        return now is not None and (started is None or now == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _kill_tree(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the audit's process group (it was started in its own session): the tool and anything it
    started. Only while the tool itself runs: once it is reaped its pid, and so the group id, may be reused."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


@dataclass
class _Running:
    doc: dict[str, Any]
    task: asyncio.Task | None = None


class AuditRunner:
    """Starts audits and records their outcome; at most `max_running` at once per API process.

    `close()` stops every audit still running (its child processes killed, its doc marked failed) and waits
    for them. While an audit runs its doc's heartbeat is renewed every `heartbeat_s`; a `running` doc whose
    owner is gone (or silent for `4 * heartbeat_s`) reads as failed."""

    def __init__(self, store: AsyncStore, *, timeout_s: float = 1800.0, max_running: int = 2,
                 heartbeat_s: float = 15.0) -> None:
        self._store = store
        self._timeout_s = timeout_s
        self._max_running = max_running
        self._heartbeat_s = heartbeat_s
        self._running: dict[str, _Running] = {}
        self._closing = False
        self._owner = {"id": secrets.token_hex(8), "machine": _machine(), "pid": os.getpid(),
                       "pid_start": _process_start(os.getpid())}

    def __repr__(self) -> str:
        return (f"AuditRunner(timeout_s={self._timeout_s!r}, max_running={self._max_running!r}, "
                f"heartbeat_s={self._heartbeat_s!r})")

    @property
    def max_running(self) -> int:
        return self._max_running

    @property
    def busy(self) -> bool:
        return self._closing or len(self._running) >= self._max_running

    async def start(self, req: AuditRequest) -> dict[str, Any]:
        """Store a new audit and start it; `AuditsBusy` when no slot is free."""
        # the slot is taken before the first await: concurrent requests see it taken (else all of them pass
        # the check while the first is still storing its doc)
        if self._closing:
            raise AuditsBusy("the API is shutting down; start the audit on another instance or after restart")
        if len(self._running) >= self._max_running:
            raise AuditsBusy(f"audits busy: {self._max_running} are running already; retry when one finishes")
        now = time.time()
        doc: dict[str, Any] = {"id": new_audit_id(), "kind": "mechanism", "state": "running",
                               "request": req.model_dump(), "started_s": now, "finished_s": None,
                               "error": None, "passed": None, "control_flagged": None, "verdict": None,
                               "report": None, "owner": self._owner, "heartbeat_s": now,
                               "stale_after_s": 4 * self._heartbeat_s}
        run = _Running(doc)
        self._running[doc["id"]] = run
        try:
            await self._store.put_audit(doc["id"], doc)
        except BaseException:
            del self._running[doc["id"]]
            raise
        if self._closing:  # close() began while the doc was being stored: it will not wait for this one
            del self._running[doc["id"]]
            await self._finish(doc, error=SHUTDOWN_ERROR)
            return dict(doc)
        run.task = asyncio.create_task(self._run(doc, req))
        run.task.add_done_callback(lambda _t, aid=doc["id"]: self._running.pop(aid, None))
        return dict(doc)

    async def read(self, audit_id: str) -> dict[str, Any] | None:
        """The stored doc, `failed` if it says running but no live API process runs it."""
        doc = await self._store.get_audit(audit_id)
        if doc is None:
            return None
        if doc.get("state") == "running" and audit_id not in self._running:
            reason = self._orphaned(doc)
            if reason is not None:
                doc = {**doc, "state": "failed", "error": reason}
        return doc

    def _orphaned(self, doc: dict[str, Any]) -> str | None:
        """Why no live API process runs this `running` audit (None: one may still)."""
        owner = doc.get("owner") or {}
        if owner.get("id") == self._owner["id"]:  # ours and no longer running: its last write was lost
            return "the audit ended but its result could not be stored; start it again"
        # on this machine the owner's pid tells: it is us now (a restarted container is pid 1 again), or gone
        pid = owner.get("pid")
        if owner.get("machine") == self._owner["machine"] and isinstance(pid, int) and (
                pid == self._owner["pid"] or not _pid_alive(pid, owner.get("pid_start"))):
            return OWNER_GONE_ERROR
        # another machine (or a doc from before owners were stored): trust its heartbeat while it is fresh
        last = doc.get("heartbeat_s") or doc.get("started_s") or 0.0
        stale_after = doc.get("stale_after_s") or self._timeout_s + 4 * self._heartbeat_s
        if time.time() - float(last) > float(stale_after):
            return f"{OWNER_GONE_ERROR} (no heartbeat for {time.time() - float(last):.0f} s)"
        return None

    async def _run(self, doc: dict[str, Any], req: AuditRequest) -> None:
        with tempfile.TemporaryDirectory(prefix="dpstream-audit-") as tmp:
            out = Path(tmp) / "report.json"
            proc: asyncio.subprocess.Process | None = None
            try:
                # its own session: killing its process group stops the tool and anything it started, and a
                # Ctrl-C meant for the API reaches the API alone, which then stops the audit itself
                proc = await asyncio.create_subprocess_exec(
                    *mechanism_command(req, out), stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
                err = await self._wait(doc, proc)
                # exit 1 is a finished audit that found a violation (or missed its control): a result
                if proc.returncode not in (0, 1) or not out.exists():
                    tail = redact_text(_error_message(err.decode(errors="replace")))
                    raise RuntimeError(f"attacks exited with {proc.returncode}: {tail}")
                report = json.loads(out.read_text())
                doc["report"] = report
                doc["passed"] = bool(report.get("passed", proc.returncode == 0))
                doc["control_flagged"] = report.get("control_flagged")
                doc["verdict"] = verdict(doc["passed"], doc["control_flagged"])
                doc["state"] = "done"
            except asyncio.CancelledError:
                log.warning("audit stopped by shutdown audit_id=%s", doc["id"])
                if proc is not None:
                    _kill_tree(proc)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(proc.wait(), 10)
                await self._finish(doc, error=SHUTDOWN_ERROR)
                raise
            except Exception as exc:  # an audit failing is a state, never a crashed API
                log.warning("audit failed audit_id=%s error=%s", doc["id"], exc)
                doc["state"], doc["error"] = "failed", redact_text(str(exc))[:2000]
            finally:
                if proc is not None:  # never leave the tool running
                    _kill_tree(proc)
            await self._finish(doc)

    async def _wait(self, doc: dict[str, Any], proc: asyncio.subprocess.Process) -> bytes:
        """The tool's stderr once it exits, renewing the doc's heartbeat meanwhile; killed past timeout_s."""
        output = asyncio.ensure_future(proc.communicate())
        deadline = time.monotonic() + self._timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    _kill_tree(proc)
                    await output
                    raise RuntimeError(f"audit ran past {self._timeout_s:.0f} s and was stopped")
                done, _ = await asyncio.wait({output}, timeout=min(self._heartbeat_s, left))
                if done:
                    return output.result()[1]
                doc["heartbeat_s"] = time.time()
                try:
                    await self._store.put_audit(doc["id"], doc)
                except DpstreamError as exc:  # a missed beat; the next one may get through
                    log.warning("audit heartbeat not stored audit_id=%s error=%s", doc["id"], exc)
        finally:
            if not output.done():
                _kill_tree(proc)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(output), 10)
                output.cancel()

    async def _finish(self, doc: dict[str, Any], *, error: str | None = None) -> None:
        if error is not None:
            doc["state"], doc["error"] = "failed", error
        doc["finished_s"] = doc["heartbeat_s"] = time.time()
        try:
            await asyncio.wait_for(self._store.put_audit(doc["id"], doc), 10)
        except Exception as exc:
            log.warning("audit result not stored audit_id=%s error=%s", doc["id"], exc)

    async def close(self) -> None:
        """Stop every running audit (child processes killed, docs marked failed) and wait for them."""
        self._closing = True
        tasks = [r.task for r in self._running.values() if r.task is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
