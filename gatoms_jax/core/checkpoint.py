"""Orbax checkpoint helpers: atomic pytree files and a resumable train state.

Both use the Orbax V1 API (`orbax.checkpoint.v1`):

* `save_pytree` / `load_pytree` write one pytree (e.g. the fine-tuned LoRA
  tree) to a directory with `ocp.save` and read it back with `ocp.load`
  (`abstract_state` fixes structure, dtypes and shardings). `ocp.save` commits
  a new directory atomically (temporary name, then rename), but overwriting
  deletes the old directory first; `save_pytree` therefore writes a sibling
  and swaps it in, so after a crash at any point `load_pytree` finds either
  the old or the new tree, never neither.
* `TrainCheckpointer` wraps `ocp.training.Checkpointer` for training loops
  (paper step 1: the LoRA fine-tune whose adapter every later step uses): one
  step directory per save, the latest `keep` kept, uncommitted temporary
  directories of a killed run cleaned up on open, and a JSON
  `custom_metadata` stored with each step (history, config fingerprint).

Leaves may be jax arrays, numpy arrays, Python ints/floats and strings (the
leaf types Orbax V1 registers); numpy scalars such as `np.int64(3)` are not
registered, so store counters as Python ints.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Optional

import jax
import numpy as np
from absl import logging
from orbax.checkpoint import v1 as ocp

from gatoms_jax.core import distributed
from gatoms_jax.core import io as io_lib

PyTree = Any

_OLD_SUFFIX = '.old'


def abstract_like(tree: PyTree) -> PyTree:
  """The abstract tree `ocp.load` restores `tree`'s structure into.

  jax arrays become `ShapeDtypeStruct`s carrying their sharding (so a restored
  array lands where the original lived); numpy arrays and Python scalars are
  their own abstract values.

  Args:
    tree: a concrete pytree (e.g. a freshly initialised train state).

  Returns:
    A tree of the same structure with abstract leaves.
  """

  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, np.generic):
      raise TypeError(
        f'numpy scalar {x!r} ({type(x).__name__}) cannot be checkpointed by '
        'Orbax; use a Python int/float or a 0-d array'
      )
    return x

  return jax.tree.map(leaf, tree)


def save_pytree(
  path: str | os.PathLike[str],
  tree: PyTree,
  *,
  custom_metadata: Optional[dict] = None,
) -> None:
  """Writes `tree` to the directory `path`, replacing it atomically.

  Args:
    path: the checkpoint directory (created; an existing one is replaced).
    tree: the pytree.
    custom_metadata: optional JSON-serialisable dict stored alongside.
  """
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  _recover(path)
  name = os.path.basename(path)
  # Every process of a multi-process run saves into the same staging
  # directory (Orbax coordinates who writes what); one name per target.
  staging = os.path.join(parent, f'.{name}.new')
  if distributed.is_writer() and os.path.exists(staging):
    shutil.rmtree(staging)  # left by a killed save
  distributed.barrier(f'save_pytree:{path}:staging')
  ocp.save(staging, tree, custom_metadata=custom_metadata)
  if distributed.is_writer():
    old = path + _OLD_SUFFIX
    if os.path.exists(path):
      os.replace(path, old)
    os.replace(staging, path)
    io_lib.fsync_dir(parent)
    if os.path.exists(old):
      shutil.rmtree(old)
  distributed.barrier(f'save_pytree:{path}:done')


def load_pytree(
  path: str | os.PathLike[str], abstract_tree: Optional[PyTree] = None
) -> PyTree:
  """Reads a tree written by `save_pytree`.

  Args:
    path: the checkpoint directory.
    abstract_tree: the structure to restore into (see `abstract_like`);
      None restores as saved (dict keys come back as strings).

  Returns:
    The tree.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
  """
  path = os.path.abspath(os.fspath(path))
  _recover(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No checkpoint directory at {path}')
  return ocp.load(path, abstract_tree)


def pytree_custom_metadata(path: str | os.PathLike[str]) -> dict:
  """The `custom_metadata` given to `save_pytree` ({} if none)."""
  path = os.path.abspath(os.fspath(path))
  _recover(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No checkpoint directory at {path}')
  return dict(ocp.metadata(path).custom_metadata or {})


def _recover(path: str) -> None:
  """Finishes a swap that a crash interrupted between its two renames."""
  old = path + _OLD_SUFFIX
  if distributed.is_writer() and os.path.exists(old):
    if os.path.exists(path):
      shutil.rmtree(old)
    else:
      logging.warning('Recovering %s from %s (interrupted save)', path, old)
      os.replace(old, path)


class TrainCheckpointer:
  """Numbered train-state checkpoints in one directory (resumable loops).

  The caller decides when to save (`save(step, ...)` always writes); the
  latest `keep` steps are kept. Typical use::

    ckpt = TrainCheckpointer(directory, keep=2)
    if ckpt.latest_step is not None:
      state, meta = ckpt.restore(abstract_like(initial_state))
    ...
    ckpt.save(step, state, custom_metadata={'history': history})
    ckpt.close()

  Args:
    directory: root directory; step s lives in `directory/s`.
    keep: number of most recent checkpoints kept (older ones are deleted).
  """

  def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2):
    if keep < 1:
      raise ValueError(f'keep must be >= 1, got {keep}')
    self.directory = os.path.abspath(os.fspath(directory))
    policies = ocp.training.preservation_policies
    # A killed save leaves a temporary directory behind; Orbax never lists it
    # as a checkpoint, and cleanup_tmp_directories deletes it here.
    self._ckptr = ocp.training.Checkpointer(
      self.directory,
      preservation_policy=policies.LatestN(n=keep),
      cleanup_tmp_directories=True,
    )

  @property
  def steps(self) -> list[int]:
    """Committed checkpoint steps, ascending."""
    return [c.step for c in self._ckptr.checkpoints]

  @property
  def latest_step(self) -> Optional[int]:
    """The newest committed step, or None."""
    latest = self._ckptr.latest
    return None if latest is None else int(latest.step)

  def save(
    self, step: int, state: PyTree, *, custom_metadata: Optional[dict] = None
  ) -> None:
    """Writes `state` as checkpoint `step` (blocking; overwrites that step)."""
    self._ckptr.save(
      int(step),
      state,
      force=True,
      overwrite=True,
      custom_metadata=custom_metadata,
    )

  def restore(
    self, abstract_state: PyTree, step: Optional[int] = None
  ) -> tuple[PyTree, dict]:
    """Loads a checkpoint.

    Args:
      abstract_state: the structure to restore into (see `abstract_like`).
      step: the step to load (default: the latest).

    Returns:
      (state, custom_metadata); the metadata is {} if none was saved.

    Raises:
      FileNotFoundError: there is no checkpoint (at `step`).
    """
    if step is None:
      step = self.latest_step
      if step is None:
        raise FileNotFoundError(f'No checkpoint in {self.directory}')
    elif step not in self.steps:
      raise FileNotFoundError(
        f'No checkpoint for step {step} in {self.directory}'
      )
    state = self._ckptr.load(step, abstract_state)
    meta = self._ckptr.metadata(step).custom_metadata or {}
    return state, dict(meta)

  def close(self) -> None:
    """Waits for pending work and releases Orbax's resources."""
    self._ckptr.close()

  def __enter__(self) -> 'TrainCheckpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
