"""`nhr doctor CONFIG`: check, without spending money, that a config can run here.

For every model role: the backend's extra is installed, its key (or Vertex project) is in the
environment, its server answers (a free model-listing request), and the GPU has the memory
the model asks for (`min_gpu_memory_gb`). Each failed check says what to do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from nhr.config import NhrConfig

ROLES = ("designer", "generator", "gate", "editor", "prefilter", "validator", "inverter")

# backend -> (modules it imports, the extra that installs them)
REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "sim": ((), ""),
    "diffusers": (("torch", "diffusers", "transformers"), "diffusers"),
    "transformers": (("torch", "transformers"), "transformers"),
    "openai": (("openai",), "openai"),
    "gemini": (("google.genai",), "gemini"),
}
GEMINI_URL = "https://generativelanguage.googleapis.com"


@dataclass(frozen=True)
class Check:
    roles: str
    what: str
    ok: bool
    detail: str
    fix: str = ""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _get(url: str, headers: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """(HTTP status, error text); status None when nothing answered."""
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, str(error.reason)
    except (urllib.error.URLError, OSError, ValueError) as error:
        return None, str(getattr(error, "reason", error))


def _key_check(roles: str, model: Any) -> tuple[Check, str | None]:
    """Whether the key (or Vertex project) is in the environment; returns the key if any."""
    if model.backend == "gemini" and model.vertex:
        missing = [v for v in (model.project_env, model.location_env) if not os.environ.get(v)]
        if missing:
            return Check(
                roles,
                "credentials",
                False,
                f"{', '.join(missing)} not set",
                f"export {missing[0]}=... (and log in with gcloud auth application-default login)",
            ), None
        return Check(roles, "credentials", True, "Vertex AI project and location set"), None
    variable = model.api_key_env
    key = os.environ.get(variable)
    if key:
        return Check(roles, "key", True, f"{variable} is set"), key
    if model.backend == "openai" and model.base_url:
        return Check(roles, "key", True, f"{variable} not set; fine for a local server"), None
    return Check(
        roles, "key", False, f"{variable} is not set", f"export {variable}=<your key>"
    ), None


def _server_check(roles: str, model: Any, key: str | None, timeout: float) -> Check | None:
    if model.backend == "openai":
        base = (model.base_url or "https://api.openai.com/v1").rstrip("/")
        if key is None and not model.base_url:
            return None  # nothing to ask without a key; the key check already failed
        headers = {"Authorization": f"Bearer {key or 'none'}"}
        url = f"{base}/models"
    else:
        if model.vertex or key is None:
            return None
        base = (model.base_url or GEMINI_URL).rstrip("/")
        headers = {"x-goog-api-key": key}
        url = f"{base}/v1beta/models"
    status, error = _get(url, headers, timeout)
    where = url.split("?")[0]
    if status is None:
        return Check(
            roles,
            "server",
            False,
            f"no answer from {where}: {error}",
            "start the server (see the config's header) or fix base_url",
        )
    if status in (401, 403):
        return Check(
            roles,
            "server",
            False,
            f"{where} refused the key (HTTP {status})",
            f"check the value of {model.api_key_env}",
        )
    return Check(roles, "server", True, f"{where} answers (HTTP {status})")


def _gpu_check(roles: str, model: Any) -> Check | None:
    needed = getattr(model, "min_gpu_memory_gb", None)
    device = getattr(model, "device", "cpu")
    if needed is None or device == "cpu" or not _installed("torch"):
        return None
    import torch

    if not torch.cuda.is_available():
        return Check(
            roles,
            "gpu",
            False,
            f"needs a GPU with {needed:g} GB, none is visible",
            "run on a CUDA machine, or set device: cpu (very slow)",
        )
    index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    free, total = torch.cuda.mem_get_info(index)
    free_gb, total_gb = free / 2**30, total / 2**30
    if free_gb < needed:
        return Check(
            roles,
            "gpu",
            False,
            f"needs {needed:g} GB, GPU {index} has {free_gb:.1f} of {total_gb:.1f} GB free",
            "free the GPU, use cpu_offload: model, or pick a smaller model",
        )
    return Check(roles, "gpu", True, f"GPU {index}: {free_gb:.1f} GB free >= {needed:g} GB")


def run_doctor(config: NhrConfig, *, network: bool = True, timeout: float = 5.0) -> list[Check]:
    # Roles that share one model config are checked once.
    groups: dict[str, tuple[list[str], Any]] = {}
    for role in ROLES:
        model = getattr(config.models, role)
        key = json.dumps(model.model_dump(mode="json"), sort_keys=True)
        groups.setdefault(key, ([], model))[0].append(role)
    checks: list[Check] = []
    for roles_list, model in groups.values():
        roles = ", ".join(roles_list)
        label = f"{model.backend}:{model.model}"
        modules, extra = REQUIREMENTS[model.backend]
        missing = [m for m in modules if not _installed(m)]
        if missing:
            checks.append(
                Check(
                    roles,
                    "extra",
                    False,
                    f"{label} needs {', '.join(missing)}",
                    f"pip install 'nhr[{extra}]'",
                )
            )
        else:
            checks.append(Check(roles, "extra", True, f"{label}: libraries installed"))
        if model.backend in ("openai", "gemini"):
            key_check, key = _key_check(roles, model)
            checks.append(key_check)
            if network:
                server = _server_check(roles, model, key, timeout)
                if server is not None:
                    checks.append(server)
        gpu = _gpu_check(roles, model)
        if gpu is not None:
            checks.append(gpu)
    return checks


def render_checks(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        lines.append(f"{mark} {check.roles:<34} {check.what:<11} {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"     {'':<34} {'':<11} -> {check.fix}")
    failed = sum(not c.ok for c in checks)
    lines.append("")
    lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
    return "\n".join(lines)
