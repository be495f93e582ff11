"""nhr: mine high-quality image-editing triplets with no human in the loop.

    import nhr
    result = nhr.mine("configs/quickstart.yaml", run_dir="runs/quick")

`import nhr` stays light: the pipeline, pyarrow and every model library load on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from nhr.config import NhrConfig
    from nhr.run import MineResult


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> NhrConfig:
    """Read and validate a YAML run config (raises `nhr.config.ConfigError`)."""
    from nhr.config import load_config as _load

    return _load(path, overrides)


def mine(
    config: str | Path | dict[str, Any] | NhrConfig,
    run_dir: str | Path | None = None,
    *,
    redo_from: str | None = None,
    progress: bool = False,
    preflight: bool = True,
    executor: str | None = None,
    ray_address: str | None = None,
) -> MineResult:
    """Mine (or resume) a run. `config` is a YAML path, a dict or an `NhrConfig`.

    `preflight` first checks every role's extra, key and server (`nhr.preflight`) and raises
    `nhr.preflight.PreflightError` listing what to fix, before any stage runs.

    A backend that breaks mid-run (the first `retry.stop_after_failures` items a stage sends
    to one model all fail for the same reason) raises `nhr.calls.BrokenBackendError`; finished
    shards are kept and calling `mine` again resumes. A run that finishes but releases no
    triplet returns normally (the CLI exits 3): `result.stats["dataset"]["rows"]` is 0 and
    each stage's `failed` and `dropped` counters say why.

    `run_dir` is a local path or a URL on object storage (`s3://bucket/runs/x`, `gs://...`;
    needs the `s3` or `gcs` extra; credentials from the environment).

    `executor` is `local` (this process, the default: `run.executor`) or `ray` (actor pools
    per model role on a Ray cluster; needs `pip install 'nhr[ray]'`). `ray_address` (or
    RAY_ADDRESS) picks the cluster; with neither, a local Ray instance is started."""
    from nhr.config import ConfigError, NhrConfig, parse_config
    from nhr.lock import run_lock
    from nhr.run import (
        SETUP_ERRORS,
        check_redo_from,
        create_executor,
        discard_unused_run,
        prepare_run_dir,
    )
    from nhr.store import RunStore

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config)
    elif not isinstance(config, NhrConfig):
        raise TypeError(
            f"config must be a path, a dict or an NhrConfig, not {type(config).__name__}"
        )
    run_dir = run_dir or config.run.run_dir
    if not run_dir:
        raise ConfigError("no run directory: set run.run_dir in the config or pass --run-dir")
    config = config.model_copy(update={"run": config.run.model_copy(update={"run_dir": None})})
    if preflight:
        from nhr.preflight import run_preflight

        run_preflight(config)
    if progress:
        from nhr.executors.base import progress_every

        progress_every()  # a bad NHR_PROGRESS_EVERY stops here, before anything is created
    executor = executor or config.run.executor
    check_redo_from(config, redo_from)  # before anything is created
    store = RunStore(run_dir)
    existed = store.storage.exists("")
    try:
        with run_lock(store):  # one miner per run directory: a flock, or a lease
            # first, so a missing extra stops the run before the run directory is touched
            runner = create_executor(
                executor, config, store, show_progress=progress, ray_address=ray_address
            )
            try:
                prepare_run_dir(store, config, redo_from)
            except BaseException:
                runner.close()
                raise
            return runner.run()
    except SETUP_ERRORS:
        if not existed:
            discard_unused_run(store)  # a run that could not start leaves no directory
        raise


__all__ = ["__version__", "load_config", "mine"]
