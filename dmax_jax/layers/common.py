"""Parameter declaration shared by all layers."""

import flax.linen as nn
import jax.numpy as jnp


def logical_param(module: nn.Module, name: str, shape, axes, init=nn.initializers.lecun_normal()):
  """Declares a parameter of `module` in the config's `param_dtype`, annotated with logical axes."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape,
                      jnp.dtype(module.config.param_dtype))
