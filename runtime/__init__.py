"""The shadow-edge runtime: run a bundle with numpy, onnxruntime, tokenizers and jinja2.

Nothing here imports torch or transformers, so apps can ship it to laptops and phones.
"""

from shadow_edge.runtime.model import (
    GenerationResult,
    GenerationStep,
    ShadowEdgeModel,
    load,
)
from shadow_edge.runtime.sampling import Sampler, SamplingParams

__all__ = [
    "GenerationResult",
    "GenerationStep",
    "Sampler",
    "SamplingParams",
    "ShadowEdgeModel",
    "load",
]
