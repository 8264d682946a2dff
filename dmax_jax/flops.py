"""Parameter counts and matmul FLOPs: analytic (from the config) and measured (from a program's jaxpr).

`cost_analysis()` of a compiled XLA program counts a while/scan body once, and XLA:CPU expands
`ragged_dot` into a dense dot over every expert, so neither tells how much work the MoE does.
`jaxpr_matmul_flops` walks the traced program instead: every `dot_general` counts
`2 * batch * m * n * k`, a `ragged_dot` counts `2 * rows * k * n` (each row meets only its own
expert), and everything inside a `scan` is multiplied by its trip count.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.extend import core as jex_core

from dmax_jax.config import ModelConfig


def _attention_params(cfg: ModelConfig) -> int:
  h, n, k, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  qk_norm = 2 * d if cfg.use_qk_norm else 0
  return h * (n + 2 * k) * d + n * d * h + qk_norm + 2 * h  # + input / post-attention norms


def _expert_params(cfg: ModelConfig) -> int:
  return 3 * cfg.hidden_size * cfg.moe_intermediate_size


def parameter_count(cfg: ModelConfig) -> int:
  """Trainable parameters (the expert_bias buffers excluded)."""
  h = cfg.hidden_size
  embed = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
  dense = cfg.num_dense_layers * (_attention_params(cfg) + 3 * h * cfg.intermediate_size)
  moe = cfg.num_moe_layers * (_attention_params(cfg) + h * cfg.num_experts
                              + cfg.num_experts * _expert_params(cfg)
                              + 3 * h * cfg.shared_intermediate_size)
  return embed + dense + moe + h  # + final norm


def active_parameter_count(cfg: ModelConfig) -> int:
  """Parameters one token touches: all but the routed experts it does not select."""
  unused = cfg.num_moe_layers * (cfg.num_experts - cfg.num_experts_per_tok) * _expert_params(cfg)
  return parameter_count(cfg) - unused


def active_matmul_parameter_count(cfg: ModelConfig) -> int:
  """Active parameters that are matmul weights (no embedding lookup, no norms): the `2 * N * tokens`
  FLOP basis."""
  h = cfg.hidden_size
  attn = h * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim \
      + cfg.num_attention_heads * cfg.head_dim * h
  dense = cfg.num_dense_layers * (attn + 3 * h * cfg.intermediate_size)
  moe = cfg.num_moe_layers * (attn + h * cfg.num_experts + cfg.num_experts_per_tok * _expert_params(cfg)
                              + 3 * h * cfg.shared_intermediate_size)
  return dense + moe + h * cfg.vocab_size


def _dot_general_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  batch = math.prod(lhs[i] for i in lb)
  contract = math.prod(lhs[i] for i in lc)
  lhs_free = math.prod(s for i, s in enumerate(lhs) if i not in lc and i not in lb)
  rhs_free = math.prod(s for i, s in enumerate(rhs) if i not in rc and i not in rb)
  return 2 * batch * lhs_free * rhs_free * contract


def _ragged_dot_flops(eqn) -> int:
  rows, contract = eqn.invars[0].aval.shape
  out_features = eqn.outvars[0].aval.shape[-1]
  return 2 * rows * contract * out_features


def _sub_jaxprs(eqn):
  for v in eqn.params.values():
    for item in (v if isinstance(v, (tuple, list)) else (v,)):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def jaxpr_matmul_flops(jaxpr: Any, by_primitive: dict[str, int] | None = None, multiplier: int = 1) -> int:
  """Matmul FLOPs of a (closed) jaxpr, scan bodies multiplied by their length.

  `by_primitive`, when given, accumulates FLOPs per primitive name (`dot_general`, `ragged_dot`, ...).
  A `while` loop with a data-dependent trip count is counted once per iteration of its body; a `cond` (or
  `switch`) as its most expensive branch.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      flops = multiplier * _dot_general_flops(eqn)
    elif name.startswith("ragged_dot"):
      flops = multiplier * _ragged_dot_flops(eqn)
    elif name == "cond":
      branches = [({}, branch) for branch in eqn.params["branches"]]
      flops, per = max(((jaxpr_matmul_flops(branch, per, multiplier), per) for per, branch in branches),
                       key=lambda counted: counted[0])
      if by_primitive is not None:
        for primitive, n in per.items():
          by_primitive[primitive] = by_primitive.get(primitive, 0) + n
      total += flops
      continue
    else:
      flops = 0
      inner = multiplier * (eqn.params["length"] if name == "scan" else 1)
      for sub in _sub_jaxprs(eqn):
        flops += jaxpr_matmul_flops(sub, by_primitive, inner)
      total += flops
      continue
    if by_primitive is not None:
      by_primitive[name] = by_primitive.get(name, 0) + flops
    total += flops
  return total


def traced_matmul_flops(fn, *args, **kwargs) -> tuple[int, dict[str, int]]:
  """(total, per-primitive) matmul FLOPs of `fn(*args)`; args may be `jax.ShapeDtypeStruct`s.

  Trace outside `sharding.use_mesh`: on a mesh the model runs its MoE and LM head in `shard_map`, whose
  bodies hold one device's shapes (and a worst-case expert buffer), not the whole computation."""
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  per: dict[str, int] = {}
  return jaxpr_matmul_flops(closed, per), per
