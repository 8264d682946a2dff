"""CPU stand-ins for the vLLM names that DMax's dInfer LLaDA2 model imports, so the official PyTorch model
and SPD loop run on a CPU without vLLM (whose fused-MoE kernel is CUDA-only).

`install()` puts small `vllm.*` modules into `sys.modules`. Only single-process use is covered: the
tensor-parallel linear classes refuse construction, the distributed helpers report rank 0 of 1. The routed
experts run as the official Hugging Face LLaDA2 modeling file does on a CPU: assignments sorted by expert,
one pair of matmuls per expert that has rows.

Shapes: T tokens, K experts per token, H hidden, I expert width, E experts.
"""

from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F
from torch import nn


class FusedMoE(nn.Module):
  """vLLM's `FusedMoE` interface with its weight layout: `w13_weight [E, 2I, H]` (gate rows then up rows),
  `w2_weight [E, H, I]`; routing by the `custom_routing_function` it is given."""

  def __init__(self, num_experts, top_k, hidden_size, intermediate_size, reduce_results=True, quant_config=None,
               tp_size=None, custom_routing_function=None, prefix=""):
    super().__init__()
    del reduce_results, quant_config, tp_size, prefix
    self.top_k = top_k
    self.intermediate_size = intermediate_size
    self.route = custom_routing_function
    self.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
    self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
    self.expert_map = None

  def forward_impl(self, hidden_states, router_logits):
    x_TxH = hidden_states
    weight_TxK, expert_TxK = self.route(hidden_states=x_TxH, gating_output=router_logits, topk=self.top_k,
                                        renormalize=True)
    order = expert_TxK.reshape(-1).argsort()
    rows_per_expert = torch.bincount(expert_TxK.reshape(-1), minlength=self.w13_weight.shape[0]).tolist()
    x_sorted = x_TxH[order // self.top_k]
    outputs, start = [], 0
    for expert, rows in enumerate(rows_per_expert):
      if rows == 0:
        continue
      gate_up = F.linear(x_sorted[start:start + rows], self.w13_weight[expert])
      gate, up = gate_up.split(self.intermediate_size, dim=-1)
      outputs.append(F.linear(F.silu(gate) * up, self.w2_weight[expert]))
      start += rows
    y_sorted = torch.cat(outputs)
    y_TKxH = torch.empty_like(y_sorted)
    y_TKxH[order] = y_sorted
    y_TxKxH = y_TKxH.view(*expert_TxK.shape, -1)
    return (y_TxKxH * weight_TxK.unsqueeze(-1).to(y_TxKxH.dtype)).sum(dim=1)


class _TensorParallelLinear(nn.Module):

  def __init__(self, *args, **kwargs):
    raise NotImplementedError("tensor parallelism is not available in the CPU stand-ins")


def _module(name: str, **attrs) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__dict__.update(attrs)
  return module


def _divide(numerator: int, denominator: int) -> int:
  if numerator % denominator:
    raise ValueError(f"{numerator} is not divisible by {denominator}")
  return numerator // denominator


def install() -> None:
  """Registers the stand-in `vllm` modules (idempotent)."""
  linear = _module("vllm.model_executor.layers.linear", **{
      name: type(name, (_TensorParallelLinear,), {})
      for name in ("ColumnParallelLinear", "ReplicatedLinear", "QKVParallelLinear", "RowParallelLinear")})
  modules = {
      "vllm": _module("vllm"),
      "vllm.model_executor": _module("vllm.model_executor"),
      "vllm.model_executor.layers": _module("vllm.model_executor.layers"),
      "vllm.model_executor.layers.fused_moe": _module("vllm.model_executor.layers.fused_moe", FusedMoE=FusedMoE),
      "vllm.model_executor.layers.linear": linear,
      "vllm.model_executor.models": _module("vllm.model_executor.models"),
      "vllm.model_executor.models.utils": _module(
          "vllm.model_executor.models.utils", maybe_prefix=lambda prefix, name: f"{prefix}.{name}" if prefix else name),
      "vllm.distributed": _module(
          "vllm.distributed", divide=_divide, get_tensor_model_parallel_rank=lambda: 0,
          get_tensor_model_parallel_world_size=lambda: 1, tensor_model_parallel_all_reduce=lambda t: t),
  }
  for name, module in modules.items():
    sys.modules.setdefault(name, module)
  for name, module in modules.items():  # parents expose their children as attributes, as real packages do
    parent, _, child = name.rpartition(".")
    if parent:
      setattr(sys.modules[parent], child, sys.modules[name])
