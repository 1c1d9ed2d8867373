"""Atoms as weight-space steering vectors (paper step 5).

An atom d_j (a row of the dictionary, in the projected space) becomes a
LoRA-shaped delta v_j by `projection.unproject`. Steering is a pytree add:

  θ_new = θ − Σ_j c_j · v_j        (jax.tree.map over the LoRA tree)

so c_j > 0 is a gradient-descent step on the documents the atom groups
("toward" their behaviour) once the atom is oriented so that its strongest
documents have positive codes, and c_j < 0 is "away".
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gatoms_jax.method import projection
from gatoms_jax.core.models import lora as lora_lib

PyTree = Any


def tree_norm(tree: PyTree) -> float:
  """Frobenius norm over every leaf."""
  return float(
    jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))
  )


def orientation(codes_column: np.ndarray, top_n: int = 20) -> float:
  """+1 or −1 so that the atom's top-|code| documents have positive codes."""
  col = np.asarray(codes_column, np.float64)
  top = np.argsort(-np.abs(col), kind='stable')[:top_n]
  return -1.0 if col[top].sum() < 0 else 1.0


class AtomDirections:
  """Unprojected, oriented and normalised LoRA deltas for dictionary atoms.

  Args:
    spec: the projection used to build the dictionary's input rows.
    dictionary: (K × k_total) atoms.
    template: a LoRA tree giving the structure (e.g. the fine-tuned adapter).
    codes: (N × K) codes, used to orient each atom (optional).
    mode: 'paper' (× sqrt λ), 'natural' (× 1/sqrt λ) or 'none'.
    normalize: scale every delta to unit Frobenius norm (True), so that the
      steering coefficient alone sets the step size.
    top_n: documents used for orientation.
  """

  def __init__(
    self,
    spec: projection.ProjectionSpec,
    dictionary: np.ndarray,
    template: PyTree,
    *,
    codes: Optional[np.ndarray] = None,
    mode: str = 'paper',
    normalize: bool = True,
    top_n: int = 20,
  ):
    self.spec = spec
    self.dictionary = np.asarray(dictionary)
    self.template = template
    self.codes = codes
    self.mode = mode
    self.normalize = normalize
    self.top_n = top_n
    self._cache: dict[Any, PyTree] = {}

  def from_vector(self, vector: np.ndarray) -> PyTree:
    """Delta tree of any projected-space vector (k_total,)."""
    row = projection.unproject_row(self.spec, vector, self.mode)
    if self.normalize:
      norm = float(np.linalg.norm(row))
      if norm == 0:
        raise ValueError('the direction unprojects to zero')
      row = row / norm
    return lora_lib.unflatten(jnp.asarray(row, jnp.float32), self.template)

  def delta(self, atom: int) -> PyTree:
    """v_j for atom j (oriented when codes were given)."""
    if atom not in self._cache:
      sign = 1.0
      if self.codes is not None:
        sign = orientation(self.codes[:, atom], self.top_n)
      self._cache[atom] = self.from_vector(sign * self.dictionary[atom])
    return self._cache[atom]

  def combined(self, atoms: Sequence[int]) -> PyTree:
    """Unit-norm Σ_j v_j of several (oriented, unit-norm) atom deltas."""
    total = None
    for atom in atoms:
      d = self.delta(int(atom))
      total = d if total is None else jax.tree.map(jnp.add, total, d)
    if total is None:
      raise ValueError('combined() needs at least one atom')
    norm = tree_norm(total)
    if norm == 0:
      raise ValueError(f'atoms {list(atoms)} cancel out')
    return jax.tree.map(lambda x: x / norm, total)

  def random(self, seed: int) -> PyTree:
    """A random unit direction in the PROJECTED space, unprojected like an atom
    (so it shares the atoms' curvature profile)."""
    key = ('random', seed)
    if key not in self._cache:
      rng = np.random.default_rng(seed)
      v = rng.standard_normal(self.spec.k_total)
      self._cache[key] = self.from_vector(v / np.linalg.norm(v))
    return self._cache[key]


def add_scaled(lora: PyTree, delta: PyTree, coefficient: float) -> PyTree:
  """lora − coefficient · delta."""
  return jax.tree.map(
    lambda p, d: p - coefficient * d.astype(p.dtype), lora, delta
  )


def steer(
  lora: PyTree,
  coefficients: Mapping[int, float],
  directions: AtomDirections,
) -> PyTree:
  """lora − Σ_j c_j v_j for {atom j: c_j}; {} or all-zero c is the identity."""
  out = lora
  for atom, c in coefficients.items():
    if c:
      out = add_scaled(out, directions.delta(int(atom)), float(c))
  return out


def export_steered_adapter(
  directory: str,
  lora: PyTree,
  lora_config: Any,
  base_model_name: str,
) -> str:
  """Writes a (steered) LoRA tree as a PEFT adapter servable by PEFT/vLLM."""
  from gatoms_jax.core.models.peft import save_peft_adapter

  os.makedirs(directory, exist_ok=True)
  save_peft_adapter(directory, lora, lora_config, base_model_name)
  return directory
