"""One table mapping every Hugging Face LLaDA2-MoE tensor name to its place in this project's variables.

A Hugging Face tensor lands in one or more *slots*: `(variable path, index)` where the index selects
the layer (and expert) inside a stacked array, e.g. `model.layers.3.mlp.experts.7.up_proj.weight` ->
`params/moe_layers/layers/mlp/experts_up[3 - first_k_dense_replace, 7]`, transposed.
Every transform is an exact reshape/transpose/split, so HF -> JAX -> HF is bit-exact.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterator

import numpy as np

from dmax_jax.config import ModelConfig
from dmax_jax.errors import InputError

Slot = tuple[str, tuple[int, ...]]  # (variable path "params/a/b", index into the leading axes)

_LAYER = r"model\.layers\.(?P<layer>\d+)\."


@dataclasses.dataclass(frozen=True)
class Rule:
  """Maps HF tensors matching `pattern` to `targets` (paths relative to the layer stack when the
  pattern has a layer group) via `to_jax`, and back via `to_hf`."""
  pattern: re.Pattern
  targets: tuple[str, ...]
  to_jax: Callable[[np.ndarray, ModelConfig], tuple[np.ndarray, ...]]
  to_hf: Callable[[tuple[np.ndarray, ...], ModelConfig], np.ndarray]
  moe_only: bool | None = None  # True: MoE layers only; False: dense layers only; None: both


def _identity(w, cfg):
  return (w,)


def _identity_back(ws, cfg):
  return ws[0]


def _transpose(w, cfg):
  return (np.ascontiguousarray(w.T),)


def _transpose_back(ws, cfg):
  return np.ascontiguousarray(ws[0].T)


def _expert_stack_to_jax(w, cfg):  # merged [E, out, in] -> [E, in, out]
  return (np.ascontiguousarray(np.swapaxes(w, 1, 2)),)


def _expert_stack_to_hf(ws, cfg):
  return np.ascontiguousarray(np.swapaxes(ws[0], 1, 2))


def _split_qkv(w, cfg):
  """`[(N + 2K) * D, H]` -> query `[H, N, D]`, key `[H, K, D]`, value `[H, K, D]`."""
  n, k, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  heads = w.T.reshape(w.shape[1], n + 2 * k, d)
  return (np.ascontiguousarray(heads[:, :n]), np.ascontiguousarray(heads[:, n:n + k]),
          np.ascontiguousarray(heads[:, n + k:]))


def _fuse_qkv(ws, cfg):
  q, k, v = ws
  fused = np.concatenate([q, k, v], axis=1)  # [H, N + 2K, D]
  return np.ascontiguousarray(fused.reshape(fused.shape[0], -1).T)


def _out_to_jax(w, cfg):
  """`[H, N * D]` -> `[N, D, H]`."""
  return (np.ascontiguousarray(w.T.reshape(cfg.num_attention_heads, cfg.head_dim, w.shape[0])),)


def _out_to_hf(ws, cfg):
  o = ws[0]
  return np.ascontiguousarray(o.reshape(-1, o.shape[-1]).T)


def _rule(pattern, targets, to_jax=_identity, to_hf=_identity_back, moe_only=None):
  targets = (targets,) if isinstance(targets, str) else targets
  return Rule(re.compile(pattern + r"$"), targets, to_jax, to_hf, moe_only)


_T = dict(to_jax=_transpose, to_hf=_transpose_back)

RULES: tuple[Rule, ...] = (
    _rule(r"model\.word_embeddings\.weight", "params/embedding"),
    _rule(r"model\.norm\.weight", "params/final_norm/scale"),
    _rule(r"lm_head\.weight", "params/lm_head", **_T),
    _rule(_LAYER + r"input_layernorm\.weight", "input_norm/scale"),
    _rule(_LAYER + r"post_attention_layernorm\.weight", "post_attention_norm/scale"),
    _rule(_LAYER + r"attention\.query_key_value\.weight",
          ("attention/query", "attention/key", "attention/value"), _split_qkv, _fuse_qkv),
    _rule(_LAYER + r"attention\.query_layernorm\.weight", "attention/query_norm"),
    _rule(_LAYER + r"attention\.key_layernorm\.weight", "attention/key_norm"),
    _rule(_LAYER + r"attention\.dense\.weight", "attention/out", _out_to_jax, _out_to_hf),
    _rule(_LAYER + r"mlp\.gate_proj\.weight", "mlp/gate", **_T, moe_only=False),
    _rule(_LAYER + r"mlp\.up_proj\.weight", "mlp/up", **_T, moe_only=False),
    _rule(_LAYER + r"mlp\.down_proj\.weight", "mlp/down", **_T, moe_only=False),
    _rule(_LAYER + r"mlp\.gate\.weight", "mlp/router", **_T, moe_only=True),
    _rule(_LAYER + r"mlp\.gate\.expert_bias", "buffers:mlp/expert_bias", moe_only=True),
    _rule(_LAYER + r"mlp\.experts\.(?P<expert>\d+)\.gate_proj\.weight", "mlp/experts_gate", **_T, moe_only=True),
    _rule(_LAYER + r"mlp\.experts\.(?P<expert>\d+)\.up_proj\.weight", "mlp/experts_up", **_T, moe_only=True),
    _rule(_LAYER + r"mlp\.experts\.(?P<expert>\d+)\.down_proj\.weight", "mlp/experts_down", **_T, moe_only=True),
    _rule(_LAYER + r"mlp\.experts\.gate_proj", "mlp/experts_gate", _expert_stack_to_jax, _expert_stack_to_hf,
          moe_only=True),
    _rule(_LAYER + r"mlp\.experts\.up_proj", "mlp/experts_up", _expert_stack_to_jax, _expert_stack_to_hf,
          moe_only=True),
    _rule(_LAYER + r"mlp\.experts\.down_proj", "mlp/experts_down", _expert_stack_to_jax, _expert_stack_to_hf,
          moe_only=True),
    _rule(_LAYER + r"mlp\.shared_experts\.gate_proj\.weight", "mlp/shared/gate", **_T, moe_only=True),
    _rule(_LAYER + r"mlp\.shared_experts\.up_proj\.weight", "mlp/shared/up", **_T, moe_only=True),
    _rule(_LAYER + r"mlp\.shared_experts\.down_proj\.weight", "mlp/shared/down", **_T, moe_only=True),
)


class MappingError(InputError, KeyError):
  """A tensor name or shape that does not fit the config; the message names the tensor."""

  def __str__(self):
    return str(self.args[0])


def _stack_of(layer: int, cfg: ModelConfig) -> tuple[str, int, bool]:
  if layer >= cfg.num_hidden_layers:
    raise MappingError(f"layer {layer} >= num_hidden_layers={cfg.num_hidden_layers}: the checkpoint has more "
                       "layers than its config.json says")
  if layer < cfg.num_dense_layers:
    return "dense_layers", layer, False
  return "moe_layers", layer - cfg.num_dense_layers, True


def slots_for(name: str, cfg: ModelConfig) -> tuple[Rule, tuple[Slot, ...]]:
  """The rule and the destination slots of HF tensor `name`; `MappingError` if it has none."""
  for rule in RULES:
    m = rule.pattern.match(name)
    if not m:
      continue
    groups = m.groupdict()
    if "layer" not in groups:
      return rule, tuple((t, ()) for t in rule.targets)
    stack, index, is_moe = _stack_of(int(groups["layer"]), cfg)
    if rule.moe_only is not None and rule.moe_only != is_moe:
      kind = "an MoE" if rule.moe_only else "a dense"
      raise MappingError(f"unexpected tensor {name!r}: it belongs to {kind} layer, but layer "
                         f"{groups['layer']} is {'MoE' if is_moe else 'dense'} under "
                         f"first_k_dense_replace={cfg.first_k_dense_replace}")
    idx = (index,)
    if groups.get("expert") is not None:
      expert = int(groups["expert"])
      if expert >= cfg.num_experts:
        raise MappingError(f"unexpected tensor {name!r}: expert {expert} >= num_experts={cfg.num_experts}")
      idx = (index, expert)
    slots = []
    for t in rule.targets:
      collection, _, rel = t.rpartition(":")
      slots.append((f"{collection or 'params'}/{stack}/layers/{rel}", idx))
    return rule, tuple(slots)
  raise MappingError(f"unexpected tensor {name!r}: no LLaDA2-MoE parameter has this name")


def expected_hf_names(cfg: ModelConfig, merged_experts: bool = False) -> Iterator[str]:
  """Every HF tensor name of a checkpoint of `cfg`, in the official order."""
  yield "model.word_embeddings.weight"
  for i in range(cfg.num_hidden_layers):
    p = f"model.layers.{i}."
    yield p + "input_layernorm.weight"
    yield p + "attention.query_key_value.weight"
    if cfg.use_qk_norm:
      yield p + "attention.query_layernorm.weight"
      yield p + "attention.key_layernorm.weight"
    yield p + "attention.dense.weight"
    yield p + "post_attention_layernorm.weight"
    if i < cfg.num_dense_layers:
      for proj in ("gate_proj", "up_proj", "down_proj"):
        yield p + f"mlp.{proj}.weight"
      continue
    yield p + "mlp.gate.weight"
    yield p + "mlp.gate.expert_bias"
    if merged_experts:
      for proj in ("gate_proj", "up_proj", "down_proj"):
        yield p + f"mlp.experts.{proj}"
    else:
      for e in range(cfg.num_experts):
        for proj in ("gate_proj", "up_proj", "down_proj"):
          yield p + f"mlp.experts.{e}.{proj}.weight"
    if cfg.num_shared_experts:
      for proj in ("gate_proj", "up_proj", "down_proj"):
        yield p + f"mlp.shared_experts.{proj}.weight"
  yield "model.norm.weight"
  if not cfg.tie_word_embeddings:
    yield "lm_head.weight"
