"""AdamW with linear warmup + cosine (or linear / constant) decay and global-norm clipping."""

from __future__ import annotations

import optax


def lr_schedule(train_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup over `warmup_ratio * total_steps` steps from 0 to the peak, then the decay."""
  peak = train_cfg.learning_rate
  warmup = int(round(train_cfg.warmup_ratio * total_steps))
  decay_steps = max(total_steps - warmup, 1)
  end = peak * train_cfg.end_lr_ratio
  if train_cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=train_cfg.end_lr_ratio)
  elif train_cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(train_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`(clip_by_global_norm -> AdamW, schedule)`; weight decay applies to every trained parameter."""
  schedule = lr_schedule(train_cfg, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(train_cfg.clip_norm),
      optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                  weight_decay=train_cfg.weight_decay))
  return tx, schedule
