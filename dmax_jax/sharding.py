"""Device mesh and the one table that maps logical axis names to mesh axes.

Every parameter and activation in the model carries logical axis names (`embed`, `heads`, `expert`,
...). `LOGICAL_AXIS_RULES` maps them to the mesh axes `data`, `fsdp`, `expert`, `tensor`; nothing
else in the project names a mesh axis for a tensor.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from dmax_jax.config import PARALLELISMS
from dmax_jax.errors import InputError

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# logical axis -> mesh axis (or axes, or None = replicated). Rules are applied in order and a rule is
# skipped where its mesh axes are already taken by another dimension of the same array (so `expert`
# before `embed`: expert weights shard their expert dimension over `expert x fsdp` and keep `embed`
# whole; the LM head shards `vocab` over every axis and keeps `embed` whole; the embedding table
# shards its embedding columns, so a lookup needs only the token ids of the others).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # activations: logits over the LM head's vocabulary shards (before the rows take fsdp; their rows
    # then fall back to data); rows over data x fsdp, positions over expert (sequence parallel outside
    # the MoE)
    ("act_vocab", ("tensor", "fsdp", "expert")),
    ("batch", ("data", "fsdp")),
    ("batch", "data"),
    ("length", "expert"),
    ("kv_length", None),
    ("cache_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    # parameters
    ("layers", None),
    ("vocab", ("tensor", "fsdp", "expert")),
    ("table_vocab", None),
    ("table_embed", ("tensor", "fsdp", "expert")),
    ("expert", ("expert", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("moe_mlp", "tensor"),
    ("router_experts", None),
    ("norm", None),
)

# The layout before expert parallelism, kept as the baseline that `benchmarks/comm_16b.py` measures
# against: positions unsharded, experts over `expert` only (embed over fsdp), vocab over `tensor`, the
# embedding table as the LM head.
GSPMD_BASELINE_RULES: tuple[tuple[str, Any], ...] = tuple(
    (name, {"length": None, "vocab": "tensor", "act_vocab": "tensor", "expert": "expert", "table_vocab": "tensor",
            "table_embed": "fsdp"}.get(name, axes))
    for name, axes in LOGICAL_AXIS_RULES)


def axis_rules(parallelism: str = "expert_parallel") -> tuple[tuple[str, Any], ...]:
  """The rules table of a `ModelConfig.parallelism` scheme."""
  if parallelism not in PARALLELISMS:
    raise InputError(f"parallelism must be one of {PARALLELISMS}, got {parallelism!r}")
  return GSPMD_BASELINE_RULES if parallelism == "gspmd" else LOGICAL_AXIS_RULES


def fitted_spec(logical_names: Sequence[str], shape: Sequence[int]) -> PartitionSpec:
  """The context rules' `PartitionSpec` for an array of `shape` on the context mesh, without size-1
  mesh axes and without the trailing mesh axes of any dimension they do not divide (that dimension is
  replicated over them: a batch of 1 on an `fsdp` mesh)."""
  sizes = dict(jax.sharding.get_abstract_mesh().shape)
  entries = []
  for entry, size in zip(nn.logical_to_mesh_axes(logical_names), shape):
    axes = [a for a in mesh_axes_of(entry) if sizes[a] > 1]
    while axes and size % int(np.prod([sizes[a] for a in axes])):
      axes.pop()
    entries.append(tuple(axes) or None)
  return PartitionSpec(*entries)


def param_axes(logical_names: Sequence[str], dim: int) -> tuple[str, ...]:
  """The mesh axes (of size > 1 on the context mesh) that the context rules give dimension `dim` of a
  parameter with axes `logical_names` (resolved together: a rule whose mesh axes another dimension took
  is skipped)."""
  sizes = dict(jax.sharding.get_abstract_mesh().shape)
  return tuple(a for a in mesh_axes_of(nn.logical_to_mesh_axes(logical_names)[dim]) if sizes[a] > 1)


def flat_axes(spec_entries: Sequence[Any]) -> tuple[str, ...]:
  """All mesh axes of some `PartitionSpec` entries, in order (e.g. the token axes of `(batch, length)`)."""
  return sum(map(mesh_axes_of, spec_entries), ())


def mesh_axes_of(spec_entry: Any) -> tuple[str, ...]:
  """The mesh axes of one `PartitionSpec` entry (None, a name, or a tuple of names)."""
  if spec_entry is None:
    return ()
  return (spec_entry,) if isinstance(spec_entry, str) else tuple(spec_entry)


def parse_mesh(spec: str) -> dict[str, int]:
  """`"fsdp=8,expert=4"` -> `{"fsdp": 8, "expert": 4}` (command-line mesh flags)."""
  shape = {}
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, sep, size = item.partition("=")
    if not sep or not size.strip().lstrip("-").isdigit():
      raise InputError(f"mesh {spec!r}: expected axis=size[,axis=size...] with axes from {MESH_AXES}, got {item!r}")
    shape[name.strip()] = int(size)
  return shape


def make_mesh(shape: dict[str, int] | Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `MESH_AXES`. `shape` maps axis name -> size (missing axes = 1, one axis may be -1 to
  take the remaining devices); default: every device on `fsdp`."""
  devices = list(devices if devices is not None else jax.devices())
  if shape is None:
    shape = {"fsdp": len(devices)}
  if not isinstance(shape, dict):
    shape = dict(zip(MESH_AXES, shape))
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise InputError(f"unknown mesh axis name(s) {sorted(unknown)}; expected a subset of {MESH_AXES}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise InputError(f"mesh {shape}: axis sizes must be positive, one of them may be -1 (the rest)")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes and len(devices) % fixed == 0:
    sizes[sizes.index(-1)] = len(devices) // fixed
  if int(np.prod(sizes)) != len(devices):
    raise InputError(f"mesh {shape} does not fit the {len(devices)} available device(s): the axis sizes "
                     f"multiply to {fixed}{' times the rest' if -1 in sizes else ''}")
  device_grid = np.asarray(devices).reshape(sizes)
  return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, parallelism: str = "expert_parallel"):
  """Activates `mesh` and the logical axis rules, so logical constraints inside the model resolve."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules(parallelism)):
    yield


def logical_to_sharding(logical_specs: Any, mesh: Mesh, parallelism: str = "expert_parallel") -> Any:
  """Maps a pytree of logical `PartitionSpec`s to `NamedSharding`s on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, axis_rules(parallelism))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
