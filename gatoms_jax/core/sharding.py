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


# ---------------------------------------------------------------------------
# Meshes from the config and parameter sharding rules.

MODEL_AXIS = 'model'

# Logical axes of each weight's trailing two dims, by the leaf's last two
# path names: the kernels are (in, out), lora_a (in, r), lora_b (r, out).
_EMBED, _WIDE, _VOCAB = 'embed', 'wide', 'vocab'
_IN_EMBED = ('q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj')
_OUT_EMBED = ('o_proj', 'down_proj')
# Logical axis → mesh axis: FSDP splits the model width over 'data'; tensor
# parallelism splits heads, the MLP width and the vocabulary over 'model'.
LOGICAL_TO_MESH = {_EMBED: DATA_AXIS, _WIDE: MODEL_AXIS, _VOCAB: MODEL_AXIS}


def mesh_from_shape(
  shape: dict, devices: Sequence[jax.Device] | None = None
) -> jax.sharding.Mesh:
  """A mesh of named axis sizes, e.g. {'data': -1, 'model': 1}.

  One size may be -1 (the devices left over). Uses `jax.make_mesh` (a
  device order suited to the hardware) over all devices, else an explicit
  reshape of `devices`.
  """
  names = tuple(shape)
  devices = list(devices if devices is not None else jax.devices())
  sizes = [int(s) for s in shape.values()]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh shape {shape}: sizes ≥ 1, at most one -1')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
        f'mesh shape {shape}: {len(devices)} devices are not a multiple of '
        f'{known}'
      )
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
      f'mesh shape {shape} needs {int(np.prod(sizes))} devices; '
      f'{len(devices)} given'
    )
  if len(devices) == len(jax.devices()):
    # Auto axes: XLA propagates the parameters' shardings through the
    # stages' unannotated code (Explicit axes would demand annotations).
    auto = (jax.sharding.AxisType.Auto,) * len(names)
    return jax.make_mesh(tuple(sizes), names, axis_types=auto, devices=devices)
  return jax.sharding.Mesh(np.array(devices).reshape(sizes), names)


def _logical_axes(path: str, ndim: int) -> tuple:
  """Logical names of a parameter's axes from its path (None: replicated)."""
  parts = path.split('.')
  leaf, module = parts[-1], parts[-2] if len(parts) > 1 else ''
  lead = (None,) * max(ndim - 2, 0)  # e.g. a scanned stack's layer axis
  if leaf == 'embed_tokens' and ndim >= 2:
    return lead + (_VOCAB, _EMBED)
  if leaf == 'lm_head' and ndim >= 2:
    return lead + (_EMBED, _VOCAB)
  if ndim < 2 or module not in _IN_EMBED + _OUT_EMBED:
    return (None,) * ndim  # norms, biases, anything unknown: replicated
  into, out = (_EMBED, _WIDE) if module in _IN_EMBED else (_WIDE, _EMBED)
  if leaf == 'kernel':
    return lead + (into, out)
  if leaf == 'lora_a':
    return lead + (into, None)
  if leaf == 'lora_b':
    return lead + (None, out)
  return (None,) * ndim


def param_spec(path: str, shape: Sequence[int], mesh: jax.sharding.Mesh):
  """The PartitionSpec of one parameter on `mesh`.

  A logical axis goes to its mesh axis (`LOGICAL_TO_MESH`) when the mesh has
  that axis, of size > 1, dividing the dimension; otherwise it stays whole.
  """
  spec = []
  for size, logical in zip(shape, _logical_axes(path, len(shape))):
    axis = LOGICAL_TO_MESH.get(logical)
    n = mesh.shape.get(axis, 1) if axis else 1
    spec.append(axis if n > 1 and size % n == 0 else None)
  return jax.P(*spec)


def param_shardings(tree, mesh: jax.sharding.Mesh):
  """NamedShardings for every leaf of a parameter tree (frozen base state,
  LoRA tree, or an optimiser state whose leaves mirror the LoRA tree's
  paths, e.g. optax's mu / nu; scalars such as step counts replicate)."""

  def one(path, x):
    name = '.'.join(
      str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
      for k in path
    )
    name = '.'.join(p for p in name.split('.') if p != 'value')
    return NamedSharding(mesh, param_spec(name, np.shape(x), mesh))

  return jax.tree_util.tree_map_with_path(one, tree)
