"""LoRA adapters in Hugging Face PEFT's format (export and import).

A PEFT LoRA adapter directory holds `adapter_config.json` and
`adapter_model.safetensors`. PEFT computes y = x Wᵀ + (alpha/r) · x Aᵀ Bᵀ with
lora_A.weight: r×in and lora_B.weight: out×r (torch Linear layout), so our
lora_a (in×r) is lora_A.weightᵀ and our lora_b (r×out) is lora_B.weightᵀ; the
scale alpha/r is the same. Tensor names (PEFT strips the adapter name
'default' when saving):

  base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight

Import also accepts names with `.default`, without the `base_model.model.`
prefix, and Gemma3ForConditionalGeneration's `model.language_model.` /
`language_model.model.` prefixes (LoRA on its vision tower is skipped).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Union

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from gatoms_jax.core import io as io_lib
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.config import ModelConfig
from gatoms_jax.core.models.transformer import (
  LORA_TARGETS,
  LoraConfig,
  Transformer,
)

Array = jax.Array
LoraTree = dict

CONFIG_NAME = 'adapter_config.json'
WEIGHTS_NAME = 'adapter_model.safetensors'

_KEY_RE = re.compile(
  r'(?:base_model\.model\.)?'
  r'(?:model\.language_model\.|language_model\.model\.|language_model\.|model\.)?'
  r'layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.default)?\.weight'
)
_SKIPPED_RE = re.compile(r'vision_tower|multi_modal_projector')


class PeftAdapterError(ValueError):
  """An adapter directory is missing, corrupt, or does not fit the model."""


def peft_key(module: str, which: str, prefix: str = 'model.') -> str:
  """PEFT tensor name of one LoRA matrix.

  Args:
    module: our module path, e.g. 'layers.3.self_attn.q_proj'.
    which: 'A' or 'B'.
    prefix: path of the decoder inside the HF model: 'model.' for
      *ForCausalLM, 'model.language_model.' for Gemma3ForConditionalGeneration.
  """
  return f'base_model.model.{prefix}{module}.lora_{which}.weight'


def save_peft_adapter(
  directory: str,
  lora_tree: LoraTree,
  lora_config: LoraConfig,
  base_model_name: str,
  *,
  prefix: str = 'model.',
) -> None:
  """Writes a LoRA tree as a PEFT adapter (loadable by PeftModel).

  Args:
    directory: output directory (created if needed).
    lora_tree: LoRA parameters (`lora.split`'s tree).
    lora_config: rank, alpha and targets of the tree.
    base_model_name: recorded as base_model_name_or_path.
    prefix: decoder path inside the HF model (see `peft_key`).

  Raises:
    ValueError: the tree does not match `lora_config`.
  """
  from safetensors.flax import save as save_safetensors

  tensors = {}
  targets = set()
  for module, a, b in lora_lib.iter_module_pairs(lora_tree):
    if a.shape[1] != lora_config.rank or b.shape[0] != lora_config.rank:
      raise ValueError(
        f'{module}: LoRA rank {a.shape[1]} differs from the config rank '
        f'{lora_config.rank}'
      )
    targets.add(module.rsplit('.', 1)[1])
    # PEFT reads these with torch; contiguous transposed copies.
    tensors[peft_key(module, 'A', prefix)] = jnp.asarray(a).T.copy()
    tensors[peft_key(module, 'B', prefix)] = jnp.asarray(b).T.copy()
  if not tensors:
    raise ValueError('The LoRA tree is empty; nothing to save')
  if targets != set(lora_config.targets):
    raise ValueError(
      f'The tree adapts {sorted(targets)} but the config lists '
      f'{sorted(lora_config.targets)}'
    )
  adapter_config = {
    'peft_type': 'LORA',
    'task_type': 'CAUSAL_LM',
    'base_model_name_or_path': base_model_name,
    'r': int(lora_config.rank),
    'lora_alpha': float(lora_config.alpha),
    'target_modules': [t for t in LORA_TARGETS if t in targets],
    'lora_dropout': 0.0,
    'bias': 'none',
    'fan_in_fan_out': False,
    'inference_mode': True,
    'init_lora_weights': True,
    'use_rslora': False,
    'use_dora': False,
    'modules_to_save': None,
    'layers_to_transform': None,
    'rank_pattern': {},
    'alpha_pattern': {},
  }
  os.makedirs(directory, exist_ok=True)
  # Weights first: a directory with a config always has complete weights.
  io_lib.write_bytes(
    os.path.join(directory, WEIGHTS_NAME),
    save_safetensors(tensors, metadata={'format': 'pt'}),
  )
  io_lib.write_bytes(
    os.path.join(directory, CONFIG_NAME),
    (json.dumps(adapter_config, indent=2, sort_keys=True) + '\n').encode(),
  )


def _read_json(path: str) -> dict:
  try:
    return io_lib.read_json(path)
  except ValueError as e:  # io names the file and line of invalid JSON
    raise PeftAdapterError(str(e)) from e


def read_adapter_config(directory: str) -> LoraConfig:
  """The LoraConfig of a PEFT adapter directory.

  Raises:
    PeftAdapterError: missing/invalid adapter_config.json, or a PEFT feature
      this model cannot represent (DoRA, biases, per-module ranks, ...).
  """
  if not os.path.isdir(directory):
    raise PeftAdapterError(f'Adapter directory not found: {directory}')
  path = os.path.join(directory, CONFIG_NAME)
  if not os.path.isfile(path):
    raise PeftAdapterError(f'{directory} has no {CONFIG_NAME}')
  cfg = _read_json(path)
  if not isinstance(cfg, dict):
    raise PeftAdapterError(f'{path}: expected a JSON object')

  def fail(what):
    raise PeftAdapterError(f'{path}: {what}')

  if cfg.get('peft_type', 'LORA') != 'LORA':
    fail(f'peft_type is {cfg.get("peft_type")!r}; only LORA is supported')
  for key in ('r', 'lora_alpha', 'target_modules'):
    if key not in cfg:
      fail(f'missing "{key}"')
  if cfg.get('use_dora'):
    fail('DoRA adapters (use_dora) are not supported')
  if cfg.get('bias', 'none') != 'none':
    fail(f'bias={cfg["bias"]!r} is not supported (only "none")')
  if cfg.get('rank_pattern') or cfg.get('alpha_pattern'):
    fail('per-module rank_pattern/alpha_pattern are not supported')
  if cfg.get('modules_to_save'):
    fail(f'modules_to_save={cfg["modules_to_save"]} is not supported')
  if cfg.get('fan_in_fan_out'):
    fail('fan_in_fan_out=true (GPT-2 Conv1D layout) is not supported')
  targets = cfg['target_modules']
  if isinstance(targets, str):
    if targets == 'all-linear':
      targets = list(LORA_TARGETS)
    else:
      # PEFT treats a string as a regex over full module names.
      targets = [
        t
        for t in LORA_TARGETS
        if re.fullmatch(targets, f'model.layers.0.self_attn.{t}')
        or re.fullmatch(targets, f'model.layers.0.mlp.{t}')
      ]
  unknown = sorted(set(targets) - set(LORA_TARGETS))
  if unknown:
    fail(f'target_modules {unknown} are not among {list(LORA_TARGETS)}')
  if not targets:
    fail('target_modules selects no module of the decoder')
  rank = int(cfg['r'])
  alpha = float(cfg['lora_alpha'])
  if cfg.get('use_rslora'):
    # rsLoRA scales by alpha/sqrt(r); an equivalent alpha gives alpha'/r.
    alpha = alpha * math.sqrt(rank)
  return LoraConfig(
    rank=rank,
    alpha=alpha,
    targets=tuple(t for t in LORA_TARGETS if t in targets),
  )


def _template(
  model: Union[Transformer, lora_lib.ModelDef, ModelConfig],
  lora_config: LoraConfig,
  dtype: Any,
) -> tuple[ModelConfig, LoraTree, Any]:
  """(model config, abstract LoRA tree for `lora_config`, dtype)."""
  if isinstance(model, Transformer):
    config, current = model.config, model.lora_config
    if dtype is None:
      dtype = model.embed_tokens[...].dtype
  elif isinstance(model, lora_lib.ModelDef):
    config, current = model.config, model.lora_config
  elif isinstance(model, ModelConfig):
    config, current = model, None
  else:
    raise TypeError(
      f'expected a Transformer, ModelDef or ModelConfig, got {type(model)}'
    )
  if current is not None and current != lora_config:
    raise PeftAdapterError(
      f'The adapter has {lora_config} but the model was built with '
      f'{current}; build it with lora=read_adapter_config(directory)'
    )
  if dtype is None:
    dtype = jnp.float32
  abstract = nnx.eval_shape(
    lambda: Transformer(config, lora=lora_config, dtype=dtype, rngs=nnx.Rngs(0))
  )
  _, _, tree = lora_lib.split(abstract)
  return config, tree, dtype


def load_peft_adapter(
  directory: str,
  model: Union[Transformer, lora_lib.ModelDef, ModelConfig],
  *,
  dtype: Any = None,
) -> tuple[LoraTree, LoraConfig]:
  """Reads a PEFT LoRA adapter into our LoRA tree.

  Args:
    directory: the adapter directory.
    model: the model it applies to (a Transformer, its ModelDef, or its
      ModelConfig). A model built with a LoRA config must have the adapter's
      (rank, alpha, targets); see `read_adapter_config`.
    dtype: dtype of the returned arrays (default: the model's, else fp32).

  Returns:
    (LoRA tree with the structure of `lora.split`'s, the adapter's config).
    Modules PEFT did not adapt (layers_to_transform) get zero matrices.

  Raises:
    PeftAdapterError: missing or corrupt files, or an adapter that does not
      fit the model (the message names the module and both shapes).
  """
  from safetensors import safe_open

  lora_config = read_adapter_config(directory)
  _, template, dtype = _template(model, lora_config, dtype)
  path = os.path.join(directory, WEIGHTS_NAME)
  if not os.path.isfile(path):
    hint = ''
    if os.path.isfile(os.path.join(directory, 'adapter_model.bin')):
      hint = ' (only adapter_model.bin found: re-save with safe_serialization)'
    raise PeftAdapterError(f'{directory} has no {WEIGHTS_NAME}{hint}')
  tensors = {}
  try:
    # 'flax' reads every dtype (numpy has no bfloat16).
    with safe_open(path, framework='flax') as f:
      for key in f.keys():
        tensors[key] = f.get_tensor(key)
  except Exception as e:  # safetensors raises its own error types
    raise PeftAdapterError(f'Cannot read {path}: {e}') from e

  leaves = dict(lora_lib.lora_leaves(template))
  modules = set(lora_lib.lora_modules(template))
  values: dict[str, Array] = {}
  for key, value in tensors.items():
    match = _KEY_RE.fullmatch(key)
    if match is None:
      if _SKIPPED_RE.search(key):
        logging.warning('%s: skipping non-text tensor %s', path, key)
        continue
      raise PeftAdapterError(f'{path}: unrecognised tensor name {key}')
    layer, block, name, which = match.groups()
    module = f'layers.{layer}.{block}.{name}'
    if module not in modules:
      raise PeftAdapterError(
        f'{path}: tensor {key} adapts {module}, which the model does not have '
        f'with targets {list(lora_config.targets)}'
      )
    leaf = f'{module}.lora_{which.lower()}'
    arr = jnp.asarray(value).T
    expected = tuple(leaves[leaf].shape)
    if tuple(arr.shape) != expected:
      raise PeftAdapterError(
        f'{path}: {module} lora_{which} has shape {tuple(value.shape)}, the '
        f'model expects {expected[::-1]} (rank {lora_config.rank}; '
        f'{expected[0] if which == "A" else expected[1]} '
        f'{"inputs" if which == "A" else "outputs"})'
      )
    if leaf in values:
      raise PeftAdapterError(f'{path}: {module} lora_{which} appears twice')
    values[leaf] = arr.astype(dtype)

  if not values:
    raise PeftAdapterError(f'{path}: no LoRA tensors for the decoder layers')
  adapted = {p.rsplit('.', 1)[0] for p in values}
  for module in sorted(adapted):
    for which in ('a', 'b'):
      if f'{module}.lora_{which}' not in values:
        raise PeftAdapterError(
          f'{path}: {module} has no lora_{which.upper()} tensor'
        )
  # PEFT leaves layers outside layers_to_transform unadapted: zeros are the
  # same function. Any other missing module means a broken adapter.
  layers = _read_json(os.path.join(directory, CONFIG_NAME)).get(
    'layers_to_transform'
  )
  if isinstance(layers, int):
    layers = [layers]
  missing = sorted(modules - adapted)
  unexpected = [
    m for m in missing if layers is None or int(m.split('.')[1]) in layers
  ]
  if unexpected:
    raise PeftAdapterError(
      f'{path}: no LoRA tensors for {len(unexpected)} module(s) the config '
      f'targets, e.g. {unexpected[0]}'
    )
  flat = [
    values.get(p, jnp.zeros(x.shape, dtype))
    for p, x in lora_lib.lora_leaves(template)
  ]
  tree = jax.tree_util.tree_unflatten(
    jax.tree_util.tree_structure(template), flat
  )
  return tree, lora_config
