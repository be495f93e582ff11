"""The `nhr` command line: mine, status, export.

Errors a user can act on (bad config, missing file, unknown backend, a run directory mined
with another config) print one short message and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_NOTHING_MINED = 3  # a backend broke mid-run, or the run released no triplet


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nhr", description="Mine image-editing triplets with no human in the loop."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mine = commands.add_parser("mine", help="mine a dataset (resumes an existing run directory)")
    mine.add_argument("config", help="YAML run config, e.g. configs/quickstart.yaml")
    mine.add_argument("--run-dir", help="where the run lives (overrides run.run_dir)")
    mine.add_argument("--prompts", type=int, help="number of prompts to design (run.prompts)")
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
        "--target", type=int, default=100_000, help="dataset size for the compute estimate"
    )

    doctor = commands.add_parser(
        "doctor", help="check extras, keys, servers and GPU memory for a config (free)"
    )
    doctor.add_argument("config")
    doctor.add_argument("--offline", action="store_true", help="skip the server checks")

    export = commands.add_parser("export", help="write RUN/dataset again from the stage tables")
    export.add_argument("run_dir")

    verify = commands.add_parser(
        "verify", help="check every table, image and the dataset of a run (exit 1 on damage)"
    )
    verify.add_argument("run_dir")
    return parser


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
    result = nhr.mine(
        config,
        run_dir,
        redo_from=args.redo_from,
        progress=not args.no_progress,
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
    state = "finished run" if summary["complete"] else "run still in progress (partial numbers)"
    print(f"report for the {state}: {store.where('report/index.html')}")
    for row in summary["survival"]:
        change = "" if row["change"] is None else f"{row['change']:+.1%}"
        print(f"  {row['step']:<30}{change:>9}{row['remaining']:>10,} {row['unit']}")
    if summary["released_per_forward"] is not None:
        print(f"  released / forward triplets: {summary['released_per_forward']:.2f}")
    suggested = summary["survival_curve"]["suggested_threshold"]
    if suggested is not None:
        print(f"  suggested validator threshold (knee midpoint): {suggested:.2f}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from nhr.config import load_config
    from nhr.doctor import render_checks, run_doctor

    checks = run_doctor(load_config(args.config), network=not args.offline)
    print(render_checks(checks))
    return 0 if all(check.ok for check in checks) else 1


def _export(args: argparse.Namespace) -> int:
    from nhr.config import parse_config
    from nhr.executors.local import LocalExecutor
    from nhr.lock import run_lock
    from nhr.pipeline import release_stage
    from nhr.run import shard_count

    store = _existing_run(args.run_dir)
    config = parse_config(store.read_config())
    executor = LocalExecutor(config, store, show_progress=False)
    release = release_stage(config)
    shards = shard_count(store)
    if not shards or not all(store.is_done(release, s) for s in range(shards)):
        raise _UsageError(f"the run has not finished '{release}' yet; finish it with `nhr mine`")
    with run_lock(store):
        # the old dataset and its marker stay until the new dataset is complete
        result = executor.run(reexport=True)
    print(f"exported {result.stats['dataset']['rows']} triplets to {store.where('dataset')}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from nhr.verify import render_verify

    text, status = render_verify(_existing_run(args.run_dir).root)
    print(text)
    return status


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
    "EACCES": "make it writable by this user, or pass another --run-dir",
    "EPERM": "make it writable by this user, or pass another --run-dir",
    "EROFS": "the file system is read-only: pass a --run-dir on a writable disk",
    "ENOTDIR": "a part of this path is a file: pass a --run-dir that is a directory",
    "EISDIR": "this path is a directory where nhr expected a file: move it away",
    "EEXIST": "a file is in the way: pass a --run-dir that is a directory",
}


def _os_error_message(error: OSError) -> str | None:
    import errno

    advice = _OS_ADVICE.get(errno.errorcode.get(error.errno or 0, ""))
    if advice is None:
        return None
    where = f"{error.filename}: " if error.filename is not None else ""
    return f"{where}{error.strerror or error} — {advice}"


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {
        "mine": _mine,
        "status": _status,
        "report": _report,
        "doctor": _doctor,
        "export": _export,
        "verify": _verify,
    }
    import signal
    import threading

    # signal handlers can only be set from the main thread (main() may run in another)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt as interrupt:
        print("nhr: interrupted; run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(interrupt, _Terminated) else 130
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
