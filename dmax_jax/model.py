"""The LLaDA2-MoE transformer in Flax Linen, and the pure `forward` entry points.

Variables are a plain pytree `{"params": ..., "buffers": ...}`:
  params/embedding                           [vocab, hidden]
  params/dense_layers/<layer params>         leading axis [first_k_dense_replace]
  params/moe_layers/<layer params>           leading axis [num_hidden_layers - first_k_dense_replace]
  params/final_norm                          [hidden]
  params/lm_head                             [hidden, vocab]   (absent when embeddings are tied)
  buffers/moe_layers/mlp/expert_bias         [moe_layers, experts]  (non-trainable)
Layer params: input_norm [H]; attention/{query [H,N,D], key [H,K,D], value [H,K,D], out [N,D,H],
query_norm [D], key_norm [D]}; post_attention_norm [H]; dense mlp/{gate [H,I], up [H,I], down [I,H]};
MoE mlp/{router [H,E], experts_gate [E,H,F], experts_up [E,H,F], experts_down [E,F,H],
shared/{gate, up, down}}.

Each stack is one `nn.scan` over layers, so compile time does not grow with depth. With
`config.scan_layers=False` (decoding) the layers are unrolled: a stack holds `layers_0`, `layers_1`, ...
with per-layer (unstacked) params, and caches are tuples of per-layer arrays; `unstack_layers` converts.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmax_jax import sharding
from dmax_jax.config import ModelConfig
from dmax_jax.layers import embedding, linear
from dmax_jax.layers.attention import Attention, mask_to_bias
from dmax_jax.layers.common import logical_param
from dmax_jax.layers.mlp import MoE, SwiGLU
from dmax_jax.layers.norms import rms_norm
from dmax_jax.layers.rope import rope_angles

Variables = dict[str, Any]

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class LayerKV(NamedTuple):
  """Keys and values of every layer: each `[layers, batch, kv_heads, positions, head_dim]`, or with
  `scan_layers=False` a tuple of per-layer `[batch, kv_heads, positions, head_dim]`; a model call's own keys and
  values, a prefix it attends to, or the decoder's whole static cache."""
  k: jax.Array
  v: jax.Array


class RMSNorm(nn.Module):
  config: ModelConfig
  axis: str = "norm"

  @nn.compact
  def __call__(self, x):
    scale = logical_param(self, "scale", (x.shape[-1],), (self.axis,), nn.initializers.ones)
    return rms_norm(x, scale, self.config.rms_norm_eps)


class DecoderLayer(nn.Module):
  """Pre-norm attention + (dense SwiGLU | MoE) block; the scan body of a layer stack."""

  config: ModelConfig
  is_moe: bool

  @nn.compact
  def __call__(self, h_BxTxH, layer_prefix, cos_sin, bias):
    cfg = self.config
    h_BxTxH = nn.with_logical_constraint(h_BxTxH, ("batch", "length", "act_embed"))
    attn_out, kv = Attention(cfg, name="attention")(
        RMSNorm(cfg, name="input_norm")(h_BxTxH), cos_sin, bias, layer_prefix)
    h_BxTxH = h_BxTxH + attn_out.astype(h_BxTxH.dtype)
    normed = RMSNorm(cfg, name="post_attention_norm")(h_BxTxH)
    if self.is_moe:
      mlp_out = MoE(cfg, name="mlp")(normed)
    else:
      mlp_out = SwiGLU(cfg, cfg.intermediate_size, name="mlp")(normed)
    return h_BxTxH + mlp_out.astype(h_BxTxH.dtype), kv


class LayerStack(nn.Module):
  """`num_layers` identical decoder layers, scanned, with an optional remat policy."""

  config: ModelConfig
  num_layers: int
  is_moe: bool

  @nn.compact
  def __call__(self, h_BxTxH, prefix: LayerKV | None, cos_sin, bias):
    cfg = self.config
    layer_cls = DecoderLayer
    if cfg.remat_policy != "none":
      layer_cls = nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
    if not cfg.scan_layers:
      new_k, new_v = [], []
      for i in range(self.num_layers):
        layer_prefix = None if prefix is None else (prefix.k[i], prefix.v[i])
        h_BxTxH, (k, v) = layer_cls(cfg, self.is_moe, name=f"layers_{i}")(h_BxTxH, layer_prefix, cos_sin, bias)
        new_k.append(k)
        new_v.append(v)
      return h_BxTxH, (tuple(new_k), tuple(new_v))
    scanned = nn.scan(
        layer_cls,
        variable_axes={"params": 0, "buffers": 0, "intermediates": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast),
        length=self.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    body = scanned(cfg, self.is_moe, name="layers")
    layer_prefix = None if prefix is None else (prefix.k, prefix.v)
    return body(h_BxTxH, layer_prefix, cos_sin, bias)


class Transformer(nn.Module):
  """LLaDA2-MoE: embedding, dense layers, MoE layers, final norm, LM head."""

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("table_vocab", "table_embed")),
        (cfg.vocab_size, cfg.hidden_size), jnp.dtype(cfg.param_dtype))
    if cfg.num_dense_layers:
      self.dense_layers = LayerStack(cfg, cfg.num_dense_layers, is_moe=False)
    if cfg.num_moe_layers:
      self.moe_layers = LayerStack(cfg, cfg.num_moe_layers, is_moe=True)
    self.final_norm = RMSNorm(cfg)
    if not cfg.tie_word_embeddings:
      self.lm_head = self.param(
          "lm_head", nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "vocab")),
          (cfg.hidden_size, cfg.vocab_size), jnp.dtype(cfg.param_dtype))

  def embed(self, input_ids_BxT: jax.Array) -> jax.Array:
    """Token embeddings `[batch, seq, hidden]` in the compute dtype."""
    dtype = jnp.dtype(self.config.dtype)
    if self.config.parallelism == "gspmd":
      return jnp.take(self.embedding, input_ids_BxT, axis=0).astype(dtype)
    return embedding.lookup(self.embedding.astype(dtype), input_ids_BxT)

  def head_weight(self) -> jax.Array:
    """The LM head `[hidden, vocab]` in the compute dtype (the embedding's transpose when tied)."""
    w = self.embedding.T if self.config.tie_word_embeddings else self.lm_head
    return w.astype(jnp.dtype(self.config.dtype))

  def logits(self, hidden_BxTxH: jax.Array) -> jax.Array:
    """LM head on final-normed hidden states; float32 `[batch, seq, vocab]`."""
    # Tied, the head is the embedding's transpose, which the CPU kernel would need copied at every call.
    impl = "xla" if self.config.tie_word_embeddings else self.config.matmul_impl
    logits = linear.project(hidden_BxTxH.astype(jnp.dtype(self.config.dtype)), self.head_weight(), impl=impl,
                            preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "act_vocab"))

  def __call__(self, inputs_embeds_BxTxH, positions_BxT, bias, kv_prefix: LayerKV | None = None,
               return_hidden: bool = False):
    """
    Args:
      inputs_embeds_BxTxH: `[batch, seq, hidden]`.
      positions_BxT: int positions for RoPE.
      bias: additive attention bias `[batch|1, 1, seq, prefix + seq]` (see `mask_to_bias`).
      kv_prefix: cached keys/values of earlier positions for all layers (dense layers first).
      return_hidden: return final-normed hidden states instead of logits.
    Returns:
      `(logits [batch, seq, vocab] float32 | hidden [batch, seq, hidden], LayerKV of this call's
      keys/values [layers, batch, kv_heads, seq, head_dim])`.
    """
    cfg = self.config
    cos_sin = rope_angles(positions_BxT, cfg.rotary_dim, cfg.rope_theta)
    h = inputs_embeds_BxTxH.astype(jnp.dtype(cfg.dtype))
    new_k, new_v = [], []
    for stack, lo, hi in ((getattr(self, "dense_layers", None), 0, cfg.num_dense_layers),
                          (getattr(self, "moe_layers", None), cfg.num_dense_layers, cfg.num_hidden_layers)):
      if stack is None:
        continue
      prefix = None if kv_prefix is None else LayerKV(kv_prefix.k[lo:hi], kv_prefix.v[lo:hi])
      h, (k, v) = stack(h, prefix, cos_sin, bias)
      new_k.append(k)
      new_v.append(v)
    h = self.final_norm(h)
    join = jnp.concatenate if cfg.scan_layers else (lambda per_stack: sum(per_stack, ()))
    kv = LayerKV(join(new_k), join(new_v))
    return (h if return_hidden else self.logits(h)), kv


def unstack_layers(config: ModelConfig, variables: Variables) -> Variables:
  """Stacked-layer variables (`scan_layers=True`, as loaded and trained) -> the per-layer layout of
  `config.replace(scan_layers=False)`: `<stack>/layers/<leaf>[i]` -> `<stack>/layers_<i>/<leaf>` (a copy)."""
  sizes = {"dense_layers": config.num_dense_layers, "moe_layers": config.num_moe_layers}
  out = {}
  for collection, tree in variables.items():
    out[collection] = dict(tree)
    for stack, size in sizes.items():
      if stack in tree:
        out[collection][stack] = {f"layers_{i}": jax.tree.map(lambda a, i=i: a[i], tree[stack]["layers"])
                                  for i in range(size)}
  return out


def init_variables(config: ModelConfig, rng: jax.Array, seq_len: int = 8) -> Variables:
  """Randomly initialised variables (boxed with logical partitioning metadata)."""
  model = Transformer(config)
  embeds = jnp.zeros((1, seq_len, config.hidden_size), jnp.dtype(config.dtype))
  positions = jnp.arange(seq_len)[None]
  return model.init(rng, embeds, positions, mask_to_bias(None, 1, seq_len, seq_len))


def abstract_variables(config: ModelConfig) -> Variables:
  """`jax.ShapeDtypeStruct` pytree of the (unboxed) variables, without allocating anything."""
  return nn.unbox(jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0)))


def logical_partition_specs(config: ModelConfig) -> Variables:
  """Logical `PartitionSpec` of every variable (same tree as `abstract_variables`)."""
  boxed = jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0))
  return nn.get_partition_spec(boxed)


def variable_shardings(config: ModelConfig, mesh: jax.sharding.Mesh | None) -> Variables:
  """`NamedSharding` of every variable on `mesh`, from its logical axes and the project's rules;
  without a mesh, everything on the first device."""
  specs = logical_partition_specs(config)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda _: device, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  return sharding.logical_to_sharding(specs, mesh, config.parallelism)


def embed_tokens(config: ModelConfig, variables: Variables, input_ids_BxT: jax.Array) -> jax.Array:
  """Input embeddings `[batch, T, hidden]` of token ids, in the compute dtype."""
  return Transformer(config).apply(variables, input_ids_BxT, method=Transformer.embed)


def lm_head(config: ModelConfig, variables: Variables, hidden_BxTxH: jax.Array) -> jax.Array:
  """Logits `[batch, T, vocab]` (float32) of final-normed hidden states (`apply_model(..., return_hidden=True)`)."""
  return Transformer(config).apply(variables, hidden_BxTxH, method=Transformer.logits)


def lm_head_weight(config: ModelConfig, variables: Variables) -> jax.Array:
  """The LM head `[hidden, vocab]` in the compute dtype."""
  return Transformer(config).apply(variables, method=Transformer.head_weight)


def apply_model(config: ModelConfig, variables: Variables, inputs_embeds_BxTxH, positions_BxT, bias,
                kv_prefix: LayerKV | None = None, return_hidden: bool = False):
  """Pure functional model call (see `Transformer.__call__`)."""
  return Transformer(config).apply(variables, inputs_embeds_BxTxH, positions_BxT, bias, kv_prefix,
                                   return_hidden)


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(config, variables, input_ids, inputs_embeds, attention_mask, position_ids):
  if inputs_embeds is None:
    inputs_embeds = embed_tokens(config, variables, input_ids)
  b, t = inputs_embeds.shape[:2]
  bias = mask_to_bias(attention_mask, b, t, t)
  logits, _ = apply_model(config, variables, inputs_embeds, position_ids, bias)
  return logits


def forward(config: ModelConfig, variables: Variables, input_ids=None, inputs_embeds=None,
            attention_mask=None, position_ids=None) -> jax.Array:
  """Logits `[batch, seq, vocab]` (float32) of a full forward pass.

  Args:
    config: the model config.
    variables: the model variables `{"params": ..., "buffers": ...}` (as returned by `load_model`).
    input_ids: `[batch, seq]` int token ids, or
    inputs_embeds: `[batch, seq, hidden]` input embeddings (exactly one of the two).
    attention_mask: keep mask (bool, True = attend) or additive float mask, `[batch, seq, seq]`,
      `[seq, seq]` or `[batch, 1, seq, seq]`; `None` = full bidirectional attention.
    position_ids: `[batch, seq]` RoPE positions; default `arange(seq)`.
  """
  if (input_ids is None) == (inputs_embeds is None):
    raise ValueError("pass exactly one of input_ids and inputs_embeds")
  if input_ids is not None:
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
    batch, seq = input_ids.shape
  else:
    inputs_embeds = jnp.asarray(inputs_embeds)
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != config.hidden_size:
      raise ValueError(f"inputs_embeds must be [batch, seq, {config.hidden_size}], "
                       f"got shape {inputs_embeds.shape}")
    batch, seq = inputs_embeds.shape[:2]
  if position_ids is None:
    position_ids = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
  position_ids = jnp.asarray(position_ids)
  if position_ids.shape[-1] != seq:
    raise ValueError(f"position_ids shape {position_ids.shape} does not match seq length {seq}")
  position_ids = jnp.broadcast_to(position_ids, (batch, seq))
  return _forward_jit(config, variables, input_ids, inputs_embeds, attention_mask, position_ids)
