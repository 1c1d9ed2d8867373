"""PEFT LoRA adapters: export → peft.PeftModel parity, import, errors."""

from __future__ import annotations

import copy
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from gatoms_jax.core.models import convert
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models import peft as peft_lib
from gatoms_jax.core.models.transformer import LoraConfig

try:
  import peft
  import torch
  from safetensors.numpy import load_file, save_file

  import test_models  # tiny random transformers models
except ImportError:  # pragma: no cover - torch/peft are test dependencies
  torch = None

LORA = LoraConfig(rank=4, alpha=8.0, targets=('all',))


def _tree_equal(test, a, b):
  la, lb = lora_lib.lora_leaves(a), lora_lib.lora_leaves(b)
  test.assertEqual([p for p, _ in la], [p for p, _ in lb])
  for (p, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=p)


@absltest.skipIf(torch is None, 'needs torch, transformers and peft')
class PeftParityTest(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory(prefix='test_peft_')
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name

  def _ours(self, hf, lora_config=LORA):
    path = os.path.join(self.dir, 'base')
    if not os.path.exists(path):
      hf.save_pretrained(path)
    return convert.load_model(path, lora=lora_config)

  @parameterized.parameters('llama', 'qwen2_bias', 'gemma3')
  def test_exported_adapter_matches_peft_model(self, kind):
    hf = test_models.make_hf_model(kind, seed=3)
    model = self._ours(hf)
    mdef, base, lora = lora_lib.split(model)
    lora = lora_lib.init_lora(lora, seed=1, b_std=0.1)
    adapter = os.path.join(self.dir, 'adapter')
    peft_lib.save_peft_adapter(adapter, lora, mdef.lora_config, 'tiny')
    self.assertEqual(
      sorted(os.listdir(adapter)), [peft_lib.CONFIG_NAME, peft_lib.WEIGHTS_NAME]
    )

    tokens = test_models.random_tokens(2, 24, seed=4)
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(hf), adapter)
    ref = test_models.torch_logits(peft_model.eval(), tokens)
    merged = lora_lib.merge(mdef, base, lora)
    ours = np.asarray(merged(jnp.asarray(tokens)))
    # fp32 on both sides, as in test_models' parity bound.
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # The adapter matters: without it the logits move by far more than that.
    plain = test_models.torch_logits(hf, tokens)
    self.assertGreater(np.abs(plain - ref).max(), 0.05)

    loaded, config = peft_lib.load_peft_adapter(adapter, model)
    self.assertEqual(config, mdef.lora_config)
    _tree_equal(self, loaded, lora)

  def test_peft_saved_adapter_loads(self):
    """An adapter written by PEFT itself (random A and B) imports exactly."""
    hf = test_models.make_hf_model('llama', seed=6)
    targets = ['q_proj', 'v_proj', 'down_proj']
    peft_model = peft.get_peft_model(
      copy.deepcopy(hf),
      peft.LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=targets,
        init_lora_weights=False,  # random B, so the adapter is non-trivial
      ),
    ).eval()
    adapter = os.path.join(self.dir, 'peft_saved')
    peft_model.save_pretrained(adapter)
    config = peft_lib.read_adapter_config(adapter)
    self.assertEqual(config.targets, ('q_proj', 'v_proj', 'down_proj'))
    self.assertEqual((config.rank, config.alpha), (4, 16.0))
    model = self._ours(hf, config)
    lora, _ = peft_lib.load_peft_adapter(adapter, model)
    mdef, base, _ = lora_lib.split(model)
    tokens = test_models.random_tokens(1, 16, seed=5)
    ours = np.asarray(lora_lib.merge(mdef, base, lora)(jnp.asarray(tokens)))
    # fp32 on both sides (see test_models).
    np.testing.assert_allclose(
      ours, test_models.torch_logits(peft_model, tokens), atol=1e-4, rtol=0
    )


def _tiny_lora_model(lora_config=LORA, **overrides):
  from gatoms_jax.core.models.config import tiny_llama

  model = lora_lib.make_model(tiny_llama(**overrides), lora_config)
  mdef, base, lora = lora_lib.split(model)
  return model, lora_lib.init_lora(lora, seed=2, b_std=0.1)


@absltest.skipIf(torch is None, 'needs safetensors.numpy and the test helpers')
class PeftImportTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory(prefix='test_peft_')
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name
    self.model, self.lora = _tiny_lora_model()
    self.adapter = os.path.join(self.dir, 'adapter')
    peft_lib.save_peft_adapter(self.adapter, self.lora, LORA, 'tiny')
    self.weights = os.path.join(self.adapter, peft_lib.WEIGHTS_NAME)

  def _rewrite(self, fn):
    tensors = load_file(self.weights)
    save_file(fn(tensors), self.weights)

  def test_round_trip_dtype_and_template_kinds(self):
    mdef = lora_lib.split(self.model)[0]
    for template in (self.model, mdef, self.model.config):
      loaded, config = peft_lib.load_peft_adapter(self.adapter, template)
      self.assertEqual(config, LORA)
      _tree_equal(self, loaded, self.lora)
    bf16, _ = peft_lib.load_peft_adapter(self.adapter, mdef, dtype=jnp.bfloat16)
    self.assertEqual(jax.tree_util.tree_leaves(bf16)[0].dtype, jnp.bfloat16)

  def test_key_variants(self):
    # PEFT in memory (.default), no base_model prefix, and the two Gemma 3
    # multimodal prefixes; a vision-tower LoRA tensor is skipped.
    renames = [
      lambda k: k.replace('.weight', '.default.weight'),
      lambda k: k.replace('base_model.model.', ''),
      lambda k: k.replace('model.layers', 'model.language_model.layers'),
      lambda k: k.replace(
        'model.model.layers', 'model.language_model.model.layers'
      ),
    ]
    original = load_file(self.weights)
    for rename in renames:
      tensors = {rename(k): v for k, v in original.items()}
      tensors[
        'base_model.model.model.vision_tower.vision_model.encoder.layers.0.'
        'self_attn.q_proj.lora_A.weight'
      ] = np.zeros((4, 8), np.float32)
      save_file(tensors, self.weights)
      loaded, _ = peft_lib.load_peft_adapter(self.adapter, self.model)
      _tree_equal(self, loaded, self.lora)

  def test_missing_and_corrupt_files(self):
    with self.assertRaisesRegex(peft_lib.PeftAdapterError, 'not found'):
      peft_lib.load_peft_adapter(os.path.join(self.dir, 'nope'), self.model)
    with open(self.weights, 'wb') as f:
      f.write(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a": 1}garbage')
    with self.assertRaisesRegex(
      peft_lib.PeftAdapterError, 'Cannot read .*adapter_model.safetensors'
    ):
      peft_lib.load_peft_adapter(self.adapter, self.model)
    os.remove(self.weights)
    with self.assertRaisesRegex(
      peft_lib.PeftAdapterError, 'no adapter_model.safetensors'
    ):
      peft_lib.load_peft_adapter(self.adapter, self.model)
    config = os.path.join(self.adapter, peft_lib.CONFIG_NAME)
    with open(config, 'w') as f:
      f.write('{\n  "r": 4,\n  "lora_alpha": \n}\n')
    with self.assertRaisesRegex(
      peft_lib.PeftAdapterError, 'adapter_config.json: line 4: invalid JSON'
    ):
      peft_lib.load_peft_adapter(self.adapter, self.model)
    os.remove(config)
    with self.assertRaisesRegex(
      peft_lib.PeftAdapterError, 'has no adapter_config.json'
    ):
      peft_lib.load_peft_adapter(self.adapter, self.model)

  def test_shape_mismatch_names_module_and_shapes(self):
    other, _ = _tiny_lora_model(intermediate_size=96)
    with self.assertRaisesRegex(
      peft_lib.PeftAdapterError,
      r'layers\.0\.mlp\.down_proj lora_A has shape \(4, 128\), the model '
      r'expects \(4, 96\)',
    ):
      peft_lib.load_peft_adapter(self.adapter, other)

  def test_target_mismatches(self):
    qv = LoraConfig(rank=4, alpha=8.0, targets=('q_proj', 'v_proj'))
    model_qv, lora_qv = _tiny_lora_model(qv)
    # The model was built for another adapter configuration.
    with self.assertRaisesRegex(
      peft_lib.PeftAdapterError, 'model was built with.*read_adapter_config'
    ):
      peft_lib.load_peft_adapter(self.adapter, model_qv)
    # A tensor for a module outside the adapter's targets.
    peft_lib.save_peft_adapter(self.adapter, lora_qv, qv, 'tiny')
    extra = peft_lib.peft_key('layers.0.self_attn.k_proj', 'A')
    self._rewrite(lambda t: {**t, extra: np.zeros((4, 64), np.float32)})
    with self.assertRaisesRegex(
      peft_lib.PeftAdapterError, r'adapts layers\.0\.self_attn\.k_proj'
    ):
      peft_lib.load_peft_adapter(self.adapter, model_qv)
    # A targeted module with no tensors.
    peft_lib.save_peft_adapter(self.adapter, lora_qv, qv, 'tiny')
    self._rewrite(
      lambda t: {
        k: v for k, v in t.items() if 'layers.1.self_attn.v_proj' not in k
      }
    )
    with self.assertRaisesRegex(
      peft_lib.PeftAdapterError, r'layers\.1\.self_attn\.v_proj'
    ):
      peft_lib.load_peft_adapter(self.adapter, model_qv)
    # ... unless the config restricts the adapter to other layers.
    config = os.path.join(self.adapter, peft_lib.CONFIG_NAME)
    with open(config) as f:
      cfg = json.load(f)
    self._rewrite(
      lambda t: {k: v for k, v in t.items() if 'layers.1.' not in k}
    )
    with open(config, 'w') as f:
      json.dump({**cfg, 'layers_to_transform': [0]}, f)
    loaded, _ = peft_lib.load_peft_adapter(self.adapter, model_qv)
    leaves = dict(lora_lib.lora_leaves(loaded))
    self.assertEqual(
      float(jnp.abs(leaves['layers.1.self_attn.q_proj.lora_b']).max()), 0.0
    )
    np.testing.assert_array_equal(
      leaves['layers.0.self_attn.q_proj.lora_b'],
      dict(lora_lib.lora_leaves(lora_qv))['layers.0.self_attn.q_proj.lora_b'],
    )

  def test_unsupported_config(self):
    config = os.path.join(self.adapter, peft_lib.CONFIG_NAME)
    with open(config) as f:
      cfg = json.load(f)
    for change, message in [
      ({'use_dora': True}, 'DoRA'),
      ({'bias': 'all'}, 'bias'),
      ({'target_modules': ['c_attn']}, 'c_attn'),
      ({'peft_type': 'IA3'}, 'only LORA'),
    ]:
      with open(config, 'w') as f:
        json.dump({**cfg, **change}, f)
      with self.assertRaisesRegex(peft_lib.PeftAdapterError, message):
        peft_lib.read_adapter_config(self.adapter)
    with open(config, 'w') as f:
      json.dump({**cfg, 'use_rslora': True, 'target_modules': 'all-linear'}, f)
    rs = peft_lib.read_adapter_config(self.adapter)
    self.assertAlmostEqual(rs.scale, 8.0 / 2.0)  # alpha / sqrt(r)
    self.assertEqual(len(rs.targets), 7)

  def test_export_rejects_mismatched_config(self):
    with self.assertRaisesRegex(ValueError, 'rank 4 differs'):
      peft_lib.save_peft_adapter(
        self.adapter, self.lora, LoraConfig(rank=8, targets=('all',)), 'x'
      )
    with self.assertRaisesRegex(ValueError, 'config lists'):
      peft_lib.save_peft_adapter(
        self.adapter, self.lora, LoraConfig(rank=4, targets=('q_proj',)), 'x'
      )


if __name__ == '__main__':
  absltest.main()
