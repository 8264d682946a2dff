"""The communication the expert-parallel OPUT step cannot avoid: bytes one device sends per step.

Ring collectives over a group of `n`: an all-gather or reduce-scatter of a per-device block of `b` bytes
sends `(n-1) * b`, an all-reduce of `b` bytes sends `2 (n-1)/n * b`, an all-to-all sends `(n-1)/n` of its
buffer. Activations and gathered weights are in the compute dtype (bf16: 2 bytes), expert ids/weights
4 bytes each. Mesh sizes `d, f, e, t` (data, fsdp, expert, tensor); `g = f * e` devices share one data
replica's tokens and hold distinct experts; each device owns `T = rows * 2L / (d f e)` positions of the
`noisy ⊕ clean` input. Passes with a forward: rollout, training forward, and the rematerialised forward
of the backward pass (`remat_policy: full`); the backward pass adds one transposed collective per
forward collective. The formulas (docs/tpu_pod.md) per source:

- `moe_exchange`: per MoE layer, tokens all-gathered over `g` in the 3 forward passes and their output
  gradients in the backward (4), partial outputs reduce-scattered in rollout and training forward and the
  token gradients in the backward (3; the rematerialised forward needs no output):
  `7 * (g-1) * T * D * 2` bytes, plus expert ids and weights `(g-1) * T * K * (3*8 + 4)`.
- `attention_kv`: keys and values all-gathered over the `e` position shards, reduce-scattered back in
  the backward pass: `4 * 2 * (e-1) * T * kv_heads/t * head_dim * 2` per layer.
- `weights`: non-expert weights all-gathered over `f` in every forward pass, `3 * (f-1)/f * P * 2`;
  gradients reduce-scattered over `f` and all-reduced over the `d * e` replicas of each shard
  (`(f-1)/f * P * 2 + 2 (de-1)/(de) * P/f * 2`); with `d > 1`, expert, LM-head and embedding gradients
  are all-reduced over `d` as well.
- `lm_head`: noisy-half hidden states all-gathered over `g` for rollout and training, the gradient
  reduce-scattered: `3 * (g-1) * T/2 * D * 2` plus the targets `(g-1) * T/2 * 4`.
- `embedding`: ids all-gathered over `g` (2 passes), columns exchanged by all-to-all in 2 forward passes
  and 1 backward: `3 * (g-1)/g * g*T * D/(t g) * 2`.
"""

from __future__ import annotations

from dmax_jax.config import ModelConfig

BF16 = 2


def _attention_params(cfg: ModelConfig) -> int:
  return cfg.hidden_size * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim \
      + cfg.num_attention_heads * cfg.head_dim * cfg.hidden_size


def oput_step(cfg: ModelConfig, mesh: dict[str, int], rows: int, seq_len: int) -> dict[str, float]:
  """Analytic minimum bytes one device sends in one OPUT step (rollout on), per source."""
  d, f, e, t = (mesh.get(a, 1) for a in ("data", "fsdp", "expert", "tensor"))
  D, K = cfg.hidden_size, cfg.num_experts_per_tok
  g = f * e
  tokens = rows * 2 * seq_len / (d * f * e)
  moe_layers, layers = cfg.num_moe_layers, cfg.num_hidden_layers
  moe_exchange = moe_layers * ((4 + 3) * (g - 1) * tokens * D * BF16 + (g - 1) * tokens * K * (3 * 8 + 4))
  attention_kv = layers * 4 * 2 * (e - 1) * tokens * (cfg.num_key_value_heads / t) * cfg.head_dim * BF16
  router = D * cfg.num_experts * 4 / BF16  # the router computes in float32
  per_moe_layer = _attention_params(cfg) / t + 3 * D * cfg.shared_intermediate_size / t + router
  per_dense_layer = _attention_params(cfg) / t + 3 * D * cfg.intermediate_size / t
  dense_params = moe_layers * per_moe_layer + cfg.num_dense_layers * per_dense_layer
  weights = dense_params * BF16 * (3 * (f - 1) / f + (f - 1) / f + 2 * (d * e - 1) / (d * e) / f)
  if d > 1:
    local_experts = cfg.num_experts / (f * e) * 3 * D * cfg.moe_intermediate_size / t
    vocab_tables = (1 if cfg.tie_word_embeddings else 2) * cfg.vocab_size * D / (t * f * e)
    weights += 2 * (d - 1) / d * (moe_layers * local_experts + vocab_tables) * BF16
  lm_head = 3 * (g - 1) * tokens / 2 * D * BF16 + (g - 1) * tokens / 2 * 4
  embedding = 2 * (g - 1) * tokens * 4 + 3 * (g - 1) / g * g * tokens * D / (t * g) * BF16
  return {"moe_exchange": moe_exchange, "attention_kv": attention_kv, "weights": weights, "lm_head": lm_head,
          "embedding": embedding}


def source_of(op_name: str) -> str:
  """The `oput_step` source a collective of the compiled step belongs to, from its op_name."""
  for scope, source in (("expert_parallel_moe", "moe_exchange"), ("vocab_parallel_head", "lm_head"),
                        ("embedding_lookup", "embedding")):
    if scope in op_name:
      return source
  if "attention/" in op_name and any(k in op_name for k in ("sharding_constraint", "bskd")):
    return "attention_kv"
  return "weights"
