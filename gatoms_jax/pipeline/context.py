"""Lazily loaded things every stage shares within one pipeline process.

Loading the model (~6 s for SmolLM2) and the tokenizer (~5 s), and tokenising
the documents, happen at most once per process, and only for stages that run.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from gatoms_jax.models import config as model_config_lib
from gatoms_jax.models import convert
from gatoms_jax.models import lora as lora_lib
from gatoms_jax.models.transformer import LoraConfig, Transformer


class RunContext:
  """Paths and lazily built shared objects of one run.

  Attributes:
    config: the resolved ConfigDict.
    run_dir: results/<run_name>.
  """

  def __init__(self, config: Any):
    self.config = config
    self.run_dir = os.path.join(config.results_dir, config.run_name)

  def stage_dir(self, stage: str) -> str:
    return os.path.join(self.run_dir, stage)

  # -- model ---------------------------------------------------------------

  @property
  def lora_config(self) -> LoraConfig:
    c = self.config.lora
    return LoraConfig(rank=c.rank, alpha=c.alpha, targets=tuple(c.targets))

  @property
  def model_path(self) -> str:
    return convert.resolve_model_path(self.config.model.path)

  @functools.cached_property
  def model(self) -> Transformer:
    path = self.model_path
    dtype = jnp.dtype(self.config.model.dtype)
    if path.startswith('random:'):
      # Random presets (tests): vocab sized to the tokenizer so real chat
      # documents can be fed through a tiny model.
      name = path.split(':', 1)[1]
      if name not in model_config_lib.PRESETS:
        raise convert.ModelLoadError(
          f'Unknown preset {name!r}; known: {sorted(model_config_lib.PRESETS)}'
        )
      overrides = {}
      if name.startswith('tiny_'):
        overrides['vocab_size'] = len(self.tokenizer)
      cfg = model_config_lib.PRESETS[name](**overrides)
      return lora_lib.make_model(cfg, self.lora_config, dtype=dtype, seed=self.config.seed)
    logging.info('loading model %s', path)
    return convert.load_model(path, lora=self.lora_config, dtype=dtype)

  @functools.cached_property
  def split_model(self):
    """(mdef, base, initial LoRA tree)."""
    return lora_lib.split(self.model)

  @functools.cached_property
  def tokenizer(self) -> Any:
    from gatoms_jax.tokenizer import load_tokenizer

    source = self.config.model.tokenizer or self.config.model.path
    if source.startswith('random:'):
      source = 'embedded'
    return load_tokenizer(source)

  @functools.cached_property
  def eos_ids(self) -> tuple[int, ...]:
    from gatoms_jax.models.generate import eos_token_ids

    path = self.model_path
    return tuple(eos_token_ids('' if path.startswith('random:') else path, self.tokenizer))

  # -- data ----------------------------------------------------------------

  @property
  def system_prompt(self):
    return self.config.data.get('system_prompt', '') or None

  @functools.cached_property
  def documents(self) -> list:
    from gatoms_jax.data import load_documents

    docs = load_documents(self.config.data)
    if not docs:
      raise ValueError('No documents to work on')
    return docs

  @functools.cached_property
  def tokenized(self) -> tuple[list, list, Any]:
    """(train docs, heldout docs, TokenizeStats)."""
    from gatoms_jax.data import split_heldout, tokenize_documents

    toks, stats = tokenize_documents(
      self.documents,
      self.tokenizer,
      self.config.data.max_length,
      system_prompt=self.system_prompt,
    )
    logging.info('tokenised: %s', stats.summary())
    train, heldout = split_heldout(
      toks, self.config.data.heldout_fraction, self.config.seed
    )
    return train, heldout, stats

  @property
  def train_docs(self) -> list:
    return self.tokenized[0]

  @functools.cached_property
  def doc_by_id(self) -> dict:
    return {d.doc_id: d for d in self.documents}

  def responses(self, doc_ids) -> list[str]:
    """Assistant text of each document id."""
    return [self.doc_by_id[i].assistant_text for i in doc_ids]

  def labels(self, doc_ids) -> list | None:
    field = self.config.data.label_field
    labels = [self.doc_by_id[i].label for i in doc_ids]
    if not field or all(label is None for label in labels):
      return None
    return labels

  # -- artefacts -------------------------------------------------------------

  @functools.cached_property
  def finetuned_lora(self) -> Any:
    """The fine-tuned adapter (finetune/adapter, PEFT format)."""
    from gatoms_jax.models.peft import load_peft_adapter

    mdef = self.split_model[0]
    lora, _ = load_peft_adapter(os.path.join(self.stage_dir('finetune'), 'adapter'), mdef)
    return lora

  @functools.cached_property
  def store(self):
    from gatoms_jax.store import GradientStore

    return GradientStore.open(os.path.join(self.stage_dir('extract'), 'store'))

  def load_npy(self, stage: str, name: str) -> np.ndarray:
    return np.load(os.path.join(self.stage_dir(stage), name))
