"""RUN/report/index.html: everything `nhr report` computes, on one static page.

No script: the page opens from disk or object storage in any browser. Every string a model
wrote (instructions, prompts, failure reasons, model names, the config) goes through
`html.escape`. The gallery stays light whatever the run's size: a bounded sample per group of
192-pixel thumbnails, loaded lazily, with the group's full count next to it.
"""

from __future__ import annotations

import html
import io
from collections import defaultdict
from typing import Any

from nhr.analysis.rejections import (
    Rejections,
    check_of,
    deciding_scores,
    reason_words,
    rows_apart,
    sample_id,
    sample_rejections,
)
from nhr.analysis.survival import remaining_words
from nhr.ids import unit_interval
from nhr.records import OK
from nhr.store import RunStore

GALLERY_PER_GROUP = 6
REJECTED_PER_STAGE = 8
THUMBNAIL = 192

e = html.escape

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1300px; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
td, th { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.state { padding: .1rem .5rem; border-radius: .3rem; color: #fff; }
.state.finished { background: #2e7d32; } .state.mining { background: #1f5fa8; }
.state.stopped { background: #c0392b; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr));
  gap: 1rem; align-items: start; }
.card { margin: 0; border: 1px solid #ddd; padding: .5rem; }
.pair { display: grid; grid-template-columns: repeat(2, minmax(0, 192px)); gap: 4px; }
.pair img { width: 100%; height: auto; max-height: 192px; object-fit: contain;
  background: #f4f4f4; }
.instr { font-weight: 600; margin: .3rem 0; } .meta { color: #555; margin: .15rem 0;
  font-size: .85rem; } .id { font-family: ui-monospace, monospace; color: #888; }
.why { color: #a33; }
details pre { background: #f6f6f6; padding: .6rem; overflow: auto; max-height: 30rem; }
.note { color: #555; }
"""


class Thumbnails:
    """The small PNG copies of images in report/images, so the gallery stays light.

    A thumbnail is named by its image's digest, so one a previous report wrote is reused as it
    is; the ones this page uses are remembered, and `prune` removes the others once the page is
    written (a killed report leaves the old page with all its images, or the new one)."""

    def __init__(self, store: RunStore, out: str) -> None:
        self.store = store
        self.folder = f"{out}/images"
        self.used: set[str] = set()

    def name(self, digest: str) -> str:
        from PIL import Image

        file = f"{digest[:16]}.png"
        key = f"{self.folder}/{file}"
        if file not in self.used and not self.store.storage.exists(key):
            with Image.open(io.BytesIO(self.store.images.get(digest))) as image:
                image = image.convert("RGB")
                image.thumbnail((THUMBNAIL, THUMBNAIL))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
            self.store.write_bytes(key, buffer.getvalue())
        self.used.add(file)
        return f"images/{file}"

    def prune(self) -> None:
        """Remove the files of the images folder this page does not show (earlier reports')."""
        for file in self.store.storage.names(self.folder):
            if file not in self.used:
                self.store.storage.delete(f"{self.folder}/{file}")


def _card(
    thumbs: Thumbnails,
    images: list[tuple[str, str]],
    caption: str,
    details: list[str],
    ident: str,
    why: str | None = None,
) -> str:
    """A figure: the images given as (digest, alt), the instruction, detail lines, the id."""
    pictures = "".join(
        f'<img src="{e(thumbs.name(digest))}" alt="{e(alt)}" loading="lazy" width="{THUMBNAIL}">'
        for digest, alt in images
        if digest
    )
    lines = "".join(f'<p class="meta">{e(line)}</p>' for line in details)
    reason = f'<p class="meta why">{e(why)}</p>' if why else ""
    return (
        f'<figure class="card"><div class="pair">{pictures}</div>'
        f'<figcaption><p class="instr">{e(caption)}</p>{reason}{lines}'
        f'<p class="meta id">id {e(ident)}</p></figcaption></figure>'
    )


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.1%}"


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _scores(scores: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, bool):  # a yes/no answer (no_unwanted_changes, pleasing)
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    return ", ".join(f"{key.replace('_', ' ')} {show(value)}" for key, value in scores.items())


def header_html(summary: dict[str, Any]) -> str:
    header = summary["header"]
    models = "".join(
        f"<tr><td>{e(role)}</td><td>{e(name)}</td></tr>" for role, name in header["models"].items()
    )
    thresholds = header["thresholds"]
    adherence, aesthetics = thresholds["validator"]
    # the pre-filter's rules are plain text (the dataset card has them too): >= reads ≥ here
    lines = [e(rule).replace("&gt;=", "&ge;") for rule in thresholds["prefilter"]]
    lines.append(f"validator: adherence &ge; {adherence:g}, aesthetics &ge; {aesthetics:g}")
    for operation, pair in thresholds["per_operation"].items():
        lines.append(f"{e(operation)}: {e(str(pair))}")
    if "backward" in thresholds:
        lines.append(
            "backward filter: adherence &ge; {:g}, aesthetics &ge; {:g}".format(
                *thresholds["backward"]
            )
        )
    state = summary["state"]
    # the badge says the state; the words go on after it ("mining (pid 12)" -> "(pid 12)")
    words = summary["state_words"].removeprefix(state).strip()
    return f"""<section id="run">
<p>Run state: <span class="state {e(state)}">{e(state)}</span> {e(words)}</p>
<p>nhr {e(header["nhr_version"])} · seed {e(str(header["seed"]))} ·
{header["prompts"]:,} prompts · released: {summary["released"] or 0:,}</p>
<table><tr><th>role</th><th>model</th></tr>{models}</table>
<p>Thresholds:</p><ul>{"".join(f"<li>{line}</li>" for line in lines)}</ul>
<details><summary>Config</summary><pre>{e(header["config_yaml"])}</pre></details>
</section>"""


def survival_html(summary: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{e(r['step'])}</td><td class=n>{_pct(r['change'])}</td>"
        f"<td class=n>{e(remaining_words(r))}</td>"
        f"<td class=n>{_pct(r['reference_change'])}</td></tr>"
        for r in summary["survival"]
    )
    ratio = summary["released_per_forward"]
    return (
        '<h2 id="survival">Survival</h2><table><tr><th>stage</th><th class=n>change</th>'
        f"<th class=n>remaining</th><th class=n>reference</th></tr>{rows}</table>"
        + (
            ""
            if ratio is None
            else f"<p>Released / forward triplets: {ratio:.2f} (reference run: 2.21).</p>"
        )
    )


def curve_html(summary: dict[str, Any], plot: bool) -> str:
    from nhr.analysis.report import knees_sentence, yield_sentence

    curve = summary["survival_curve"]
    parts = ['<h2 id="curve">Survival curve S(T)</h2>']
    if not curve["pool"]:
        parts.append(
            '<p id="no-pool">No validated candidates yet: S(T) is drawn once the validator has '
            "judged some.</p>"
        )
        return "".join(parts)
    if plot:
        parts.append('<img src="survival_curve.png" alt="survival curve S(T)" width="704">')
    if curve["suggested_threshold"] is None:
        parts.append(
            "<p>No clear cliff in S(T) yet: too few validated candidates or a flat curve, so "
            "no threshold is suggested.</p>"
        )
    else:
        parts.append(
            f'<p id="knees">{e(knees_sentence(curve))} Pool: {curve["pool"]:,} validated '
            "candidates.</p>"
        )
        parts.append(f'<p id="yield-cost">{e(yield_sentence(curve) or "")}</p>')
    return "".join(parts)


def estimate_html(summary: dict[str, Any]) -> str:
    estimate = summary["estimate"]
    if not estimate:
        return (
            '<h2 id="estimate">Compute estimate</h2><p>No estimate: the run has released '
            "nothing yet.</p>"
        )
    rows = "".join(
        f"<tr><td>{e(s['stage'])}</td><td class=n>{s['calls_per_released']:.3f}</td>"
        f"<td class=n>{s['expected_calls']:,}</td><td class=n>{s['expected_model_seconds']:,}"
        "</td></tr>"
        for s in estimate["stages"]
    )
    return (
        f'<h2 id="estimate">Compute estimate for {estimate["target_released"]:,} released '
        f"triplets</h2><p>This run released {estimate['measured_released']:,}. At its rates "
        f"the target takes about <strong>{estimate['prompts_needed']:,} prompts</strong> and "
        f"{estimate['calls_per_released']:.2f} model calls per released triplet "
        f"({estimate['editor_calls_per_released'] or 0:.2f} of them editor calls).</p>"
        "<table><tr><th>stage</th><th class=n>calls per released</th>"
        f"<th class=n>expected calls</th><th class=n>expected model-seconds</th></tr>{rows}"
        "</table>"
    )


def categories_html(summary: dict[str, Any]) -> str:
    from nhr.analysis.report import count_text

    rows = "".join(
        f"<tr><td>{e(c['category'])}</td><td class=n>{count_text(c['attempts'])}</td>"
        f"<td class=n>{_share(c['pass_rate']) or '–'}</td><td class=n>{count_text(c['pairs'])}</td>"
        f"<td class=n>{count_text(c['forward'])}</td><td class=n>{count_text(c['released'])}</td></tr>"
        for c in summary["categories"]
    )
    return (
        '<h2 id="categories">Per category</h2><p class="note">Single operations, then '
        "composites (&ldquo;A &amp; B&rdquo;: undo A, then do B), which are made from released "
        "pairs and so have no editor attempts of their own. Pass rate: the share of the editor "
        "attempts the validator passed. &ndash;: that stage has finished nothing yet.</p>"
        "<table><tr><th>category</th>"
        "<th class=n>attempts</th><th class=n>pass rate</th><th class=n>pairs</th>"
        f"<th class=n>forward</th><th class=n>released</th></tr>{rows}</table>"
    )


def reasons_html(summary: dict[str, Any]) -> str:
    if not summary["reasons"]:
        return '<h2 id="reasons">Drops and failures per stage</h2><p>None.</p>'
    rows = "".join(
        f"<tr><td>{e(r['stage'])}</td><td>{e(r['outcome'])}</td><td>{e(r['reason'])}</td>"
        f"<td>{e(r['meaning'])}</td><td class=n>{r['count']:,}</td>"
        f"<td class=n>{_share(r['share_of_stage_input'])}</td></tr>"
        for r in summary["reasons"]
    )
    return (
        '<h2 id="reasons">Drops and failures per stage</h2><p class="note">What each stage '
        "counted (report/stats.json, as <code>nhr status</code> shows it): sources, candidates, "
        "triplets, or composite pairs for compose.</p><table><tr><th>stage</th>"
        "<th>outcome</th><th>reason</th><th>meaning</th><th class=n>count</th>"
        f"<th class=n>of stage input</th></tr>{rows}</table>"
    )


def gallery_html(store: RunStore, release: str, thumbs: Thumbnails) -> str:
    from nhr.analysis.report import finished_rows

    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in finished_rows(store, release):
        if row["status"] == OK:
            groups[(row["kind"], row["category"])].append(row)
    sections = []
    for (kind, category), rows in sorted(groups.items(), key=_gallery_order):
        shown = sorted(rows, key=lambda r: unit_interval("gallery", r["triplet_id"]))
        shown = shown[:GALLERY_PER_GROUP]
        cards = [
            _card(
                thumbs,
                [(r["source_image"], "source"), (r["edited_image"], "edited")],
                r["instruction"],
                [f"adherence {r['adherence']}, aesthetics {r['aesthetics']}"],
                r["triplet_id"],
            )
            for r in shown
        ]
        sections.append(
            f"<h3>{e(kind)} · {e(category)} <small>({len(shown)} of {len(rows):,})</small></h3>"
            f'<div class="grid">{"".join(cards)}</div>'
        )
    return '<h2 id="released">Released triplets</h2>' + ("".join(sections) or "<p>none yet</p>")


# The gallery shows what was mined, then what augmentation added to it.
KIND_ORDER = {"forward": 0, "inverse": 1, "composite": 2}


def _gallery_order(group: tuple[tuple[str, str], list]) -> tuple:
    from nhr.analysis.report import category_sort_key

    (kind, category), _ = group
    return KIND_ORDER.get(kind, len(KIND_ORDER)), kind, category_sort_key(category)


def _below(row: dict[str, Any], pair: list[float] | None) -> str:
    """Which pre-filter score fell below which threshold, e.g. "aesthetics 3 < 3.5"."""
    if not pair:
        return ""
    below = [
        f"{name} {row[name]:g} < {low:g}"
        for name, low in zip(("adherence", "aesthetics"), pair)
        if row.get(name) is not None and row[name] < low
    ]
    return ": " + ", ".join(below) if below else ""


def _rejected_card(
    thumbs: Thumbnails, row: dict[str, Any], found: Rejections, thresholds: dict[str, Any]
) -> str:
    candidate = found.candidates.get(row.get("candidate_id") or "", {})
    source = found.sources.get(row.get("source_id") or "", {})
    source_image = row.get("source_image") or candidate.get("source_image") or source.get("image")
    edited_image = row.get("edited_image") or candidate.get("edited_image")
    caption = row.get("instruction") or candidate.get("instruction")
    if not caption:  # a source-level row (gate, generate): show its prompt
        prompt = found.prompts.get(row.get("prompt_id") or source.get("prompt_id") or "", {})
        caption = f"prompt: {prompt.get('prompt', '(unknown prompt)')}"
    reason = row.get("reason")
    why = f"{row['status']}: {reason or ''} — {reason_words(reason)}"
    if reason == "low_prefilter_scores":
        why += _below(row, thresholds.get("prefilter_scores"))
    details = []
    scores = deciding_scores(row)
    if scores:
        details.append(_scores(scores))
    if row.get("kept_candidate"):
        details.append(f"kept instead: {row['kept_candidate']}")
    return _card(
        thumbs,
        [(source_image, "source"), (edited_image, "edited")],
        caption,
        details,
        sample_id(row),
        why=why,
    )


def _tally(stage: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """A stage's rejected rows per reason, under the drops table's names; where the rows
    count something else than the drops table (composite attempts, pairs), it says so."""
    counted = {
        (r["outcome"], r["reason"]): r["count"] for r in summary["reasons"] if r["stage"] == stage
    }
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        counts[(row["status"], row.get("reason") or "")] += 1
    entries = []
    # in the drops table's order: most frequent first
    for (status, reason), count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        entry = f"{status}: {reason} {count:,}"
        if counted.get((status, reason)) != count:
            entry += " " + rows_apart(stage, reason, counted.get((status, reason)))
        entries.append(entry)
    return "; ".join(entries)


def rejected_html(thumbs: Thumbnails, found: Rejections, summary: dict[str, Any]) -> str:
    parts = [
        '<h2 id="rejected">Rejected examples</h2><p class="note">For every stage that '
        f"rejected something: up to {REJECTED_PER_STAGE} examples per check, spread over its "
        "reasons, with the scores that decided. Reasons and counts are the drops table's, "
        "unless said otherwise.</p>"
    ]
    thresholds = summary["header"]["thresholds"]
    for stage, rows in found.by_stage.items():
        checks: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            checks[check_of(stage, row)].append(row)
        parts.append(
            f'<h3 id="rejected-{e(stage)}">{e(stage)}</h3>'
            f'<p class="note tally">{e(_tally(stage, rows, summary))}</p>'
        )
        for check, members in sorted(checks.items()):
            cards = [
                _rejected_card(thumbs, row, found, thresholds)
                for row in sample_rejections(members, REJECTED_PER_STAGE, f"rejected-{stage}")
            ]
            title = f"<h4>{e(check)} <small>({len(members):,})</small></h4>" if check else ""
            parts.append(f'{title}<div class="grid">{"".join(cards)}</div>')
    if len(parts) == 1:
        parts.append("<p>none</p>")
    return "".join(parts)


def write_page(
    store: RunStore,
    release: str,
    summary: dict[str, Any],
    found: Rejections,
    out: str,
    plot: bool,
) -> None:
    thumbs = Thumbnails(store, out)
    sections = [
        header_html(summary),
        survival_html(summary),
        curve_html(summary, plot),
        estimate_html(summary),
        categories_html(summary),
        reasons_html(summary),
        gallery_html(store, release, thumbs),
        rejected_html(thumbs, found, summary),
    ]
    notice = (
        ""
        if summary["state"] == "finished"
        else f'<p class="note"><strong>{e(summary["state"])}:</strong> partial results, the '
        "numbers cover the shards finished so far.</p>"
    )
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>nhr report</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>nhr run report</h1>\n{notice}"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    store.write_bytes(f"{out}/index.html", page.encode("utf-8"))
    # only now that the new page is in place: drop what it no longer shows (thumbnails of an
    # earlier report, a plot an empty pool no longer has), so a kill never breaks a page
    thumbs.prune()
    if not plot:
        store.storage.delete(f"{out}/survival_curve.png")
