"""Config entries of the real backend families (`models.<role>` in a run config).

They live apart from the backends themselves so that validating a config needs only pydantic:
the family's module, with torch or an SDK behind it, is imported only when a run uses it.
Secrets never appear here: a config names the environment variable that holds a key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

# What a setting changes. Every field of every config class (these, nhr.config's sections and
# the simulator's) says it next to its definition, so a resumed run can tell a change that would
# mix rows made two ways (refused, see nhr.pipeline.config_changes) from one that only changes
# how the run executes (allowed). tests/test_config_semantics.py fails on an unmarked field.
AFFECTS = "affects"
OPERATIONAL = "operational"
ROLE = "role"


def affects(stage: str) -> dict[str, str]:
    """`json_schema_extra` of a setting that changes the rows of `stage` (and every later one)."""
    return {AFFECTS: stage}


def affects_role() -> dict[str, str]:
    """`json_schema_extra` of a model setting that changes the model's answers, so the rows of
    the stages that use its role (`models.<role>`)."""
    return {AFFECTS: ROLE}


def operational() -> dict[str, str]:
    """`json_schema_extra` of a setting that changes how a run executes but not what it
    produces: it may differ between a run and its resume."""
    return {AFFECTS: OPERATIONAL}


def effect_of(field: FieldInfo) -> str | None:
    """A stage name, ROLE or OPERATIONAL; None for a field nobody classified (a bug)."""
    extra = field.json_schema_extra
    return extra.get(AFFECTS) if isinstance(extra, dict) else None


class _Strict(BaseModel):
    # strict: "12" is not a number and "yes" is not a boolean (YAML already types its values)
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


class ModelScaling(_Strict):
    """How one model role scales on an executor with workers (`--executor ray`): `replicas`
    actors serve the role, each reserving `gpus`, `cpus` and `memory_gb`. Every backend
    family's config inherits these keys. Operational: where and how many copies of a model
    answer never changes an answer. The local executor runs one copy in its own process and
    ignores them."""

    replicas: int = Field(
        1,
        ge=1,
        description="workers (Ray actors) serving this role; each loads the model once",
        json_schema_extra=operational(),
    )
    gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs reserved per replica (fractions share a GPU)",
        json_schema_extra=operational(),
    )
    cpus: float = Field(
        0.5,
        gt=0,
        description="CPUs reserved per replica (fractions are fine: the work is mostly "
        "waiting for the model)",
        json_schema_extra=operational(),
    )
    memory_gb: float | None = Field(
        None,
        gt=0,
        description="host memory reserved per replica; default: none reserved",
        json_schema_extra=operational(),
    )


class Prices(_Strict):
    """Optional prices, so a run can report money spent per stage (bookkeeping only)."""

    input_per_million_tokens: float = Field(0.0, ge=0, json_schema_extra=operational())
    output_per_million_tokens: float = Field(0.0, ge=0, json_schema_extra=operational())
    per_image: float = Field(
        0.0, ge=0, description="per generated or edited image", json_schema_extra=operational()
    )


class ApiLimits(_Strict):
    """Client-side limits and retries, shared by every API backend.

    All operational: they decide when and how often a request is sent, never what it asks, so
    a run that hit timeouts may raise `timeout_s` and resume. A row that already failed stays
    failed unless its stage is redone (`--redo-from`).
    """

    max_concurrency: int = Field(
        16, ge=1, description="requests in flight at once", json_schema_extra=operational()
    )
    requests_per_minute: int | None = Field(None, ge=1, json_schema_extra=operational())
    tokens_per_minute: int | None = Field(
        None, ge=1, description="estimated prompt + answer", json_schema_extra=operational()
    )
    timeout_s: float = Field(
        120.0, gt=0, description="per request", json_schema_extra=operational()
    )
    max_retries: int = Field(
        6,
        ge=0,
        description="retries of 429, 5xx, timeouts, connection errors and broken or empty "
        "answers; one call costs at most max_retries + 1 requests",
        json_schema_extra=operational(),
    )
    backoff_s: float = Field(
        1.0,
        ge=0,
        description="first backoff; doubles each retry",
        json_schema_extra=operational(),
    )
    max_backoff_s: float = Field(60.0, ge=0, json_schema_extra=operational())


class OpenAIBackendConfig(ModelScaling):
    """Any OpenAI-compatible server: OpenAI, vLLM, SGLang, Ollama, llama.cpp, OpenRouter.

    `base_url` is operational: it says where the model is served (a vLLM server restarted on
    another port), while `model` says which model answers. Everything that shapes a request
    (sampling, token limits, image options, extra fields) changes the answers.
    """

    backend: Literal["openai"] = Field(json_schema_extra=affects_role())
    model: str = Field(json_schema_extra=affects_role())
    base_url: str | None = Field(
        None,
        description="e.g. http://localhost:8000/v1 for vLLM",
        json_schema_extra=operational(),
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="name of the env var with the key",
        json_schema_extra=operational(),
    )
    limits: ApiLimits = Field(default_factory=ApiLimits)
    prices: Prices | None = Field(None, json_schema_extra=operational())
    temperature: float | None = Field(
        None, ge=0, description="overrides the stage's value", json_schema_extra=affects_role()
    )
    max_tokens: int | None = Field(
        None, ge=1, description="overrides the stage's value", json_schema_extra=affects_role()
    )
    image_detail: Literal["auto", "low", "high"] = Field("auto", json_schema_extra=affects_role())
    image_quality: str | None = Field(
        None,
        description="images API quality, if the model has one",
        json_schema_extra=affects_role(),
    )
    image_size: str | None = Field(
        None,
        description="size to ask the images API for (e.g. 1024x1024, for models that accept only "
        "a few sizes); the answer is resized to the size the pipeline asked for. Default: that size",
        json_schema_extra=affects_role(),
    )
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens",
        description="reasoning models (o-series) take max_completion_tokens",
        json_schema_extra=affects_role(),
    )
    send_temperature: bool = Field(
        True,
        description="false for models that accept only their default temperature (o3)",
        json_schema_extra=affects_role(),
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="extra request fields (e.g. vLLM sampling options)",
        json_schema_extra=affects_role(),
    )


class GeminiBackendConfig(ModelScaling):
    """Google Gemini through the google-genai SDK: API key or Vertex AI, tuned models too.

    Where the model is served (`vertex`, `base_url`) and where its credentials come from are
    operational; `model` says which model answers.
    """

    backend: Literal["gemini"] = Field(json_schema_extra=affects_role())
    model: str = Field(
        description="e.g. gemini-2.0-flash, or a tuned model / endpoint name",
        json_schema_extra=affects_role(),
    )
    api_key_env: str = Field(
        "GEMINI_API_KEY",
        description="name of the env var with the key",
        json_schema_extra=operational(),
    )
    vertex: bool = Field(
        False,
        description="use Vertex AI (project and location from env)",
        json_schema_extra=operational(),
    )
    project_env: str = Field("GOOGLE_CLOUD_PROJECT", json_schema_extra=operational())
    location_env: str = Field("GOOGLE_CLOUD_LOCATION", json_schema_extra=operational())
    base_url: str | None = Field(
        None,
        description="override the API endpoint (tests, proxies)",
        json_schema_extra=operational(),
    )
    limits: ApiLimits = Field(default_factory=ApiLimits)
    prices: Prices | None = Field(None, json_schema_extra=operational())
    temperature: float | None = Field(None, ge=0, json_schema_extra=affects_role())
    max_tokens: int | None = Field(None, ge=1, json_schema_extra=affects_role())


class LoraAdapter(_Strict):
    path: str = Field(
        description="hub id or folder of the LoRA weights", json_schema_extra=affects_role()
    )
    weight: float = Field(1.0, json_schema_extra=affects_role())
    weight_name: str | None = Field(None, json_schema_extra=affects_role())


class DiffusersBackendConfig(ModelScaling):
    """Text-to-image or instruction-editing pipelines from diffusers (hub id or folder).

    `dtype` changes the images (bf16 and fp32 weights draw different pixels); where the
    pipeline runs (`device`, `cpu_offload`) and the doctor's memory check are operational.
    """

    backend: Literal["diffusers"] = Field(json_schema_extra=affects_role())
    model: str = Field(json_schema_extra=affects_role())
    pipeline: str | None = Field(
        None,
        description="pipeline class (FluxPipeline, FluxKontextPipeline, ...); default: "
        "read from the model's model_index.json",
        json_schema_extra=affects_role(),
    )
    revision: str | None = Field(None, json_schema_extra=affects_role())
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", json_schema_extra=affects_role()
    )
    device: str = Field(
        "cuda", description="cuda, cuda:1, cpu, mps", json_schema_extra=operational()
    )
    cpu_offload: Literal["none", "model", "sequential"] = Field(
        "none", json_schema_extra=operational()
    )
    steps: int | None = Field(
        None, ge=1, description="num_inference_steps", json_schema_extra=affects_role()
    )
    guidance: float | None = Field(
        None, ge=0, description="guidance_scale", json_schema_extra=affects_role()
    )
    loras: list[LoraAdapter] = Field(default_factory=list, json_schema_extra=affects_role())
    call_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="extra keyword arguments of the pipeline call",
        json_schema_extra=affects_role(),
    )
    min_gpu_memory_gb: float | None = Field(
        None,
        gt=0,
        description="what `nhr doctor` checks the GPU has free for this model",
        json_schema_extra=operational(),
    )


class TransformersBackendConfig(ModelScaling):
    """Local LLMs and VLMs from transformers (chat template; AutoModelForImageTextToText).

    Where the model runs (`device`, `attn_implementation`: the same attention computed by
    another kernel) and the doctor's memory check are operational. `trust_remote_code` changes
    the answers: for some models it selects the repository's own implementation.
    """

    backend: Literal["transformers"] = Field(json_schema_extra=affects_role())
    model: str = Field(json_schema_extra=affects_role())
    revision: str | None = Field(None, json_schema_extra=affects_role())
    processor: str | None = Field(
        None,
        description="processor/tokenizer source if not `model`",
        json_schema_extra=affects_role(),
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", json_schema_extra=affects_role()
    )
    device: str = Field(
        "auto", description="auto (device_map), cuda, cpu", json_schema_extra=operational()
    )
    max_new_tokens: int = Field(512, ge=1, json_schema_extra=affects_role())
    max_image_pixels: int = Field(
        1024 * 1024,
        ge=64 * 64,
        description="images are downscaled to at most this many pixels",
        json_schema_extra=affects_role(),
    )
    attn_implementation: str | None = Field(None, json_schema_extra=operational())
    trust_remote_code: bool = Field(False, json_schema_extra=affects_role())
    min_gpu_memory_gb: float | None = Field(
        None,
        gt=0,
        description="what `nhr doctor` checks the GPU has free for this model",
        json_schema_extra=operational(),
    )
