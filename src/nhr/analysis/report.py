"""`nhr report RUN`: survival table, survival curve, compute estimate, per-category yield and
an HTML gallery, written to RUN/report/. Works on a finished run and on one still mining (it
then reads the shards finished so far and says so)."""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from nhr.analysis.estimate import compute_estimate, estimate_markdown
from nhr.analysis.rejections import collect_rejections
from nhr.analysis.survival import released_per_forward, survival_markdown, survival_table
from nhr.analysis.thresholds import find_knees, grid, survival_curve
from nhr.config import parse_config
from nhr.records import OK
from nhr.store import RunStore


def finished_shards(store: RunStore, stage: str) -> list[int]:
    """The shards of a stage that are finished: all of them for a finished global stage,
    otherwise those with a completion marker (so a report on a live run reads no half shard)."""
    if store.is_done(stage):
        return list(range(int((store.read_marker("design") or {}).get("shards", 0))))
    return list(store.done_shards(stage))


def finished_rows(store: RunStore, stage: str) -> list[dict[str, Any]]:
    """Rows of the finished shards of a stage (see finished_shards)."""
    return [row for shard in finished_shards(store, stage) for row in store.read_rows(stage, shard)]


def has_tables(store: RunStore, stage: str) -> bool:
    return any(n.endswith(".parquet") for n in store.storage.names(store.stage_folder(stage)))


# The dataset size `nhr report` estimates the compute for unless told (--target).
DEFAULT_TARGET = 100_000


def build_report(run_dir: str | Path, target: int = DEFAULT_TARGET) -> dict[str, Any]:
    from nhr.pipeline import release_stage
    from nhr.run import collect_stats
    from nhr.scheduler import target_mix_report
    from nhr.status import run_state

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
    configured = (config.validate_.adherence_threshold, config.validate_.aesthetics_threshold)
    curve_data = {
        "pool": len(validated),
        "thresholds": thresholds.tolist(),
        "survival": [round(float(v), 6) for v in curve],
        "knees": None if knees is None else [knees.first, knees.second],
        # the relative fall of S over the one grid step that ends at each knee (how it was
        # found), and S at each knee: the share of the pool still kept there
        "knee_changes": None if knees is None else [knees.first_change, knees.second_change],
        "knee_shares": None
        if knees is None
        else [survival_at(thresholds, curve, knee) for knee in (knees.first, knees.second)],
        "suggested_threshold": None if knees is None else knees.suggested,
        "configured_thresholds": list(configured),
        # the yield of each operating point: the share of the validated pool it keeps
        "configured_share": kept_share(adherence, aesthetics, *configured),
        "suggested_share": None
        if knees is None
        else kept_share(adherence, aesthetics, knees.suggested, knees.suggested),
    }
    estimate = compute_estimate(stats, config, target)
    categories = category_yield(store, release_stage(config))
    state, state_words = run_state(run_dir, stats["complete"])
    summary = {
        "complete": stats["complete"],
        "state": state,
        "state_words": state_words,
        "released": (stats["dataset"] or {}).get("rows"),
        "released_per_forward": ratio,
        "survival": table,
        "survival_curve": curve_data,
        "estimate": estimate,
        "categories": categories,
        "target_mix": target_mix_report(config, categories),  # None without brief.target_mix
        "reasons": stage_reasons(stats),
        "header": run_header(config, raw_config),
    }
    store.write_json(f"{out}/stats.json", stats)
    store.write_json(f"{out}/survival.json", {"rows": table, "released_per_forward": ratio})
    store.write_json(f"{out}/survival_curve.json", curve_data)
    store.write_json(f"{out}/categories.json", categories)
    store.write_json(f"{out}/reasons.json", summary["reasons"])
    if estimate:
        store.write_json(f"{out}/estimate.json", estimate)
    plot = len(validated) > 0 and plot_curve(
        thresholds, curve, knees, configured, store, f"{out}/survival_curve.png"
    )
    markdown = report_markdown(summary, plot)
    store.write_bytes(f"{out}/report.md", markdown.encode("utf-8"))
    store.write_bytes(f"{out}/survival.md", (survival_markdown(table) + "\n").encode("utf-8"))
    from nhr.analysis.report_page import write_page

    # the stages of this run, in order, that keep tables (export writes none)
    stages = [stage["stage"] for stage in stats["stages"] if has_tables(store, stage["stage"])]
    rejected = collect_rejections(stages, lambda stage: finished_rows(store, stage))
    write_page(store, release_stage(config), summary, rejected, out, plot)
    return summary


def survival_at(thresholds: np.ndarray, curve: np.ndarray, threshold: float) -> float:
    """S at the grid point nearest `threshold`."""
    index = int(np.argmin(np.abs(np.asarray(thresholds) - threshold)))
    return round(float(curve[index]), 6)


def kept_share(adherence: np.ndarray, aesthetics: np.ndarray, low_adh: float, low_aes: float):
    """Share of the validated pool with both scores at or above the pair (None: empty pool)."""
    if adherence.size == 0:
        return None
    kept = (adherence >= low_adh - 1e-6) & (aesthetics >= low_aes - 1e-6)
    return round(float(kept.mean()), 6)


def yield_sentence(curve: dict[str, Any]) -> str | None:
    """What the suggested threshold costs (or gains) in yield against the configured one."""
    suggested, share = curve["suggested_threshold"], curve["suggested_share"]
    configured, configured_share = curve["configured_thresholds"], curve["configured_share"]
    if suggested is None or share is None or configured_share is None:
        return None
    pair = (
        f"{configured[0]:g}"
        if configured[0] == configured[1]
        else f"adherence {configured[0]:g} / aesthetics {configured[1]:g}"
    )
    text = (
        f"The suggested threshold {suggested:.2f} keeps {share:.1%} of the validated pool; "
        f"the configured {pair} keeps {configured_share:.1%}."
    )
    if configured_share > 0 and abs(share - configured_share) > 1e-9:
        change = share / configured_share - 1
        text += f" Moving to the suggestion would change the validator's yield by {change:+.1%}" + (
            " (fewer, stricter triplets)." if change < 0 else " (more, looser triplets)."
        )
    elif abs(share - configured_share) <= 1e-9:
        text += " Same yield: the configured threshold already sits at the suggestion."
    return text


def stage_reasons(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stage's drop and failure reasons with counts, in stage order (from stats.json,
    so any stage the run has is listed)."""
    from nhr.analysis.rejections import reason_words

    rows = []
    for stage in stats["stages"]:
        for outcome in ("dropped", "failed"):
            for reason, count in sorted(
                (stage.get(outcome) or {}).items(), key=lambda item: (-item[1], item[0])
            ):
                if not count:
                    continue
                rows.append(
                    {
                        "stage": stage["stage"],
                        "outcome": outcome,
                        "reason": reason,
                        "meaning": reason_words(reason),
                        "count": count,
                        "share_of_stage_input": count / stage["rows_in"]
                        if stage.get("rows_in")
                        else None,
                    }
                )
    return rows


def run_header(config: Any, raw_config: dict[str, Any]) -> dict[str, Any]:
    """What the run was: nhr version, seed, every model per role, thresholds, the config."""
    import yaml

    import nhr

    models = {}
    for role in type(config.models).model_fields:
        model = getattr(config.models, role)
        if model is not None:  # an optional role the run does not use
            models[role] = f"{model.backend}:{model.model}"
    validate = config.validate_
    prefilter = config.prefilter
    thresholds = {
        "prefilter": prefilter_rules(prefilter),
        # the pair low_prefilter_scores compares with, for the rejected cards (None: not asked)
        "prefilter_scores": [prefilter.min_adherence, prefilter.min_aesthetics]
        if prefilter.score
        else None,
        "validator": [validate.adherence_threshold, validate.aesthetics_threshold],
        "per_operation": {
            op: pair.model_dump(exclude_none=True)
            for op, pair in sorted(validate.thresholds.items())
        },
    }
    if config.invert.enabled and config.backward.enabled:
        thresholds["backward"] = [
            config.backward.adherence_threshold or validate.adherence_threshold,
            config.backward.aesthetics_threshold or validate.aesthetics_threshold,
        ]
    return {
        "nhr_version": nhr.__version__,
        "seed": config.run.seed,
        "prompts": config.run.prompts,
        "models": models,
        "thresholds": thresholds,
        "config_yaml": yaml.safe_dump(raw_config, sort_keys=True, allow_unicode=True),
    }


def prefilter_rules(prefilter: Any) -> list[str]:
    """The pre-filter's keep-rules (config `prefilter`) in words, for the report's header and
    the dataset card: a reader sees what `low_prefilter_scores` and the rest compared with."""
    rules = []
    check = prefilter.low_level
    if check.enabled:
        exempt = (
            "global operations"
            if check.skip_operations is None
            else ", ".join(check.skip_operations) or "none"
        )
        rules.append(
            f"low-level check: at least {check.min_changed_share:.1%} of the pixels change by "
            f"more than {check.noop_threshold} (else a no-op), and the largest connected region "
            f"of change (pixels changed by more than {check.diff_threshold}) holds at least "
            f"{check.min_component_share:.1%} of the changed pixels (exempt: {exempt})"
        )
    if prefilter.score:
        rules.append(
            f"pre-filter scores: adherence >= {prefilter.min_adherence:g} and aesthetics >= "
            f"{prefilter.min_aesthetics:g}"
        )
    questions = [
        name
        for name, asked in (
            ("no unwanted changes", prefilter.unwanted_changes),
            ("the result is pleasing", prefilter.aesthetics),
        )
        if asked
    ]
    if questions:
        rules.append("pre-filter yes/no: " + " and ".join(questions))
    return rules


def category_sort_key(category: str) -> tuple[bool, str]:
    """Single operations first, then composites ("A & B"; "a+b" when unknown), each
    alphabetically: the order of the report's and the dataset card's category tables."""
    return (" & " in category or "+" in category, category.lower())


def category_yield(store: RunStore, release: str) -> list[dict[str, Any]]:
    """Per operation: editor attempts, validator passes, forward triplets and releases."""
    per: dict[str, Counter] = defaultdict(Counter)
    operation_of = {}
    # the pass rate is over the attempts whose fate is known: those of shards the validator
    # finished (on a partial run the editor is ahead of it; none judged: no rate, not 0 %)
    judged = set(finished_shards(store, "validate"))
    for shard in finished_shards(store, "edit"):
        for candidate in store.read_rows("edit", shard):
            operation_of[candidate["candidate_id"]] = candidate["operation"]
            per[candidate["operation"]]["attempts"] += 1
            per[candidate["operation"]]["judged"] += shard in judged
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
    # a count of a stage with no finished shard yet (a partial run) is None, not 0: nothing
    # is known about it, as "not reached yet" in the survival table
    reached = {
        "attempts": True,
        "validated": bool(judged),
        "pairs": bool(finished_shards(store, "select")),
        "forward": bool(finished_shards(store, "select")),
        "released": bool(finished_shards(store, release)),
    }
    rows = []
    for operation, counts in per.items():
        rows.append(
            {
                "operation": operation,
                "category": category_label(operation),
                "composite": "+" in operation,
                **{k: counts[k] if reached[k] else None for k in reached},
                "pass_rate": counts["validated"] / counts["judged"] if counts["judged"] else None,
                "pair_success": counts["forward"] / counts["pairs"] if counts["pairs"] else None,
            }
        )
    return sorted(rows, key=lambda r: (category_sort_key(r["category"]), r["operation"]))


def count_text(value: int | None) -> str:
    """A category count as the tables show it: "–" for a stage not reached yet."""
    return "–" if value is None else f"{value:,}"


def category_label(operation: str) -> str:
    """The readable label of an operation key; a composite "a+b" reads "A & B"."""
    from nhr import taxonomy

    parts = operation.split("+")
    if all(part in taxonomy.OPERATIONS for part in parts):
        return " & ".join(taxonomy.OPERATIONS[part].label for part in parts)
    return operation


def plot_curve(thresholds, curve, knees, configured, store: RunStore, key: str) -> bool:
    """Write the S(T) figure as a PNG at `key`; False without matplotlib."""
    figure = curve_figure(thresholds, curve, knees, configured)
    if figure is None:
        return False
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    store.write_bytes(key, buffer.getvalue())
    return True


def curve_figure(thresholds, curve, knees, configured) -> Any:
    """S(T) with the configured threshold, the two knees (labelled with S there: the share of
    the pool they keep, as docs/thresholds.md quotes the paper's) and the suggested threshold
    marked; None without matplotlib. The caller draws nothing for an empty pool (S would be a
    meaningless 0 line)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    axis.plot(thresholds, curve, marker=".", color="#1f5fa8", label="S(T)", zorder=3)
    # configured: a wide pale band, suggested: a thin dashed line on top, so the two stay
    # visible when they coincide (the quickstart's 4.7 is both)
    for value, style in zip(sorted(set(configured)), ("-", "--")):
        axis.axvline(
            value,
            color="#2e7d32",
            linestyle=style,
            linewidth=4,
            alpha=0.45,
            label=f"configured T = {value:g}",
        )
    if knees is not None:
        for number, knee in enumerate((knees.first, knees.second)):
            share = survival_at(thresholds, curve, knee)
            axis.axvline(
                knee,
                color="#777",
                linestyle=":",
                linewidth=1,
                label=None if number else "knees (steepest falls of S)",
            )
            axis.annotate(
                f"knee {knee:.2f}\nS = {share:.1%}",
                xy=(knee, share),
                # below and left of the knee, under the curve, clear of the threshold lines
                xytext=(-80, -30) if number == 0 else (-80, -6),
                textcoords="offset points",
                fontsize=8,
                arrowprops={"arrowstyle": "-", "color": "#777", "linewidth": 0.8},
            )
        same = any(abs(knees.suggested - value) < 1e-9 for value in configured)
        axis.axvline(
            knees.suggested,
            color="#c0392b",
            linestyle="--",
            linewidth=1.4,
            zorder=4,
            label=f"suggested T = {knees.suggested:.2f}" + (" (= configured)" if same else ""),
        )
    axis.legend(loc="lower left", fontsize=8)
    axis.set_xlabel("threshold T (both scores >= T)")
    axis.set_ylabel("S(T): share of validated pool kept")
    axis.set_title("Survival curve S(T)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def knees_sentence(curve: dict[str, Any]) -> str:
    """Where the knees are and what S(T) keeps there, in the words of docs/thresholds.md."""
    first, second = curve["knees"]
    kept = curve["knee_shares"]
    falls = curve["knee_changes"]
    return (
        f"Knees at T = {first:.2f} and {second:.2f}, where S(T) keeps {kept[0]:.1%} and "
        f"{kept[1]:.1%} of the validated pool (down by {1 - kept[0]:.1%} and {1 - kept[1]:.1%}; "
        "the paper's knees, at 4.5 and 4.9: down by 62.1% and 84.0%). They are the steepest "
        f"falls of S over one 0.1 step ({falls[0]:+.1%} and {falls[1]:+.1%}); the suggested "
        f"threshold is their midpoint, {curve['suggested_threshold']:.2f}."
    )


def report_markdown(summary: dict[str, Any], plot: bool) -> str:
    curve = summary["survival_curve"]
    header = summary["header"]
    state = {
        "finished": "finished.",
        "mining": f"**{summary['state_words']}** — still mining: numbers cover the shards "
        "finished so far.",
        "stopped": f"**{summary['state_words']}** — numbers cover the shards finished so far.",
    }[summary["state"]]
    lines = [
        "# nhr run report",
        "",
        f"Run state: {state}",
        "",
        f"nhr {header['nhr_version']} · seed {header['seed']} · {header['prompts']:,} prompts · "
        "models: " + ", ".join(f"{role} `{name}`" for role, name in header["models"].items()),
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
    if not curve["pool"]:
        lines += [
            "No validated candidates yet: S(T) is drawn once the validator has judged some.",
            "",
        ]
    elif curve["suggested_threshold"] is not None:
        lines += [
            knees_sentence(curve) + f" Configured: {curve['configured_thresholds'][0]:g}.",
            "",
            yield_sentence(curve) or "",
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
        rate = "–" if c["pass_rate"] is None else f"{c['pass_rate']:.1%}"  # – : none judged
        counts = [count_text(c[k]) for k in ("attempts", "pairs", "forward", "released")]
        lines.append(f"| {c['category']} | {counts[0]} | {rate} | " + " | ".join(counts[1:]) + " |")
    lines += ["", "## Drops and failures per stage", ""]
    if summary["reasons"]:
        lines += ["| stage | outcome | reason | count |", "|---|---|---|---:|"]
        lines += [
            f"| {r['stage']} | {r['outcome']} | {r['reason']} | {r['count']:,} |"
            for r in summary["reasons"]
        ]
    else:
        lines.append("Nothing was dropped and nothing failed.")
    return "\n".join(lines) + "\n"
