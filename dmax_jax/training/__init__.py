"""On-Policy Uniform Training: loss, data pipeline, optimizer, sharded train step and run config."""

from dmax_jax.training.loss import block_diffusion_mask, oput_loss

__all__ = ["block_diffusion_mask", "oput_loss"]
