"""The offline simulator backend: a small deterministic world with ground truth.

`SimBackend` implements the text, vision, generator and editor protocols; `truth` labels
sources and candidates for tests and benchmarks. Images are PNGs whose text chunk
`nhr_sim` (see `render.META_KEY`) holds the scene graph as JSON.
"""

from nhr.backends.sim.backend import SimBackend
from nhr.backends.sim.config import SimBackendConfig
from nhr.backends.sim.llm import SUPPORTED_OPERATIONS
from nhr.backends.sim.render import META_KEY

__all__ = ["META_KEY", "SUPPORTED_OPERATIONS", "SimBackend", "SimBackendConfig"]
