"""Hand-derived cost of one decoding forward (a block of `block_length` tokens per row against the KV
cache): FLOPs, bytes read, roofline time. `cost_analysis()` of the compiled program cannot be used: it
counts a loop body once and XLA:CPU expands `ragged_dot` into a dense dot over every expert.
"""

from __future__ import annotations

import dataclasses

from dmax_jax import flops
from dmax_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes_per_s: float
  flops_per_s: float  # dense bf16


CHIPS = (Chip("H200", 4.8e12, 990e12), Chip("TPU v5p", 2.77e12, 459e12), Chip("TPU v6e", 1.64e12, 918e12))


def expected_distinct_experts(cfg: ModelConfig, tokens: int) -> float:
  """Expected number of distinct routed experts a layer touches for `tokens` tokens, if every token picks
  its top-k uniformly (an upper bound for real, correlated routing): E * (1 - (1 - k/E)^tokens)."""
  e, k = cfg.num_experts, cfg.num_experts_per_tok
  return e * (1 - (1 - k / e) ** tokens)


def expert_params(cfg: ModelConfig) -> int:
  """Parameters of one routed expert (gate, up, down)."""
  return 3 * cfg.hidden_size * cfg.moe_intermediate_size


@dataclasses.dataclass(frozen=True)
class ForwardCost:
  tokens: int              # tokens per forward (batch * block_length)
  flops: float             # matmul FLOPs incl. attention over the context
  weight_bytes: float      # weights read: every non-expert matrix + the distinct experts touched
  cache_bytes: float       # keys/values read
  distinct_experts: float  # per MoE layer

  @property
  def bytes(self) -> float:
    return self.weight_bytes + self.cache_bytes

  def seconds(self, chip: Chip) -> float:
    """Roofline time: the slower of streaming the bytes and doing the FLOPs."""
    return max(self.bytes / chip.hbm_bytes_per_s, self.flops / chip.flops_per_s)


def forward_cost(cfg: ModelConfig, batch: int, block_length: int, context: int, weight_bytes_per_param: int = 2,
                 cache_bytes_per_value: int = 2, distinct_experts: float | None = None) -> ForwardCost:
  """Cost of one forward of `batch` rows x `block_length` tokens attending to `context` cached positions.

  The embedding table is gathered (a few rows), every other non-expert weight is read once per forward,
  routed experts only when some token of the forward picks them: `distinct_experts` per MoE layer where
  measured, else the uniform-routing expectation.
  """
  tokens = batch * block_length
  all_experts = cfg.num_moe_layers * cfg.num_experts * expert_params(cfg)
  embedding = cfg.vocab_size * cfg.hidden_size
  dense_weights = flops.parameter_count(cfg) - all_experts - embedding
  distinct = expected_distinct_experts(cfg, tokens) if distinct_experts is None else distinct_experts
  weight_bytes = weight_bytes_per_param * (dense_weights + cfg.num_moe_layers * distinct * expert_params(cfg))
  kv_values = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
  cache_bytes = cache_bytes_per_value * batch * context * kv_values
  attention = 4 * cfg.num_hidden_layers * tokens * (context + block_length) * cfg.num_attention_heads * cfg.head_dim
  matmul = 2 * tokens * flops.active_matmul_parameter_count(cfg)
  return ForwardCost(tokens=tokens, flops=matmul + attention, weight_bytes=weight_bytes, cache_bytes=cache_bytes,
                     distinct_experts=distinct)


def roofline_tokens_per_s(cfg: ModelConfig, chip: Chip, tpf: float, batch: int = 1, block_length: int = 32,
                          context: int = 2048, chips: int = 1) -> float:
  """Generated tokens/s at `tpf` tokens per forward per row, `chips` chips splitting bytes and FLOPs evenly."""
  cost = forward_cost(cfg, batch, block_length, context)
  return batch * tpf * chips / cost.seconds(chip)


def compute_bound_batch(cfg: ModelConfig, chip: Chip, block_length: int = 32, context: int = 2048,
                        limit: int = 4096) -> int | None:
  """Smallest batch (rows of one block each) whose forward takes longer in FLOPs than in bytes."""
  for batch in range(1, limit + 1):
    cost = forward_cost(cfg, batch, block_length, context)
    if cost.flops / chip.flops_per_s >= cost.bytes / chip.hbm_bytes_per_s:
      return batch
  return None


def ridge_point(chip: Chip) -> float:
  """FLOPs per byte at which `chip` turns compute-bound."""
  return chip.flops_per_s / chip.hbm_bytes_per_s


__all__ = ["CHIPS", "Chip", "ForwardCost", "compute_bound_batch", "expected_distinct_experts", "forward_cost",
           "ridge_point", "roofline_tokens_per_s"]
