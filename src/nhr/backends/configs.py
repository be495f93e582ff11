"""Config entries of the real backend families (`models.<role>` in a run config).

They live apart from the backends themselves so that validating a config needs only pydantic:
the family's module, with torch or an SDK behind it, is imported only when a run uses it.
Secrets never appear here: a config names the environment variable that holds a key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Prices(_Strict):
    """Optional prices, so a run can report money spent per stage."""

    input_per_million_tokens: float = Field(0.0, ge=0)
    output_per_million_tokens: float = Field(0.0, ge=0)
    per_image: float = Field(0.0, ge=0, description="per generated or edited image")


class ApiLimits(_Strict):
    """Client-side limits and retries, shared by every API backend."""

    max_concurrency: int = Field(16, ge=1, description="requests in flight at once")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="estimated prompt + answer")
    timeout_s: float = Field(120.0, gt=0, description="per request")
    max_retries: int = Field(6, ge=0, description="retries of 429, 5xx and timeouts")
    backoff_s: float = Field(1.0, ge=0, description="first backoff; doubles each retry")
    max_backoff_s: float = Field(60.0, ge=0)


class OpenAIBackendConfig(_Strict):
    """Any OpenAI-compatible server: OpenAI, vLLM, SGLang, Ollama, llama.cpp, OpenRouter."""

    backend: Literal["openai"]
    model: str
    base_url: str | None = Field(None, description="e.g. http://localhost:8000/v1 for vLLM")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the env var with the key")
    limits: ApiLimits = Field(default_factory=ApiLimits)
    prices: Prices | None = None
    temperature: float | None = Field(None, ge=0, description="overrides the stage's value")
    max_tokens: int | None = Field(None, ge=1, description="overrides the stage's value")
    image_detail: Literal["auto", "low", "high"] = "auto"
    image_quality: str | None = Field(None, description="images API quality, if the model has one")
    image_size: str | None = Field(
        None,
        description="size to ask the images API for (e.g. 1024x1024, for models that accept only "
        "a few sizes); the answer is resized to the size the pipeline asked for. Default: that size",
    )
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="reasoning models (o-series) take max_completion_tokens"
    )
    send_temperature: bool = Field(
        True, description="false for models that accept only their default temperature (o3)"
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="extra request fields (e.g. vLLM sampling options)"
    )


class GeminiBackendConfig(_Strict):
    """Google Gemini through the google-genai SDK: API key or Vertex AI, tuned models too."""

    backend: Literal["gemini"]
    model: str = Field(description="e.g. gemini-2.0-flash, or a tuned model / endpoint name")
    api_key_env: str = Field("GEMINI_API_KEY", description="name of the env var with the key")
    vertex: bool = Field(False, description="use Vertex AI (project and location from env)")
    project_env: str = "GOOGLE_CLOUD_PROJECT"
    location_env: str = "GOOGLE_CLOUD_LOCATION"
    base_url: str | None = Field(None, description="override the API endpoint (tests, proxies)")
    limits: ApiLimits = Field(default_factory=ApiLimits)
    prices: Prices | None = None
    temperature: float | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)


class LoraAdapter(_Strict):
    path: str = Field(description="hub id or folder of the LoRA weights")
    weight: float = 1.0
    weight_name: str | None = None


class DiffusersBackendConfig(_Strict):
    """Text-to-image or instruction-editing pipelines from diffusers (hub id or folder)."""

    backend: Literal["diffusers"]
    model: str
    pipeline: str | None = Field(
        None,
        description="pipeline class (FluxPipeline, FluxKontextPipeline, ...); default: "
        "read from the model's model_index.json",
    )
    revision: str | None = None
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    device: str = Field("cuda", description="cuda, cuda:1, cpu, mps")
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    steps: int | None = Field(None, ge=1, description="num_inference_steps")
    guidance: float | None = Field(None, ge=0, description="guidance_scale")
    loras: list[LoraAdapter] = Field(default_factory=list)
    call_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments of the pipeline call"
    )
    min_gpu_memory_gb: float | None = Field(
        None, gt=0, description="what `nhr doctor` checks the GPU has free for this model"
    )


class TransformersBackendConfig(_Strict):
    """Local LLMs and VLMs from transformers (chat template; AutoModelForImageTextToText)."""

    backend: Literal["transformers"]
    model: str
    revision: str | None = None
    processor: str | None = Field(None, description="processor/tokenizer source if not `model`")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = Field("auto", description="auto (device_map), cuda, cpu")
    max_new_tokens: int = Field(512, ge=1)
    max_image_pixels: int = Field(
        1024 * 1024, ge=64 * 64, description="images are downscaled to at most this many pixels"
    )
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    min_gpu_memory_gb: float | None = Field(
        None, gt=0, description="what `nhr doctor` checks the GPU has free for this model"
    )
