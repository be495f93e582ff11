"""`nhr doctor CONFIG`: check, without spending money, that a config can run here.

For every model role: the backend's extra is installed, its key (or Vertex project) is in the
environment, its server answers and serves the configured model (a free model-listing
request), and the GPU has the memory the model asks for (`min_gpu_memory_gb`). Each failed
check says what to do. `nhr mine` runs the same checks before any stage (`nhr.preflight`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from nhr.config import ROLES, NhrConfig

# backend -> (modules it imports, the extra that installs them)
REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "sim": ((), ""),
    "diffusers": (("torch", "diffusers", "transformers"), "diffusers"),
    "transformers": (("torch", "transformers"), "transformers"),
    "openai": (("openai",), "openai"),
    "gemini": (("google.genai",), "gemini"),
}
OPENAI_URL = "https://api.openai.com/v1"
GEMINI_URL = "https://generativelanguage.googleapis.com"
# A model listing is small, but a hosted router lists thousands of models.
MAX_BODY_BYTES = 32 * 2**20
# How many served model ids a "not served" message names.
SHOWN_MODELS = 8


@dataclass(frozen=True)
class Check:
    roles: str
    what: str
    ok: bool
    detail: str
    fix: str = ""
    # False: a failure `nhr mine`'s preflight only warns about, because the stage may still
    # work when it is reached (GPU memory another process frees, a listing endpoint that fails).
    stops_run: bool = True


@dataclass(frozen=True)
class _Query:
    """One GET a server check makes; equal queries of several roles are sent once."""

    url: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Answer:
    status: int | None  # None: nothing answered
    reason: str  # why nothing answered, or the HTTP reason
    body: bytes = b""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _get(query: _Query, timeout: float) -> _Answer:
    request = urllib.request.Request(query.url, headers=dict(query.headers), method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return _Answer(response.status, "", response.read(MAX_BODY_BYTES))
    except urllib.error.HTTPError as error:
        try:
            body = error.read(MAX_BODY_BYTES)
        except OSError:
            body = b""
        return _Answer(error.code, str(error.reason), body)
    except (urllib.error.URLError, OSError, ValueError) as error:
        return _Answer(None, _unreachable_reason(error, timeout))


def _unreachable_reason(error: Exception, timeout: float) -> str:
    """A short, plain reason: the socket error's text is often '[Errno 111] ...'."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    return str(reason)


def _fields(roles: list[str], field: str) -> str:
    return " / ".join(f"models.{role}.{field}" for role in roles)


def _secret(variable: str) -> str | None:
    # Same rule as the backends' read_secret: a blank variable is not a key.
    return os.environ.get(variable, "").strip() or None


def _key_check(roles: str, model: Any) -> tuple[Check, str | None]:
    """Whether the key (or Vertex project) is in the environment; returns the key if any."""
    if model.backend == "gemini" and model.vertex:
        missing = [v for v in (model.project_env, model.location_env) if not _secret(v)]
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
    key = _secret(variable)
    if key:
        return Check(roles, "key", True, f"{variable} is set"), key
    if model.backend == "openai" and model.base_url:
        return Check(roles, "key", True, f"{variable} not set; fine for a local server"), None
    return Check(
        roles, "key", False, f"{variable} is not set", f"export {variable}=<your key>"
    ), None


def _server_query(model: Any, key: str | None) -> _Query | None:
    """The free request that shows whether the server answers and knows the model."""
    if model.backend == "openai":
        if key is None and not model.base_url:
            return None  # nothing to ask without a key; the key check already failed
        base = (model.base_url or OPENAI_URL).rstrip("/")
        # The backend sends a placeholder key to local servers; so does this check.
        return _Query(f"{base}/models", (("Authorization", f"Bearer {key or 'not-needed'}"),))
    if model.backend == "gemini" and not model.vertex and key is not None:
        base = (model.base_url or GEMINI_URL).rstrip("/")
        name = model.model if "/" in model.model else f"models/{model.model}"
        url = f"{base}/v1beta/{urllib.parse.quote(name, safe='/')}"
        return _Query(url, (("x-goog-api-key", key),))
    return None


def _served_ids(body: bytes) -> list[str] | None:
    """Model ids of an OpenAI-style listing ({"data": [{"id": ...}]}), None if it is not one."""
    try:
        data = json.loads(body)["data"]
        return [str(entry["id"]) for entry in data]
    except (ValueError, KeyError, TypeError):
        return None


def _is_served(model: str, served: list[str]) -> bool:
    if model in served:
        return True
    if ":" not in model:  # Ollama lists "llama3:latest" and serves it as "llama3" too
        return f"{model}:latest" in served
    # OpenRouter serves unlisted variants of a listed model ("vendor/model:nitro")
    return model.rsplit(":", 1)[0] in served


def _server_check(
    roles_list: list[str], model: Any, query: _Query, answer: _Answer, key_set: bool
) -> Check:
    roles = ", ".join(roles_list)
    openai = model.backend == "openai"
    where = query.url.removesuffix("/models") if openai else query.url.split("/v1beta/")[0]
    name = model.model
    if answer.status is None:
        fix = (
            f"start the server (see the config's header) or fix {_fields(roles_list, 'base_url')}"
            if model.base_url
            else "check the network connection (and any proxy settings)"
        )
        return Check(roles, "server", False, f"cannot reach {where} ({answer.reason})", fix)
    refused = answer.status in (401, 403)
    if refused and not key_set:
        return Check(
            roles,
            "server",
            False,
            f"{where} asks for a key (HTTP {answer.status})",
            f"export {model.api_key_env}=<the server's key>",
        )
    if refused or (answer.status == 400 and b"API_KEY_INVALID" in answer.body):
        return Check(
            roles,
            "server",
            False,
            f"{where} refused the key (HTTP {answer.status})",
            f"check the value of {model.api_key_env}",
        )
    if answer.status == 200:
        served = _served_ids(answer.body) if openai else [name]
        if served is not None and _is_served(name, served):
            return Check(roles, "server", True, f"{where} serves '{name}'")
        if served is not None:
            listed = ", ".join(served[:SHOWN_MODELS]) or "nothing"
            if len(served) > SHOWN_MODELS:
                listed += f", ... ({len(served) - SHOWN_MODELS} more)"
            return Check(
                roles,
                "model",
                False,
                f"model '{name}' is not served by {where} (it serves: {listed})",
                f"fix {_fields(roles_list, 'model')} or start the server with that model",
            )
    if not openai and answer.status == 404 and b"NOT_FOUND" in answer.body:
        return Check(
            roles,
            "model",
            False,
            f"model '{name}' is not found at {where}",
            f"fix {_fields(roles_list, 'model')} (a model your key can use)",
        )
    if answer.status >= 500 and answer.status != 501:  # 501: it has no listing
        # The server is up but its listing fails; the calls themselves may still work.
        return Check(
            roles,
            "server",
            False,
            f"{where} answers HTTP {answer.status} to a model listing",
            "check the server's log",
            stops_run=False,
        )
    # Up, but without a listing this check understands (404, 501: some proxies have none).
    return Check(
        roles,
        "server",
        True,
        f"{where} answers (HTTP {answer.status}); cannot check that it serves '{name}'",
    )


def _gpu_check(roles: str, model: Any) -> Check | None:
    needed = getattr(model, "min_gpu_memory_gb", None)
    device = getattr(model, "device", "cpu")
    if needed is None or not device.startswith(("cuda", "auto")) or not _installed("torch"):
        return None
    import torch

    if not torch.cuda.is_available():
        return Check(
            roles,
            "gpu",
            False,
            f"needs a GPU with {needed:g} GB, none is visible",
            "run on a CUDA machine, or set device: cpu (very slow)",
            # device auto falls back to the CPU: slow, but it runs
            stops_run=device.startswith("cuda"),
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
            # another process may free it before the stage loads the model
            stops_run=False,
        )
    return Check(roles, "gpu", True, f"GPU {index}: {free_gb:.1f} GB free >= {needed:g} GB")


def run_doctor(
    config: NhrConfig,
    *,
    network: bool = True,
    timeout: float = 5.0,
    roles: Iterable[str] = ROLES,
) -> list[Check]:
    """Every check for the model `roles` of `config`, failed or not, in role order."""
    # Roles that share one model config are checked once.
    groups: dict[str, tuple[list[str], Any]] = {}
    for role in roles:
        model = getattr(config.models, role)
        if model is None:  # an optional role this config does not use (models.second_validator)
            continue
        key = json.dumps(model.model_dump(mode="json"), sort_keys=True)
        groups.setdefault(key, ([], model))[0].append(role)
    checks: list[list[Check]] = []
    server_queries: list[tuple[int, list[str], Any, _Query, bool]] = []
    for roles_list, model in groups.values():
        roles_text = ", ".join(roles_list)
        group: list[Check] = []
        label = f"{model.backend}:{model.model}"
        modules, extra = REQUIREMENTS[model.backend]
        missing = [m for m in modules if not _installed(m)]
        if missing:
            group.append(
                Check(
                    roles_text,
                    "extra",
                    False,
                    f"{label} needs {', '.join(missing)}",
                    f"pip install 'nhr[{extra}]'",
                )
            )
        else:
            group.append(Check(roles_text, "extra", True, f"{label}: libraries installed"))
        if model.backend in ("openai", "gemini"):
            key_check, key = _key_check(roles_text, model)
            group.append(key_check)
            query = _server_query(model, key) if network else None
            if query is not None:
                server_queries.append((len(checks), roles_list, model, query, key is not None))
        gpu = _gpu_check(roles_text, model)
        if gpu is not None:
            group.append(gpu)
        checks.append(group)
    # One request per distinct server query, all at once: a run waits for the slowest server
    # only, however many roles and servers it has.
    distinct = list(dict.fromkeys(query for *_, query, _ in server_queries))
    if distinct:
        with ThreadPoolExecutor(max_workers=min(8, len(distinct))) as pool:
            answers = dict(zip(distinct, pool.map(lambda q: _get(q, timeout), distinct)))
        for position, roles_list, model, query, key_set in server_queries:
            check = _server_check(roles_list, model, query, answers[query], key_set)
            checks[position].insert(2, check)  # after the key check, before the GPU check
    return [check for group in checks for check in group]


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
