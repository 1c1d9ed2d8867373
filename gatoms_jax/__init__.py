"""gatoms_jax: Gradient Atoms in JAX.

Finds what a fine-tuning set teaches a model without labels: one LoRA gradient
per document (`grads`), rotated and rescaled by EK-FAC curvature
(`curvature`, `projection`), a sparse dictionary over them (`dictionary`),
atoms read as document clusters (`atoms`) and as steering vectors (`steer`).
"""

from gatoms_jax.curvature import (
  Factors,
  correct_eigenvalues,
  eigendecompose,
  fit_factors,
)
from gatoms_jax.dictionary import DictionaryResult, learn_dictionary
from gatoms_jax.grads import GradientExtractor, extract_to_store
from gatoms_jax.lasso import sparse_encode
from gatoms_jax.models.config import ModelConfig
from gatoms_jax.models.convert import load_model
from gatoms_jax.models.lora import flatten, merge, split, unflatten
from gatoms_jax.models.transformer import LoraConfig, Transformer
from gatoms_jax.projection import (
  ProjectionSpec,
  Projector,
  make_spec,
  unproject,
)
from gatoms_jax.data.tokenize import Batch
from gatoms_jax.steer import AtomDirections
from gatoms_jax.store import GradientStore, layout_from_tree

__version__ = '0.1.0'

__all__ = [
  'AtomDirections',
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
  'eigendecompose',
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
  'unflatten',
  'unproject',
]
