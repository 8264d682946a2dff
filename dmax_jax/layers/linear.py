"""The weight matmuls outside the routed experts (attention projections, dense and shared MLPs, router, LM head):
XLA's dot, or on CPU at decode shapes the hand-written kernel (`cpu_kernels.matmul`).

`project(x, w, contract)` contracts the last `contract` axes of `x` with the first `contract` axes of `w`, as
`jnp.tensordot`. `auto` picks `native` on CPU for float32 operands outside multi-device meshes (a custom call is
not partitioned) where the kernel beats XLA's dot (`benchmarks/matmul_kernel.py`, the mid-size model's decode
matmuls with cold weights): every matmul of up to `FEW_ROWS` rows, the LM head (`WIDE_COLUMNS` or more) up to
`WIDE_MAX_ROWS`; `xla` otherwise. `native` uses the kernel wherever it takes the operands. Gradients of `native`
are XLA's dots.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from dmax_jax.layers import cpu_kernels

FEW_ROWS = 64  # batch 2 of 32-token blocks; at 32 rows 1.1-1.7x XLA's dot, at 256 rows 0.66-1.1x but the LM head
WIDE_COLUMNS, WIDE_MAX_ROWS = 8192, 256  # the LM head at batch 8 (256 rows): 1.75x


def resolve_impl(impl: str, rows: int, n: int, dtype) -> str:
  """`native` only where the kernel takes the operands (float32, N a multiple of 16), XLA's dot elsewhere."""
  if impl == "xla" or n % 16 != 0 or jnp.dtype(dtype) != jnp.float32:
    return "xla"
  if impl == "native":
    return "native"
  if rows > FEW_ROWS and not (n >= WIDE_COLUMNS and rows <= WIDE_MAX_ROWS):
    return "xla"
  return "native" if cpu_kernels.usable_here() else "xla"


@jax.custom_vjp
def _native_matmul(x_TxW: jax.Array, w_WxO: jax.Array) -> jax.Array:
  return cpu_kernels.matmul(x_TxW, w_WxO)


def _native_matmul_fwd(x_TxW, w_WxO):
  return cpu_kernels.matmul(x_TxW, w_WxO), (x_TxW, w_WxO)


def _native_matmul_bwd(residuals, grad_TxO):
  x_TxW, w_WxO = residuals
  return grad_TxO @ w_WxO.T, x_TxW.T @ grad_TxO


_native_matmul.defvjp(_native_matmul_fwd, _native_matmul_bwd)


def project(x: jax.Array, w: jax.Array, contract: int = 1, *, impl: str = "auto", **dot_options) -> jax.Array:
  """`jnp.tensordot(x, w, contract, **dot_options)`, by the kernel `impl` resolves to (the CPU kernel computes in
  float32 throughout, as `precision=HIGHEST, preferred_element_type=float32` would)."""
  batch_shape, out_shape = x.shape[:x.ndim - contract], w.shape[contract:]
  rows, k, n = math.prod(batch_shape), math.prod(w.shape[:contract]), math.prod(out_shape)
  if resolve_impl(impl, rows, n, jnp.promote_types(x.dtype, w.dtype)) == "native":
    return _native_matmul(x.reshape(rows, k), w.reshape(k, n)).reshape(batch_shape + out_shape)
  return jnp.tensordot(x, w, contract, **dot_options)
