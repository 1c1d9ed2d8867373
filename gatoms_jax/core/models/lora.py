"""LoRA as its own pytree beside the frozen weights.

`split(model)` returns a static `ModelDef`, the frozen base state and the LoRA
parameters as a plain nested dict (`{'layers': {3: {'self_attn': {'q_proj':
{'lora_a': i×r, 'lora_b': r×o}}}}}`). Gradients, Kronecker factors, atom
deltas and steering all use exactly this tree; `merge` rebuilds the module
inside a jitted function (split once, merge inside jit: the pattern the Flax
performance guide recommends).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatoms_jax.core.models.config import ModelConfig
from gatoms_jax.core.models.transformer import LoraConfig, Transformer
from gatoms_jax.core.models.transformer import set_layer_execution

Array = jax.Array
PyTree = Any
LoraTree = dict


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """Static description of a split model (hashable; safe as a jit static).

  Hashes and compares by value (graph definition, treedef and configs are all
  value-hashable), so two splits of equal models share jit executables.

  Attributes:
    graphdef: the NNX graph definition.
    lora_treedef: treedef of the LoRA nnx.State (to rebuild it from a dict).
    config: the architecture.
    lora_config: the adapter's rank/alpha/targets (None: no adapter).
  """

  graphdef: Any
  lora_treedef: Any
  config: ModelConfig
  lora_config: Optional[LoraConfig]


def _key_str(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_str(path) -> str:
  """'layers.3.self_attn.q_proj.lora_a' from a jax key path."""
  parts = [_key_str(k) for k in path]
  return '.'.join(p for p in parts if p != 'value')


def split(model: Transformer) -> tuple[ModelDef, PyTree, LoraTree]:
  """Splits a model into (static def, frozen base state, LoRA dict)."""
  graphdef, lora_state, base_state = nnx.split(model, nnx.LoRAParam, ...)
  lora = nnx.to_pure_dict(lora_state)
  state_paths = [
    path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(lora_state)[0]
  ]
  if state_paths != [p for p, _ in lora_leaves(lora)]:
    raise AssertionError('LoRA state and dict disagree on leaf order')
  treedef = jax.tree_util.tree_structure(lora_state)
  mdef = ModelDef(graphdef, treedef, model.config, model.lora_config)
  return mdef, base_state, lora


def with_layer_execution(
  mdef: ModelDef, base: PyTree, lora: LoraTree, *, scan_layers: bool
) -> ModelDef:
  """`mdef` whose model runs its layers scanned or unrolled (same weights,
  same results, same remat policy); `base` and `lora` serve both."""
  model = merge(mdef, base, lora)
  set_layer_execution(model, scan_layers=scan_layers, remat=model.remat)
  return split(model)[0]


def merge(mdef: ModelDef, base: PyTree, lora: LoraTree) -> Transformer:
  """Rebuilds the module from its parts (cheap; call inside jit)."""
  if mdef.lora_config is None:
    return nnx.merge(mdef.graphdef, base)
  lora_state = jax.tree_util.tree_unflatten(
    mdef.lora_treedef, jax.tree_util.tree_leaves(lora)
  )
  return nnx.merge(mdef.graphdef, lora_state, base)


def lora_leaves(lora: LoraTree) -> list[tuple[str, Array]]:
  """(path, array) for every LoRA matrix, in the canonical (flatten) order."""
  flat = jax.tree_util.tree_flatten_with_path(lora)[0]
  return [(path_str(p), x) for p, x in flat]


def lora_modules(lora: LoraTree) -> list[str]:
  """Module paths that carry an adapter, e.g. 'layers.0.self_attn.q_proj'."""
  seen = []
  for path, _ in lora_leaves(lora):
    module = path.rsplit('.', 1)[0]
    if module not in seen:
      seen.append(module)
  return seen


def num_params(lora: LoraTree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(lora))


def flatten(lora: LoraTree) -> Array:
  """Concatenates every leaf (row-major) in canonical order into one vector.

  Works on batched trees too: leading axes before each leaf's own 2 axes are
  kept, e.g. per-example gradients (n, i, r) → (n, d).
  """
  leaves = jax.tree_util.tree_leaves(lora)
  lead = leaves[0].shape[:-2]
  return jnp.concatenate([x.reshape(*lead, -1) for x in leaves], axis=-1)


def unflatten(vector: Array, template: LoraTree) -> LoraTree:
  """Inverse of `flatten` for an unbatched vector, using a tree's shapes."""
  leaves, treedef = jax.tree_util.tree_flatten(template)
  out, offset = [], 0
  for leaf in leaves:
    size = int(np.prod(leaf.shape))
    out.append(jnp.reshape(vector[offset : offset + size], leaf.shape))
    offset += size
  if offset != vector.shape[-1]:
    raise ValueError(
      f'vector has {vector.shape[-1]} entries, tree has {offset}'
    )
  return jax.tree_util.tree_unflatten(treedef, out)


def init_lora(lora: LoraTree, seed: int, b_std: float = 0.0) -> LoraTree:
  """PEFT's default init: A ~ kaiming-uniform(a=√5) = U(±1/√in), B = 0.

  Args:
    lora: a tree giving shapes and dtypes.
    seed: PRNG seed.
    b_std: if > 0, B ~ N(0, b_std²) instead of zeros. At B = 0 every lora_a
      gradient is exactly zero, so tests use a seeded random B.
  """
  key = jax.random.key(seed)
  out = {}
  flat = lora_leaves(lora)
  keys = jax.random.split(key, len(flat))
  new = []
  for (path, x), k in zip(flat, keys):
    if path.endswith('lora_a'):
      bound = 1.0 / math.sqrt(x.shape[0])
      new.append(jax.random.uniform(k, x.shape, x.dtype, -bound, bound))
    elif b_std > 0:
      new.append(b_std * jax.random.normal(k, x.shape, x.dtype))
    else:
      new.append(jnp.zeros_like(x))
  out = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(lora), new)
  return out


def iter_module_pairs(lora: LoraTree) -> Iterator[tuple[str, Array, Array]]:
  """Yields (module path, lora_a, lora_b) for every adapted module."""
  leaves = dict(lora_leaves(lora))
  for module in lora_modules(lora):
    yield module, leaves[f'{module}.lora_a'], leaves[f'{module}.lora_b']


def make_model(
  config: ModelConfig,
  lora: Optional[LoraConfig] = LoraConfig(),
  *,
  dtype: Any = jnp.float32,
  seed: int = 0,
) -> Transformer:
  """A randomly initialised model (tests, shape inspection)."""
  return Transformer(config, lora=lora, dtype=dtype, rngs=nnx.Rngs(seed))
