"""Grouped-query attention with per-head QK RMSNorm, partial RoPE and an optional KV prefix (cache)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmax_jax.config import ModelConfig
from dmax_jax.layers import cpu_kernels, linear
from dmax_jax.layers.common import logical_param
from dmax_jax.layers.norms import rms_norm
from dmax_jax.layers.rope import apply_partial_rope


def mask_to_bias(mask: jax.Array | None, batch: int, q_len: int, kv_len: int) -> jax.Array:
  """Normalises a keep mask (bool, True = attend) or additive float mask to an additive float32 bias
  `[batch, 1, q, kv]`. Accepted shapes: `[q, kv]`, `[batch, q, kv]`, `[batch, 1, q, kv]` (or any
  broadcastable). `None` = full bidirectional attention."""
  if mask is None:
    return jnp.zeros((1, 1, 1, 1), jnp.float32)
  mask = jnp.asarray(mask)
  while mask.ndim < 4:
    mask = mask[None] if mask.ndim != 3 else mask[:, None]
  if mask.shape[-2:] not in ((q_len, kv_len), (1, kv_len), (q_len, 1), (1, 1)):
    raise ValueError(f"attention_mask of shape {mask.shape} does not match [batch, {q_len}, {kv_len}]")
  if mask.shape[0] not in (1, batch):
    raise ValueError(f"attention_mask batch {mask.shape[0]} does not match input batch {batch}")
  if mask.dtype == jnp.bool_:
    return jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
  return jnp.maximum(mask.astype(jnp.float32), jnp.finfo(jnp.float32).min)


# A cache prefix longer than this is attended only up to the last key some query sees, rounded up to one of
# `prefix_sizes`.
PREFIX_CUT_MIN = 256


def prefix_sizes(prefix_len: int) -> tuple[int, ...]:
  """The static key counts `attend` may cut a prefix of `prefix_len` keys to: from `PREFIX_CUT_MIN` up in
  steps of 1.5x (multiples of 128), then the whole prefix. A cut copies the kept keys and values (XLA
  materialises the slice; estimated at a third of what attending them costs at batch 8: 16 bytes moved per
  key and head dim against 256 FLOPs), so only cuts to at most 3/4 of the prefix are offered (a cut to 1024
  of 1088 keys measured 306 vs 298 ms per forward uncut, mid model batch 8)."""
  sizes, n = [], PREFIX_CUT_MIN
  while n <= 0.75 * prefix_len:
    sizes.append(n)
    n = 128 * -(-(3 * n // 2) // 128)
  return tuple(sizes) + (prefix_len,)


def resolve_impl(impl: str, q_BxTxNxD, k_BxKxSxD, v_BxKxSxD, kv_prefix) -> str:
  """`native` (the CPU kernel, `cpu_kernels.attention`) only for a forward against a cache (a decode), with float32
  operands and query counts and head dims multiples of 16; `auto` picks it there on CPU outside multi-device
  meshes, `xla` everywhere else."""
  if impl == "xla" or kv_prefix is None:
    return "xla"
  _, t, _, d = q_BxTxNxD.shape
  operands = (q_BxTxNxD, k_BxKxSxD, v_BxKxSxD, *kv_prefix)
  if t % 16 or d % 16 or any(a.dtype != jnp.float32 for a in operands):
    return "xla"
  return "native" if impl == "native" or cpu_kernels.usable_here() else "xla"


@jax.named_scope("attend")
def attend(q_BxTxNxD, k_BxKxSxD, v_BxKxSxD, bias_Bx1xTxS, kv_prefix=None, impl: str = "xla") -> jax.Array:
  """Softmax attention with grouped KV heads; scores and softmax in float32. Keys and values are heads-major
  (`[batch, kv_heads, keys, head_dim]`, the cache's layout), so the batched matmuls over (batch, kv head)
  read them in place instead of transposing them every call.

  `kv_prefix = (k, v)`, each `[batch, kv_heads, P, head_dim]`, are keys/values before this call's (the
  cache), and `bias_Bx1xTxS` then covers `P + S` keys. The prefix is attended as its own part of one
  softmax (shared maximum and sum) instead of being concatenated with this call's keys, which would copy
  the whole cache in every call; the sum divides the output, not the `[.., keys]` probabilities.
  Prefix keys past the last one any query sees (bias above the float32 minimum, which `mask_to_bias` gives
  hidden keys) are skipped, to the next of `prefix_sizes(P)`: a decoder's cache costs what is filled,
  not its static length. (A query that sees no key at all averages the values it is given, so there the
  result depends on the cut.) `impl` (`resolve_impl`): `native` attends the cache with the CPU kernel, which
  reads each row's keys up to the last one its queries see, in place.

  Returns `[batch, q_len, heads, head_dim]` in the dtype of `q`.
  """
  own = (k_BxKxSxD, v_BxKxSxD)
  if kv_prefix is None:
    return _softmax_attend(q_BxTxNxD, [own], [bias_Bx1xTxS])
  if resolve_impl(impl, q_BxTxNxD, k_BxKxSxD, v_BxKxSxD, kv_prefix) == "native":
    return _native_cache_attend(q_BxTxNxD, k_BxKxSxD, v_BxKxSxD, bias_Bx1xTxS, *kv_prefix)
  prefix_k, prefix_v = kv_prefix
  p = prefix_k.shape[2]
  sizes = prefix_sizes(p)
  if bias_Bx1xTxS.shape[-1] == 1 or len(sizes) == 1:
    return _whole_cache_attend(q_BxTxNxD, k_BxKxSxD, v_BxKxSxD, bias_Bx1xTxS, prefix_k, prefix_v)
  prefix_bias, own_bias = bias_Bx1xTxS[..., :p], bias_Bx1xTxS[..., p:]
  needed = jnp.max(_seen_prefix_lengths(prefix_bias))

  def cut(n):
    return lambda: _softmax_attend(q_BxTxNxD, [(prefix_k[:, :, :n], prefix_v[:, :, :n]), own],
                                   [prefix_bias[..., :n], own_bias])
  return jax.lax.switch(jnp.searchsorted(jnp.asarray(sizes), needed), [cut(n) for n in sizes])


def _seen_prefix_lengths(prefix_bias_Bx1xTxP) -> jax.Array:
  """`[batch]` index past the last prefix key any of the row's queries sees (the same in every layer of a
  forward, one bias: XLA computes it once)."""
  p = prefix_bias_Bx1xTxP.shape[-1]
  seen_BxP = (prefix_bias_Bx1xTxP > jnp.finfo(prefix_bias_Bx1xTxP.dtype).min).any(axis=(1, 2))
  return jnp.max(jnp.where(seen_BxP, jnp.arange(1, p + 1), 0), axis=-1)


def _whole_cache_attend(q_BxTxNxD, k_BxKxTxD, v_BxKxTxD, bias_Bx1xTxS, prefix_k, prefix_v) -> jax.Array:
  """XLA's softmax over the whole cache and the own keys."""
  p = prefix_k.shape[2]
  every_key_seen = bias_Bx1xTxS.shape[-1] == 1
  biases = [bias_Bx1xTxS] * 2 if every_key_seen else [bias_Bx1xTxS[..., :p], bias_Bx1xTxS[..., p:]]
  return _softmax_attend(q_BxTxNxD, [(prefix_k, prefix_v), (k_BxKxTxD, v_BxKxTxD)], biases)


@jax.custom_vjp
def _native_cache_attend(q_BxTxNxD, k_BxKxTxD, v_BxKxTxD, bias_Bx1xTxS, prefix_k, prefix_v) -> jax.Array:
  b, t = q_BxTxNxD.shape[:2]
  p = prefix_k.shape[2]
  bias_BxTxS = jnp.broadcast_to(bias_Bx1xTxS, (b, 1, t, p + t))[:, 0]
  prefix_lens_B = _seen_prefix_lengths(bias_BxTxS[:, None, :, :p])
  out = cpu_kernels.attention(q_BxTxNxD, prefix_k, prefix_v, k_BxKxTxD, v_BxKxTxD, bias_BxTxS.transpose(0, 2, 1),
                              prefix_lens_B)
  return out.astype(q_BxTxNxD.dtype)


def _native_cache_attend_fwd(*operands):
  return _native_cache_attend(*operands), operands


def _native_cache_attend_bwd(operands, out_cotangent):
  return jax.vjp(_whole_cache_attend, *operands)[1](out_cotangent)


_native_cache_attend.defvjp(_native_cache_attend_fwd, _native_cache_attend_bwd)


def _softmax_attend(q_BxTxNxD, parts, biases) -> jax.Array:
  """One softmax over the keys of all `parts` (`(k, v)` pairs, heads-major), each with its bias."""
  b, t, n, d = q_BxTxNxD.shape
  kv_heads = parts[0][0].shape[1]
  q_BxTxKxQxD = q_BxTxNxD.reshape(b, t, kv_heads, n // kv_heads, d)
  scores = [jnp.einsum("btkqd,bksd->bkqts", q_BxTxKxQxD, k, preferred_element_type=jnp.float32)
            / jnp.sqrt(jnp.float32(d)) + bias[:, :, None] for (k, _), bias in zip(parts, biases)]
  top_BxKxQxT = jax.lax.stop_gradient(functools.reduce(jnp.maximum, [s.max(-1) for s in scores]))
  weights = [jnp.exp(s - top_BxKxQxT[..., None]) for s in scores]
  total_BxKxQxT = sum(w.sum(-1) for w in weights)
  out_BxKxQxTxD = sum(jnp.einsum("bkqts,bksd->bkqtd", w.astype(v.dtype), v, preferred_element_type=jnp.float32)
                      for w, (_, v) in zip(weights, parts)) / total_BxKxQxT[..., None]
  return out_BxKxQxTxD.transpose(0, 3, 1, 2, 4).reshape(b, t, n, d).astype(q_BxTxNxD.dtype)


class Attention(nn.Module):
  """Self-attention block. Query/key/value projections are stored split (heads-major, so that they
  shard over `tensor` by head); the Hugging Face fused `query_key_value` is split on import."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxH, cos_sin, bias_Bx1xTxS, kv_prefix=None):
    """
    Args:
      x_BxTxH: normalised hidden states `[batch, seq, hidden]`.
      cos_sin: rotary tables from `rope_angles` for the `seq` positions.
      bias_Bx1xTxS: additive mask over `S = prefix_len + seq` keys.
      kv_prefix: optional `(k, v)` each `[batch, kv_heads, prefix_len, head_dim]` (cached keys/values,
        already normalised and rotated) placed before this call's keys.
    Returns:
      `(out [batch, seq, hidden], (k, v))` with this call's keys/values `[batch, kv_heads, seq, head_dim]`.
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    h, n, kvh, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    wq = logical_param(self, "query", (h, n, d), ("embed", "heads", "head_dim"))
    wk = logical_param(self, "key", (h, kvh, d), ("embed", "kv_heads", "head_dim"))
    wv = logical_param(self, "value", (h, kvh, d), ("embed", "kv_heads", "head_dim"))
    wo = logical_param(self, "out", (n, d, h), ("heads", "head_dim", "embed"))
    x = x_BxTxH.astype(dtype)
    q = linear.project(x, wq.astype(dtype), impl=cfg.matmul_impl)
    k = linear.project(x, wk.astype(dtype), impl=cfg.matmul_impl)
    v = linear.project(x, wv.astype(dtype), impl=cfg.matmul_impl)
    if cfg.use_qk_norm:
      ones = nn.initializers.ones
      q = rms_norm(q, logical_param(self, "query_norm", (d,), ("head_dim",), ones), cfg.rms_norm_eps)
      k = rms_norm(k, logical_param(self, "key_norm", (d,), ("head_dim",), ones), cfg.rms_norm_eps)
    q = apply_partial_rope(q, *cos_sin)
    k = apply_partial_rope(k, *cos_sin)
    q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "head_dim"))
    # Every query position attends to every key: with positions sharded, this call's keys/values are
    # gathered (before joining the cache, which is not sharded by position).
    k = nn.with_logical_constraint(k.transpose(0, 2, 1, 3), ("batch", "act_kv_heads", "kv_length", "head_dim"))
    v = nn.with_logical_constraint(v.transpose(0, 2, 1, 3), ("batch", "act_kv_heads", "kv_length", "head_dim"))
    prefix = None if kv_prefix is None else tuple(a.astype(dtype) for a in kv_prefix)
    out = attend(q, k, v, bias_Bx1xTxS, prefix, impl=cfg.attention_impl)
    out = linear.project(out, wo.astype(dtype), 2, impl=cfg.matmul_impl)
    return out, (k, v)
