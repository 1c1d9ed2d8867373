"""gatoms_jax: Gradient Atoms in JAX.

Finds what a fine-tuning set teaches a model without labels: one LoRA gradient
per document (`method.gradients`), rotated and rescaled by EK-FAC curvature
(`method.curvature`, `method.projection`), a sparse dictionary over them
(`method.dictionary`), atoms read as document clusters (`method.atoms`) and as
steering vectors (`method.steering`), and model outputs explained through the
atoms (`method.explain`).

Layers, each importing only those below it: `core` (model port, loaders,
LoRA, data, sharding, artefact I/O) ← `demo` (generated mixture, built-in
prompts) ← `method` ← `pipeline` (stages, manifests, report). This module
re-exports the public API.
"""

from gatoms_jax.core.data.tokenize import Batch
from gatoms_jax.core.models.config import ModelConfig
from gatoms_jax.core.models.convert import load_model
from gatoms_jax.core.models.lora import flatten, merge, split, unflatten
from gatoms_jax.core.models.transformer import LoraConfig, Transformer
from gatoms_jax.core.store import GradientStore, layout_from_tree
from gatoms_jax.method.curvature import (
  Factors,
  correct_eigenvalues,
  eigendecompose,
  fit_factors,
)
from gatoms_jax.method.dictionary import DictionaryResult, learn_dictionary
from gatoms_jax.method.explain import AtomIndex, build_index, explain
from gatoms_jax.method.gradients import GradientExtractor, extract_to_store
from gatoms_jax.method.lasso import sparse_encode
from gatoms_jax.method.projection import (
  ProjectionSpec,
  Projector,
  make_spec,
  unproject,
)
from gatoms_jax.method.steering.directions import AtomDirections, steer

__version__ = '0.1.0'

__all__ = [
  'AtomDirections',
  'AtomIndex',
  'Batch',
  'DictionaryResult',
  'Factors',
  'GradientExtractor',
  'GradientStore',
  'LoraConfig',
  'ModelConfig',
  'ProjectionSpec',
  'Projector',
  'Transformer',
  'correct_eigenvalues',
  'build_index',
  'eigendecompose',
  'explain',
  'extract_to_store',
  'fit_factors',
  'flatten',
  'layout_from_tree',
  'learn_dictionary',
  'load_model',
  'make_spec',
  'merge',
  'sparse_encode',
  'split',
  'steer',
  'unflatten',
  'unproject',
]
