"""Feed-forward blocks: the dense SwiGLU MLP and the routed mixture of experts with shared experts."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmax_jax import sharding
from dmax_jax.config import ModelConfig
from dmax_jax.layers import linear, moe_ops
from dmax_jax.layers.common import logical_param


class SwiGLU(nn.Module):
  """`down(silu(gate(x)) * up(x))` with weights gate/up `[embed, width]`, down `[width, embed]`."""

  config: ModelConfig
  width: int
  mlp_axis: str = "mlp"

  @nn.compact
  def __call__(self, x_BxTxH):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    h = cfg.hidden_size
    w_gate = logical_param(self, "gate", (h, self.width), ("embed", self.mlp_axis))
    w_up = logical_param(self, "up", (h, self.width), ("embed", self.mlp_axis))
    w_down = logical_param(self, "down", (self.width, h), (self.mlp_axis, "embed"))
    x = x_BxTxH.astype(dtype)
    gate = linear.project(x, w_gate.astype(dtype), impl=cfg.matmul_impl)
    up = linear.project(x, w_up.astype(dtype), impl=cfg.matmul_impl)
    act = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    return linear.project(act, w_down.astype(dtype), impl=cfg.matmul_impl)


class MoE(nn.Module):
  """Routed experts (group-limited sigmoid routing, dropless grouped matmul) plus shared experts.

  `expert_bias` lives in the non-trainable `buffers` collection: it steers selection only and is
  never touched by the optimizer.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxH):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    h, e, f = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
    w_router = logical_param(self, "router", (h, e), ("embed", "router_experts"))
    expert_bias = self.variable(
        "buffers", "expert_bias",
        nn.with_logical_partitioning(lambda: jnp.zeros((e,), jnp.float32), ("router_experts",))).value
    experts = moe_ops.ExpertWeights(
        gate=logical_param(self, "experts_gate", (e, h, f), ("expert", "embed", "moe_mlp")),
        up=logical_param(self, "experts_up", (e, h, f), ("expert", "embed", "moe_mlp")),
        down=logical_param(self, "experts_down", (e, f, h), ("expert", "moe_mlp", "embed")),
    )
    b, t, _ = x_BxTxH.shape
    x_TxH = x_BxTxH.reshape(b * t, h)
    with jax.named_scope("router"):
      router_logits = linear.project(x_TxH.astype(jnp.float32), w_router.astype(jnp.float32), impl=cfg.matmul_impl,
                                     precision=jax.lax.Precision.HIGHEST)
    route_fn = functools.partial(
        moe_ops.route, top_k=cfg.num_experts_per_tok, n_group=cfg.n_group, topk_group=cfg.topk_group,
        routed_scaling_factor=cfg.routed_scaling_factor, norm_topk_prob=cfg.norm_topk_prob)
    if cfg.parallelism == "expert_parallel" and jax.sharding.get_abstract_mesh().size > 1:
      expert_names = ("expert", "embed", "moe_mlp")
      routed, expert_ids, weights = moe_ops.expert_parallel_moe(
          x_BxTxH.astype(dtype), router_logits.reshape(b, t, e), expert_bias,
          jax.tree.map(lambda w: w.astype(dtype), experts), route_fn=route_fn,
          token_spec=sharding.fitted_spec(("batch", "length", "act_embed"), x_BxTxH.shape),
          expert_axes=sharding.param_axes(expert_names, 0), mlp_axes=sharding.param_axes(expert_names, 2),
          impl=cfg.moe_impl, max_tile=cfg.moe_max_tile_rows)
      expert_ids, weights = expert_ids.reshape(b * t, -1), weights.reshape(b * t, -1)
    else:
      expert_ids, weights = route_fn(router_logits, expert_bias)
      routed = moe_ops.dispatch_experts(x_TxH.astype(dtype), expert_ids, weights, experts,
                                    impl=cfg.moe_impl, max_tile=cfg.moe_max_tile_rows)
    self.sow("intermediates", "router", (router_logits, expert_ids, weights))
    out = routed.reshape(b, t, h)
    if cfg.num_shared_experts > 0:
      out = out + SwiGLU(cfg, cfg.shared_intermediate_size, "moe_mlp", name="shared")(x_BxTxH)
    return out
