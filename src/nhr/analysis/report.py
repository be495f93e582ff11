"""`nhr report RUN`: survival table, survival curve, compute estimate, per-category yield and
an HTML gallery, written to RUN/report/. Works on a finished run and on one still mining (it
then reads the shards finished so far and says so)."""

from __future__ import annotations

import html
import io
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from nhr.analysis.estimate import compute_estimate, estimate_markdown
from nhr.analysis.survival import released_per_forward, survival_markdown, survival_table
from nhr.analysis.thresholds import find_knees, grid, survival_curve
from nhr.config import parse_config
from nhr.ids import unit_interval
from nhr.records import OK
from nhr.store import RunStore

GALLERY_PER_GROUP = 3
REJECTED_SAMPLE = 24
THUMBNAIL = 192


def finished_rows(store: RunStore, stage: str) -> list[dict[str, Any]]:
    """Rows of the shards that are finished: all of them for a finished global stage,
    otherwise those with a completion marker (so a report on a live run reads no half shard)."""
    if store.is_done(stage):
        shards: Any = range(int((store.read_marker("design") or {}).get("shards", 0)))
    else:
        shards = store.done_shards(stage)
    return [row for shard in shards for row in store.read_rows(stage, shard)]


def build_report(run_dir: str | Path, target: int = 100_000) -> dict[str, Any]:
    from nhr.pipeline import release_stage
    from nhr.run import collect_stats

    store = RunStore(run_dir)
    raw_config = store.read_config()
    if raw_config is None:
        raise FileNotFoundError(f"{run_dir} is not an nhr run directory (no config.yaml)")
    config = parse_config(raw_config)
    stats = collect_stats(store, config)
    out = "report"  # folder of the run directory, on local disk or object storage

    table = survival_table(stats)
    ratio = released_per_forward(stats)
    validated = [r for r in finished_rows(store, "validate") if r["adherence"] is not None]
    adherence = np.array([r["adherence"] for r in validated])
    aesthetics = np.array([r["aesthetics"] for r in validated])
    thresholds = grid()
    curve = survival_curve(adherence, aesthetics, thresholds)
    knees = find_knees(thresholds, curve, len(validated))
    curve_data = {
        "pool": len(validated),
        "thresholds": thresholds.tolist(),
        "survival": [round(float(v), 6) for v in curve],
        "knees": None if knees is None else [knees.first, knees.second],
        "knee_changes": None if knees is None else [knees.first_change, knees.second_change],
        "suggested_threshold": None if knees is None else knees.suggested,
        "configured_thresholds": [
            config.validate_.adherence_threshold,
            config.validate_.aesthetics_threshold,
        ],
    }
    estimate = compute_estimate(stats, config, target)
    categories = category_yield(store, release_stage(config))
    summary = {
        "complete": stats["complete"],
        "released": (stats["dataset"] or {}).get("rows"),
        "released_per_forward": ratio,
        "survival": table,
        "survival_curve": curve_data,
        "estimate": estimate,
        "categories": categories,
    }
    store.write_json(f"{out}/stats.json", stats)
    store.write_json(f"{out}/survival.json", {"rows": table, "released_per_forward": ratio})
    store.write_json(f"{out}/survival_curve.json", curve_data)
    store.write_json(f"{out}/categories.json", categories)
    if estimate:
        store.write_json(f"{out}/estimate.json", estimate)
    plot = plot_curve(thresholds, curve, knees, store, f"{out}/survival_curve.png")
    markdown = report_markdown(summary, plot)
    store.write_bytes(f"{out}/report.md", markdown.encode("utf-8"))
    store.write_bytes(f"{out}/survival.md", (survival_markdown(table) + "\n").encode("utf-8"))
    write_gallery(store, release_stage(config), summary, out, plot)
    return summary


def category_yield(store: RunStore, release: str) -> list[dict[str, Any]]:
    """Per operation: editor attempts, validator passes, forward triplets and releases."""
    from nhr import taxonomy

    per: dict[str, Counter] = defaultdict(Counter)
    candidates = finished_rows(store, "edit")
    operation_of = {c["candidate_id"]: c["operation"] for c in candidates}
    for candidate in candidates:
        per[candidate["operation"]]["attempts"] += 1
    for row in finished_rows(store, "validate"):
        if row["status"] == OK:
            per[operation_of[row["candidate_id"]]]["validated"] += 1
    for row in finished_rows(store, "select"):
        per[row["operation"]]["pairs"] += 1
        if row["status"] == OK:
            per[row["operation"]]["forward"] += 1
    for row in finished_rows(store, release):
        if row["status"] == OK:
            per[row["operation"]]["released"] += 1
    rows = []
    for operation, counts in sorted(per.items()):
        label = (
            taxonomy.OPERATIONS[operation].label if operation in taxonomy.OPERATIONS else operation
        )
        rows.append(
            {
                "operation": operation,
                "category": label,
                **{k: counts[k] for k in ("attempts", "validated", "pairs", "forward", "released")},
                "pass_rate": counts["validated"] / counts["attempts"]
                if counts["attempts"]
                else None,
                "pair_success": counts["forward"] / counts["pairs"] if counts["pairs"] else None,
            }
        )
    return rows


def plot_curve(thresholds, curve, knees, store: RunStore, key: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=110)
    axis.plot(thresholds, curve, marker=".", color="#1f5fa8")
    if knees is not None:
        for knee in (knees.first, knees.second):
            axis.axvline(knee, color="#999", linestyle=":", linewidth=1)
        axis.axvline(
            knees.suggested,
            color="#c0392b",
            linewidth=1.2,
            label=f"suggested T = {knees.suggested:.2f}",
        )
        axis.legend(loc="lower left")
    axis.set_xlabel("threshold T (both scores >= T)")
    axis.set_ylabel("share of validated pool")
    axis.set_title("Survival curve S(T)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    store.write_bytes(key, buffer.getvalue())
    return True


def report_markdown(summary: dict[str, Any], plot: bool) -> str:
    curve = summary["survival_curve"]
    lines = [
        "# nhr run report",
        "",
        "Run state: "
        + (
            "finished."
            if summary["complete"]
            else "**still mining** — numbers cover the shards finished so far."
        ),
        "",
        "## Survival",
        "",
        survival_markdown(summary["survival"]),
        "",
    ]
    if summary["released_per_forward"] is not None:
        lines += [
            f"Released / forward triplets: **{summary['released_per_forward']:.2f}** "
            "(reference run: 2.21).",
            "",
        ]
    lines += ["## Survival curve", ""]
    if curve["suggested_threshold"] is not None:
        lines += [
            f"Knees at T = {curve['knees'][0]:.2f} and {curve['knees'][1]:.2f}; suggested "
            f"threshold (their midpoint): **{curve['suggested_threshold']:.2f}** "
            f"(configured: {curve['configured_thresholds'][0]}).",
            "",
        ]
    else:
        lines += ["No clear cliff in S(T) yet: too few validated candidates or a flat curve.", ""]
    if plot:
        lines += ["![S(T)](survival_curve.png)", ""]
    if summary["estimate"]:
        lines += ["## Compute estimate", "", estimate_markdown(summary["estimate"]), ""]
    lines += [
        "## Per category",
        "",
        "| category | attempts | pass rate | pairs | forward | released |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in summary["categories"]:
        rate = "" if c["pass_rate"] is None else f"{c['pass_rate']:.1%}"
        lines.append(
            f"| {c['category']} | {c['attempts']} | {rate} | {c['pairs']} | "
            f"{c['forward']} | {c['released']} |"
        )
    return "\n".join(lines) + "\n"


def _thumbnail(store: RunStore, digest: str, out: str) -> str:
    """A small PNG copy of an image in report/images, so the gallery stays light."""
    from PIL import Image

    name = f"images/{digest[:16]}.png"
    key = f"{out}/{name}"
    if not store.storage.exists(key):
        with Image.open(io.BytesIO(store.images.get(digest))) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
        store.write_bytes(key, buffer.getvalue())
    return name


def _sample(rows: list[dict[str, Any]], key: str, count: int, salt: str) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: unit_interval(salt, r[key]))[:count]


def _card(store: RunStore, out: str, source: str, edited: str, caption: str, detail: str) -> str:
    e = html.escape
    return (
        '<figure class="card"><div class="pair">'
        f'<img src="{e(_thumbnail(store, source, out))}" alt="source">'
        f'<img src="{e(_thumbnail(store, edited, out))}" alt="edited"></div>'
        f'<figcaption><p class="instr">{e(caption)}</p><p class="meta">{e(detail)}</p>'
        "</figcaption></figure>"
    )


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.1%}"


def write_gallery(
    store: RunStore, release: str, summary: dict[str, Any], out: str, plot: bool
) -> None:
    e = html.escape
    released = [r for r in finished_rows(store, release) if r["status"] == OK]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in released:
        groups[(row["kind"], row["category"])].append(row)
    sections = []
    for (kind, category), rows in sorted(groups.items()):
        cards = [
            _card(
                store,
                out,
                r["source_image"],
                r["edited_image"],
                r["instruction"],
                f"adherence {r['adherence']}, aesthetics {r['aesthetics']}",
            )
            for r in _sample(rows, "triplet_id", GALLERY_PER_GROUP, "gallery")
        ]
        sections.append(
            f"<h3>{e(kind)} · {e(category)} <small>({len(rows)})</small></h3>"
            f'<div class="grid">{"".join(cards)}</div>'
        )
    candidates = {c["candidate_id"]: c for c in finished_rows(store, "edit")}
    rejected = [
        {
            **candidates[r["candidate_id"]],
            "why": r["reason"],
            "scores": f"adherence {r.get('adherence')}, aesthetics {r.get('aesthetics')}",
        }
        for stage in ("prefilter", "validate")
        for r in finished_rows(store, stage)
        if r["status"] != OK
        and r["candidate_id"] in candidates
        and candidates[r["candidate_id"]]["edited_image"]
    ]
    rejected_cards = [
        _card(
            store,
            out,
            r["source_image"],
            r["edited_image"],
            r["instruction"],
            f"rejected: {r['why']} — {r['scores']}",
        )
        for r in _sample(rejected, "candidate_id", REJECTED_SAMPLE, "rejected")
    ]
    state = "finished" if summary["complete"] else "still mining: partial results"
    rows_html = "".join(
        f"<tr><td>{e(r['step'])}</td><td>{_pct(r['change'])}</td>"
        f"<td>{r['remaining']:,} {e(r['unit'])}</td><td>{_pct(r['reference_change'])}</td></tr>"
        for r in summary["survival"]
    )
    ratio = summary["released_per_forward"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nhr report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .25rem .6rem; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
.card {{ width: 400px; margin: 0; border: 1px solid #ddd; padding: .5rem; }}
.pair img {{ width: 192px; height: auto; margin-right: 4px; }}
.instr {{ font-weight: 600; margin: .3rem 0; }} .meta {{ color: #666; margin: 0; font-size: .85rem; }}
</style></head><body>
<h1>nhr run report</h1>
<p>Run state: <strong>{e(state)}</strong>. Released: {summary["released"] or 0}.
Released / forward: {"" if ratio is None else f"{ratio:.2f}"}.</p>
<h2>Survival</h2>
<table><tr><th>stage</th><th>change</th><th>remaining</th><th>reference</th></tr>{rows_html}</table>
{'<h2>Survival curve</h2><img src="survival_curve.png" alt="survival curve">' if plot else ""}
<h2>Released triplets</h2>{"".join(sections) or "<p>none yet</p>"}
<h2>Rejected candidates</h2><div class="grid">{"".join(rejected_cards) or "<p>none</p>"}</div>
</body></html>
"""
    store.write_bytes(f"{out}/index.html", page.encode("utf-8"))
