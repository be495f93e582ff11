"""The dataset card (README.md) of a released dataset: RUN/dataset and the `hf` export.

A Hugging Face card: a YAML metadata header (licence from `export.license`, task category,
size category, the split files as `configs`) that the Hub and `huggingface_hub.DatasetCard`
read, then what a reader of the dataset needs to trust and reuse it: the thresholds and every
model per role, the survival table of the run, counts per kind, category and style, how to
load it, and how to cite the method (arXiv 2507.14119).
"""

from __future__ import annotations

from typing import Any

import yaml

from nhr.config import NhrConfig

TASK_CATEGORIES = ["image-to-image"]
TAGS = ["image-editing", "synthetic", "nhr"]
PRETTY_NAME = "Image-editing triplets mined with nhr"

CITATION = """@misc{kuprashevich2025nohumansrequired,
  title = {NoHumansRequired: Autonomous High-Quality Image Editing Triplet Mining},
  author = {Kuprashevich, Maksim and Alekseenko, Grigorii and Tolstykh, Irina and
            Fedorov, Georgii and Suleimanov, Bulat and Dokholyan, Vladimir and
            Gordeev, Aleksandr},
  year = {2025},
  eprint = {2507.14119},
  archivePrefix = {arXiv},
  url = {https://arxiv.org/abs/2507.14119}
}"""


def size_category(rows: int) -> str:
    """The Hub's size bucket (`size_categories`) for a dataset of `rows` rows."""
    if rows < 1_000:
        return "n<1K"
    bounds = [(10**k, f"{label}") for k, label in ((4, "10K"), (5, "100K"), (6, "1M"), (7, "10M"))]
    low = "1K"
    for bound, label in bounds:
        if rows < bound:
            return f"{low}<n<{label}"
        low = label
    return "n>10M"


def card_metadata(splits: dict[str, int], export: Any) -> dict[str, Any]:
    """The YAML header as a dict: the licence of `export` (the config's export section; with
    `other`, its name and link), and `configs` naming each non-empty split's files."""
    metadata: dict[str, Any] = {}
    if export.license:
        metadata["license"] = export.license
    if export.license_name:
        metadata["license_name"] = export.license_name
    if export.license_link:
        metadata["license_link"] = export.license_link
    metadata.update(
        pretty_name=PRETTY_NAME,
        task_categories=TASK_CATEGORIES,
        tags=TAGS,
        size_categories=[size_category(sum(splits.values()))],
        configs=[
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": f"data/{split}-*"}
                    for split, count in splits.items()
                    if count
                ],
            }
        ],
    )
    return metadata


def _cell(value: Any) -> str:
    # model-written text (styles, categories) must not break the markdown table
    return str(value).replace("|", "\\|").replace("\n", " ")


def _counts(title: str, counts: dict[str, int]) -> str:
    from nhr.analysis.report import category_sort_key

    names = list(counts)
    if title == "category":  # as the report orders them: single operations, then composites
        names.sort(key=category_sort_key)
    lines = [f"| {title} | triplets |", "|---|---:|"]
    lines += [f"| {_cell(name)} | {counts[name]:,} |" for name in names]
    return "\n".join(lines)


def models_table(config: NhrConfig) -> str:
    lines = ["| role | backend | model |", "|---|---|---|"]
    for role in type(config.models).model_fields:
        model = getattr(config.models, role)
        if model is None:  # an optional role this run does not use
            continue
        lines.append(f"| {role} | {model.backend} | {_cell(model.model)} |")
    return "\n".join(lines)


def thresholds_text(config: NhrConfig) -> str:
    from nhr.analysis.report import prefilter_rules

    validate = config.validate_
    # the pre-filter's rules first, in the pipeline's order (the report's header words them so)
    lines = [f"- {rule}" for rule in prefilter_rules(config.prefilter)]
    lines.append(
        f"- validator: instruction adherence >= {validate.adherence_threshold} and aesthetics "
        f">= {validate.aesthetics_threshold} (1-5 scale)"
    )
    for operation, pair in sorted(validate.thresholds.items()):
        lines.append(f"  - {operation}: {_cell(pair.model_dump(exclude_none=True))}")
    backward = config.backward
    if config.invert.enabled and backward.enabled:
        adherence = backward.adherence_threshold or validate.adherence_threshold
        aesthetics = backward.aesthetics_threshold or validate.aesthetics_threshold
        lines.append(
            f"- backward-consistency filter (inverse triplets): adherence >= {adherence}, "
            f"aesthetics >= {aesthetics}"
        )
    if config.invert.enabled and config.compose.enabled:
        lines.append(
            "- composites: "
            + (
                "re-validated with the validator's thresholds"
                if config.compose.revalidate
                else "not re-validated"
            )
        )
    return "\n".join(lines)


def pipeline_steps(config: NhrConfig) -> list[str]:
    sources = getattr(config, "sources", None)  # photo sources: sources.kind images
    photos = sources is not None and getattr(sources, "kind", "generate") == "images"
    steps = [
        "photos as sources (their licences: the `source_license` column)"
        if photos
        else "generated sources",
        "a plausibility gate",
        "candidate edits",
        "a pre-filter",
        "a vision-language validator",
        "best-of selection",
    ]
    if config.invert.enabled:
        steps.append("inversion")
        if config.backward.enabled:
            steps.append("a backward-consistency filter")
        if config.compose.enabled:
            steps.append("composition")
    return steps


def dataset_card(
    *,
    splits: dict[str, int],
    counts: dict[str, dict[str, int]],
    config: NhrConfig,
    survival: str | None,
    load: str,
    intro: str = "",
) -> str:
    """The card's text. `counts` maps kind/category/style to {value: rows}; `survival` is the
    run's survival table in markdown (None when the stage statistics are unavailable); `load`
    is the python snippet that loads this folder."""
    import nhr

    rows = sum(splits.values())
    header = yaml.safe_dump(
        card_metadata(splits, config.export), sort_keys=False, allow_unicode=True
    )
    split_lines = ["| split | rows |", "|---|---:|"]
    split_lines += [f"| {split} | {count:,} |" for split, count in splits.items() if count]
    export = config.export
    named = (
        f"{export.license_name} (`other`"
        + (f"; its text: {export.license_link}" if export.license_link else "")
        + ")"
        if export.license == "other"
        else f"`{export.license}`"
    )
    licence = (
        f"Licence: {named} (set by the miner in `export.license`). The terms "
        "of the models below may also apply to their outputs."
        if export.license
        else "No licence was chosen (`export.license` is unset): set one before publishing. "
        "The terms of the models below may also apply to their outputs."
    )
    parts = [
        f"---\n{header}---",
        f"# {PRETTY_NAME}",
        "Each row is a <source image, instruction, edited image> triplet mined without human "
        f"labels by nhr {nhr.__version__}, an implementation of the NHR method (arXiv "
        f"2507.14119): {', '.join(pipeline_steps(config))}. Scores "
        "are the validator's, on a 1-5 scale. `parents` lists the candidate or triplet ids a row "
        "was made from; `attempts` and `passes` count the editor attempts for the pair and how "
        "many passed the validator." + (f" {intro}" if intro else ""),
        f"**{rows:,} triplets.** {licence}",
        "\n".join(split_lines),
        "## How to load it\n\n```python\n" + load.strip() + "\n```",
        "## Models\n\n" + models_table(config),
        f"## Thresholds\n\n{thresholds_text(config)}\n\nSeed of the run: {config.run.seed}.",
    ]
    if survival:
        parts.append(
            "## How the data was filtered\n\nThe survival table of the mining run: each "
            "step's change in count, against the reference run of the paper.\n\n" + survival
        )
    parts.append("## Counts")
    parts += [_counts(title, counts.get(title, {})) for title in ("kind", "category", "style")]
    parts.append(
        "## Citation\n\nThe mining method is NHR (arXiv 2507.14119):\n\n```bibtex\n"
        + CITATION
        + "\n```"
    )
    return "\n\n".join(parts) + "\n"
