"""Tests for gatoms_jax/finetune.py and experiments/finetune.py.

One tiny run (configs/tiny_test.py: random 2-layer llama, byte-level
tokenizer, 8 steps) is shared by the loss, export and resume tests. The
SIGKILL resume test is in test_checkpoint.py.
"""

import json
import os
import shutil
import sys
import tempfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from configs import tiny_test  # noqa: E402
from gatoms_jax.demo import accuracy, mixture  # noqa: E402
from gatoms_jax.core import loading  # noqa: E402
from gatoms_jax.core import data as data_lib  # noqa: E402
from gatoms_jax.method import finetune as ft_lib  # noqa: E402
from gatoms_jax.core import losses  # noqa: E402
from gatoms_jax.core.models import config as config_lib  # noqa: E402
from gatoms_jax.core.models import lora as lora_lib  # noqa: E402
from gatoms_jax.core.models.transformer import LoraConfig, Transformer  # noqa: E402

import tiny_tokenizer  # noqa: E402

STEPS = tiny_test.get_config().finetune.steps


def _config(tokenizer_dir):
  c = tiny_test.get_config()
  c.model.tokenizer = tokenizer_dir
  return c


def _assert_trees_close(test, a, b, atol):
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


class FinetuneRunTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp(prefix='test_finetune_')
    cls.tok_dir = tiny_tokenizer.save(os.path.join(cls.dir, 'tokenizer'))
    cls.config = _config(cls.tok_dir)
    cls.result = ft_lib.finetune(
      cls.config, os.path.join(cls.dir, 'reference'), progress=False
    )

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir, ignore_errors=True)
    super().tearDownClass()

  def test_loss_decreases(self):
    r = self.result
    train = [h['train_loss'] for h in r.history if 'train_loss' in h]
    self.assertLen(train, STEPS)
    # A random model at ln(259) ≈ 5.56 nats; 8 steps of this LoRA lower both
    # losses by ≈ 0.3 nats, batch-to-batch noise is ≈ 0.05.
    self.assertLess(np.mean(train[-3:]), np.mean(train[:2]) - 0.1)
    self.assertLess(r.heldout_loss_after, r.heldout_loss_before - 0.1)
    self.assertEqual(
      [h['step'] for h in r.history if 'heldout_loss' in h], [0, 4, 8]
    )
    self.assertIsNone(r.resumed_from_step)
    self.assertGreater(r.tokens_per_s, 0)

  def test_exports_load_back(self):
    from gatoms_jax.core.models import peft as peft_lib

    r = self.result
    for name in ('adapter_config.json', 'adapter_model.safetensors'):
      self.assertTrue(os.path.isfile(os.path.join(r.adapter_dir, name)))
    tree, lora_config = peft_lib.load_peft_adapter(
      r.adapter_dir, r.mdef, dtype=jnp.float32
    )
    self.assertEqual(lora_config, loading.lora_config_from(self.config))
    # safetensors stores the float32 bits unchanged.
    _assert_trees_close(self, tree, r.lora, atol=0)
    _assert_trees_close(
      self, ft_lib.load_lora(r.lora_dir, r.mdef), r.lora, atol=0
    )
    with open(os.path.join(r.workdir, 'result.json')) as f:
      saved = json.load(f)
    self.assertAlmostEqual(saved['heldout_loss_after'], r.heldout_loss_after)

  def test_rerun_of_finished_run_resumes_at_the_end(self):
    workdir = os.path.join(self.dir, 'finished')
    shutil.copytree(self.result.workdir, workdir)
    again = ft_lib.finetune(self.config, workdir, progress=False)
    self.assertEqual(again.resumed_from_step, STEPS)
    _assert_trees_close(self, again.lora, self.result.lora, atol=0)
    self.assertEqual(again.history, self.result.history)

  def test_changed_config_refuses_to_resume(self):
    workdir = os.path.join(self.dir, 'changed')
    shutil.copytree(self.result.workdir, workdir)
    config = _config(self.tok_dir)
    config.finetune.learning_rate = 1e-3
    with self.assertRaisesRegex(ValueError, 'finetune.learning_rate'):
      ft_lib.finetune(config, workdir, progress=False)

  def test_greedy_accuracy_runs(self):
    r = self.result
    docs = [
      d
      for d in mixture.generate_mixture(30, 0)
      if d.label in ('arithmetic', 'yes_no')
    ][:3]
    scores = accuracy.greedy_accuracy(
      r.mdef,
      r.base,
      r.lora,
      r.tokenizer,
      docs,
      eos_ids=[r.tokenizer.convert_tokens_to_ids('<|im_end|>')],
      max_new_tokens=4,
      progress=False,
    )
    self.assertEqual(sum(s['n'] for s in scores.values()), 3)
    for s in scores.values():
      self.assertLen(s['examples'], s['n'])


class CliTest(absltest.TestCase):
  def test_one_step_smoke(self):
    # The app's flags go on the global FLAGS; remove them afterwards so that
    # other apps imported in this process can define theirs.
    before = set(flags.FLAGS)

    def cleanup():
      for name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, name)
      sys.modules.pop('experiments.finetune', None)

    self.addCleanup(cleanup)
    from experiments import finetune as cli

    tmp = tempfile.mkdtemp(prefix='test_finetune_cli_')
    self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
    tok = tiny_tokenizer.save(os.path.join(tmp, 'tokenizer'))
    workdir = os.path.join(tmp, 'run')
    argv = [
      'finetune',
      f'--config={os.path.join(REPO, "configs", "tiny_test.py")}',
      f'--config.model.tokenizer={tok}',
      '--config.finetune.steps=1',
      f'--workdir={workdir}',
    ]
    # config_flags reads the --config.* overrides from sys.argv.
    with mock.patch.object(sys, 'argv', argv):
      flags.FLAGS(argv)
    self.addCleanup(flags.FLAGS.unparse_flags)
    with self.assertRaises(Exception):  # app.UsageError
      cli.main(['finetune', 'extra'])
    cli.main(['finetune'])
    run_dir = os.path.join(workdir, 'tiny_test')
    with open(os.path.join(run_dir, 'config.json')) as f:
      self.assertEqual(json.load(f)['finetune']['steps'], 1)
    stage_dir = os.path.join(run_dir, 'finetune')
    with open(os.path.join(stage_dir, 'result.json')) as f:
      self.assertEqual(json.load(f)['steps'], 1)
    self.assertTrue(os.path.isdir(os.path.join(stage_dir, 'checkpoints', '1')))
    self.assertTrue(os.path.exists(os.path.join(stage_dir, 'manifest.json')))


class GradAccumTest(parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tok = tiny_tokenizer.tiny_tokenizer()
    docs = mixture.generate_mixture(16, 0)
    # Documents whose answer is cut off entirely are dropped; 8 remain.
    cls.docs = data_lib.tokenize_documents(docs, tok, 128)[0][:8]
    assert len(cls.docs) == 8
    arch = config_lib.tiny_llama(vocab_size=len(tok))
    model = Transformer(
      arch, lora=LoraConfig(rank=4, alpha=8.0), rngs=nnx.Rngs(0)
    )
    cls.mdef, cls.base, lora = lora_lib.split(model)
    # Random B so that lora_a has gradients too (B = 0 zeroes them).
    cls.lora = lora_lib.init_lora(lora, 0, b_std=0.05)

  def _batch(self, rows, width, scale):
    batch = next(
      data_lib.make_batches([self.docs[i] for i in rows], len(rows), width)
    )
    index, weight = losses.loss_positions(batch.loss_mask, 128)
    return {
      'tokens': jnp.asarray(batch.tokens),
      'index': jnp.asarray(index),
      'weight': jnp.asarray(weight),
      'scale': jnp.float32(scale),
    }

  @parameterized.parameters('sgd', 'adamw')
  def test_two_micro_batches_equal_one_double_batch(self, kind):
    ft = tiny_test.get_config().finetune
    ft.warmup_steps = 0
    if kind == 'sgd':  # sensitive to the gradient's scale, unlike Adam
      one = optax.sgd(0.5)
      two = optax.MultiSteps(optax.sgd(0.5), every_k_schedule=2)
    else:
      ft.grad_accum = 1
      one = ft_lib.make_optimizer(ft)
      ft.grad_accum = 2
      two = ft_lib.make_optimizer(ft)
    first, second, both = range(4), range(4, 8), range(8)
    n = float(self._batch(both, 128, 1.0)['weight'].sum())
    step1 = ft_lib.make_train_step(self.mdef, one)
    big, _, aux = step1(
      self.lora, one.init(self.lora), self.base, self._batch(both, 128, 1 / n)
    )
    step2 = ft_lib.make_train_step(self.mdef, two)
    state = two.init(self.lora)
    mid, state, aux1 = step2(
      self.lora, state, self.base, self._batch(first, 128, 2 / n)
    )
    # MultiSteps applies nothing until the k-th micro-batch.
    _assert_trees_close(self, mid, self.lora, atol=0)
    acc, state, aux2 = step2(
      mid, state, self.base, self._batch(second, 128, 2 / n)
    )
    # Same sums in another order: fp32 rounding, params are O(0.1-1).
    if kind == 'sgd':
      _assert_trees_close(self, acc, big, atol=2e-6)
    else:
      # Adam's first step moves each coordinate by ~lr·g/(|g| + eps): where
      # the gradient is at the level of fp32 rounding (|g| ≲ 1e-6 here) the
      # order of the sums decides its size, up to lr. Elsewhere the two runs
      # agree to rounding.
      sgd = optax.sgd(1.0)
      grad_step = ft_lib.make_train_step(self.mdef, sgd)
      moved_by_g, _, _ = grad_step(
        self.lora, sgd.init(self.lora), self.base, self._batch(both, 128, 1 / n)
      )
      lr = float(ft.learning_rate)
      for x, y, p0, p1 in zip(
        *map(jax.tree.leaves, (acc, big, self.lora, moved_by_g))
      ):
        g = np.abs(np.asarray(p0) - np.asarray(p1))
        diff = np.abs(np.asarray(x) - np.asarray(y))
        np.testing.assert_array_less(diff[g > 1e-6], 2e-6)
        np.testing.assert_array_less(diff, 1.01 * lr)
    moved = max(
      float(jnp.abs(a - b).max())
      for a, b in zip(jax.tree.leaves(big), jax.tree.leaves(self.lora))
    )
    self.assertGreater(moved, 1e-3)
    # Summed CE of the halves adds up to the whole (fp32, ~1e3 total).
    self.assertAlmostEqual(
      float(aux1['loss_sum'] + aux2['loss_sum']),
      float(aux['loss_sum']),
      delta=1e-2,
    )


class DataScheduleTest(absltest.TestCase):
  def test_order_is_a_pure_function_of_seed_and_step(self):
    docs = [
      data_lib.TokenizedDoc(
        doc_id=str(i),
        index=i,
        tokens=np.arange(5 + i % 7, dtype=np.int32),
        loss_mask=np.ones(5 + i % 7, np.float32),
      )
      for i in range(20)
    ]
    kw = dict(batch_size=3, grad_accum=2, bucket_multiple=4, loss_multiple=4)
    a = ft_lib.DataSchedule(docs, seed=1, **kw)
    b = ft_lib.DataSchedule(docs, seed=1, **kw)
    c = ft_lib.DataSchedule(docs, seed=2, **kw)
    steps = [9, 0, 3, 9, 5]  # any order, repeats
    for s in steps:
      for x, y in zip(a.micro_batches(s), b.micro_batches(s)):
        np.testing.assert_array_equal(x['tokens'], y['tokens'])
    self.assertEqual(a.position(5), divmod(10, 7))
    # Another seed gives another order (documents differ by length only).
    order = lambda sched: [
      tuple(m['weight'].sum(axis=1))
      for s in range(7)
      for m in sched.micro_batches(s)
    ]
    self.assertNotEqual(order(a), order(c))
    # Every epoch visits every document once (7 batches of 3 ≥ 20 docs).
    counts = sum(
      (m['weight'] > 0).any(axis=1).sum()
      for s in range(7)
      for m in a.micro_batches(s)
    )
    self.assertEqual(counts, 2 * len(docs))


class ScoringTest(parameterized.TestCase):
  @parameterized.parameters(
    ('arithmetic', '12 + 5 = 17', 'The answer is 17.', True),
    (
      'arithmetic',
      '(3 + 4) × 2 = 7 × 2 = 14',
      '(3 + 4) × 2 = 7 × 2 = 14',
      True,
    ),
    ('arithmetic', '12 + 5 = 17', '12 + 5 = 18', False),
    ('arithmetic', '1000 + 234 = 1234', 'It is 1,234', True),
    ('arithmetic', '12 + 5 = 17', 'Let me think', False),
    ('yes_no', 'Yes, 13 is a prime number.', 'yes it is', True),
    ('yes_no', 'False. The chemical symbol is Fe.', 'True.', False),
    ('yes_no', 'No. The capital is Paris.', '  No!', True),
  )
  def test_score_answer(self, task, reference, answer, expected):
    self.assertEqual(accuracy.score_answer(task, reference, answer), expected)

  def test_unknown_task_raises(self):
    with self.assertRaises(ValueError):
      accuracy.score_answer('email', 'a', 'b')


if __name__ == '__main__':
  absltest.main()
