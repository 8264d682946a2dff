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

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# logical axis -> mesh axis (or axes, or None = replicated). First match wins.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("moe_mlp", "tensor"),
    ("router_experts", None),
    ("norm", None),
)


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
    raise ValueError(f"unknown mesh axis name(s) {sorted(unknown)}; expected a subset of {MESH_AXES}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {shape}")
  if -1 in sizes:
    rest = int(np.prod([s for s in sizes if s != -1]))
    sizes[sizes.index(-1)] = len(devices) // rest
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"{len(devices)} are available")
  device_grid = np.asarray(devices).reshape(sizes)
  return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def use_mesh(mesh: Mesh):
  """Activates `mesh` and the logical axis rules, so logical constraints inside the model resolve."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    yield


def logical_to_sharding(logical_specs: Any, mesh: Mesh) -> Any:
  """Maps a pytree of logical `PartitionSpec`s to `NamedSharding`s on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
