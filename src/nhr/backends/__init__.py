"""Model backends. `create_backend` builds one from its config entry, importing the family's
module only then, so `import nhr` never pulls in torch or an SDK."""

from __future__ import annotations

import importlib
from typing import Any

# backend name -> "module:Class". A family module may import heavy libraries; it is imported
# only when a run actually uses it.
FAMILIES: dict[str, str] = {
    "sim": "nhr.backends.sim:SimBackend",
    "diffusers": "nhr.backends.diffusers:DiffusersBackend",
    "transformers": "nhr.backends.transformers:TransformersBackend",
    "openai": "nhr.backends.openai:OpenAIBackend",
    "gemini": "nhr.backends.gemini:GeminiBackend",
}


def create_backend(config: Any) -> Any:
    name = config.backend
    try:
        module_name, class_name = FAMILIES[name].split(":")
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(FAMILIES)}") from None
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(config)
