"""Decoder layers under lax.scan: same numbers, names and formats as unrolled.

Tolerances: scanned and unrolled runs do the same fp32 operations per layer,
but XLA fuses (and so rounds) a scan body differently from an unrolled
graph; observed differences are ~1e-7 relative on logits and ~1e-6 relative
(to the largest entry) on LoRA gradients of these tiny models. 1e-5 is a
margin of ~10× over that; a real layout bug (a wrong layer's weights, window
or RoPE table, a probe under the wrong module) changes results at O(1).
"""

from __future__ import annotations

import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models import peft as peft_lib
from gatoms_jax.core.models.transformer import (
  LoraConfig,
  LoraTaps,
  init_cache,
  set_layer_execution,
)

RTOL = 1e-5  # see the module docstring
LORA = LoraConfig(rank=4, alpha=8.0, targets=('all',))


def _arch(family: str) -> config_lib.ModelConfig:
  if family == 'llama':
    return config_lib.tiny_llama(num_layers=3)
  # 5 layers, pattern 3: sliding, sliding, full, sliding, sliding; window 4
  # is far shorter than the sequences below, so a wrong window shows.
  return config_lib.tiny_gemma3(num_layers=5)


@functools.lru_cache(maxsize=None)
def _split(family: str, scan: bool, remat: str):
  model = lora_lib.make_model(_arch(family), LORA, seed=0)
  set_layer_execution(model, scan_layers=scan, remat=remat)
  mdef, base, lora = lora_lib.split(model)
  return mdef, base, lora_lib.init_lora(lora, seed=1, b_std=0.1)


def _tokens(b: int = 2, t: int = 13, seed: int = 0) -> jax.Array:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 256, (b, t)), jnp.int32)


def _close(test, actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  scale = np.max(np.abs(expected))
  test.assertGreater(scale, 0)
  np.testing.assert_allclose(actual / scale, expected / scale, atol=RTOL)


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grad(mdef, base, lora, tokens):
  def loss(lora):
    logits = lora_lib.merge(mdef, base, lora)(tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(lora)
  return logits, grads


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _greedy_tokens(mdef, base, lora, prompt, n_new, stacked):
  """Greedy tokens from a prefill and n_new - 1 single-token decode steps."""
  model = lora_lib.merge(mdef, base, lora)
  b, p = prompt.shape
  cache = init_cache(mdef.config, b, p + n_new, stacked=stacked)
  logits, cache = model(prompt, cache=cache, cache_index=0)
  tok = jnp.argmax(logits[:, -1], -1)
  out = [tok]
  for i in range(n_new - 1):
    pos = jnp.full((b, 1), p + i, jnp.int32)
    logits, cache = model(tok[:, None], pos, cache=cache, cache_index=p + i)
    tok = jnp.argmax(logits[:, -1], -1)
    out.append(tok)
  return jnp.stack(out, axis=1)


class ScanTest(parameterized.TestCase):
  # Every remat policy on Gemma 3 (both layer kinds); Llama with the default.
  @parameterized.parameters(
    ('llama', 'dots'),
    ('gemma3', 'none'),
    ('gemma3', 'full'),
    ('gemma3', 'dots'),
  )
  def test_logits_and_lora_grads_match_unrolled(self, family, remat):
    tokens = _tokens()
    ref_logits, ref_grads = _loss_and_grad(
      *_split(family, False, 'none'), tokens
    )
    logits, grads = _loss_and_grad(*_split(family, True, remat), tokens)
    _close(self, logits, ref_logits)
    self.assertEqual(
      [p for p, _ in lora_lib.lora_leaves(grads)],
      [p for p, _ in lora_lib.lora_leaves(ref_grads)],
    )
    _close(self, lora_lib.flatten(grads), lora_lib.flatten(ref_grads))

  def test_unrolled_remat_matches_unrolled(self):
    tokens = _tokens()
    ref = _loss_and_grad(*_split('gemma3', False, 'none'), tokens)[1]
    got = _loss_and_grad(*_split('gemma3', False, 'dots'), tokens)[1]
    _close(self, lora_lib.flatten(got), lora_lib.flatten(ref))

  @parameterized.parameters('llama', 'gemma3')
  def test_taps_keep_module_names(self, family):
    """Probes and recorded inputs (K-FAC's taps) per `layers.{i}.…` module."""
    tokens = _tokens(t=9)

    def run(scan):
      mdef, base, lora = _split(family, scan, 'dots')
      b, t = tokens.shape
      probes = {
        m: {
          'a': jnp.zeros((b, t, a.shape[1])),
          'b': jnp.zeros((b, t, bb.shape[1])),
        }
        for m, a, bb in lora_lib.iter_module_pairs(lora)
      }

      def loss(probes):
        taps = LoraTaps(probes=probes, record=True)
        model = lora_lib.merge(mdef, base, lora)
        hidden, _ = model.hidden_states(tokens, taps=taps)
        return jnp.sum(model.logits(hidden)[..., :3]), taps.record

      return jax.jit(jax.grad(loss, has_aux=True))(probes)

    ref_grads, ref_record = run(False)
    grads, record = run(True)
    self.assertEqual(sorted(record), sorted(ref_record))
    self.assertIn('layers.2.mlp.down_proj', record)
    for module in ref_record:
      for key in ('a_in', 'b_in'):
        _close(self, record[module][key], ref_record[module][key])
      for side in ('a', 'b'):
        _close(self, grads[module][side], ref_grads[module][side])

  def test_greedy_kv_cache_generation_matches_unrolled(self):
    """Prefill + decode steps over the scanned stack's stacked KV cache give
    the unrolled model's greedy tokens. (`decode`'s kernels run the unrolled
    layout, see `decode._cached_model`; this checks the scanned cache path.)"""
    prompt = _tokens(b=2, t=7, seed=3)
    scanned = _greedy_tokens(*_split('gemma3', True, 'dots'), prompt, 8, True)
    unrolled = _greedy_tokens(
      *_split('gemma3', False, 'dots'), prompt, 8, False
    )
    np.testing.assert_array_equal(np.asarray(scanned), np.asarray(unrolled))

  def test_per_layer_cache_in_a_scanned_model(self):
    """A per-layer cache (unrolled layout) given to a scanned model is
    converted and handed back in the same layout."""
    mdef, base, lora = _split('gemma3', True, 'dots')
    model = lora_lib.merge(mdef, base, lora)
    tokens = _tokens(t=6)
    cache = init_cache(mdef.config, 2, 8)
    logits, new_cache = model(tokens, cache=cache, cache_index=0)
    self.assertIsInstance(new_cache['layers'], list)
    _close(self, logits, model(tokens))
    stacked = init_cache(mdef.config, 2, 8, stacked=True)
    _, new_stacked = model(tokens, cache=stacked, cache_index=0)
    self.assertEqual(new_stacked['layers']['k'].shape[0], 5)
    _close(self, new_stacked['layers']['k'][3], new_cache['layers'][3]['k'])
    # One decode step on the stacked cache == the full forward's last row.
    longer = jnp.concatenate([tokens, tokens[:, :1]], axis=1)
    positions = jnp.full((2, 1), 6, jnp.int32)
    step_logits, _ = model(
      longer[:, 6:],
      positions,
      cache=new_stacked,
      cache_index=6,
    )
    _close(self, step_logits[:, 0], model(longer)[:, 6])

  def test_lora_names_and_peft_round_trip_unchanged(self):
    scanned = _split('llama', True, 'dots')
    unrolled = _split('llama', False, 'dots')
    self.assertEqual(
      lora_lib.lora_modules(scanned[2]), lora_lib.lora_modules(unrolled[2])
    )
    self.assertIn(
      'layers.0.self_attn.q_proj', lora_lib.lora_modules(scanned[2])
    )
    with tempfile.TemporaryDirectory() as d:
      peft_lib.save_peft_adapter(d, scanned[2], LORA, 'tiny')
      back, config = peft_lib.load_peft_adapter(d, scanned[0])
    self.assertEqual(config, LORA)
    for (p, x), (q, y) in zip(
      lora_lib.lora_leaves(back), lora_lib.lora_leaves(scanned[2])
    ):
      self.assertEqual(p, q)
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  def test_equal_models_share_one_compilation(self):
    """ModelDef hashes by value: two splits of equal models, one trace."""
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def logits(mdef, base, lora, tokens):
      traces.append(1)
      return lora_lib.merge(mdef, base, lora)(tokens)

    splits = []
    for _ in range(2):
      model = lora_lib.make_model(_arch('llama'), LORA, seed=0)
      splits.append(lora_lib.split(model))
    self.assertIsNot(splits[0][0], splits[1][0])
    self.assertEqual(splits[0][0], splits[1][0])
    self.assertEqual(hash(splits[0][0]), hash(splits[1][0]))
    tokens = _tokens(t=5)
    for mdef, base, lora in splits:
      logits(mdef, base, lora, tokens)
    self.assertLen(traces, 1)
    self.assertEqual(logits._cache_size(), 1)
    # A different execution setting is a different program.
    other = lora_lib.make_model(_arch('llama'), LORA, seed=0)
    set_layer_execution(other, scan_layers=False, remat='dots')
    self.assertNotEqual(lora_lib.split(other)[0], splits[0][0])

  def test_with_layer_execution_switches_only_the_layout(self):
    """The gradients stage's unrolled def: same base and adapter, same
    per-document rows, the other layout (and remat kept)."""
    from gatoms_jax.method import gradients as grads

    mdef, base, lora = _split('gemma', True, 'dots')
    unrolled = lora_lib.with_layer_execution(
      mdef, base, lora, scan_layers=False
    )
    self.assertEqual(unrolled, _split('gemma', False, 'dots')[0])
    model = lora_lib.merge(unrolled, base, lora)
    self.assertEqual((model.scan_layers, model.remat), (False, 'dots'))
    tokens = np.asarray(_tokens(b=3, t=11))
    mask = np.zeros_like(tokens, bool)
    mask[:, 6:] = True
    rows = [
      grads.GradientExtractor(d, base, lora)(tokens, mask)
      for d in (mdef, unrolled)
    ]
    _close(self, rows[1], rows[0])

  def test_bad_remat_is_rejected(self):
    model = lora_lib.make_model(_arch('llama'), LORA, seed=0)
    with self.assertRaisesRegex(ValueError, 'remat must be one of'):
      set_layer_execution(model, scan_layers=True, remat='dots_saveable')


if __name__ == '__main__':
  absltest.main()
