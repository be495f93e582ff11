"""The `nhr` command line: mine, status, export.

Errors a user can act on (bad config, missing file, unknown backend, a run directory mined
with another config) print one short message and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_NOTHING_MINED = 3  # a backend broke mid-run, or the run released no triplet


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nhr", description="Mine image-editing triplets with no human in the loop."
    )
    from nhr import __version__

    parser.add_argument("--version", action="version", version=f"nhr {__version__}")
    _add_global_options(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mine = commands.add_parser("mine", help="mine a dataset (resumes an existing run directory)")
    mine.add_argument("config", help="YAML run config, e.g. configs/quickstart.yaml")
    mine.add_argument("--run-dir", help="where the run lives (overrides run.run_dir)")
    mine.add_argument(
        "--prompts",
        type=_positive_int,
        help="number of prompts to design (run.prompts); above a finished run's count, the "
        "run grows: new shards are mined, finished ones kept",
    )
    mine.add_argument("--seed", type=int, help="master seed (run.seed)")
    mine.add_argument(
        "--redo-from", metavar="STAGE", help="recompute this stage and every stage after it"
    )
    mine.add_argument("--no-progress", action="store_true", help="no progress bars")
    mine.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="who runs the stages: local (this process; default: run.executor) or ray "
        "(actor pools per model role; pip install 'nhr[ray]')",
    )
    mine.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray cluster to use with --executor ray (default: RAY_ADDRESS; with neither, a "
        "local Ray instance is started)",
    )
    mine.add_argument(
        "--skip-preflight",
        action="store_true",
        help="do not check extras, keys and servers before mining",
    )

    status = commands.add_parser("status", help="where a running or finished run stands")
    status.add_argument("run_dir")

    report = commands.add_parser(
        "report", help="survival table and curve, compute estimate and gallery in RUN/report"
    )
    report.add_argument("run_dir")
    report.add_argument(
        "--target",
        type=_positive_int,
        default=100_000,
        help="dataset size for the compute estimate (at least 1; default 100,000)",
    )

    doctor = commands.add_parser(
        "doctor", help="check extras, keys, servers and GPU memory for a config (free)"
    )
    doctor.add_argument("config")
    doctor.add_argument("--offline", action="store_true", help="skip the server checks")

    export = commands.add_parser(
        "export",
        help="write RUN/dataset again from the stage tables, or with --format a dataset for a "
        "trainer (docs/exports.md)",
    )
    export.add_argument("run_dir")
    export.add_argument(
        "--format",
        metavar="F",
        help="hf, webdataset, ip2p, kontext-lora, qwen-edit-lora or preference (written to "
        "--output); without it RUN/dataset is written again",
    )
    export.add_argument("--output", metavar="DIR", help="folder or URL (default RUN/exports/F)")
    export.add_argument(
        "--split-test",
        type=float,
        metavar="SHARE",
        help="share of source images in the test split (default 0.02)",
    )
    export.add_argument("--mini", type=int, metavar="N", help="a balanced subset of N rows")
    export.add_argument("--seed", type=int, help="seed of the split and --mini (default 0)")
    export.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="then upload the dataset (RUN/dataset, or --format hf) and its card to this Hub "
        "dataset repository (token: HF_TOKEN or `huggingface-cli login`)",
    )
    export.add_argument(
        "--private", action="store_true", help="with --push-to-hub: create a private repository"
    )

    verify = commands.add_parser(
        "verify", help="check every table, image and the dataset of a run (exit 1 on damage)"
    )
    verify.add_argument("run_dir")

    label = commands.add_parser(
        "label",
        help="rate a stratified sample of a run: a local rating page, simulated raters, or "
        "Label Studio tasks (labels go to RUN/labels/)",
    )
    label.add_argument("run_dir")
    label.add_argument(
        "--sample", type=_positive_int, default=100, help="triplets to rate (default 100)"
    )
    label.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    label.add_argument(
        "--validated-only",
        action="store_true",
        help="sample only candidates the validator scored (to calibrate it on the run's "
        "stored scores; by default the pre-filter's rejects fill the low buckets)",
    )
    label.add_argument("--port", type=int, help="port of the rating page (default: a free one)")
    label.add_argument(
        "--simulate-raters",
        type=_positive_int,
        metavar="R",
        help="simulator runs: R simulated raters per triplet instead of the page",
    )
    label.add_argument(
        "--to-label-studio", metavar="DIR", help="write the sample as Label Studio tasks to DIR"
    )
    label.add_argument(
        "--image-url-prefix",
        metavar="URL",
        help="with --to-label-studio: where Label Studio finds DIR/images/ (default: its "
        "local-files URL)",
    )
    label.add_argument(
        "--from-label-studio",
        metavar="EXPORT",
        help="merge Label Studio's JSON export into RUN/labels/label-studio.parquet",
    )

    tuning = commands.add_parser(
        "export-tuning", help="rated triplets as validator tuning data (train/validation)"
    )
    tuning.add_argument("labels", help="labels file, folder of them, or a rated run directory")
    tuning.add_argument("--format", required=True, choices=("vertex-gemini", "openai", "trl"))
    tuning.add_argument("--output", required=True, metavar="DIR")
    tuning.add_argument("--run", help="the run the labelled candidates come from")
    tuning.add_argument(
        "--validation-share", type=float, default=0.2, help="held-out share (default 0.2)"
    )
    tuning.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    tuning.add_argument(
        "--image-uri-prefix",
        metavar="URI",
        help="vertex-gemini: the gs:// folder DIR will be uploaded to",
    )
    tuning.add_argument(
        "--judge",
        metavar="CONFIG",
        help="write the examples for this config's judge (validate.judge: prompt, parser, "
        "scale); default: the labels' run's judge, else the paper's",
    )
    tuning.add_argument(
        "--prompt",
        metavar="PROMPT",
        help="replace the judge's prompt: a template name of nhr, a file, or the text with "
        "$instruction",
    )

    calibrate = commands.add_parser(
        "calibrate",
        help="how good is a judge: MAE, Spearman, precision/recall vs ratings, per-category "
        "thresholds (report folder)",
    )
    calibrate.add_argument("labels", help="labels file, folder of them, or a rated run directory")
    calibrate.add_argument(
        "--run", help="the run whose stored validator/pre-filter scores to judge"
    )
    calibrate.add_argument(
        "--judge",
        action="append",
        default=[],
        metavar="CONFIG",
        help="re-score the labelled items with this config's model (repeatable)",
    )
    calibrate.add_argument("--role", default="validator", help="model role of --judge configs")
    calibrate.add_argument(
        "--output",
        metavar="DIR",
        help="report folder (default: RUN/calibration, else ./calibration)",
    )
    calibrate.add_argument("--target-precision", type=float, default=0.9)
    calibrate.add_argument(
        "--positive-above",
        type=float,
        default=4.0,
        help="positive: both true scores above this (default 4.0, the paper's)",
    )
    calibrate.add_argument(
        "--min-kept",
        type=_positive_int,
        default=25,
        help="fewest kept labelled items a category threshold is measured on (default 25)",
    )
    calibrate.add_argument("--bootstrap", type=_positive_int, default=1000, help="bootstrap rounds")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument(
        "--exclude-unreachable",
        action="store_true",
        help="write {exclude: true} for a category whose precision reaches the target at no "
        "threshold (validate drops it: category_excluded); default: the threshold of its surest "
        "best precision, never below the global pair",
    )
    calibrate.add_argument(
        "--confidence",
        type=float,
        default=None,
        help="read precision through its Wilson interval at this level (e.g. 0.95)",
    )

    score = commands.add_parser(
        "score", help="a judge scores a random sample of editing datasets (means, pass rate, CIs)"
    )
    score.add_argument(
        "datasets", nargs="+", help="Parquet, imagefolder, WebDataset .tar or hub id"
    )
    score.add_argument(
        "--judge", required=True, metavar="CONFIG", help="config with the judge model"
    )
    score.add_argument("--role", default="validator")
    score.add_argument(
        "--sample", type=_positive_int, default=500, help="triplets per dataset (default 500)"
    )
    score.add_argument(
        "--columns", metavar="MAP", help="source=COL,edited=COL,instruction=COL (default: guessed)"
    )
    score.add_argument("--output", metavar="DIR", help="write scores.json and scores.png here")
    score.add_argument("--seed", type=int, default=0)
    score.add_argument(
        "--max-pixels", type=_positive_int, default=40_000_000, help="larger images are rejected"
    )
    score.add_argument("--bootstrap", type=_positive_int, default=2000, help="bootstrap rounds")

    bench = commands.add_parser(
        "bench",
        help="score an editor on GEdit-Bench or ImgEdit-Bench (resumable), or compare two",
    )
    bench.add_argument("benchmark", nargs="?", choices=["gedit", "imgedit"])
    bench.add_argument("--editor", metavar="CONFIG", help="config whose models.editor is benched")
    bench.add_argument("--judge", metavar="CONFIG", help="config whose models.validator judges")
    bench.add_argument("--data", metavar="PATH", help="local copy of the benchmark")
    bench.add_argument("--seeds", type=_positive_int, default=3, help="editor seeds (default 3)")
    bench.add_argument("--language", default="en", help="instruction language (GEdit: en, cn)")
    bench.add_argument(
        "--output", metavar="DIR", help="state, bench.json and tables (default bench/BENCH-MODEL)"
    )
    bench.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="two bench output folders side by side"
    )
    bench.add_argument(
        "--bootstrap", type=_positive_int, default=2000, help="--compare: bootstrap rounds"
    )
    bench.add_argument("--seed", type=int, default=0, help="--compare: bootstrap seed")

    train = commands.add_parser("train", help="fine-tune an editor on a run's mined triplets")
    trainers = train.add_subparsers(dest="trainer", required=True, metavar="KIND")
    lora = trainers.add_parser(
        "lora", help="a LoRA for FLUX.1 Kontext or Qwen-Image-Edit (diffusers + peft)"
    )
    lora.add_argument("--base", required=True, metavar="MODEL", help="hub id or local folder")
    lora.add_argument(
        "--data", required=True, metavar="RUN", help="finished run directory or `hf` export"
    )
    lora.add_argument("--output", required=True, metavar="DIR", help="local output folder")
    lora.add_argument("--steps", type=int, default=1000)
    lora.add_argument("--rank", type=int, default=16)
    lora.add_argument("--lr", type=float, default=1e-4)
    lora.add_argument("--batch-size", type=int, default=1, help="per GPU")
    lora.add_argument("--resolution", type=int, default=512, metavar="PX", help="square size")
    lora.add_argument(
        "--validate-every", type=int, default=0, metavar="N", help="validation grid every N steps"
    )
    lora.add_argument("--validation-count", type=int, default=4, metavar="N")
    lora.add_argument("--validation-steps", type=int, default=28, metavar="N")
    lora.add_argument("--checkpoint-every", type=int, default=250, metavar="N")
    lora.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    lora.add_argument("--seed", type=int, default=0)
    lora.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="bf16")
    lora.add_argument("--no-gradient-checkpointing", action="store_true")
    lora.add_argument("--guidance", type=float, default=1.0, help="Kontext guidance embedding")
    lora.add_argument("--max-sequence-length", type=int, metavar="N")
    lora.add_argument("--warmup-steps", type=int, default=0)
    lora.add_argument("--cpu", action="store_true", help="train on the CPU (tests)")
    # -v / -q also after the command (`nhr mine CONFIG -v`)
    for command in [*commands.choices.values(), *trainers.choices.values()]:
        _add_global_options(command, default=argparse.SUPPRESS)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: object) -> None:
    """-v and -q; a command's copy defaults to SUPPRESS so it never hides the one given
    before the command."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log what happens"
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="errors only: no warnings, no progress",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _train(args: argparse.Namespace) -> int:
    from nhr.train import TrainError, TrainOptions, train_lora

    options = TrainOptions(
        base=args.base,
        data=args.data,
        output=args.output,
        steps=args.steps,
        rank=args.rank,
        lr=args.lr,
        batch_size=args.batch_size,
        resolution=args.resolution,
        validate_every=args.validate_every,
        validation_count=args.validation_count,
        validation_steps=args.validation_steps,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        guidance=args.guidance,
        max_sequence_length=args.max_sequence_length,
        warmup_steps=args.warmup_steps,
        device="cpu" if args.cpu else None,
        progress=True,
    )
    try:
        summary = train_lora(options)
    except TrainError as error:
        raise _UsageError(str(error)) from error
    if summary:  # the main process of a multi-GPU launch
        print(f"trained {summary['steps']} steps; final loss {summary['losses'][-1]:.5f}")
        print(f"adapter: {summary['adapter']}; use it in an editor config as:")
        print(f"  loras:\n    - path: {args.output}")
    return 0


def _mine(args: argparse.Namespace) -> int:
    import nhr
    from nhr.config import load_config

    overrides = {}
    if args.prompts is not None:
        overrides["run.prompts"] = args.prompts
    if args.seed is not None:
        overrides["run.seed"] = args.seed
    config = load_config(args.config, overrides)
    run_dir = args.run_dir or config.run.run_dir
    if not run_dir:
        raise _UsageError("no run directory: pass --run-dir or set run.run_dir in the config")
    if not args.quiet:
        notice = _large_run_notice(config, run_dir)
        if notice:
            print(notice, file=sys.stderr)
    result = nhr.mine(
        config,
        run_dir,
        redo_from=args.redo_from,
        progress=not (args.no_progress or args.quiet),
        preflight=not args.skip_preflight,
        executor=args.executor,
        ray_address=args.ray_address,
    )
    dataset = result.stats["dataset"] or {}
    print(f"mined {dataset.get('rows', 0)} triplets into {_inside(result.run_dir, 'dataset')}")
    print(f"stage statistics: {_inside(result.run_dir, 'report/stats.json')}")
    if dataset.get("rows", 0) == 0:
        print(_nothing_mined(result.stats), file=sys.stderr)
        return EXIT_NOTHING_MINED
    return 0


# Above this many prompts, `nhr mine` first prints the model calls to expect per role.
LARGE_RUN_PROMPTS = 1_000


def _large_run_notice(config, run_dir: str) -> str | None:
    """The compute estimate up front: expected model calls per stage and its roles, and the
    triplets they should release, from a finished smaller run in the run directory (a pilot)
    or else from the reference run's rates."""
    if config.run.prompts <= LARGE_RUN_PROMPTS:
        return None
    from nhr.analysis.estimate import reference_calls, reference_released

    prompts = config.run.prompts
    measured = _measured_calls(config, run_dir)
    if measured is not None:
        source, calls, released = measured
        notes = []
    else:
        source = "the reference run's survival rates (docs/method.md §5), this config's N, M, B"
        calls = reference_calls(config, prompts)
        released = reference_released(config, prompts)
        notes = [
            "  editor attempts assume the reference's 5.96 per gated source (its edit budget);",
            "  with every job scheduled a run makes (edits per prompt) x M per gated source,",
            "  and the pre-filter's figure is its most (one per check). For your own models'",
            "  figures, mine a pilot first (--prompts 100, same --run-dir): this notice then",
            "  scales from it, and the run grows to the full size keeping what it mined.",
        ]
    width = max(len(label) for label in calls) + 2
    lines = [f"nhr: {prompts:,} prompts; model calls to expect, from {source}:"]
    lines += [f"  {label:<{width}}{count:>14,}" for label, count in calls.items()]
    lines.append(f"  about {released:,} released triplets")
    lines += notes
    lines.append("  (before retries; `nhr report RUN --target N` estimates from a finished run)")
    return "\n".join(lines)


def _measured_calls(config, run_dir: str) -> tuple[str, dict[str, int], int] | None:
    """Calls per stage of the finished run in `run_dir`, scaled to this config's prompts, and
    the triplets that scale to."""
    import json

    from nhr.analysis.estimate import with_roles
    from nhr.config import ConfigError, parse_config
    from nhr.stages.design import design_batches
    from nhr.storage import StorageSetupError
    from nhr.store import RunDirError, RunStore

    try:
        store = RunStore(run_dir)
        stats = json.loads(store.storage.read_bytes("report/stats.json"))
        old = parse_config(store.read_config() or {})
    except (OSError, ValueError, ConfigError, StorageSetupError, RunDirError):
        return None  # no finished run there to scale from: the reference rates are used
    if not stats.get("complete"):
        return None
    scale = config.run.prompts / old.run.prompts
    calls = {}
    for stage in stats["stages"]:
        if not stage.get("model_calls"):
            continue
        factor = scale
        if stage["stage"] == "design":
            factor = design_batches(config, config.run.prompts) / design_batches(
                old, old.run.prompts
            )
        calls[stage["stage"]] = stage["model_calls"] * factor
    released = round(((stats.get("dataset") or {}).get("rows") or 0) * scale)
    return (
        f"this run's {old.run.prompts:,} mined prompts, scaled",
        with_roles(config, calls),
        released,
    )


def _nothing_mined(stats: dict) -> str:
    """Why a finished run released nothing: the top failure and drop reasons per stage."""
    from nhr.stats import top_reasons

    lines = ["nhr: error: the run finished but released no triplet; top reasons per stage:"]
    for stage in stats["stages"]:
        reasons = top_reasons(stage)
        if reasons:
            shown = ", ".join(f"{name} x{count}" for name, count in reasons)
            lines.append(f"  {stage['stage']}: {shown} (of {stage['rows_in']} in)")
    failing = [stage["stage"] for stage in stats["stages"] if any(stage["failed"].values())]
    if failing:
        lines.append(
            "Failed items stay failed on a plain rerun: once the cause is fixed, run again "
            f"with --redo-from {failing[0]}."
        )
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    from nhr.status import render_status

    print(render_status(_existing_run(args.run_dir).root))
    return 0


def _report(args: argparse.Namespace) -> int:
    from nhr.analysis.report import build_report

    store = _existing_run(args.run_dir)
    summary = build_report(store.root, target=args.target)
    # finished, mining (a live miner holds the lock) or stopped (resume with `nhr mine`)
    state = f"{summary['state']} run" + ("" if summary["complete"] else " (partial numbers)")
    print(f"report for the {state}: {store.where('report/index.html')}")
    if getattr(args, "quiet", False):
        return 0  # -q: where the report is, nothing else
    for row in summary["survival"]:
        change = "" if row["change"] is None else f"{row['change']:+.1%}"
        if row["reached"]:
            print(f"  {row['step']:<30}{change:>9}{row['remaining']:>10,} {row['unit']}")
        else:  # a partial run: its 0 is no count
            print(f"  {row['step']:<30}{change:>9}{'':>10} not reached yet")
    if summary["released_per_forward"] is not None:
        print(f"  released / forward triplets: {summary['released_per_forward']:.2f}")
    suggested = summary["survival_curve"]["suggested_threshold"]
    if suggested is not None:
        print(f"  suggested validator threshold (knee midpoint): {suggested:.2f}")
    estimate = summary["estimate"]
    if estimate is not None:
        print(
            f"  for {estimate['target_released']:,} released triplets: about "
            f"{estimate['prompts_needed']:,} prompts, "
            f"{estimate['calls_per_released'] * estimate['target_released']:,.0f} model calls "
            f"(per stage: {store.where('report/estimate.json')})"
        )
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from nhr.config import load_config
    from nhr.doctor import render_checks, run_doctor

    checks = run_doctor(load_config(args.config), network=not args.offline)
    print(render_checks(checks))
    return 0 if all(check.ok for check in checks) else 1


def _export(args: argparse.Namespace) -> int:
    if args.private and not args.push_to_hub:
        raise _UsageError("--private goes with --push-to-hub REPO")
    if args.format is not None:
        return _export_format(args)
    options = {
        "--output": args.output,
        "--mini": args.mini,
        "--split-test": args.split_test,
        "--seed": args.seed,
    }
    given = [flag for flag, value in options.items() if value is not None]
    if given:
        raise _UsageError(f"{given[0]} needs --format (hf, webdataset, ip2p, ...)")
    from nhr.config import parse_config
    from nhr.executors.local import LocalExecutor
    from nhr.exports.common import finished_shards
    from nhr.lock import run_lock
    from nhr.pipeline import release_stage

    store = _existing_run(args.run_dir)
    config = parse_config(store.read_config())
    executor = LocalExecutor(config, store, show_progress=False)
    release = release_stage(config)
    if not finished_shards(store, release):
        raise _UsageError(f"the run has not finished '{release}' yet; finish it with `nhr mine`")
    with run_lock(store):
        # the old dataset and its marker stay until the new dataset is complete
        result = executor.run(reexport=True)
    print(f"exported {result.stats['dataset']['rows']} triplets to {store.where('dataset')}")
    if args.push_to_hub:
        from nhr.exports import ExportError
        from nhr.exports.parquet import push_to_hub

        try:
            push_to_hub(
                store.where("dataset"),
                args.push_to_hub,
                {"train": result.stats["dataset"]["rows"]},
                private=args.private,
            )
        except ExportError as error:
            raise _UsageError(str(error)) from None
        print(f"pushed to the Hub dataset {args.push_to_hub}")
    return 0


def _export_format(args: argparse.Namespace) -> int:
    from nhr.exports import ExportError, export_run

    try:
        summary = export_run(
            args.run_dir,
            args.format,
            output=args.output,
            split_test=0.02 if args.split_test is None else args.split_test,
            mini=args.mini,
            seed=args.seed or 0,
            hub_repo=args.push_to_hub,
            private=args.private,
        )
    except ExportError as error:
        raise _UsageError(str(error)) from None
    rows = ", ".join(f"{count} {split}" for split, count in summary["rows"].items() if count)
    print(f"exported {rows or 'no'} rows as {args.format} to {summary['output']}")
    if args.push_to_hub:
        print(f"pushed to the Hub dataset {args.push_to_hub}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from nhr.verify import render_verify

    text, status = render_verify(_existing_run(args.run_dir).root)
    print(text)
    return status


def _label(args: argparse.Namespace) -> int:
    from nhr.label_sample import NotASimulatorRun, run_sample, write_simulated
    from nhr.labels import LabelsError

    modes = {
        "--from-label-studio": args.from_label_studio,
        "--simulate-raters": args.simulate_raters is not None,
        "--to-label-studio": args.to_label_studio,
    }
    chosen = [flag for flag, given in modes.items() if given]
    if len(chosen) > 1:
        raise _UsageError(f"{' and '.join(chosen)} are different ways to label: give one")
    store = _existing_run(args.run_dir)
    try:
        if args.from_label_studio:
            from nhr.label_studio import import_into_run

            where, count, total = import_into_run(store, args.from_label_studio)
            print(f"imported {count} ratings into {where} ({total} in it)")
            return 0
        if args.sample < 1:
            raise _UsageError("--sample must be at least 1")
        if args.simulate_raters is not None and args.simulate_raters < 1:
            raise _UsageError("--simulate-raters must be at least 1")
        sample = run_sample(store, args.sample, args.seed, args.validated_only)
        if not sample:
            what = "candidate the validator scored" if args.validated_only else "edited candidate"
            raise _UsageError(f"{store.where()} has no {what} to rate yet")
        if args.simulate_raters is not None:
            where, items, rows = write_simulated(store, sample, args.simulate_raters, args.seed)
            print(f"{args.simulate_raters} simulated raters rated {items} triplets: {where}")
            return 0
        if args.to_label_studio:
            from nhr.label_studio import export_tasks

            where, count = export_tasks(store, sample, args.to_label_studio, args.image_url_prefix)
            print(f"{count} Label Studio tasks, labeling-config.xml and images/ in {where}")
            return 0
        from nhr.label_server import serve

        serve(store, sample, args.port)
        return 0
    except (LabelsError, NotASimulatorRun) as error:
        raise _UsageError(str(error)) from None


def _export_tuning(args: argparse.Namespace) -> int:
    from nhr.config import ConfigError
    from nhr.labels import LabelsError
    from nhr.tuning_export import TuningExportError, export_tuning

    if not 0.0 <= args.validation_share < 1.0:
        raise _UsageError("--validation-share must be from 0 to below 1")
    try:
        summary = export_tuning(
            args.labels,
            args.output,
            args.format,
            run=args.run,
            validation_share=args.validation_share,
            seed=args.seed,
            image_uri_prefix=args.image_uri_prefix,
            judge_config=args.judge,
            prompt=args.prompt,
        )
    except (LabelsError, TuningExportError, ConfigError) as error:
        raise _UsageError(str(error)) from None
    print(
        f"{summary['format']}: {summary['train']} train and {summary['validation']} validation "
        "examples:"
    )
    for name in summary["files"]:
        print(f"  {name}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from nhr import calibrate as cal
    from nhr.labels import LabelsError, read_labels
    from nhr.storage import open_storage

    if not args.run and not args.judge:
        raise _UsageError("give --run RUN (its stored scores) or --judge CONFIG (or both)")
    if not 1 <= args.positive_above < 5:  # also refuses nan
        raise _UsageError(
            f"--positive-above is on the labels' 1-5 scale (at least 1, below 5), not "
            f"{args.positive_above}"
        )
    if not 0 < args.target_precision <= 1:  # also refuses nan
        raise _UsageError(
            f"--target-precision must be above 0 and at most 1, not {args.target_precision}"
        )
    if args.confidence is not None and not 0 < args.confidence < 1:
        raise _UsageError(
            f"--confidence must be between 0 and 1 (e.g. 0.95), not {args.confidence}"
        )
    try:
        rows = read_labels(args.labels)
    except LabelsError as error:
        raise _UsageError(str(error)) from None
    if not rows:
        raise _UsageError(f"{args.labels}: no ratings in it")
    from nhr.labels import run_of_labels

    _check_role(args.role)
    items = {row["item"] for row in rows}
    store = _existing_run(args.run) if args.run else None
    judges, operations = cal.run_judges(store, items) if store is not None else ([], {})
    # labels kept in a run (RUN, RUN/labels) rate its candidates: --judge reads their images
    # there even without --run (whose stored judges are then not part of the report)
    images = store or run_of_labels(args.labels)
    rescored = []
    for config in args.judge:
        try:
            judge = cal.rescored_judge(config, args.role, rows, images, args.labels)
        except ValueError as error:  # a config without that role's model
            raise _UsageError(f"{config}: {error}") from None
        judge = _unique_name(judge, config, {j.name for j in judges})
        judges.append(judge)
        rescored.append(judge)
    if not judges:
        raise _UsageError("no judge scored any labelled item (are the labels from this run?)")
    report = cal.calibrate(
        rows,
        judges,
        cal.item_categories(rows, operations),
        positive_above=args.positive_above,
        target_precision=args.target_precision,
        min_kept=args.min_kept,
        rounds=args.bootstrap,
        seed=args.seed,
        exclude_unreachable=args.exclude_unreachable,
        confidence=args.confidence,
    )
    default = _inside(store.root, "calibration") if store is not None else "calibration"
    storage = open_storage(args.output or default)
    written = cal.write_report(storage, report)
    print(f"calibration of {len(judges)} judge(s) on {report['items']} items: {storage.where('')}")
    agreement = report["raters"]["agreement"]
    print(
        f"  raters: {report['raters']['raters']}, agreement (Spearman) instruction "
        f"{cal._fmt(agreement['instruction']['spearman'])} aesthetics "
        f"{cal._fmt(agreement['aesthetics']['spearman'])}"
    )
    for name, figures in report["judges"].items():
        if "at_threshold" not in figures:
            print(f"  {name}: too few scored items ({figures['n']})")
            continue
        t = figures["at_threshold"]
        print(
            f"  {name}: n {figures['n']}  MAE {cal._fmt(figures['instruction']['mae'])} / "
            f"{cal._fmt(figures['aesthetics']['mae'])}  rho "
            f"{cal._fmt(figures['instruction']['spearman'])} / "
            f"{cal._fmt(figures['aesthetics']['spearman'])}  precision "
            f"{cal._fmt(t['precision'], t['precision_ci'])}  recall "
            f"{cal._fmt(t['recall'], t['recall_ci'])}"
        )
        thresholds = cal.thresholds_summary(report, name)
        if thresholds:
            print(f"    {thresholds}")
    print("  files: " + ", ".join(written))
    silent = [judge for judge in rescored if not judge.scores]
    for judge in silent:  # a judge that answered nothing is broken, not calibrated
        print(
            f"nhr: judge {judge.name} scored none of the {len(items)} labelled items "
            f"({judge.failed} failed): see the warnings above",
            file=sys.stderr,
        )
    return EXIT_NOTHING_MINED if silent else 0


def _check_role(role: str) -> None:
    from nhr.config import ROLES

    if role not in ROLES:
        raise _UsageError(f"--role {role!r} is not a model role; roles: {', '.join(ROLES)}")


def _unique_name(judge, config: str, taken: set[str]):
    """Two judges of one name would share one entry of the report: the second is named
    by its folder too ("a/judge"), or numbered."""
    import dataclasses

    if judge.name not in taken:
        return judge
    folder = Path(config).parent.name
    name = f"{folder}/{judge.name}" if folder else judge.name
    number = 2
    while name in taken:
        name, number = f"{judge.name}-{number}", number + 1
    return dataclasses.replace(judge, name=name)


def _score(args: argparse.Namespace) -> int:
    import json

    from nhr.score import parse_columns, plot_png, render_table, score_datasets
    from nhr.storage import open_storage

    _check_role(args.role)
    output = open_storage(args.output) if args.output else None
    if output is not None:
        from nhr.storage import check_writable

        check_writable(output)  # before a judge call is paid for
    try:
        columns = parse_columns(args.columns)
        report = score_datasets(
            args.datasets,
            args.judge,
            args.role,
            args.sample,
            columns,
            args.seed,
            args.max_pixels,
            args.bootstrap,
            cache=output,  # the judge's answers in DIR/cache
        )
    except ValueError as error:
        raise _UsageError(str(error)) from None
    print(render_table(report))
    if output is not None:
        output.write_bytes("scores.json", json.dumps(report, indent=2).encode("utf-8"))
        output.write_bytes("scores.png", plot_png(report))
        print(f"scores.json and scores.png in {output.where('')}")
    if not any(entry["n"] for entry in report["datasets"].values()):
        print(
            "nhr: no triplet could be scored (see the rejected reasons above: judge_* ones "
            "mean the judge did not answer)",
            file=sys.stderr,
        )
        return EXIT_NOTHING_MINED
    return 0


def _existing_run(run_dir: str):
    """The RunStore of a run directory (a path or a URL) that holds a run."""
    from nhr.store import RunStore

    store = RunStore(run_dir)
    store.check_is_directory()
    if not store.has_config():
        raise _UsageError(f"{run_dir} is not an nhr run directory (no config.yaml)")
    return store


def _inside(run_dir: Path | str, key: str) -> str:
    """A file of a run, as a path or a URL."""
    return f"{run_dir}/{key}" if isinstance(run_dir, str) else str(run_dir / key)


class _UsageError(Exception):
    pass


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job, `kill`): unwound like Ctrl-C, so the lock is
    released and every file is either whole or absent."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


# What to do about an OSError on a run's files, by errno; other OSErrors are bugs (traceback).
_OS_ADVICE = {
    "ENOSPC": "free some disk space, then run the same command again to resume",
    "EDQUOT": "free some space within your quota, then run the same command again to resume",
    "EACCES": "make it writable by this user, or choose another folder (--run-dir, --output)",
    "EPERM": "make it writable by this user, or choose another folder (--run-dir, --output)",
    "EROFS": "the file system is read-only: choose a folder on a writable disk",
    "ENOTDIR": "a part of this path is a file: choose a folder path (--run-dir, --output)",
    "EISDIR": "this path is a directory where nhr expected a file: move it away",
    "EEXIST": "a file is in the way: choose a folder path (--run-dir, --output)",
}


def _os_error_message(error: OSError) -> str | None:
    import errno

    advice = _OS_ADVICE.get(errno.errorcode.get(error.errno or 0, ""))
    if advice is None:
        return None
    where = f"{error.filename}: " if error.filename is not None else ""
    return f"{where}{error.strerror or error} — {advice}"


def _bench(args: argparse.Namespace) -> int:
    if args.compare:
        from nhr.bench.compare import compare, render

        try:
            result = compare(*args.compare, rounds=args.bootstrap, seed=args.seed)
        except (ValueError, FileNotFoundError) as error:
            raise _UsageError(str(error)) from None
        text = render(result)
        print(text)
        if args.output:
            from nhr.store import RunStore

            store = RunStore(args.output)
            store.write_json("compare.json", result)
            store.write_bytes("compare.md", text.encode("utf-8"))
        return 0
    missing = [f"--{n}" for n in ("editor", "judge", "data") if not getattr(args, n)]
    if not args.benchmark or missing:
        needed = ([] if args.benchmark else ["a benchmark (gedit or imgedit)"]) + missing
        raise _UsageError(f"nhr bench needs {', '.join(needed)}; or --compare A B")
    from nhr.bench import benchmark_module
    from nhr.bench.runner import default_output, render_tables, run_bench, stderr_progress
    from nhr.config import load_config

    editor, judge = load_config(args.editor), load_config(args.judge)
    output = args.output or default_output(args.benchmark, editor.models.editor)
    module = benchmark_module(args.benchmark)
    try:
        bench = run_bench(
            module,
            editor,
            judge,
            args.data,
            output,
            seeds=args.seeds,
            language=args.language,
            progress=stderr_progress,
        )
    except (ValueError, FileNotFoundError) as error:
        raise _UsageError(str(error)) from None
    if sys.stderr.isatty():
        print(file=sys.stderr)  # ends the progress line
    import json

    from nhr.store import RunStore

    run = json.loads(RunStore(output).storage.read_bytes("run.json"))
    print(render_tables(module, bench, run))
    print(f"bench.json and tables.md in {output}")
    scored = [m["overall"]["mean"] for m in bench["metrics"].values()]
    if all(value is None for value in scored):
        print(
            "nhr: no edit could be judged (see the failures above): is the judge able to "
            "answer this benchmark's prompts?",
            file=sys.stderr,
        )
        return EXIT_NOTHING_MINED
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {
        "mine": _mine,
        "status": _status,
        "report": _report,
        "doctor": _doctor,
        "export": _export,
        "verify": _verify,
        "label": _label,
        "export-tuning": _export_tuning,
        "calibrate": _calibrate,
        "score": _score,
        "train": _train,
        "bench": _bench,
    }
    import signal
    import threading

    # signal handlers can only be set from the main thread (main() may run in another)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        status = handlers[args.command](args)
        sys.stdout.flush()  # here, where a reader gone away is handled, not at exit
        return status
    except KeyboardInterrupt as interrupt:
        if args.command == "score" and not args.output:
            message = "run it again with --output DIR to keep the judge's answers"
        else:
            again = "with --resume" if args.command == "train" else "again"
            message = f"run the same command {again} to resume"
        print(f"nhr: interrupted; {message}", file=sys.stderr)
        return 143 if isinstance(interrupt, _Terminated) else 130
    except BrokenPipeError:
        # the reader went away (`nhr report RUN | head`): stop quietly, as other tools do;
        # stdout goes to /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:
        message = _os_error_message(error)
        if message is None:
            raise
        print(f"nhr: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # only the errors a user can act on are turned into messages
        from nhr.backends.base import BackendSetupError, MissingExtraError
        from nhr.config import ConfigError
        from nhr.lock import LeaseLostError, RunLockedError
        from nhr.preflight import PreflightError
        from nhr.run import RunConfigError
        from nhr.storage import StorageSetupError
        from nhr.store import RunDirError

        actionable = (
            ConfigError,
            RunConfigError,
            RunLockedError,
            LeaseLostError,
            StorageSetupError,
            _UsageError,
            BackendSetupError,
            MissingExtraError,
            PreflightError,
            RunDirError,
        )
        if isinstance(error, actionable):
            print(f"nhr: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        from nhr.calls import BrokenBackendError

        if isinstance(error, BrokenBackendError):
            print(f"nhr: error: {error}", file=sys.stderr)
            return EXIT_NOTHING_MINED
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
