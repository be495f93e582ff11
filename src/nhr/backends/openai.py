"""`OpenAIBackend`: OpenAI and every OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp,
OpenRouter) behind the four model protocols.

Text and vision go through `chat.completions`; images through `images.generate` and
`images.edit`. Batching, limits, retries and usage live in `nhr.backends.api`; this module only
says how one request is sent and how an answer or an SDK exception is read.

How answers that carry no usable output are reported (item errors, never exceptions):

- a body that is not JSON (a truncated answer, a proxy's HTML page), and valid JSON with
  empty `choices`, `null` content or empty or undecodable image data: transient
  `malformed_response`, retried within `limits.max_retries` like a 5xx, because overloaded
  servers and proxies answer so and the same request usually succeeds;
- an image answer with only a URL: permanent `malformed_response` (the server ignores
  `response_format`, and will again);
- `message.refusal`: permanent `refusal`; `finish_reason == "content_filter"` and the images
  API's moderation errors: permanent `safety`; a 429 for an exhausted quota: permanent `quota`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import weakref
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

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
from nhr.backends.configs import OpenAIBackendConfig

# Sent when no key is set but a base_url is: local servers (vLLM, Ollama) accept any key,
# while the SDK refuses to start without one.
PLACEHOLDER_KEY = "not-needed"

# Rough token cost of one generated or edited image, for the tokens-per-minute estimate.
IMAGE_OUTPUT_TOKENS_ESTIMATE = 1500


class OpenAIBackend:
    """Chat, vision, image generation and editing through one OpenAI-compatible endpoint."""

    def __init__(self, config: OpenAIBackendConfig) -> None:
        require_sdk("openai", "openai")
        self.config = config
        secret = read_secret(config.api_key_env)
        if secret is None and not config.base_url:
            raise MissingApiKeyError(
                config.api_key_env, "openai", "a local server set with base_url needs no key"
            )
        self._runner = ApiRunner(
            "openai",
            config.limits,
            config.prices,
            make_client=functools.partial(
                _make_client, config.base_url, secret or Secret(PLACEHOLDER_KEY), config.limits
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
        params: dict[str, Any] = {}
        if c.base_url:
            params["base_url"] = _host(c.base_url)
        if c.temperature is not None:
            params["temperature"] = c.temperature
        if c.max_tokens is not None:
            params["max_tokens"] = c.max_tokens
        if c.image_detail != "auto":
            params["image_detail"] = c.image_detail
        if c.image_quality is not None:
            params["image_quality"] = c.image_quality
        if c.extra_body:
            params["extra_body"] = c.extra_body
        return CallInfo(backend="openai", model=c.model, params=params)

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
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        response = await client.chat.completions.create(
            **self._sampling(request.temperature, request.max_tokens, request.seed),
            messages=messages,
        )
        return _text_answer(response)

    async def _send_ask(self, client: Any, request: VisionRequest) -> Answer:
        parts: list[dict[str, Any]] = [
            {
                "type": "image_url",
                "image_url": {"url": _data_uri(image), "detail": self.config.image_detail},
            }
            for image in request.images
        ]
        parts.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": parts})
        response = await client.chat.completions.create(
            **self._sampling(request.temperature, request.max_tokens, request.seed),
            messages=messages,
        )
        return _text_answer(response)

    async def _send_generate(self, client: Any, request: GenerateRequest) -> Answer:
        # The images API takes no seed: every call is a fresh sample.
        response = await client.images.generate(
            **self._image_options(),
            prompt=request.prompt,
            size=self.config.image_size or f"{request.width}x{request.height}",
        )
        return _image_answer(response, request.width, request.height)

    async def _send_edit(self, client: Any, request: EditRequest) -> Answer:
        try:
            width, height = image_size(request.image)
        except ValueError as error:
            return Answer(PermanentBackendError("invalid_request", str(error)))
        response = await client.images.edit(
            **self._image_options(),
            image=("image.png", request.image, image_mime(request.image)),
            prompt=request.instruction,
            size=self.config.image_size or f"{width}x{height}",
        )
        return _image_answer(response, width, height)

    # --- request options -------------------------------------------------------------------

    def _sampling(self, temperature: float, max_tokens: int, seed: int | None) -> dict[str, Any]:
        """Model and sampling options; the config's values override the stage's."""
        c = self.config
        options: dict[str, Any] = {"model": c.model, c.max_tokens_field: c.max_tokens or max_tokens}
        if c.send_temperature:
            options["temperature"] = c.temperature if c.temperature is not None else temperature
        if seed is not None:
            options["seed"] = seed
        if c.extra_body:
            options["extra_body"] = c.extra_body
        return options

    def _image_options(self) -> dict[str, Any]:
        c = self.config
        options: dict[str, Any] = {"model": c.model, "n": 1}
        # gpt-image models always answer in base64 and reject the parameter; DALL-E and most
        # compatible servers answer with a URL unless asked for base64.
        if not c.model.startswith("gpt-image"):
            options["response_format"] = "b64_json"
        if c.image_quality is not None:
            options["quality"] = c.image_quality
        if c.extra_body:
            options["extra_body"] = c.extra_body
        return options

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


# --- client (no reference to the backend, see ApiRunner) --------------------------------------


def _make_client(base_url: str | None, key: Secret, limits: Any) -> Any:
    import openai

    # The SDK's own retries are off: ApiRunner retries, under the shared limits.
    return openai.AsyncOpenAI(
        api_key=key.reveal(),
        base_url=base_url,
        max_retries=0,
        timeout=limits.timeout_s + 1.0,
    )


async def _close_client(client: Any) -> None:
    await client.close()


def _classify(error: BaseException) -> BackendError:
    """The item error for an exception raised by the SDK."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return transient("timeout", "request timed out")
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return transient("connection", f"{type(cause).__name__}: {cause}")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        detail = f"HTTP {status}: {error.message}"
        if status == 429 and error.code == "insufficient_quota":
            return PermanentBackendError("quota", detail)
        if status == 400 and error.code in ("content_policy_violation", "moderation_blocked"):
            return PermanentBackendError("safety", detail)
        return status_error(status, detail, retry_after_s(error.response.headers))
    if isinstance(error, openai.APIResponseValidationError):
        return PermanentBackendError("malformed_response", str(error))
    if isinstance(error, json.JSONDecodeError):
        return transient("malformed_response", f"the answer is not valid JSON: {error}")
    reason = transport_reason(error)
    if reason is not None:
        return transient(reason, f"{type(error).__name__}: {error}")
    return unexpected(error)


# --- answers ----------------------------------------------------------------------------------


def _text_answer(response: Any) -> Answer:
    if isinstance(response, str):  # the SDK hands back the text of a non-JSON answer
        return Answer(transient("malformed_response", "the answer is not JSON"))
    usage = getattr(response, "usage", None)
    tokens_in = getattr(usage, "prompt_tokens", None) or 0
    tokens_out = getattr(usage, "completion_tokens", None) or 0

    def fail(reason: str, detail: str) -> Answer:
        return Answer(PermanentBackendError(reason, detail), tokens_in, tokens_out)

    def broken(detail: str) -> Answer:
        return Answer(transient("malformed_response", detail), tokens_in, tokens_out)

    choices = getattr(response, "choices", None)
    if not choices:
        return broken("the answer has no choices")
    message = getattr(choices[0], "message", None)
    refusal = getattr(message, "refusal", None)
    if refusal:
        return fail("refusal", str(refusal)[:300])
    if getattr(choices[0], "finish_reason", None) == "content_filter":
        return fail("safety", "content_filter")
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        return broken("the answer has no text content")
    return Answer(content, tokens_in, tokens_out)


def _image_answer(response: Any, width: int, height: int) -> Answer:
    if isinstance(response, str):
        return Answer(transient("malformed_response", "the answer is not JSON"))
    usage = getattr(response, "usage", None)
    tokens_in = getattr(usage, "input_tokens", None) or 0
    tokens_out = getattr(usage, "output_tokens", None) or 0

    def broken(detail: str) -> Answer:
        return Answer(transient("malformed_response", detail), tokens_in, tokens_out)

    data = getattr(response, "data", None)
    if not data:
        return broken("the answer has no image")
    encoded = getattr(data[0], "b64_json", None)
    if not encoded and getattr(data[0], "url", None):
        detail = "the answer has no b64_json image (a URL-only answer is not supported)"
        return Answer(PermanentBackendError("malformed_response", detail), tokens_in, tokens_out)
    if not encoded:
        return broken("the answer's image data is empty")
    try:
        png = png_of_size(base64.b64decode(encoded, validate=True), width, height)
    except (binascii.Error, ValueError) as error:
        return broken(f"the answer's image does not decode: {error}")
    return Answer(png, tokens_in, tokens_out, images=1)


def _data_uri(image: bytes) -> str:
    return f"data:{image_mime(image)};base64,{base64.b64encode(image).decode('ascii')}"


def _host(url: str) -> str:
    """host[:port] of a URL, never its user info, path or query (a proxy may put a key there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host
