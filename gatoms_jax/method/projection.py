"""Projection of LoRA gradients onto the EK-FAC eigenbasis, and its inverse.

For every LoRA matrix m (paper step 3): rotate a gradient G (i × o, our
in/out layout) into the Kronecker eigenbasis R = Q_Aᵀ G Q_S, keep the top-k
entries by eigenvalue (K-FAC λ_A⊗λ_S, the paper's choice, or the EK-FAC Λ),
and scale each kept entry by 1/sqrt(|λ| + ε). Concatenating the modules gives
one k_total-dim row per document.

`unproject` maps any k_total vector back to a LoRA-shaped tree: scatter each
module's k entries into the eigenbasis, undo the scaling (× sqrt(|λ| + ε), the
paper's variant) or apply it once more (× 1/sqrt(|λ| + ε), a natural-gradient
variant), and rotate back (Q_A · R · Q_Sᵀ). With k equal to the module size,
unproject(project(g)) == g exactly (orthogonal Q's).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from gatoms_jax.core import sharding
from gatoms_jax.core.io import save_safetensors, write_json
from gatoms_jax.method.curvature import Factors

Array = jax.Array
PyTree = Any

SELECTIONS = ('kfac', 'ekfac')
UNPROJECTIONS = ('paper', 'natural', 'none')


@dataclasses.dataclass
class ProjectionSpec:
  """Everything needed to project and unproject, per LoRA leaf.

  Attributes:
    leaves: leaf paths in row order, with shapes (the GradientStore layout).
    q_a, q_s: eigenvectors (columns) per leaf.
    index: flat indices (into i·o) of the kept entries, per leaf.
    eigenvalues: the eigenvalue λ of every kept entry, per leaf.
    epsilon: ε in 1/sqrt(|λ| + ε).
    select_by, scale_by: 'kfac' or 'ekfac'.
  """

  leaves: list[tuple[str, tuple[int, int]]]
  q_a: dict
  q_s: dict
  index: dict
  eigenvalues: dict
  epsilon: float
  select_by: str
  scale_by: str

  @property
  def k_total(self) -> int:
    return int(sum(len(self.index[p]) for p, _ in self.leaves))

  def offsets(self) -> dict[str, tuple[int, int]]:
    """(start, stop) of each leaf's block in a projected row."""
    out, start = {}, 0
    for path, _ in self.leaves:
      k = len(self.index[path])
      out[path] = (start, start + k)
      start += k
    return out

  def scale(self, path: str) -> np.ndarray:
    return 1.0 / np.sqrt(np.abs(self.eigenvalues[path]) + self.epsilon)

  def save(self, directory: str) -> None:

    os.makedirs(directory, exist_ok=True)
    tensors = {}
    for path, _ in self.leaves:
      tensors[f'{path}/QA'] = np.ascontiguousarray(self.q_a[path], np.float32)
      tensors[f'{path}/QS'] = np.ascontiguousarray(self.q_s[path], np.float32)
      tensors[f'{path}/index'] = np.asarray(self.index[path], np.int64)
      tensors[f'{path}/eigenvalues'] = np.asarray(
        self.eigenvalues[path], np.float64
      )
    save_safetensors(os.path.join(directory, 'projection.safetensors'), tensors)
    meta = {
      'leaves': [[p, list(s)] for p, s in self.leaves],
      'epsilon': self.epsilon,
      'select_by': self.select_by,
      'scale_by': self.scale_by,
      'k_total': self.k_total,
    }
    write_json(os.path.join(directory, 'projection.json'), meta)

  @classmethod
  def load(cls, directory: str) -> 'ProjectionSpec':
    from safetensors.numpy import load_file

    with open(os.path.join(directory, 'projection.json')) as f:
      meta = json.load(f)
    t = load_file(os.path.join(directory, 'projection.safetensors'))
    leaves = [(p, tuple(s)) for p, s in meta['leaves']]
    get = lambda name: {p: t[f'{p}/{name}'] for p, _ in leaves}
    return cls(
      leaves=leaves,
      q_a=get('QA'),
      q_s=get('QS'),
      index=get('index'),
      eigenvalues=get('eigenvalues'),
      epsilon=meta['epsilon'],
      select_by=meta['select_by'],
      scale_by=meta['scale_by'],
    )


def make_spec(
  factors: Factors,
  layout: Sequence[Any],
  *,
  top_k: int = 50,
  select_by: str = 'kfac',
  scale_by: str = 'kfac',
  epsilon: float = 1e-6,
) -> ProjectionSpec:
  """Chooses the top-k eigen-entries per LoRA matrix.

  Args:
    factors: eigendecomposed (and, for 'ekfac', corrected) factors.
    layout: leaves (objects with .path and .shape, or (path, shape)) in the
      order of the gradient rows.
    top_k: entries kept per matrix (capped at i·o); 0 or less keeps all.
    select_by: rank entries by 'kfac' λ_A⊗λ_S or 'ekfac' Λ.
    scale_by: eigenvalues used in the 1/sqrt(|λ| + ε) scaling.
    epsilon: ε.
  """
  for name, value in (('select_by', select_by), ('scale_by', scale_by)):
    if value not in SELECTIONS:
      raise ValueError(f'{name} must be one of {SELECTIONS}, got {value!r}')
    if value == 'ekfac' and not factors.corrected:
      raise ValueError(
        f'{name}=ekfac needs corrected eigenvalues (run the correction)'
      )
  leaves, index, eig = [], {}, {}
  for leaf in layout:
    path, shape = (
      (leaf.path, tuple(leaf.shape)) if hasattr(leaf, 'path') else leaf
    )
    kfac = factors.kfac_eigenvalues(path).reshape(-1)
    ranking = (
      kfac if select_by == 'kfac' else factors.corrected[path].reshape(-1)
    )
    scaling = (
      kfac if scale_by == 'kfac' else factors.corrected[path].reshape(-1)
    )
    k = ranking.size if top_k <= 0 else min(top_k, ranking.size)
    # Stable descending order: ties keep the lower flat index first.
    order = np.argsort(-ranking, kind='stable')[:k]
    leaves.append((path, tuple(int(s) for s in shape)))
    index[path] = order.astype(np.int64)
    eig[path] = scaling[order]
  return ProjectionSpec(
    leaves=leaves,
    q_a=dict(factors.q_a),
    q_s=dict(factors.q_s),
    index=index,
    eigenvalues=eig,
    epsilon=epsilon,
    select_by=select_by,
    scale_by=scale_by,
  )


def _device_spec(spec: ProjectionSpec):
  f32 = lambda d: {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}
  scales = {p: jnp.asarray(spec.scale(p), jnp.float32) for p, _ in spec.leaves}
  index = {k: jnp.asarray(v, jnp.int32) for k, v in spec.index.items()}
  return f32(spec.q_a), f32(spec.q_s), index, scales


def _project_rows(rows, leaves, q_a, q_s, index, scales):
  out, offset = [], 0
  for path, (i, o) in leaves:
    g = rows[:, offset : offset + i * o].reshape(-1, i, o)
    offset += i * o
    rotated = jnp.einsum('ip,nio,oq->npq', q_a[path], g, q_s[path])
    out.append(
      rotated.reshape(rows.shape[0], -1)[:, index[path]] * scales[path]
    )
  return jnp.concatenate(out, axis=1)


class Projector:
  """Jitted projection of gradient rows (n × d) → (n × k_total), sharded."""

  def __init__(self, spec: ProjectionSpec, mesh=None):
    self.spec = spec
    self.mesh = mesh or sharding.make_mesh()
    rep = sharding.replicated(self.mesh)
    rows = sharding.row_sharding(self.mesh, 2)
    self._params = jax.device_put(_device_spec(spec), rep)
    leaves = tuple(spec.leaves)
    self._fn = jax.jit(
      lambda r, p: _project_rows(r, leaves, *p),
      in_shardings=(rows, rep),
      out_shardings=rows,
    )
    self._n_dev = sharding.axis_size(self.mesh, sharding.DATA_AXIS)

  def __call__(self, rows: np.ndarray) -> np.ndarray:
    padded, n = sharding.shard_rows(np.asarray(rows, np.float32), self.mesh)
    return sharding.to_host(self._fn(padded, self._params))[:n]


def project_chunks(
  spec: ProjectionSpec,
  chunks: Iterable[tuple[Sequence[str], np.ndarray]],
  *,
  mesh=None,
  n_chunks: Optional[int] = None,
  progress: bool = True,
) -> tuple[list[str], np.ndarray]:
  """Projects every chunk; returns (ids, G n × k_total float32)."""
  projector = Projector(spec, mesh)
  ids, blocks = [], []
  for chunk_ids, rows in tqdm(
    chunks, total=n_chunks, desc='projection', disable=not progress
  ):
    ids.extend(chunk_ids)
    blocks.append(projector(rows))
  if not blocks:
    return ids, np.zeros((0, spec.k_total), np.float32)
  return ids, np.concatenate(blocks)


def unproject(
  spec: ProjectionSpec, vector: np.ndarray, mode: str = 'paper'
) -> dict[str, np.ndarray]:
  """Maps a k_total vector back to {leaf path: (i × o) matrix}.

  Args:
    spec: the projection.
    vector: (k_total,) e.g. a dictionary atom.
    mode: 'paper' undoes the preconditioning (× sqrt(|λ| + ε)); 'natural'
      applies it again (× 1/sqrt(|λ| + ε)); 'none' rotates back only.
  """
  if mode not in UNPROJECTIONS:
    raise ValueError(f'mode must be one of {UNPROJECTIONS}, got {mode!r}')
  vector = np.asarray(vector, np.float64)
  if vector.shape != (spec.k_total,):
    raise ValueError(f'expected a ({spec.k_total},) vector, got {vector.shape}')
  out = {}
  for path, (start, stop) in spec.offsets().items():
    i, o = dict(spec.leaves)[path]
    scale = spec.scale(path)
    z = vector[start:stop]
    if mode == 'paper':
      z = z / scale
    elif mode == 'natural':
      z = z * scale
    rotated = np.zeros(i * o)
    rotated[spec.index[path]] = z
    rotated = rotated.reshape(i, o)
    q_a = np.asarray(spec.q_a[path], np.float64)
    q_s = np.asarray(spec.q_s[path], np.float64)
    out[path] = (q_a @ rotated @ q_s.T).astype(np.float32)
  return out


def unproject_row(
  spec: ProjectionSpec, vector: np.ndarray, mode='paper'
) -> np.ndarray:
  """`unproject` flattened to a d-dim row in the gradient-row layout."""
  mats = unproject(spec, vector, mode)
  return np.concatenate([mats[p].reshape(-1) for p, _ in spec.leaves])
