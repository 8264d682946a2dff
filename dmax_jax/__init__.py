"""dmax-jax: DMax (On-Policy Uniform Training + Soft Parallel Decoding) for LLaDA2-MoE in JAX."""

from dmax_jax.config import ConfigError, ModelConfig
from dmax_jax.loading import load_model
from dmax_jax.model import abstract_variables, forward, init_variables
from dmax_jax.training.loss import oput_loss

__all__ = ["ConfigError", "ModelConfig", "abstract_variables", "forward", "init_variables", "load_model", "oput_loss"]
