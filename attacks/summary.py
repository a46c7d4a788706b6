"""Markdown tables of audit reports (for docs/privacy-audit.md): `python -m attacks summarize REPORT.json`."""

from __future__ import annotations


def _setting_label(r: dict) -> str:
    if r["setting"] == "clean":
        return "clean"
    if r["setting"] in ("pixelize", "blur"):
        return f"plain {r['setting']} {r['cell_size']} px"
    where = f"{r['cell_size']} px" if r["layout"] == "fixed" else f"adaptive ({r['layout']})"
    return f"dp eps_pix={r['eps_pix']:g} m={r['m_pixels']} {where}"


def _attacker_label(r: dict) -> str:
    return r["attacker"] if r["frames"] == 1 else f"{r['attacker']} (k={r['frames']})"


def reid_table(report: dict, metric: str = "top1") -> str:
    """One row per setting, one column per attacker; each cell `top1` (and `x chance` for dp rows)."""
    results = report["results"]
    attackers: list[str] = []
    settings: list[str] = []
    cells: dict[tuple[str, str], dict] = {}
    for r in results:
        a, s = _attacker_label(r), _setting_label(r)
        if a not in attackers:
            attackers.append(a)
        if s not in settings:
            settings.append(s)
        cells[(s, a)] = r
    chance = report["chance"]
    lines = [
        f"{report['n_identities']} identities, {report['n_probes']} probes, face {report['face_px']} px, "
        f"chance top-1 = {chance:.3f} (2x chance = {2 * chance:.3f}). Cells: {metric} "
        f"(TAR at FAR {results[0]['far']:g} in brackets).",
        "",
        "| setting | " + " | ".join(attackers) + " |",
        "|---|" + "---|" * len(attackers),
    ]
    for s in settings:
        row = []
        for a in attackers:
            r = cells.get((s, a))
            row.append("" if r is None else f"{r[metric]:.3f} ({r['tar']:.2f})")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def mechanism_table(report: dict) -> str:
    lines = [
        "| eps_pix claimed | m_pixels | cell | noise calibrated to | lower bound | confidence | event | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in report["audits"] + report.get("controls", []):
        control = a["eps_true_noise"] != a["eps_claimed"]
        verdict = ("flagged (as it must be)" if not a["passed"] else "NOT FLAGGED") if control else (
            "passed" if a["passed"] else "FAILED")
        lines.append(
            f"| {a['eps_claimed']:g} | {a['m_pixels']} | {a['cell_size']} px | eps {a['eps_true_noise']:g}"
            f"{' (broken: half the noise)' if control else ''} | {a['eps_lower_bound']:.3f} | "
            f"{a['confidence']:.2f} | {a['event']} | {verdict} |"
        )
    return "\n".join(lines)
