"""A fake OpenAI + Gemini API on 127.0.0.1, answering from the simulator, for tests.

The real SDKs talk to it through `base_url`, over the real wire formats:

- OpenAI: `POST /v1/chat/completions` (text, and `image_url` data-URI parts),
  `POST /v1/images/generations` (`b64_json` answers) and `POST /v1/images/edits` (multipart);
- Gemini: `POST /{version}/{model}:generateContent` (text and `inline_data` parts; with
  `responseModalities: ["IMAGE"]` the answer is an `inline_data` image).

Answers come from an embedded `SimBackend`: images decoded from the request go to its
chat/ask/generate/edit byte for byte, so a whole nhr run can go through the SDKs and the
simulator still reads its ground truth from the PNGs. `score_fallback` is what a vision request
is answered when its images carry no simulator metadata (images from other backends).

Faults, deterministic per request number (1 = the first request the server received) or drawn
with a seeded rate, or chosen per request by a hook: "429" (with Retry-After), "500", "503",
"malformed" (a truncated JSON body), "hang" (answers after `hang_s`), "refusal", "safety",
"empty" (no choices / candidates / image data), "null_content" (a choice whose content is
null; a Gemini candidate with no parts), "empty_image" (an image whose base64 data is empty),
"text" (Gemini answers an image request with words only), "400", "401". `latency_s` delays
every answer.

It records requests by path, arrival times, the largest number of requests in flight at once,
every Authorization / x-goog-api-key header value, and the parsed bodies.

    with FakeApiServer(latency_s=0.05) as server:
        config = {"backend": "openai", "model": "m", "base_url": server.openai_url}
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from nhr.backends.base import (
    BackendError,
    ChatMessage,
    EditRequest,
    GenerateRequest,
    TextRequest,
    VisionRequest,
)
from nhr.backends.sim import META_KEY, SimBackend, SimBackendConfig

FAULTS = (
    "429",
    "500",
    "503",
    "malformed",
    "hang",
    "refusal",
    "safety",
    "empty",
    "null_content",
    "empty_image",
    "text",
    "400",
    "401",
)
_GEMINI_PATH = re.compile(r"^/(?P<version>[^/]+)/(?P<model>.+):generateContent$")
_DATA_URI = re.compile(r"^data:(?P<mime>[^;,]+)?(;base64)?,(?P<data>.*)$", re.DOTALL)

FaultHook = Callable[[str, dict[str, Any]], str | None]


class FakeApiServer:
    """A threaded HTTP server; use it as a context manager (or call start/stop)."""

    def __init__(
        self,
        sim: SimBackendConfig | None = None,
        *,
        latency_s: float = 0.0,
        faults: Mapping[int, str] | None = None,
        fault_rates: Mapping[str, float] | None = None,
        fault_hook: FaultHook | None = None,
        seed: int = 0,
        retry_after: str | None = "0.2",
        hang_s: float = 3.0,
        score_fallback: str | None = None,
        gemini_image_side: int = 64,
    ) -> None:
        # scale 1.0: generated images have the size asked for, so they travel unchanged.
        self.sim = SimBackend(sim or SimBackendConfig(scale=1.0))
        self.latency_s = latency_s
        self.faults = dict(faults or {})
        self.fault_rates = dict(fault_rates or {})
        self.fault_hook = fault_hook
        self.seed = seed
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.score_fallback = score_fallback
        self.gemini_image_side = gemini_image_side
        for name in [*self.faults.values(), *self.fault_rates]:
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")

        self.requests: Counter[str] = Counter()
        self.arrivals: list[tuple[float, str]] = []
        self.keys_seen: list[str] = []
        self.bodies: list[tuple[str, Any]] = []
        self.faults_served: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._count = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeApiServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and close open keep-alive connections."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "the server is not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_url(self) -> str:
        """The base_url of an OpenAI client (the SDK appends /chat/completions etc.)."""
        return f"{self.url}/v1"

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    # --- per request -------------------------------------------------------------------------

    def _arrive(self, path: str, headers: Any) -> int:
        with self._lock:
            self._count += 1
            self.requests[path] += 1
            self.arrivals.append((time.monotonic(), path))
            for name in ("Authorization", "x-goog-api-key"):
                for value in headers.get_all(name) or []:
                    self.keys_seen.append(value)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self._count

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _fault(self, number: int, path: str, body: dict[str, Any]) -> str | None:
        fault = self.faults.get(number)
        if fault is None and self.fault_hook is not None:
            fault = self.fault_hook(path, body)
        if fault is None and self.fault_rates:
            draw = random.Random(f"{self.seed}:{number}").random()
            for name, rate in self.fault_rates.items():
                if draw < rate:
                    fault = name
                    break
                draw -= rate
        if fault is not None:
            with self._lock:
                self.faults_served[fault] += 1
        return fault

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _record(self, path: str, body: Any) -> None:
        with self._lock:
            self.bodies.append((path, body))

    # --- answers from the simulator ----------------------------------------------------------

    def vision_answer(self, request: VisionRequest) -> str | BackendError:
        if self.score_fallback is not None and not all(_has_sim_meta(i) for i in request.images):
            return self.score_fallback
        return self.sim.ask([request])[0]

    def chat_answer(self, request: TextRequest) -> str | BackendError:
        return self.sim.chat([request])[0]

    def generate_answer(self, request: GenerateRequest) -> bytes | BackendError:
        return self.sim.generate([request])[0]

    def edit_answer(self, request: EditRequest) -> bytes | BackendError:
        return self.sim.edit([request])[0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # a burst of concurrent connects must not be dropped
    fake: FakeApiServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs
    # Headers and body go out in two writes; with Nagle's algorithm on, the body would wait
    # for the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True
    timeout = 30  # an idle keep-alive connection is dropped after this
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    # --- dispatch ----------------------------------------------------------------------------

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = self.path.split("?")[0]
        deadline = time.monotonic() + fake.latency_s
        number = fake._arrive(path, self.headers)
        try:
            self._reply: tuple[int, bytes, str, Mapping[str, str] | None] | None = None
            fault = self._serve(fake, number, path, raw)
            # The answer is ready; it leaves `latency_s` after the request arrived, so the
            # fake's own work hides inside the latency, as a real server's would.
            fake._sleep(deadline - time.monotonic())
            if fault == "hang":
                fake._sleep(fake.hang_s)
            assert self._reply is not None
            self._write(*self._reply)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            fake._leave()

    def _serve(self, fake: FakeApiServer, number: int, path: str, raw: bytes) -> str | None:
        """Prepare the reply to one request (see `_send`); returns the fault injected."""
        gemini = _GEMINI_PATH.match(path)
        if path.endswith("/images/edits"):
            body = _multipart(raw, self.headers.get("Content-Type", ""))
        else:
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._json(400, _openai_error("invalid JSON body", "invalid_request_error"))
                return None
        fake._record(path, body)
        fault = fake._fault(number, path, body)
        if self._transport_fault(fake, fault, gemini is not None):
            return fault
        if path.endswith("/chat/completions"):
            self._chat(fake, body, fault)
        elif path.endswith("/images/generations"):
            self._images(fake, body, fault, edit=False)
        elif path.endswith("/images/edits"):
            self._images(fake, body, fault, edit=True)
        elif gemini is not None:
            self._gemini(fake, gemini.group("model"), body, fault)
        else:
            self._json(404, _openai_error(f"no route {path}", "invalid_request_error"))
        return fault

    def _transport_fault(self, fake: FakeApiServer, fault: str | None, gemini: bool) -> bool:
        """Answer the faults that look the same for every endpoint; True if one was sent."""
        if fault == "429":
            headers = {"Retry-After": fake.retry_after} if fake.retry_after is not None else {}
            self._error(429, "rate limit reached", "RESOURCE_EXHAUSTED", gemini, headers)
        elif fault == "500":
            self._error(500, "the server had an error", "INTERNAL", gemini)
        elif fault == "503":
            self._error(503, "the server is overloaded", "UNAVAILABLE", gemini)
        elif fault == "400":
            self._error(400, "invalid request", "INVALID_ARGUMENT", gemini)
        elif fault == "401":
            self._error(401, "invalid credentials", "UNAUTHENTICATED", gemini)
        elif fault == "malformed":
            self._send(200, b'{"id": "broken", "choices": [{"index": 0, "mess', "application/json")
        else:
            return False
        return True

    # --- OpenAI ------------------------------------------------------------------------------

    def _chat(self, fake: FakeApiServer, body: dict[str, Any], fault: str | None) -> None:
        system, texts, images, messages = _openai_messages(body.get("messages") or [])
        temperature = float(body.get("temperature") or 0.0)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        seed = body.get("seed")
        if images:
            answer = fake.vision_answer(
                VisionRequest(
                    images=tuple(images),
                    prompt="\n".join(texts),
                    system=system,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    seed=seed,
                )
            )
        else:
            answer = fake.chat_answer(
                TextRequest(
                    messages=tuple(messages),
                    temperature=temperature,
                    max_tokens=max_tokens,
                    seed=seed,
                )
            )
        if isinstance(answer, BackendError):
            self._sim_error(answer, gemini=False)
            return
        prompt_text = "".join(texts) + (system or "")
        usage = {
            "prompt_tokens": _tokens(prompt_text) + 85 * len(images),
            "completion_tokens": _tokens(answer),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        message: dict[str, Any] = {"role": "assistant", "content": answer, "refusal": None}
        finish = "stop"
        choices: list[dict[str, Any]]
        if fault == "refusal":
            message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
        elif fault == "safety":
            message, finish = {"role": "assistant", "content": None}, "content_filter"
        elif fault == "null_content":
            message = {"role": "assistant", "content": None, "refusal": None}
        choices = [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]
        if fault == "empty":
            choices = []
        self._json(
            200,
            {
                "id": f"chatcmpl-{time.monotonic_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": choices,
                "usage": usage,
            },
        )

    def _images(
        self, fake: FakeApiServer, body: dict[str, Any], fault: str | None, *, edit: bool
    ) -> None:
        prompt = str(body.get("prompt", ""))
        if edit:
            image = body.get("image") or body.get("image[]")
            if not isinstance(image, bytes):
                self._json(400, _openai_error("no image file", "invalid_request_error"))
                return
            answer = fake.edit_answer(EditRequest(image=image, instruction=prompt, seed=0))
        else:
            width, height = _size(str(body.get("size") or "1024x1024"))
            answer = fake.generate_answer(GenerateRequest(prompt, width, height, seed=0))
        if fault in ("refusal", "safety"):
            self._error(400, "blocked by the safety system", "", False, code="moderation_blocked")
            return
        if isinstance(answer, BackendError):
            self._sim_error(answer, gemini=False)
            return
        data = [] if fault == "empty" else [{"b64_json": base64.b64encode(answer).decode()}]
        if fault == "empty_image":
            data = [{"b64_json": ""}]
        usage = {
            "input_tokens": _tokens(prompt) + (85 if edit else 0),
            "output_tokens": 272,
            "total_tokens": _tokens(prompt) + (85 if edit else 0) + 272,
            "input_tokens_details": {"text_tokens": _tokens(prompt), "image_tokens": 0},
        }
        self._json(200, {"created": int(time.time()), "data": data, "usage": usage})

    # --- Gemini ------------------------------------------------------------------------------

    def _gemini(
        self, fake: FakeApiServer, model: str, body: dict[str, Any], fault: str | None
    ) -> None:
        config = body.get("generationConfig") or {}
        system = _gemini_text((body.get("systemInstruction") or {}).get("parts") or [])
        contents = body.get("contents") or []
        images = [
            image for content in contents for image in _gemini_images(content.get("parts") or [])
        ]
        seed = int(config.get("seed") or 0)
        wants_image = "IMAGE" in [str(m).upper() for m in config.get("responseModalities") or []]
        last_text = _gemini_text((contents[-1].get("parts") or []) if contents else [])
        answer: str | bytes | BackendError
        if wants_image and images:
            answer = fake.edit_answer(
                EditRequest(image=images[-1], instruction=last_text, seed=seed)
            )
        elif wants_image:
            ratio = (config.get("imageConfig") or {}).get("aspectRatio") or "1:1"
            width, height = _aspect_size(ratio, fake.gemini_image_side)
            answer = fake.generate_answer(GenerateRequest(last_text, width, height, seed))
        elif images:
            answer = fake.vision_answer(
                VisionRequest(
                    images=tuple(images),
                    prompt=last_text,
                    system=system or None,
                    temperature=float(config.get("temperature") or 0.0),
                    max_tokens=int(config.get("maxOutputTokens") or 256),
                    seed=config.get("seed"),
                )
            )
        else:
            messages = [ChatMessage("system", system)] if system else []
            for content in contents:
                role = "assistant" if content.get("role") == "model" else "user"
                messages.append(ChatMessage(role, _gemini_text(content.get("parts") or [])))
            answer = fake.chat_answer(
                TextRequest(
                    messages=tuple(messages),
                    temperature=float(config.get("temperature") or 0.0),
                    max_tokens=int(config.get("maxOutputTokens") or 4096),
                    seed=config.get("seed"),
                )
            )
        if isinstance(answer, BackendError):
            self._sim_error(answer, gemini=True)
            return
        prompt_tokens = _tokens(system + "".join(_all_texts(contents))) + 258 * len(images)
        if isinstance(answer, bytes) and fault != "text":
            encoded = "" if fault == "empty_image" else base64.b64encode(answer).decode()
            parts = [{"inlineData": {"mimeType": "image/png", "data": encoded}}]
            output_tokens = 1290
        elif isinstance(answer, bytes):
            parts = [{"text": "I can't create that image."}]
            output_tokens = 8
        else:
            parts = [{"text": answer}]
            output_tokens = _tokens(answer)
        candidate: dict[str, Any] = {
            "content": {"role": "model", "parts": parts},
            "finishReason": "STOP",
            "index": 0,
        }
        result: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
        if fault == "safety":
            result = {"promptFeedback": {"blockReason": "SAFETY"}}
        elif fault == "refusal":
            candidate.update(content={"role": "model", "parts": []}, finishReason="SAFETY")
        elif fault == "empty":
            result["candidates"] = []
        elif fault == "null_content":
            candidate["content"] = {"role": "model", "parts": []}
        result["usageMetadata"] = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt_tokens + output_tokens,
        }
        self._json(200, result)

    # --- sending -----------------------------------------------------------------------------

    def _sim_error(self, error: BackendError, *, gemini: bool) -> None:
        if error.retryable:
            self._error(500, f"simulated {error.reason}", "INTERNAL", gemini)
        else:
            self._error(
                400, f"simulated {error.reason}: {error.detail}", "INVALID_ARGUMENT", gemini
            )

    def _error(
        self,
        status: int,
        message: str,
        google_status: str,
        gemini: bool,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        if gemini:
            body = {"error": {"code": status, "message": message, "status": google_status}}
        else:
            kind = "rate_limit_exceeded" if status == 429 else "invalid_request_error"
            body = _openai_error(message, kind, code)
        self._json(status, body, headers)

    def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Keep the reply; `do_POST` writes it when the latency has passed."""
        self._reply = (status, payload, content_type, headers)

    def _write(
        self, status: int, payload: bytes, content_type: str, headers: Mapping[str, str] | None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


# --- wire format helpers ----------------------------------------------------------------------


def _openai_error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _openai_messages(
    raw: list[dict[str, Any]],
) -> tuple[str | None, list[str], list[bytes], list[ChatMessage]]:
    """(system text, user texts, images, all messages as text) of a chat request."""
    system_parts: list[str] = []
    texts: list[str] = []
    images: list[bytes] = []
    messages: list[ChatMessage] = []
    for message in raw:
        role = message.get("role", "user")
        content = message.get("content")
        if isinstance(content, str):
            message_text = content
        else:
            pieces = []
            for part in content or []:
                if part.get("type") == "text":
                    pieces.append(part.get("text", ""))
                elif part.get("type") == "image_url":
                    images.append(_decode_data_uri(part["image_url"]["url"]))
            message_text = "\n".join(pieces)
        messages.append(ChatMessage(role, message_text))
        if role == "system":
            system_parts.append(message_text)
        else:
            texts.append(message_text)
    return ("\n".join(system_parts) or None), texts, images, messages


def _decode_data_uri(uri: str) -> bytes:
    match = _DATA_URI.match(uri)
    if match is None:
        raise ValueError("only data: image URLs are supported by the fake server")
    return base64.b64decode(match.group("data"))


def _gemini_images(parts: list[dict[str, Any]]) -> list[bytes]:
    images = []
    for part in parts:
        blob = part.get("inlineData") or part.get("inline_data")
        if blob:
            # The SDK may send URL-safe base64; accept both alphabets.
            data = str(blob.get("data", "")).replace("-", "+").replace("_", "/")
            try:
                images.append(base64.b64decode(data))
            except binascii.Error:
                pass
    return images


def _gemini_text(parts: list[dict[str, Any]]) -> str:
    return "".join(part.get("text", "") for part in parts if "text" in part)


def _all_texts(contents: list[dict[str, Any]]) -> list[str]:
    return [_gemini_text(content.get("parts") or []) for content in contents]


def _multipart(raw: bytes, content_type: str) -> dict[str, Any]:
    """Fields of a multipart/form-data body: text as str, files as bytes."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        return {}
    boundary = b"--" + match.group(1).encode()
    fields: dict[str, Any] = {}
    for chunk in raw.split(boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, value = chunk.partition(b"\r\n\r\n")
        value = value[:-2] if value.endswith(b"\r\n") else value
        name = re.search(rb'name="([^"]*)"', head)
        if name is None:
            continue
        key = name.group(1).decode()
        fields[key] = value if b"filename=" in head else value.decode()
    return fields


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def _aspect_size(ratio: str, side: int) -> tuple[int, int]:
    """The image size the fake Gemini model draws for an aspect ratio: long side `side`."""
    w, _, h = ratio.partition(":")
    a, b = int(w), int(h)
    if a >= b:
        return side, max(1, round(side * b / a))
    return max(1, round(side * a / b)), side


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _has_sim_meta(png: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(png)) as image:
            return bool(image.info.get(META_KEY) or getattr(image, "text", {}).get(META_KEY))
    except OSError:
        return False
