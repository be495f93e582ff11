"""`GeminiBackend`: Google Gemini through the google-genai SDK, with an API key or on Vertex AI.

Every protocol goes through `models.generate_content`: text and vision answers as text parts;
generation and editing with an image model (`response_modalities=["IMAGE"]`), the input image
sent inline for an edit. Tuned models and Vertex endpoints work by passing their name as
`model`. Batching, limits, retries and usage live in `nhr.backends.api`.

How answers without usable output are reported (item errors, never exceptions):

- a blocked prompt (`prompt_feedback.block_reason`) or a candidate stopped for safety
  (SAFETY, PROHIBITED_CONTENT, BLOCKLIST, SPII, RECITATION, IMAGE_SAFETY, ...): permanent
  `safety` with the reason as detail; so is an image request answered with text only (the
  image models' way of refusing), with the model's words as detail;
- a body that is not JSON, and valid JSON without candidates, or whose candidate finished
  normally (STOP) without text or with empty or undecodable image data: transient
  `malformed_response`, retried within `limits.max_retries`; a candidate that stopped for
  another reason (MAX_TOKENS...) without output: permanent `malformed_response`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import weakref
from collections.abc import Sequence
from typing import Any

from nhr.backends.api import (
    Answer,
    ApiRunner,
    MissingApiKeyError,
    Secret,
    estimate_tokens,
    image_mime,
    image_size,
    limits_scope,
    png_of_size,
    read_secret,
    require_sdk,
    retry_after_s,
    status_error,
    transient,
    transport_reason,
    unexpected,
)
from nhr.backends.base import (
    BackendError,
    CallInfo,
    EditRequest,
    GenerateRequest,
    PermanentBackendError,
    TextRequest,
    VisionRequest,
)
from nhr.backends.configs import ApiLimits, GeminiBackendConfig

SAFETY_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    }
)

# The aspect ratios Gemini image models accept; a request gets the nearest one and the answer
# is resized to the exact size asked for.
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")

# Gemini bills about 1290 output tokens per generated image; for the tokens-per-minute estimate.
IMAGE_OUTPUT_TOKENS_ESTIMATE = 1300


class GeminiBackend:
    """Chat, vision, image generation and editing through Gemini models."""

    def __init__(self, config: GeminiBackendConfig) -> None:
        require_sdk("google.genai", "gemini")
        self.config = config
        secret: Secret | None = None
        project = location = None
        if config.vertex:
            project = os.environ.get(config.project_env) or None
            location = os.environ.get(config.location_env) or None
            for variable, value in ((config.project_env, project), (config.location_env, location)):
                if not value:
                    raise MissingApiKeyError(
                        variable,
                        "gemini",
                        "Vertex AI; log in with gcloud auth application-default login",
                    )
        else:
            secret = read_secret(config.api_key_env)
            if secret is None:
                raise MissingApiKeyError(config.api_key_env, "gemini")
        self._runner = ApiRunner(
            "gemini",
            config.limits,
            config.prices,
            make_client=functools.partial(
                _make_client, secret, project, location, config.base_url, config.limits
            ),
            close_client=_close_client,
            classify=_classify,
            secret=secret,
            scope=limits_scope(config),
        )
        weakref.finalize(self, self._runner.close)

    def __getstate__(self) -> dict[str, Any]:
        # The key is never pickled: a process executor's worker reads it from its environment.
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]

    def close(self) -> None:
        """Close the HTTP client and stop the backend's event loop (also done when collected)."""
        self._runner.close()

    def info(self) -> CallInfo:
        c = self.config
        params: dict[str, Any] = {"vertex": c.vertex}
        if c.base_url:
            params["base_url"] = _host(c.base_url)
        if c.temperature is not None:
            params["temperature"] = c.temperature
        if c.max_tokens is not None:
            params["max_tokens"] = c.max_tokens
        return CallInfo(backend="gemini", model=c.model, params=params)

    def usage(self) -> dict[str, float]:
        return self._runner.usage()

    # --- protocols -------------------------------------------------------------------------

    def chat(self, requests: Sequence[TextRequest]) -> list[str | BackendError]:
        return self._runner.run(requests, self._send_chat, self._estimate_chat)

    def ask(self, requests: Sequence[VisionRequest]) -> list[str | BackendError]:
        return self._runner.run(requests, self._send_ask, self._estimate_ask)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[bytes | BackendError]:
        return self._runner.run(requests, self._send_generate, self._estimate_image)

    def edit(self, requests: Sequence[EditRequest]) -> list[bytes | BackendError]:
        return self._runner.run(requests, self._send_edit, self._estimate_image)

    # --- one request each ------------------------------------------------------------------

    async def _send_chat(self, client: Any, request: TextRequest) -> Answer:
        from google.genai import types

        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        contents = [
            types.Content(
                role="model" if m.role == "assistant" else "user",
                parts=[types.Part.from_text(text=m.content)],
            )
            for m in request.messages
            if m.role != "system"
        ]
        if not contents:  # a lone system message is still a question
            contents, system = [types.Content(role="user", parts=[types.Part(text=system)])], ""
        config = self._sampling(request.temperature, request.max_tokens, request.seed)
        config.system_instruction = system or None
        response = await client.aio.models.generate_content(
            model=self.config.model, contents=contents, config=config
        )
        return _text_answer(response)

    async def _send_ask(self, client: Any, request: VisionRequest) -> Answer:
        from google.genai import types

        parts = [_image_part(image) for image in request.images]
        parts.append(types.Part.from_text(text=request.prompt))
        config = self._sampling(request.temperature, request.max_tokens, request.seed)
        config.system_instruction = request.system or None
        response = await client.aio.models.generate_content(
            model=self.config.model,
            contents=[types.Content(role="user", parts=parts)],
            config=config,
        )
        return _text_answer(response)

    async def _send_generate(self, client: Any, request: GenerateRequest) -> Answer:
        from google.genai import types

        config = types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            seed=request.seed,
            image_config=types.ImageConfig(
                aspect_ratio=nearest_aspect_ratio(request.width, request.height)
            ),
        )
        response = await client.aio.models.generate_content(
            model=self.config.model,
            contents=[
                types.Content(role="user", parts=[types.Part.from_text(text=request.prompt)])
            ],
            config=config,
        )
        return _image_answer(response, request.width, request.height)

    async def _send_edit(self, client: Any, request: EditRequest) -> Answer:
        from google.genai import types

        try:
            width, height = image_size(request.image)
        except ValueError as error:
            return Answer(PermanentBackendError("invalid_request", str(error)))
        parts = [_image_part(request.image), types.Part.from_text(text=request.instruction)]
        response = await client.aio.models.generate_content(
            model=self.config.model,
            contents=[types.Content(role="user", parts=parts)],
            config=types.GenerateContentConfig(response_modalities=["IMAGE"], seed=request.seed),
        )
        return _image_answer(response, width, height)

    # --- request options -------------------------------------------------------------------

    def _sampling(self, temperature: float, max_tokens: int, seed: int | None) -> Any:
        """Sampling options; the config's values override the stage's."""
        from google.genai import types

        c = self.config
        return types.GenerateContentConfig(
            temperature=c.temperature if c.temperature is not None else temperature,
            max_output_tokens=c.max_tokens or max_tokens,
            seed=seed,
        )

    def _estimate_chat(self, request: TextRequest) -> int:
        text = "".join(m.content for m in request.messages)
        return estimate_tokens(text, 0, self.config.max_tokens or request.max_tokens)

    def _estimate_ask(self, request: VisionRequest) -> int:
        text = (request.system or "") + request.prompt
        max_tokens = self.config.max_tokens or request.max_tokens
        return estimate_tokens(text, len(request.images), max_tokens)

    def _estimate_image(self, request: GenerateRequest | EditRequest) -> int:
        text = request.prompt if isinstance(request, GenerateRequest) else request.instruction
        images = 1 if isinstance(request, EditRequest) else 0
        return estimate_tokens(text, images, IMAGE_OUTPUT_TOKENS_ESTIMATE)


def nearest_aspect_ratio(width: int, height: int) -> str:
    """The supported aspect ratio closest to width:height (compared on a log scale)."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - target)

    return min(ASPECT_RATIOS, key=distance)


# --- client (no reference to the backend, see ApiRunner) --------------------------------------


def _make_client(
    secret: Secret | None,
    project: str | None,
    location: str | None,
    base_url: str | None,
    limits: ApiLimits,
) -> Any:
    from google import genai
    from google.genai import types

    options = types.HttpOptions(
        base_url=base_url,
        timeout=int((limits.timeout_s + 1.0) * 1000),
        # One attempt: ApiRunner retries, under the shared limits.
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    if secret is None:
        return genai.Client(vertexai=True, project=project, location=location, http_options=options)
    return genai.Client(vertexai=False, api_key=secret.reveal(), http_options=options)


async def _close_client(client: Any) -> None:
    await client.aio.aclose()
    client.close()


def _classify(error: BaseException) -> BackendError:
    """The item error for an exception raised by the SDK."""
    import pydantic
    from google.genai import errors

    if isinstance(error, errors.APIError):
        status = int(error.code or 0)
        detail = f"HTTP {status} {error.status or ''}: {error.message or ''}".strip()
        headers = getattr(getattr(error, "response", None), "headers", None)
        hint = retry_after_s(headers)
        if hint is None:
            hint = _retry_delay(error.details)
        if status:
            return status_error(status, detail, hint)
        return unexpected(error)
    if isinstance(error, pydantic.ValidationError):
        return PermanentBackendError("malformed_response", f"unexpected answer: {error}"[:300])
    if isinstance(error, json.JSONDecodeError):
        return transient("malformed_response", f"the answer is not valid JSON: {error}")
    reason = transport_reason(error)
    if reason is not None:
        return transient(reason, f"{type(error).__name__}: {error}")
    return unexpected(error)


def _retry_delay(details: Any) -> float | None:
    """Seconds from a google.rpc.RetryInfo entry (`"retryDelay": "13s"`), if the error has one."""
    body = details.get("error", details) if isinstance(details, dict) else {}
    for item in body.get("details", None) or []:
        delay = item.get("retryDelay") if isinstance(item, dict) else None
        match = re.fullmatch(r"\s*([0-9.]+)s\s*", str(delay or ""))
        if match:
            return float(match.group(1))
    return None


# --- answers ----------------------------------------------------------------------------------


def _name(value: Any) -> str:
    """An enum's wire name (`SAFETY`), whether the SDK parsed it or kept the raw string."""
    if value is None:
        return ""
    return str(getattr(value, "value", value))


def _usage(response: Any) -> tuple[int, int]:
    meta = getattr(response, "usage_metadata", None)
    tokens_in = getattr(meta, "prompt_token_count", None) or 0
    tokens_out = (getattr(meta, "candidates_token_count", None) or 0) + (
        getattr(meta, "thoughts_token_count", None) or 0
    )
    return tokens_in, tokens_out


def _candidate_parts(response: Any) -> tuple[list[Any], str, BackendError | None]:
    """The first candidate's parts and finish reason, or the error that stands for them."""
    feedback = getattr(response, "prompt_feedback", None)
    block = _name(getattr(feedback, "block_reason", None))
    if block:
        return [], "", PermanentBackendError("safety", f"prompt blocked: {block}")
    candidates = getattr(response, "candidates", None)
    if not candidates:
        return [], "", transient("malformed_response", "the answer has no candidates")
    finish = _name(getattr(candidates[0], "finish_reason", None))
    if finish in SAFETY_FINISH_REASONS:
        return [], finish, PermanentBackendError("safety", finish)
    content = getattr(candidates[0], "content", None)
    return list(getattr(content, "parts", None) or []), finish, None


def _text_answer(response: Any) -> Answer:
    tokens_in, tokens_out = _usage(response)
    parts, finish, error = _candidate_parts(response)
    if error is None:
        texts = [p.text for p in parts if p.text is not None and not p.thought]
        if texts:
            return Answer("".join(texts), tokens_in, tokens_out)
        error = _no_output(f"no text in the answer ({finish or 'no finish reason'})", finish)
    return Answer(error, tokens_in, tokens_out)


def _no_output(detail: str, finish: str) -> BackendError:
    """An answer without output: worth asking again when the model says it finished normally
    (an empty answer from an overloaded server), not when it stopped for a reason of its own
    (MAX_TOKENS would stop it again)."""
    if finish in ("", "STOP"):
        return transient("malformed_response", detail)
    return PermanentBackendError("malformed_response", detail)


def _image_answer(response: Any, width: int, height: int) -> Answer:
    tokens_in, tokens_out = _usage(response)
    parts, finish, error = _candidate_parts(response)
    if error is None:
        for part in parts:
            blob = part.inline_data
            if blob is not None and (blob.mime_type or "").startswith("image/"):
                try:
                    png = png_of_size(blob.data or b"", width, height)
                except ValueError as bad:
                    error = transient("malformed_response", f"the answer's image: {bad}")
                    break
                return Answer(png, tokens_in, tokens_out, images=1)
        else:
            text = " ".join(p.text for p in parts if p.text and not p.thought).strip()
            if text and finish in ("", "STOP"):
                error = PermanentBackendError("safety", f"no image; the model said: {text[:200]}")
            else:
                error = _no_output(
                    f"no image in the answer ({finish or 'no finish reason'})", finish
                )
    return Answer(error, tokens_in, tokens_out)


def _image_part(image: bytes) -> Any:
    from google.genai import types

    return types.Part.from_bytes(data=image, mime_type=image_mime(image))


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host
