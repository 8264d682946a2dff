"""Hand-written CPU kernels for a decoding forward (`cpu_kernels.cc`, XLA FFI calls, float32).

`routed_experts`: a layer's routed experts, from the tokens and their routing. At decode shapes (a few rows per
expert) XLA:CPU's loop over experts copies every weight matrix it uses out of the stacked array before its dot and
runs a loop iteration per tile, so it streams the weights at a fraction of the machine's bandwidth; the kernel
reads each used expert's weights once, in place, and also does the sorting, gathering and weighted sum that take
XLA a dozen small ops. `matmul`: `x @ w` for the few rows of a decode (projections, dense MLPs, LM head), where
XLA:CPU's dot runs well under the machine's FLOP/s (the mid-size model's matmuls at 32 rows: 81-123 GFLOP/s, the
kernel 137-148, a 2048^3 matmul 187; `benchmarks/matmul_kernel.py`). `attention`: a decoding forward's attention
to the cache and its own keys, where XLA runs a dozen small ops per layer. The library is compiled with the
machine's C++ compiler on first use (`-O3 -march=native`, a few seconds) into a cache folder
(`$DMAX_JAX_KERNEL_CACHE`, default `~/.cache/dmax_jax`), keyed by its source, the flags, jaxlib's version and the
CPU's features. Where it cannot be built (no compiler), `available()` is false and callers keep to XLA's kernels.

Shapes follow the package legend: T tokens (a matmul's rows), A experts per token, H hidden, F expert width, E
experts, W and O a matmul's contracted and output widths; B batch, N query heads, K kv heads, D head dim, P cache
length.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import jaxlib

SOURCE = pathlib.Path(__file__).with_name("cpu_kernels.cc")
TARGETS = {"dmax_cpu_routed_experts": "DmaxCpuRoutedExperts", "dmax_cpu_matmul": "DmaxCpuMatmul",
           "dmax_cpu_attention": "DmaxCpuAttention"}
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")


def _cpu_features() -> str:
  """The CPU's architecture and feature flags: `-march=native` builds for them, so a cache folder shared by
  different machines keeps one library per kind of CPU."""
  try:
    cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    cpuinfo = ""
  flags = next((line for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))), "")
  return platform.machine() + flags


def _library_path() -> pathlib.Path:
  key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + jaxlib.__version__.encode() +
                       _cpu_features().encode()).hexdigest()
  cache = pathlib.Path(os.environ.get("DMAX_JAX_KERNEL_CACHE", pathlib.Path.home() / ".cache" / "dmax_jax"))
  return cache / f"cpu_kernels-{key[:16]}.so"


def _build(target: pathlib.Path) -> None:
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if compiler is None:
    raise RuntimeError("no C++ compiler found (set CXX)")
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # build aside, then rename: concurrent builds race safely
    built = pathlib.Path(tmp) / target.name
    result = subprocess.run([compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(built)],
                            capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
    os.replace(built, target)


@functools.cache
def available() -> bool:
  """Whether the kernel is built (building it now if needed) and registered with XLA for the CPU."""
  try:
    path = _library_path()
    if not path.exists():
      _build(path)
    library = ctypes.CDLL(str(path))
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return True
  except (OSError, RuntimeError) as e:
    warnings.warn(f"the CPU kernels are unavailable, using XLA's ({e})", stacklevel=2)
    return False


def usable_here() -> bool:
  """Whether `auto` may pick the kernels: on CPU, outside multi-device meshes (a custom call is not partitioned),
  once built."""
  return jax.default_backend() == "cpu" and jax.sharding.get_abstract_mesh().size <= 1 and available()


def supports(hidden: int, width: int, dtype) -> bool:
  """Shapes and dtypes the kernel takes (float32, widths multiples of 16)."""
  return jnp.dtype(dtype) == jnp.float32 and hidden % 16 == 0 and width % 16 == 0


def _call(target: str, out_shape: tuple[int, ...], *operands: jax.Array) -> jax.Array:
  if not available():
    raise RuntimeError("the CPU kernels could not be built (see the warning above)")
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out_shape, jnp.float32), vmap_method="sequential")(*operands)


def _expert_weights(gate_ExHxF: jax.Array, up_ExHxF: jax.Array, down_ExFxH: jax.Array) -> tuple[jax.Array, ...]:
  _, hidden, width = gate_ExHxF.shape
  if not supports(hidden, width, jnp.float32):  # other dtypes are cast
    raise ValueError(f"the CPU expert kernel needs hidden and expert widths that are multiples of 16, "
                     f"got {hidden}, {width}")
  return tuple(w.astype(jnp.float32) for w in (gate_ExHxF, up_ExHxF, down_ExFxH))


def routed_experts(x_TxH: jax.Array, expert_ids_TxA: jax.Array, weights_TxA: jax.Array, gate_ExHxF: jax.Array,
                   up_ExHxF: jax.Array, down_ExFxH: jax.Array) -> jax.Array:
  """`[T, H]` float32 `sum_a weights[t, a] * expert_{ids[t, a]}(x[t])` (SwiGLU experts; ids outside `[0, E)` add
  nothing): the sorting by expert, the gathering of token rows and the weighted sum happen in the call."""
  return _call("dmax_cpu_routed_experts", x_TxH.shape, x_TxH.astype(jnp.float32), expert_ids_TxA.astype(jnp.int32),
               weights_TxA.astype(jnp.float32), *_expert_weights(gate_ExHxF, up_ExHxF, down_ExFxH))


def matmul(x_TxW: jax.Array, w_WxO: jax.Array) -> jax.Array:
  """`[T, O]` float32 `x @ w` (O a multiple of 16)."""
  if w_WxO.shape[1] % 16 != 0 or x_TxW.shape[1] != w_WxO.shape[0]:
    raise ValueError(f"the CPU matmul kernel needs x [T, W] and w [W, O] with O a multiple of 16, got "
                     f"{x_TxW.shape} and {w_WxO.shape}")
  return _call("dmax_cpu_matmul", (x_TxW.shape[0], w_WxO.shape[1]), x_TxW.astype(jnp.float32),
               w_WxO.astype(jnp.float32))


def attention(q_BxTxNxD: jax.Array, prefix_k_BxKxPxD: jax.Array, prefix_v_BxKxPxD: jax.Array, k_BxKxTxD: jax.Array,
              v_BxKxTxD: jax.Array, bias_BxSxT: jax.Array, prefix_lens_B: jax.Array) -> jax.Array:
  """`[B, T, N, D]` softmax attention of `q` to each row's first `prefix_lens_B[b]` cached keys and the T own keys
  (one softmax over both), `bias_BxSxT` the additive mask over the `S = P + T` keys, transposed (keys first).
  T and D multiples of 16."""
  b, t, _, d = q_BxTxNxD.shape
  if t % 16 or d % 16:
    raise ValueError(f"the CPU attention kernel needs query counts and head dims that are multiples of 16, "
                     f"got {t} and {d}")
  operands = (q_BxTxNxD, prefix_k_BxKxPxD, prefix_v_BxKxPxD, k_BxKxTxD, v_BxKxTxD, bias_BxSxT)
  return _call("dmax_cpu_attention", q_BxTxNxD.shape, *(a.astype(jnp.float32) for a in operands),
               prefix_lens_B.astype(jnp.int32).reshape(b))
