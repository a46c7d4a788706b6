"""Benchmark: the cost of storing one release in Redis, by the size of the camera's ledger.

Every release is stored by one Lua script (service.store's append: stream entry, latest, ledger, lease and
the checks that keep the ledger from going back). Its cost is paid on Redis's one thread for every camera
of every worker, so it bounds how many releases per second one Redis takes. Measured on the server
(`INFO commandstats`, microseconds per EVALSHA), not at the client, so loopback and Python do not blur it;
the baseline is the same writes without the checks (XADD + HSET + SET in one script, what the append did
before it checked anything). A ledger holds about release_fps x window_s spends (at most eps_window /
eps_frame): 10 at the defaults, 300 for 30 releases per second in a 10 s window.

    .venv/bin/python bench/bench_store.py [--appends 400]
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dp import Ledger  # noqa: E402
from service.embedded import EmbeddedValkey  # noqa: E402
from service.models import Camera  # noqa: E402
from service.store import SUMMARY_FIELDS, SyncStore  # noqa: E402

_PLAIN = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'r', ARGV[3])
redis.call('HSET', KEYS[2], 'r', ARGV[3], 'id', id)
redis.call('SET', KEYS[3], ARGV[2])
return id
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _usec_per_call(store: SyncStore) -> float:
    stats = store.redis.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))


def run(spends: int, appends: int, store: SyncStore) -> dict:
    cid = f"bench-{spends}"
    window_s = spends * 0.1 + 0.05  # a spend every 0.1 s: the window holds `spends` of them
    store.put_camera(Camera(id=cid, source="test:ball", eps_window=10_000.0, window_s=window_s))
    ledger = Ledger(eps_window=10_000.0, window_s=window_s)
    cost = Fraction(1, 100)
    t = 0.0
    for _ in range(spends):  # from here on, the oldest spend leaves the window as one is added
        t += 0.1
        ledger.try_spend(t, cost)
    summary = {k: "1" for k in SUMMARY_FIELDS}
    data = b"\0" * 3000  # a 720p release at the default 16 px cells is about this size
    plain = store.redis.register_script(_PLAIN)
    k = store.keys
    out = {}
    for name in ("append", "plain"):
        store.redis.config_resetstat()
        for _ in range(appends):
            t += 0.1
            ledger.try_spend(t, cost)
            state = ledger.to_dict()
            if name == "append":
                store.append_release(cid, data, summary, ledger_state=state, retention_releases=100,
                                     retention_s=None, worker_id="bench", lease_ttl_s=30)
            else:
                plain(keys=[k.releases(cid) + ":plain", k.latest(cid) + ":plain", k.ledger(cid) + ":plain"],
                      args=[100, json.dumps(state), data])
        out[name] = _usec_per_call(store)
    return {"spends": len(ledger.to_dict()["spends"]), "append_us": out["append"], "plain_us": out["plain"],
            "ratio": out["append"] / out["plain"] if out["plain"] else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=400)
    ap.add_argument("--spends", type=int, nargs="*", default=[10, 30, 300, 1000])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(Path(tmp), port=_free_port()) as server:
        store = SyncStore(server.url)
        try:
            for n in args.spends:
                rows.append(run(n, args.appends, store))
        finally:
            store.close()
    print(f"{platform.processor() or platform.machine()}, {args.appends} appends per size; Redis-side "
          "microseconds per call")
    print(f"{'spends in ledger':>18} {'append':>8} {'plain writes':>13} {'ratio':>6}")
    for row in rows:
        print(f"{row['spends']:>18} {row['append_us']:>8.1f} {row['plain_us']:>13.1f} {row['ratio']:>6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
