"""Models: shared layers and one module per model family. Registered by name in MODELS."""

from gram_bench.core.registry import Registry

MODELS: Registry = Registry("model")

from gram_bench.models import ar, diffusion, gram, hrm, looped, trm, vae  # noqa: E402,F401  (registers)
from gram_bench.models.base import Model, ModelConfig, SampleOutput  # noqa: E402,F401
