"""Device meshes and row sharding shared by every sharded stage.

One axis name per kind of parallelism: "data" for documents/rows (gradients,
factor pass, dictionary statistics) and "modules" for the stacked Kronecker
factors of the eigensolver. The same code runs on 1 device, N fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), an accelerator host, or
several hosts after `jax.distributed.initialize()`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

Array = jax.Array

DATA_AXIS = 'data'
MODULE_AXIS = 'modules'


def make_mesh(
  axis_name: str = DATA_AXIS, devices: Sequence[jax.Device] | None = None
) -> jax.sharding.Mesh:
  """Returns a 1-D mesh over `devices` (default: all devices)."""
  devices = list(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(np.array(devices), (axis_name,))


def axis_size(mesh: jax.sharding.Mesh, axis_name: str) -> int:
  return mesh.shape[axis_name]


def pad_rows(x: np.ndarray | Array, multiple: int) -> tuple[np.ndarray, int]:
  """Pads axis 0 with zeros up to a multiple; returns (padded, n_real_rows)."""
  n = x.shape[0]
  pad = (-n) % multiple
  if pad:
    widths = [(0, pad)] + [(0, 0)] * (x.ndim - 1)
    x = np.pad(np.asarray(x), widths)
  return x, n


def row_sharding(
  mesh: jax.sharding.Mesh, ndim: int, axis_name: str = DATA_AXIS
):
  """Sharding that splits axis 0 over `axis_name` and replicates the rest."""
  return NamedSharding(mesh, jax.P(axis_name, *([None] * (ndim - 1))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, jax.P())


def shard_rows(
  x: np.ndarray | Array, mesh: jax.sharding.Mesh, axis_name: str = DATA_AXIS
) -> tuple[Array, int]:
  """Pads `x` to a multiple of the axis size and places it row-sharded.

  Returns:
    (sharded array, number of real rows before padding).
  """
  padded, n = pad_rows(np.asarray(x), axis_size(mesh, axis_name))
  return jax.device_put(padded, row_sharding(mesh, padded.ndim, axis_name)), n


def to_host(x) -> np.ndarray:
  """The whole value of `x` as a numpy array, on every process.

  A `jax.Array` sharded over devices of other processes (a multi-process
  mesh) cannot be read with `np.asarray`; it is all-gathered first, so every
  process gets the same global value. Addressable arrays, numpy arrays and
  Python scalars are converted directly.
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def tree_to_host(tree):
  """`to_host` on every leaf of a pytree."""
  return jax.tree.map(to_host, tree)
