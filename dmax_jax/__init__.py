"""dmax-jax: DMax (On-Policy Uniform Training + Soft Parallel Decoding) for LLaDA2-MoE in JAX.

Shape legend: array names end in their shape, `x_BxTxH` = `[batch, tokens, hidden]`, one letter per axis:

  B batch                      T tokens (a block, a sequence, or flattened over the batch)
  S key positions (cache + new) P padded prompt width          L training sequence (one half of noisy ⊕ clean)
  H hidden (embedding)          V vocabulary                    R rotary dimensions
  N query heads                 K key/value heads               Q query heads per key/value head (N = K·Q)
  D head dimension              E experts                       F expert (FFN) width
  A experts per token (top-k)   G expert groups                 J experts per group
  M token-expert assignment rows  U tokens gathered over a mesh group (expert- or vocabulary-parallel)
  C bucket capacity             I tiles (of m rows)           W, O a plain matmul's contracted and output widths

Suffixes name the shapes of arguments and of arrays whose shape is not plain from the nearby code; `_B` alone
is per row.
"""

from dmax_jax.config import ConfigError, ModelConfig
from dmax_jax.loading import load_model
from dmax_jax.model import abstract_variables, forward, init_variables
from dmax_jax.training.loss import oput_loss

__all__ = ["ConfigError", "ModelConfig", "abstract_variables", "forward", "init_variables", "load_model", "oput_loss"]
