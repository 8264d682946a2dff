"""Train state, its shardings, and the one jitted, sharded OPUT train step.

State pytree: `{"params", "buffers", "opt_state", "step"}`. Only `params` are differentiated and
updated; `buffers` (the router's expert_bias) pass through unchanged. Shardings come from the model's
logical partition specs and the project's rules table; the optimizer state mirrors the params.
"""

from __future__ import annotations

from typing import Any, Callable

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dmax_jax import sharding
from dmax_jax.config import ModelConfig
from dmax_jax.model import abstract_variables, variable_shardings
from dmax_jax.training.loss import oput_loss_terms
from dmax_jax.training.optimizer import make_optimizer

State = dict[str, Any]
BATCH_KEYS = ("noisy_ids", "clean_ids", "labels", "flags")


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
  """Batches are `[accumulation, micro_batch, seq]` (flags `[accumulation, micro_batch]`); rows over
  the `batch` logical axis."""
  tokens = sharding.logical_to_sharding(PartitionSpec(None, "batch", "length"), mesh)
  flags = sharding.logical_to_sharding(PartitionSpec(None, "batch"), mesh)
  return {k: flags if k == "flags" else tokens for k in BATCH_KEYS}


def abstract_state(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh) -> State:
  """`ShapeDtypeStruct`s of the train state carrying their `NamedSharding`s on `mesh` (an Orbax restore
  target, and the source of the step's in/out shardings)."""
  var_shardings = variable_shardings(cfg, mesh)
  variables = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                           abstract_variables(cfg), var_shardings)
  opt_state = jax.eval_shape(tx.init, variables["params"])
  replicated = sharding.replicated(mesh)
  opt_state = optax.tree_map_params(
      tx, lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), opt_state, var_shardings["params"],
      transform_non_params=lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated))
  return {"params": variables["params"], "buffers": variables["buffers"], "opt_state": opt_state,
          "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}


def state_shardings(abstract: State) -> State:
  return jax.tree.map(lambda a: a.sharding, abstract)


def init_state(variables: dict, tx: optax.GradientTransformation, abstract: State) -> State:
  """Fresh train state (optimizer initialised) laid out with the shardings of `abstract`."""
  def build(v):
    return {"params": v["params"], "buffers": v["buffers"], "opt_state": tx.init(v["params"]),
            "step": jnp.zeros((), jnp.int32)}
  var_shardings = {"params": state_shardings(abstract["params"]), "buffers": state_shardings(abstract["buffers"])}
  return jax.jit(build, in_shardings=(var_shardings,), out_shardings=state_shardings(abstract))(variables)


def train_step_fn(cfg: ModelConfig, tx: optax.GradientTransformation, schedule: optax.Schedule,
                  block_size: int, on_policy: bool,
                  loss_weighting: str = "tokens") -> Callable[[State, dict], tuple[State, dict]]:
  """The pure step: gradients accumulated over the leading micro-batch axis (loss numerators and
  denominators summed over micro-batches, so the weighting spans the whole batch), clipped AdamW
  update, metrics."""

  def step(state: State, batch: dict) -> tuple[State, dict]:
    buffers = state["buffers"]

    def loss_numerator(params, mb):
      numerator, denominator, tokens = oput_loss_terms(
          cfg, {"params": params, "buffers": buffers}, mb["noisy_ids"], mb["clean_ids"], mb["labels"],
          mb["flags"], block_size, on_policy, loss_weighting)
      return numerator, (denominator, tokens)

    def accumulate(carry, mb):
      grad_sum, loss_sum, count, tokens = carry
      (loss, (n, t)), grads = jax.value_and_grad(loss_numerator, has_aux=True)(state["params"], mb)
      grad_sum = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grad_sum, grads)
      return (grad_sum, loss_sum + loss, count + n, tokens + t), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
    (grad_sum, loss_sum, count, tokens), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0, 0.0), batch)
    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g, p: (g / count).astype(p.dtype), grad_sum, state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"params": optax.apply_updates(state["params"], updates), "buffers": buffers,
                 "opt_state": opt_state, "step": state["step"] + 1}
    metrics = {"loss": loss_sum / count, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"]),
               "label_tokens": tokens}
    return new_state, metrics

  return step


def make_train_step(cfg: ModelConfig, train_cfg, total_steps: int, mesh: Mesh):
  """`(jit of the step with declared in/out shardings and the input state donated, optimizer, abstract
  state)`. Cached on the settings the step depends on, so runs in one process that differ only in
  logging, output or batch counts reuse the compiled step. Call the step inside
  `sharding.use_mesh(mesh)` (the model's activation constraints resolve against the rules)."""
  step_settings = dataclasses.replace(train_cfg, output_dir="", epochs=1, max_steps=None, log_every=1,
                                      tensorboard=False, export_hf=None)
  return _make_train_step(cfg, step_settings, total_steps, mesh)


@functools.lru_cache(maxsize=8)
def _make_train_step(cfg: ModelConfig, train_cfg, total_steps: int, mesh: Mesh):
  tx, schedule = make_optimizer(train_cfg, total_steps)
  abstract = abstract_state(cfg, tx, mesh)
  state_sh = state_shardings(abstract)
  step = jax.jit(train_step_fn(cfg, tx, schedule, train_cfg.block_size, train_cfg.on_policy,
                                train_cfg.loss_weighting),
                 in_shardings=(state_sh, batch_shardings(mesh)),
                 out_shardings=(state_sh, sharding.replicated(mesh)),
                 donate_argnums=0)
  return step, tx, abstract


def global_batch(host_batch: dict, accumulation: int, mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows `[rows, ...]` -> global arrays `[accumulation, micro_batch, ...]`.

  Each process contributes `rows / accumulation` rows to every micro-batch.
  """
  out = {}
  shardings = batch_shardings(mesh)
  for key in BATCH_KEYS:
    local = host_batch[key]
    local = local.reshape(accumulation, local.shape[0] // accumulation, *local.shape[1:])
    shape = (accumulation, local.shape[1] * jax.process_count(), *local.shape[2:])
    out[key] = jax.make_array_from_process_local_data(shardings[key], local, shape)
  return out
