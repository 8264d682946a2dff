"""Mixture-of-experts as pure functions: group-limited sigmoid routing and dropless grouped matmuls.

Routing follows the official LLaDA2 / DeepSeek-V3 router: sigmoid scores, `expert_bias` added for
selection only, the best `topk_group` of `n_group` groups (a group's score is the sum of its two best
biased scores), top-k experts inside the kept groups, weights = unbiased scores renormalised and scaled.

Dispatch is dropless: the `tokens * k` (token, expert) assignments are sorted by expert and every
expert multiplies only its own rows, either with `jax.lax.ragged_dot` (TPU/GPU grouped matmul), with
expert-aligned tiles and a batched matmul over gathered weights (`tiled`: training on XLA:CPU, which
expands `ragged_dot` into a dense dot over every expert), with a loop over tiles of the experts that have
rows, each multiplied by its expert's weights in place (`looped`: few rows per expert, decoding), with
per-expert buckets multiplied by all stacked weights in place plus a loop over overflow tiles (`bucketed`:
few rows per expert, evenly routed), or with a hand-written CPU kernel that streams each used expert's weights
once (`native`: decoding on CPU, `cpu_kernels.py`; `dispatch_experts` then hands it the tokens and their routing
and it sorts, gathers and sums the weighted outputs itself).

On a mesh, `expert_parallel_moe` runs routing and the same dispatch in `shard_map`: each device holds
`E / ep` whole experts; the tokens of the expert-parallel group are all-gathered, each device multiplies
only the assignments to its own experts, and a reduce-scatter returns every token's sum to its owner
(partial sums in the compute dtype). The backward pass is the mirror image (all-gather <->
reduce-scatter), and nothing of size `tokens * top_k * width` crosses devices. An all-gather is dropless
with static shapes and runs on every backend; it sends each token to every shard of the group, where a
token-to-expert all-to-all would send it only to the shards of its experts (at most top_k, fewer with
group-limited routing) but needs a capacity limit or `ragged_all_to_all` (not on XLA:CPU).

Shapes follow the package legend (`dmax_jax/__init__.py`): B batch, T tokens, U tokens gathered over the
expert-parallel group, A experts per token (top-k), M assignment rows, H hidden, F expert width, E experts
(`E_l` on one device), G expert groups (J experts each), C bucket capacity, I tiles of m rows.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dmax_jax import sharding
from dmax_jax.layers import cpu_kernels


class ExpertWeights(NamedTuple):
  """Stacked SwiGLU expert weights: gate/up `[experts, embed, mlp]`, down `[experts, mlp, embed]`."""
  gate: jax.Array
  up: jax.Array
  down: jax.Array


def _rank_descending(scores: jax.Array) -> jax.Array:
  """Rank of every entry along the last axis, 0 = largest; ties go to the lower index (as `torch.topk`)."""
  n = scores.shape[-1]
  a = scores[..., :, None]
  b = scores[..., None, :]
  idx = jnp.arange(n)
  lower_index = (idx[None, :] < idx[:, None]).reshape((1,) * (a.ndim - 2) + (n, n))
  beats = (b > a) | ((b == a) & lower_index)
  return jnp.sum(beats, axis=-1)


@jax.named_scope("router")
def route(router_logits_TxE: jax.Array, expert_bias_E: jax.Array, *, top_k: int, n_group: int,
          topk_group: int, routed_scaling_factor: float, norm_topk_prob: bool
          ) -> tuple[jax.Array, jax.Array]:
  """Group-limited top-k selection with sigmoid scores.

  Args:
    router_logits_TxE: `[tokens, experts]`, float32.
    expert_bias_E: `[experts]`, selection-only bias.
  Returns:
    `(expert_ids [tokens, top_k] int32, weights [tokens, top_k] float32)`, ordered by biased score.
  """
  num_tokens, num_experts = router_logits_TxE.shape
  scores_TxE = jax.nn.sigmoid(router_logits_TxE.astype(jnp.float32))
  biased_TxE = scores_TxE + expert_bias_E.astype(jnp.float32)[None, :]
  if n_group > 1:
    grouped_TxGxJ = biased_TxE.reshape(num_tokens, n_group, num_experts // n_group)
    # Sum of the two largest biased scores per group, without a top_k (slow for small groups on TPU).
    first = jnp.max(grouped_TxGxJ, axis=-1, keepdims=True)
    first_pos = jnp.argmax(grouped_TxGxJ, axis=-1)[..., None]
    is_first = jnp.arange(grouped_TxGxJ.shape[-1])[None, None, :] == first_pos
    second = jnp.max(jnp.where(is_first, -jnp.inf, grouped_TxGxJ), axis=-1, keepdims=True)
    group_score_TxG = (first + second)[..., 0]
    keep_group_TxG = _rank_descending(group_score_TxG) < topk_group
    keep_TxE = jnp.repeat(keep_group_TxG, num_experts // n_group, axis=-1)
    biased_TxE = jnp.where(keep_TxE, biased_TxE, -jnp.inf)
  _, expert_ids_TxA = jax.lax.top_k(biased_TxE, top_k)
  weights_TxA = jnp.take_along_axis(scores_TxE, expert_ids_TxA, axis=-1)
  if top_k > 1 and norm_topk_prob:
    weights_TxA = weights_TxA / (jnp.sum(weights_TxA, axis=-1, keepdims=True) + 1e-20)
  return expert_ids_TxA.astype(jnp.int32), weights_TxA * routed_scaling_factor


def _swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
  return jax.nn.silu(gate) * up


def _ragged_experts(rows_MxH, group_sizes_E, w: ExpertWeights, dtype) -> jax.Array:
  gate = jax.lax.ragged_dot(rows_MxH, w.gate.astype(dtype), group_sizes_E)
  up = jax.lax.ragged_dot(rows_MxH, w.up.astype(dtype), group_sizes_E)
  return jax.lax.ragged_dot(_swiglu(gate, up), w.down.astype(dtype), group_sizes_E)


def tile_size_for(num_rows: int, num_experts: int, max_tile: int) -> int:
  """Power-of-two tile near the mean rows per expert, in [8, max_tile]: small tiles waste less padding."""
  mean_rows = max(1, num_rows // num_experts)
  return int(min(max_tile, max(8, 2 ** math.ceil(math.log2(mean_rows)))))


def _tiled_experts(rows_MxH, group_sizes_E, w: ExpertWeights, dtype, max_tile: int) -> jax.Array:
  """Grouped matmul by expert-aligned tiles: each expert's rows are padded to whole tiles of `m` rows,
  so every tile belongs to one expert; tiles are multiplied by their expert's gathered weights.

  Work is `(rows + used_experts * m) * d * f` instead of `tokens * experts * d * f`.
  """
  num_rows, dim = rows_MxH.shape
  num_experts = group_sizes_E.shape[0]
  m = tile_size_for(num_rows, num_experts, max_tile)
  num_tiles = -(-num_rows // m) + min(num_experts, num_rows)
  padded_sizes_E = -(-group_sizes_E // m) * m
  padded_end_E = jnp.cumsum(padded_sizes_E)
  padded_start_E = padded_end_E - padded_sizes_E
  start_E = jnp.cumsum(group_sizes_E) - group_sizes_E
  expert_of_row_M = jnp.repeat(jnp.arange(num_experts), group_sizes_E, total_repeat_length=num_rows)
  padded_pos_M = padded_start_E[expert_of_row_M] + jnp.arange(num_rows) - start_E[expert_of_row_M]
  rows_ImxH = jnp.zeros((num_tiles * m, dim), rows_MxH.dtype).at[padded_pos_M].set(rows_MxH)
  tiles_IxmxH = rows_ImxH.reshape(num_tiles, m, dim)
  tile_expert_I = jnp.minimum(
      jnp.searchsorted(padded_end_E, jnp.arange(num_tiles) * m, side="right"), num_experts - 1)
  gate = jnp.einsum("imh,ihf->imf", tiles_IxmxH, w.gate[tile_expert_I].astype(dtype))
  up = jnp.einsum("imh,ihf->imf", tiles_IxmxH, w.up[tile_expert_I].astype(dtype))
  out_IxmxH = jnp.einsum("imf,ifh->imh", _swiglu(gate, up), w.down[tile_expert_I].astype(dtype))
  return out_IxmxH.reshape(num_tiles * m, dim)[padded_pos_M]


def _with_tiled_backward(kernel):
  """`kernel` differentiated as the `tiled` kernel (same function): loops with a data-dependent trip count
  have no reverse-mode derivative, so the backward pass recomputes the forward with `tiled`."""

  def forward(rows_MxH, group_sizes_E, w, dtype, max_tile):
    return kernel(rows_MxH, group_sizes_E, w, dtype, max_tile), (rows_MxH, group_sizes_E, w)

  def backward(dtype, max_tile, residuals, out_cotangent_MxH):
    rows_MxH, group_sizes_E, w = residuals
    _, vjp = jax.vjp(lambda r, ew: _tiled_experts(r, group_sizes_E, ew, dtype, max_tile), rows_MxH, w)
    rows_cotangent, w_cotangent = vjp(out_cotangent_MxH)
    return rows_cotangent, None, w_cotangent

  wrapped = jax.custom_vjp(kernel, nondiff_argnums=(3, 4))
  wrapped.defvjp(forward, backward)
  return functools.wraps(kernel)(wrapped)


def bucket_size_for(num_rows: int, num_experts: int) -> int:
  """Slots per expert of the bucketed kernel: the mean rows per expert plus two standard deviations of a
  Poisson count, rounded up to a multiple of 8. Measured on the mid-size decode benchmark: at batch 1 (4 rows
  per expert) 8 slots beat 16 and 24; at batch 8 (32 per expert) 48 beat 32 and 64."""
  mean = num_rows / num_experts
  return int(8 * math.ceil((mean + 2 * math.sqrt(mean)) / 8))


def _swiglu_rows(x_CxH, gate_HxF, up_HxF, down_FxH):
  return _swiglu(x_CxH @ gate_HxF, x_CxH @ up_HxF) @ down_FxH


@_with_tiled_backward
def _bucketed_experts(rows_MxH, group_sizes_E, w: ExpertWeights, dtype, max_tile: int) -> jax.Array:
  """Grouped matmul for few, evenly routed rows per expert: every expert's first `C` rows sit in its bucket of a
  `[E, C, H]` array multiplied by the stacked weights in place (each weight read once, nothing gathered);
  the rows of experts with more than `C` go through a loop over `C`-row tiles of one expert each, whose trip
  count is the number of such tiles (usually a few; zero for even routing). Rows past `sum(group_sizes_E)`
  (assignments to other devices) get zeros.
  """
  num_rows, dim = rows_MxH.shape
  num_experts = group_sizes_E.shape[0]
  c = bucket_size_for(num_rows, num_experts)
  start_E = jnp.cumsum(group_sizes_E) - group_sizes_E
  expert_of_row_M = jnp.repeat(jnp.arange(num_experts), group_sizes_E, total_repeat_length=num_rows)
  slot_M = jnp.arange(num_rows) - start_E[expert_of_row_M]
  in_bucket_M = (slot_M < c) & (jnp.arange(num_rows) < jnp.sum(group_sizes_E))
  bucket_pos_M = jnp.where(in_bucket_M, expert_of_row_M * c + slot_M, num_experts * c)
  padded_rows = jnp.concatenate([rows_MxH, jnp.zeros((c, dim), rows_MxH.dtype)])
  slot_C = jnp.arange(c)
  source_ExC = jnp.where(slot_C[None] < group_sizes_E[:, None], start_E[:, None] + slot_C[None],
                         num_rows)  # a zero row
  buckets_ExCxH = padded_rows[source_ExC]  # a gather: no zero-filled buffer to copy and scatter into
  gate = jnp.einsum("ech,ehf->ecf", buckets_ExCxH, w.gate.astype(dtype))
  up = jnp.einsum("ech,ehf->ecf", buckets_ExCxH, w.up.astype(dtype))
  out_ExCxH = jnp.einsum("ecf,efh->ech", _swiglu(gate, up), w.down.astype(dtype))
  flat_out = jnp.concatenate([out_ExCxH.reshape(num_experts * c, dim), jnp.zeros((1, dim), out_ExCxH.dtype)])
  out_MxH = flat_out[bucket_pos_M]

  return _expert_tiles(padded_rows, start_E + c, jnp.maximum(group_sizes_E - c, 0), w, dtype, c, out_MxH)


def _varying_like(x: jax.Array, *others: jax.Array) -> jax.Array:
  """`x` marked as varying over every manual mesh axis any of `others` varies over: inside `shard_map` a loop
  carry must keep its type, and the tiles written into it vary with the rows and weights."""
  def varying(a):
    return jax.typeof(a).manual_axis_type.varying

  axes = set().union(*map(varying, others)) - varying(x)
  return jax.lax.pcast(x, tuple(sorted(axes)), to="varying") if axes else x


def _expert_tiles(padded_rows, first_row_E, num_rows_E, w: ExpertWeights, dtype, m: int, out_MxH) -> jax.Array:
  """`out_MxH` with rows `[first_row_E[e], first_row_E[e] + num_rows_E[e])` of every expert e replaced by
  that expert's SwiGLU of the same rows of `padded_rows` (`m` zero rows past the M real ones): a loop over
  `m`-row tiles of one expert each, multiplied by the expert's weights in place, whose trip count is the
  number of tiles the experts' rows fill (experts without rows cost nothing). A tile running past its
  expert's rows keeps the rows there as they are (the next expert's tiles come later)."""
  num_rows, dim = out_MxH.shape
  tiles_E = -(-num_rows_E // m)
  tile_end_E = jnp.cumsum(tiles_E)
  out_MxH = _varying_like(jnp.concatenate([out_MxH, jnp.zeros((m, dim), out_MxH.dtype)]),
                          padded_rows, first_row_E, num_rows_E, *w)

  def tile(i, out):
    e = jnp.searchsorted(tile_end_E, i, side="right")
    first = first_row_E[e] + m * (i - (tile_end_E[e] - tiles_E[e]))
    valid_m = first + jnp.arange(m) < first_row_E[e] + num_rows_E[e]
    x_mxH = jax.lax.dynamic_slice_in_dim(padded_rows, first, m)
    y_mxH = _swiglu_rows(x_mxH, w.gate[e].astype(dtype), w.up[e].astype(dtype), w.down[e].astype(dtype))
    old = jax.lax.dynamic_slice_in_dim(out, first, m)
    return jax.lax.dynamic_update_slice_in_dim(out, jnp.where(valid_m[:, None], y_mxH, old), first, 0)

  return jax.lax.fori_loop(0, tile_end_E[-1], tile, out_MxH)[:num_rows]


@_with_tiled_backward
def _looped_experts(rows_MxH, group_sizes_E, w: ExpertWeights, dtype, max_tile: int) -> jax.Array:
  """Grouped matmul over the experts that have rows only (decoding with skewed routing: a block's similar
  tokens pick the same few experts): a loop over `m`-row tiles of one expert each, so the weights read are
  those of the experts used (a tile re-reads its expert's weights, from cache when they fit)."""
  num_rows, dim = rows_MxH.shape
  m = tile_size_for(num_rows, group_sizes_E.shape[0], max_tile)
  start_E = jnp.cumsum(group_sizes_E) - group_sizes_E
  padded_rows = jnp.concatenate([rows_MxH, jnp.zeros((m, dim), rows_MxH.dtype)])
  return _expert_tiles(padded_rows, start_E, group_sizes_E, w, dtype, m, jnp.zeros_like(rows_MxH))


# On CPU, `auto` uses a decode kernel up to this many rows per expert on average (decoding: a block of
# 32 tokens x top-8 over 64 experts is 4 per row of the batch), the tiled one above (training).
DECODE_MAX_MEAN_ROWS = 64


def resolve_impl(impl: str, rows_MxH: jax.Array, experts: ExpertWeights) -> str:
  """`auto` picks `ragged` on TPU/GPU; on CPU for few rows per expert `native` (float32, widths multiples of 16,
  a C++ compiler at hand) or `looped`, else `tiled`. In a decode a block's tokens route alike (at the first
  step they are all the mask token), so a few experts take most rows: the decode kernels read only the experts
  used, where `bucketed` reads every expert's weights and loops over the overflow (mid-size model, a whole
  decode: `looped` 57-61 vs `bucketed` 101-113 ms per forward at batch 1)."""
  if impl != "auto":
    return impl
  if jax.default_backend() != "cpu":
    return "ragged"
  num_experts, hidden, width = experts.gate.shape
  if rows_MxH.shape[0] > DECODE_MAX_MEAN_ROWS * num_experts:
    return "tiled"
  native = all(cpu_kernels.supports(hidden, width, a.dtype) for a in (rows_MxH, *experts))
  return "native" if native and cpu_kernels.available() else "looped"


@jax.named_scope("expert_matmuls")
def _grouped_experts(rows_MxH, group_sizes_E, experts: ExpertWeights, impl: str, max_tile: int):
  impl = resolve_impl(impl, rows_MxH, experts)
  if impl == "ragged":
    return _ragged_experts(rows_MxH, group_sizes_E, experts, rows_MxH.dtype)
  if impl == "tiled":
    return _tiled_experts(rows_MxH, group_sizes_E, experts, rows_MxH.dtype, max_tile)
  if impl == "bucketed":
    return _bucketed_experts(rows_MxH, group_sizes_E, experts, rows_MxH.dtype, max_tile)
  if impl == "looped":
    return _looped_experts(rows_MxH, group_sizes_E, experts, rows_MxH.dtype, max_tile)
  raise ValueError(f"unknown MoE implementation {impl!r}")


@jax.named_scope("dispatch")
def dispatch_experts(x_TxH: jax.Array, expert_ids_TxA: jax.Array, weights_TxA: jax.Array,
                     experts: ExpertWeights, *, impl: str = "auto", max_tile: int = 64) -> jax.Array:
  """Dropless routed-expert output `sum_k weight_k * expert_k(x)`.

  Args:
    x_TxH: `[tokens, embed]` in the compute dtype.
    expert_ids_TxA, weights_TxA: `[tokens, top_k]` from `route`.
    experts: stacked expert weights.
  Returns:
    `[tokens, embed]` in the dtype of `x_TxH`.
  """
  num_tokens, top_k = expert_ids_TxA.shape
  num_experts = experts.gate.shape[0]
  impl = resolve_impl(impl, jax.ShapeDtypeStruct((num_tokens * top_k, x_TxH.shape[1]), x_TxH.dtype), experts)
  if impl == "native":
    return _native_routed_experts(x_TxH, expert_ids_TxA, weights_TxA, experts, max_tile).astype(x_TxH.dtype)
  flat_M = expert_ids_TxA.reshape(-1)
  order_M = jnp.argsort(flat_M, stable=True)
  rows_MxH = x_TxH[order_M // top_k]
  group_sizes_E = jnp.bincount(flat_M, length=num_experts).astype(jnp.int32)
  out_MxH = _grouped_experts(rows_MxH, group_sizes_E, experts, impl, max_tile)
  sorted_pos_M = jnp.zeros_like(order_M).at[order_M].set(jnp.arange(order_M.shape[0], dtype=order_M.dtype))
  unsorted_MxH = out_MxH[sorted_pos_M]
  per_slot_TxAxH = unsorted_MxH.reshape(num_tokens, top_k, -1).astype(jnp.float32)
  return jnp.einsum("tah,ta->th", per_slot_TxAxH, weights_TxA).astype(x_TxH.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _native_routed_experts(x_TxH, expert_ids_TxA, weights_TxA, experts: ExpertWeights, max_tile: int) -> jax.Array:
  """Float32 `sum_a weight_a * expert_a(x)` of the assignments to `[0, E)` as one call of the CPU kernel
  (sorting, gathering, experts and weighted sum); its backward pass is `_local_expert_outputs` with `tiled`."""
  del max_tile
  with jax.named_scope("expert_matmuls"):
    return cpu_kernels.routed_experts(x_TxH, expert_ids_TxA, weights_TxA, *experts)


def _native_routed_experts_fwd(x_TxH, expert_ids_TxA, weights_TxA, experts, max_tile):
  out = _native_routed_experts(x_TxH, expert_ids_TxA, weights_TxA, experts, max_tile)
  return out, (x_TxH, expert_ids_TxA, weights_TxA, experts)


def _native_routed_experts_bwd(max_tile, residuals, out_cotangent_TxH):
  x_TxH, expert_ids_TxA, weights_TxA, experts = residuals
  tiled = lambda x, w, e: _local_expert_outputs(x, expert_ids_TxA, w, e, "tiled", max_tile)
  x_cotangent, weights_cotangent, experts_cotangent = jax.vjp(tiled, x_TxH, weights_TxA, experts)[1](
      out_cotangent_TxH)
  return x_cotangent, None, weights_cotangent, experts_cotangent


_native_routed_experts.defvjp(_native_routed_experts_fwd, _native_routed_experts_bwd)


@jax.named_scope("dispatch")
def _local_expert_outputs(x_UxH, local_ids_UxA, weights_UxA, experts: ExpertWeights, impl: str,
                          max_tile: int) -> jax.Array:
  """`sum_k weight_k * expert_k(x)` over the assignments to this device's experts only.

  `local_ids_UxA` holds local expert indices in `[0, E_l)` and `E_l` for assignments elsewhere: those
  sort last and fall outside every group (`ragged` skips them; `tiled` computes them with the last expert's
  weights) and are masked out; the `native` kernel skips them. Returns float32 `[U, H]`.
  """
  num_tokens, top_k = local_ids_UxA.shape
  num_local = experts.gate.shape[0]
  impl = resolve_impl(impl, jax.ShapeDtypeStruct((num_tokens * top_k, x_UxH.shape[1]), x_UxH.dtype), experts)
  if impl == "native":
    return _native_routed_experts(x_UxH, local_ids_UxA, weights_UxA, experts, max_tile)
  flat_M = local_ids_UxA.reshape(-1)
  order_M = jnp.argsort(flat_M, stable=True)
  rows_MxH = x_UxH[order_M // top_k]
  group_sizes_E = jnp.bincount(flat_M, length=num_local + 1)[:num_local].astype(jnp.int32)
  out_MxH = _grouped_experts(rows_MxH, group_sizes_E, experts, impl, max_tile)
  # Weighted rows are summed straight into their tokens: no [M, H] unsort buffer (M is the worst case).
  is_local_M = flat_M[order_M] < num_local
  weights_M = weights_UxA.reshape(-1)[order_M]
  weighted_MxH = jnp.where(is_local_M[:, None], out_MxH.astype(jnp.float32) * weights_M[:, None], 0.0)
  return jnp.zeros((num_tokens, out_MxH.shape[1]), jnp.float32).at[order_M // top_k].add(weighted_MxH)


def expert_parallel_moe(x_BxTxH: jax.Array, router_logits_BxTxE: jax.Array, expert_bias_E: jax.Array,
                        experts: ExpertWeights, *, route_fn: Callable, token_spec: P, expert_axes: tuple[str, ...],
                        mlp_axes: tuple[str, ...] = (), impl: str = "auto", max_tile: int = 64
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Routing and `dispatch_experts` in `shard_map` over the context mesh: every device routes its own
  tokens, and the tokens travel to the devices of their experts.

  Args:
    x_BxTxH: `[batch, seq, embed]` in the compute dtype, sharded as `token_spec` (batch, seq, None).
    router_logits_BxTxE, expert_bias_E: the inputs of `route_fn` (e.g. `route` with the config bound).
    experts: weights in the compute dtype, expert dimension sharded over `expert_axes` (whole experts
      per device), width over `mlp_axes`.
  Returns:
    `(out [batch, seq, embed] in the dtype of x, expert_ids [batch, seq, top_k], weights [batch, seq,
    top_k])`, sharded like `x_BxTxH`.
  """
  sizes = dict(jax.sharding.get_abstract_mesh().shape)
  token_axes = sharding.flat_axes(token_spec[:2])
  expert_axes, mlp_axes = (tuple(a for a in axes if sizes[a] > 1) for axes in (expert_axes, mlp_axes))
  ep_size = math.prod(sizes[a] for a in expert_axes)
  num_experts = experts.gate.shape[0]
  if num_experts % ep_size:
    raise ValueError(f"{num_experts} experts cannot be split over the expert-parallel mesh axes "
                     f"{expert_axes} of size {ep_size}")
  num_local = num_experts // ep_size
  gather_axes = tuple(a for a in expert_axes if a in token_axes)
  # Tokens replicated over an expert-parallel axis already sit on every shard: sum their outputs there.
  sum_axes = tuple(a for a in expert_axes if a not in token_axes) + mlp_axes

  @jax.named_scope("expert_parallel_moe")  # shard_map bodies start a fresh name stack
  def local(x_BxTxH, logits_BxTxE, bias_E, gate, up, down):
    b, t, d = x_BxTxH.shape
    ids_TxA, w_TxA = route_fn(logits_BxTxE.reshape(b * t, -1), bias_E)
    x_UxH, ids_UxA, w_UxA = x_BxTxH.reshape(b * t, d), ids_TxA, w_TxA
    if gather_axes:
      x_UxH, ids_UxA, w_UxA = (jax.lax.all_gather(a, gather_axes, axis=0, tiled=True)
                               for a in (x_UxH, ids_UxA, w_UxA))
    first = jax.lax.axis_index(expert_axes) * num_local if expert_axes else 0
    local_ids = ids_UxA - first
    local_ids = jnp.where((local_ids >= 0) & (local_ids < num_local), local_ids, num_local)
    y_UxH = _local_expert_outputs(x_UxH, local_ids, w_UxA, ExpertWeights(gate, up, down), impl, max_tile)
    y_UxH = y_UxH.astype(x_BxTxH.dtype)
    y_TxH = jax.lax.psum_scatter(y_UxH, gather_axes, scatter_dimension=0, tiled=True) if gather_axes else y_UxH
    if sum_axes:
      y_TxH = jax.lax.psum(y_TxH, sum_axes)
    return y_TxH.reshape(b, t, d), ids_TxA.reshape(b, t, -1), w_TxA.reshape(b, t, -1)

  expert_in = P(expert_axes or None, None, mlp_axes or None)
  expert_out = P(expert_axes or None, mlp_axes or None, None)
  return jax.shard_map(local, in_specs=(token_spec, token_spec, P(None), expert_in, expert_in, expert_out),
                       out_specs=(token_spec,) * 3)(x_BxTxH, router_logits_BxTxE, expert_bias_E, *experts)

