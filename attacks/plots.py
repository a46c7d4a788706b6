"""The re-identification report as a PNG: top-1 identification against eps_pix.

One panel per (attacker, cell size); in each, one line per m_pixels for the dp releases, with plain
pixelization and Gaussian blur at the same cell size as dashed/dotted reference lines, the clean accuracy
as the ceiling and chance as the floor.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

M_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def _cell_label(result: dict) -> str:
    if result["setting"] == "dp" and result["layout"] != "fixed":
        return f"adaptive ({result['layout']})"
    return f"{result['cell_size']}px"


def plot_reid(report: dict, out: Path, metric: str = "top1") -> None:
    results = report["results"]
    attackers = sorted({(r["attacker"], r["frames"]) for r in results}, key=lambda a: (a[1], a[0]))
    dp = [r for r in results if r["setting"] == "dp"]
    cells = sorted({_cell_label(r) for r in dp}, key=lambda c: (not c[0].isdigit(), int(c[:-2]) if c[0].isdigit() else 0))
    if not cells:
        cells = sorted({f"{r['cell_size']}px" for r in results if r["cell_size"]}) or ["clean"]
    m_values = sorted({r["m_pixels"] for r in dp})
    fig, axes = plt.subplots(
        len(attackers), len(cells), figsize=(max(7.0, 3.4 * len(cells)), 1.0 + 2.6 * len(attackers)), squeeze=False,
        sharex=True, sharey=True,
    )
    for i, (attacker, frames) in enumerate(attackers):
        mine = [r for r in results if r["attacker"] == attacker and r["frames"] == frames]
        # the multi-frame attacker's references are its single-frame model's: averaging repeated
        # deterministic images (clean, plain pixelization, blur) changes nothing
        ref_attacker = attacker.removeprefix("multiframe-")
        clean = next((r[metric] for r in results if r["setting"] == "clean" and r["attacker"] == ref_attacker), None)
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            ax.axhline(report["chance"] if metric == "top1" else report.get("chance_top5", 0), color="black",
                       lw=0.8, ls=(0, (1, 2)), label="chance")
            ax.axhline(2 * report["chance"], color="grey", lw=0.6, ls=(0, (1, 4)), label="2x chance")
            if clean is not None:
                ax.axhline(clean, color="tab:green", lw=1.2, label="clean")
            if cell.endswith("px"):
                size = int(cell[:-2])
                ref = [r for r in results if r["cell_size"] == size and r["attacker"] == ref_attacker]
                for kind, style, colour in (("pixelize", "--", "tab:red"), ("blur", ":", "tab:gray")):
                    val = next((r[metric] for r in ref if r["setting"] == kind), None)
                    if val is not None:
                        ax.axhline(val, color=colour, lw=1.2, ls=style, label=f"plain {kind}")
            for k, m in enumerate(m_values):
                pts = sorted(
                    (r["eps_pix"], r[metric])
                    for r in mine
                    if r["setting"] == "dp" and r["m_pixels"] == m and _cell_label(r) == cell
                )
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, marker="o", ms=3, color=M_COLOURS[k % len(M_COLOURS)], label=f"dp m={m}")
            ax.set_xscale("log")
            ax.set_ylim(0, 1.02)
            if i == 0:
                ax.set_title(f"cells {cell}", fontsize=9)
            if j == 0:
                name = attacker if frames == 1 else f"{attacker} (k={frames})"
                ax.set_ylabel(f"{name}\n{metric}", fontsize=8)
            if i == len(attackers) - 1:
                ax.set_xlabel("eps_pix", fontsize=8)
            ax.tick_params(labelsize=7)
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
            labels.setdefault(lab, lab)
    fig.legend(handles.values(), labels.values(), loc="lower center", ncol=min(4, len(handles)), fontsize=8,
               frameon=False)
    fig.suptitle(
        f"Face re-identification: {report['n_identities']} identities, {report['n_probes']} probes, "
        f"face {report['face_px']} px",
        fontsize=10,
    )
    legend_rows = -(-len(handles) // 4)
    fig.tight_layout(rect=(0, 0.035 * legend_rows * 3 / (1.0 + 2.6 * len(attackers)), 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
