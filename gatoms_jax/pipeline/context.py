"""Lazily loaded things every stage shares within one pipeline process.

Loading the model (~6 s for SmolLM2) and the tokenizer (~5 s), and tokenising
the documents, happen at most once per process, and only for stages that run.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from gatoms_jax.core import loading
from gatoms_jax.core.models import convert
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.transformer import LoraConfig, Transformer
from gatoms_jax.demo import sources


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
    return loading.lora_config_from(self.config)

  @property
  def model_path(self) -> str:
    return convert.resolve_model_path(self.config.model.path)

  @functools.cached_property
  def _model_and_tokenizer(self):
    return loading.load_model_and_tokenizer(self.config)

  @property
  def model(self) -> Transformer:
    return self._model_and_tokenizer[0]

  @property
  def tokenizer(self) -> Any:
    return self._model_and_tokenizer[1]

  @functools.cached_property
  def split_model(self):
    """(mdef, base, initial LoRA tree)."""
    return lora_lib.split(self.model)

  @functools.cached_property
  def eos_ids(self) -> tuple[int, ...]:
    from gatoms_jax.core.models.generate import eos_token_ids

    path = self.model_path
    return tuple(
      eos_token_ids('' if path.startswith('random:') else path, self.tokenizer)
    )

  # -- data ----------------------------------------------------------------

  @functools.cached_property
  def documents(self) -> list:
    docs = sources.load_documents(self.config.data)
    if not docs:
      raise ValueError('No documents to work on')
    return docs

  @functools.cached_property
  def train_docs(self) -> list:
    """The tokenised training split (the same split the fine-tune used)."""
    train, _ = loading.prepare_data(self.config, self.tokenizer, self.documents)
    return train

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

  def label_sets(self, doc_ids) -> list[tuple[str, ...]]:
    """Every task type each document teaches (evaluation-only)."""
    return [self.doc_by_id[i].label_set for i in doc_ids]

  # -- artefacts -------------------------------------------------------------

  @functools.cached_property
  def finetuned_lora(self) -> Any:
    """The fine-tuned adapter (finetune/adapter, PEFT format)."""
    from gatoms_jax.core.models.peft import load_peft_adapter

    mdef = self.split_model[0]
    lora, _ = load_peft_adapter(
      os.path.join(self.stage_dir('finetune'), 'adapter'), mdef
    )
    return lora

  @functools.cached_property
  def store(self):
    from gatoms_jax.core.store import GradientStore

    return GradientStore.open(
      os.path.join(self.stage_dir('gradients'), 'store')
    )

  def load_npy(self, stage: str, name: str) -> np.ndarray:
    return np.load(os.path.join(self.stage_dir(stage), name))
