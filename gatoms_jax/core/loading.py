"""Builds what every stage shares from the config: model, tokenizer, data split.

Kept apart from the fine-tuning loop so that a stage that only reads a model
(curvature, gradients, steering) does not depend on fine-tuning code.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
from absl import logging
from flax import nnx

from gatoms_jax.core import data as data_lib
from gatoms_jax.core.data import tokenizer as tokenizer_lib
from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import convert
from gatoms_jax.core.models.transformer import (
  LoraConfig,
  Transformer,
  set_layer_execution,
)


def lora_config_from(config: Any) -> LoraConfig:
  """The LoraConfig of the config's `lora` section."""
  return LoraConfig(
    rank=int(config.lora.rank),
    alpha=float(config.lora.alpha),
    targets=tuple(config.lora.targets),
  )


def load_model_and_tokenizer(
  config: Any, *, model: Optional[Transformer] = None, tokenizer: Any = None
) -> tuple[Transformer, Any]:
  """The model (with the config's LoRA adapter) and its tokenizer.

  `model.path = 'random:NAME'` builds the preset NAME of
  `gatoms_jax.core.models.config.PRESETS` with random weights (seed 0) and its
  vocabulary resized to the tokenizer's (`len(tokenizer)`), so that a tiny
  test model works with any real tokenizer; such models need
  `model.tokenizer`.

  Args:
    config: the full config (reads `model` and `lora`).
    model: an already built model to use instead (its LoRA config must match
      the config's).
    tokenizer: an already loaded tokenizer to use instead.

  Returns:
    (model, tokenizer).

  Raises:
    ValueError: a given model's adapter differs from the config's, or a
      random model has no tokenizer path.
  """
  lora_config = lora_config_from(config)
  path = config.model.path
  if tokenizer is None:
    tok_path = config.model.tokenizer or path
    if tok_path.startswith('random:'):
      raise ValueError(
        f'model.path={path!r} is a random model: set model.tokenizer to an HF '
        'directory, a .gguf file or "embedded"'
      )
    tokenizer = tokenizer_lib.load_tokenizer(tok_path)
  if model is not None:
    if model.lora_config != lora_config:
      raise ValueError(
        f'The given model has LoRA config {model.lora_config}, the config '
        f'asks for {lora_config}'
      )
    return model, tokenizer
  dtype = jnp.dtype(config.model.dtype)
  if path.startswith('random:'):
    name = path.split(':', 1)[1]
    if name not in config_lib.PRESETS:
      raise ValueError(
        f'Unknown random model preset {name!r}; known: '
        f'{sorted(config_lib.PRESETS)}'
      )
    arch = config_lib.PRESETS[name]().replace(vocab_size=len(tokenizer))
    model = Transformer(arch, lora=lora_config, dtype=dtype, rngs=nnx.Rngs(0))
  else:
    model = convert.load_model(path, lora=lora_config, dtype=dtype)
  set_layer_execution(
    model,
    scan_layers=config.model.get('scan_layers', True),
    remat=config.model.get('remat', 'dots'),
  )
  return model, tokenizer


def prepare_data(
  config: Any,
  tokenizer: Any,
  documents: Sequence[Any],
  *,
  with_stats: bool = False,
) -> tuple[list[Any], list[Any]] | tuple[list[Any], list[Any], Any]:
  """Tokenised (train, heldout) documents.

  The split is `split_heldout(tokenized, data.heldout_fraction, seed)` with
  the config's top-level `seed`, so every stage that calls this function gets
  the same split.

  Args:
    config: the full config (reads `data` and `seed`).
    tokenizer: the model's tokenizer.
    documents: the documents to tokenise (e.g. from
      `gatoms_jax.demo.sources.load_documents(config.data)`).
    with_stats: also return the `TokenizeStats` (read/truncated/excluded
      counts, per label).

  Returns:
    (train, heldout) lists of `TokenizedDoc`, plus the stats if asked.
  """
  tokenized, stats = data_lib.tokenize_documents(
    documents,
    tokenizer,
    int(config.data.max_length),
    truncation=config.data.get('truncation', 'keep_answers'),
  )
  logging.info('finetune data: %s', stats.summary())
  train, heldout = data_lib.split_heldout(
    tokenized, float(config.data.heldout_fraction), int(config.seed)
  )
  return (train, heldout, stats) if with_stats else (train, heldout)
