"""Preflight: before `nhr mine` runs any stage, check that every model role the run's stages
use can work here: the backend's extra is installed, its key is set, its server answers and
serves the configured model (one free listing request per server, all at once, `TIMEOUT_S`
each). These are `nhr doctor`'s checks (nhr.doctor); preflight stops on the failed ones.

Why: without it a missing extra or a server that is down is found only when the stage that
needs it is reached, after the stages before it spent time and money (a FLUX run without the
diffusers extra designs every prompt first; a designer server that refuses connections costs
minutes of silent retries).

GPU memory (`min_gpu_memory_gb`) is only a warning here: models load one stage at a time and
another process may free the memory by then. A role pinned to `device: cuda` on a machine with
no visible GPU is a stop. Sim-only configs need nothing: preflight is instant and offline.
`nhr mine --skip-preflight` (`nhr.mine(..., preflight=False)`) skips it.
"""

from __future__ import annotations

import logging

from nhr.config import NhrConfig
from nhr.doctor import ROLES, Check, run_doctor

log = logging.getLogger(__name__)

# Per server; all servers are asked at once, so a run waits at most about this long.
TIMEOUT_S = 10.0


class PreflightError(Exception):
    """The run cannot work here; the message lists every problem and what to do. Exit 2."""


def used_roles(config: NhrConfig) -> list[str]:
    """The model roles of the stages this config runs, in the usual role order."""
    from nhr.pipeline import build_stages

    used = {role for stage in build_stages(config) for role in stage.roles}
    return [role for role in ROLES if role in used]


def run_preflight(config: NhrConfig, *, timeout: float = TIMEOUT_S) -> list[Check]:
    """Raise PreflightError naming every problem that would stop the run; warn about the rest."""
    checks = run_doctor(config, network=True, timeout=timeout, roles=used_roles(config))
    for check in checks:
        if not check.ok and not check.stops_run:
            log.warning("preflight: %s: %s (%s)", check.roles, check.detail, check.fix)
    problems = [check for check in checks if not check.ok and check.stops_run]
    if problems:
        raise PreflightError(describe(problems))
    log.info("preflight: %d checks passed", sum(check.ok for check in checks))
    return checks


def describe(problems: list[Check]) -> str:
    """One entry per distinct problem, naming every role it stops: a key that is not set is
    checked once per model, but it is one thing to fix."""
    merged: dict[tuple[str, str], list[str]] = {}
    for check in problems:
        roles = merged.setdefault((check.detail, check.fix or ""), [])
        roles += [role for role in check.roles.split(", ") if role not in roles]
    lines = [f"preflight found {len(merged)} problem(s), so no stage ran:"]
    for (detail, fix), roles in merged.items():
        lines.append(f"  {', '.join(roles)}: {detail}")
        if fix:
            lines.append(f"    -> {fix}")
    lines.append("(`nhr doctor CONFIG` shows every check; --skip-preflight mines anyway)")
    return "\n".join(lines)
