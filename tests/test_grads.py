"""Tests for gatoms_jax.method.gradients: per-document LoRA gradients and their store."""

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import jax
import numpy as np
from absl.testing import absltest, parameterized

import gatoms_jax
from gatoms_jax.method import gradients as grads
from gatoms_jax.core import sharding
from gatoms_jax.core.data.tokenize import TokenizedDoc
from gatoms_jax.core.losses import summed_ce
from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.transformer import LoraConfig
from gatoms_jax.core.store import GradientStore, layout_from_tree

# q/v as in the paper, plus an MLP module (different in/out widths).
LORA = LoraConfig(rank=4, alpha=8.0, targets=('q_proj', 'v_proj', 'down_proj'))
CONFIGS = {'llama': config_lib.tiny_llama, 'gemma3': config_lib.tiny_gemma3}


@functools.lru_cache(maxsize=None)  # one ModelDef: shared compilations
def make_split(family, seed=0):
  model = lora_lib.make_model(CONFIGS[family](), LORA, seed=seed)
  mdef, base, lora = lora_lib.split(model)
  # A random B: at B = 0 every lora_a gradient is exactly zero.
  return mdef, base, lora_lib.init_lora(lora, seed, b_std=0.1)


def make_docs(n, seed=0, lengths=(17, 40), vocab=256):
  """Chat-like docs: a prompt (mask 0), then 1-2 assistant spans (mask 1).

  Few distinct lengths: the jitted one-document reference compiles per length.
  """
  rng = np.random.default_rng(seed)
  docs = []
  for i in range(n):
    length = int(lengths[i % len(lengths)])
    tokens = rng.integers(1, vocab, length).astype(np.int32)
    mask = np.zeros(length, np.float32)
    start = int(rng.integers(1, length - 2))
    mask[start:] = 1.0
    if length - start > 6 and rng.random() < 0.5:  # a second user turn
      mask[start + 2 : start + 4] = 0.0
    if rng.random() < 0.3:  # trailing tokens without loss
      mask[-2:] = 0.0
    docs.append(TokenizedDoc(f'doc-{i:03d}', i, tokens, mask))
  return docs


@functools.lru_cache(maxsize=None)
def _reference_fn(mdef):
  @jax.jit
  def row(lora, base, tokens, mask):
    def loss(l):
      logits = lora_lib.merge(mdef, base, l)(tokens[None])
      return summed_ce(logits, tokens[None], mask[None])[0]

    return lora_lib.flatten(jax.grad(loss)(lora))

  return row


def reference_rows(mdef, base, lora, docs):
  """One document at a time at its own length, full logits, plain jax.grad."""
  row = _reference_fn(mdef)
  return np.stack(
    [np.asarray(row(lora, base, d.tokens, d.loss_mask)) for d in docs]
  )


def rel_err(a, b):
  """Per-row relative L2 error ‖a − b‖ / ‖b‖."""
  return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


class PerExampleTest(parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.docs = make_docs(9)
    cls.splits = {f: make_split(f) for f in CONFIGS}
    cls.refs = {f: reference_rows(*cls.splits[f], cls.docs) for f in CONFIGS}

  @parameterized.parameters(
    *[(f, v) for f in CONFIGS for v in ('taps', 'taps_packed', 'vmap')],
  )
  def test_matches_one_document_at_a_time(self, family, variant):
    kw = {
      'taps': {},
      # Several docs per row; gemma3's sliding window (4) then also has to
      # stop at document boundaries.
      'taps_packed': {'pack': True, 'pack_width': 64},
      'vmap': {'method': 'vmap'},
    }[variant]
    kw.setdefault('tokens_per_slab', 4096)  # one slab: one compilation
    mdef, base, lora = self.splits[family]
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    ex = grads.GradientExtractor(mdef, base, lora, mesh=mesh, **kw)
    got = ex.gradients(self.docs)
    ref = self.refs[family]
    self.assertEqual(got.shape, (len(self.docs), lora_lib.num_params(lora)))
    # fp32 round-off of two summation orders (batched, gathered, padded vs
    # one doc with full logits); observed ≤ 2e-6.
    self.assertLess(rel_err(got, ref).max(), 2e-5)

  def test_sharded_equals_one_device(self):
    mdef, base, lora = self.splits['llama']
    one = sharding.make_mesh(devices=jax.devices()[:1])
    four = sharding.make_mesh(devices=jax.devices()[:4])
    self.assertLen(four.devices, 4)
    kw = {'tokens_per_slab': 4096}
    a = grads.GradientExtractor(mdef, base, lora, mesh=one, **kw)
    b = grads.GradientExtractor(mdef, base, lora, mesh=four, **kw)
    self.assertEqual(b.n_devices, 4)
    ga, gb = a.gradients(self.docs), b.gradients(self.docs)
    # Same math; only the row count padding (4 | R) and per-device loss
    # groups differ, so any difference is fp32 round-off.
    self.assertLess(rel_err(gb, ga).max(), 1e-5)

  def test_bfloat16_compute_close(self):
    mdef, base, lora = self.splits['llama']
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    ex = grads.GradientExtractor(
      mdef,
      base,
      lora,
      mesh=mesh,
      compute_dtype='bfloat16',
      tokens_per_slab=4096,
    )
    got = ex.gradients(self.docs)
    self.assertEqual(got.dtype, np.float32)
    self.assertTrue(np.isfinite(got).all())
    # bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2 % per op);
    # through two layers and a 256-way softmax the rows drift by a few %,
    # far from the ~100 % of a wrong gradient.
    self.assertLess(rel_err(got, self.refs['llama']).max(), 0.1)


class PlanTest(absltest.TestCase):
  def test_every_document_once_and_loss_positions_only(self):
    docs = make_docs(40, seed=3, lengths=range(6, 91, 7))
    prepared = [grads._prepare(d.tokens, d.loss_mask) for d in docs]
    for kw in ({}, {'pack': True, 'pack_width': 128}, {'group_rows': False}):
      slabs = grads.plan_slabs(
        prepared, list(range(40)), tokens_per_slab=256, row_multiple=2, **kw
      )
      seen = np.concatenate([s.doc_index[s.doc_index >= 0] for s in slabs])
      self.assertCountEqual(seen.tolist(), range(40))
      for s in slabs:
        rows, width, groups, loss_width, _ = s.shape
        self.assertEqual(rows % 2, 0)
        self.assertEqual(width % 16, 0)
        # Every scored position is a real token of the slab.
        seg = s.segments.reshape(groups, -1)
        real = s.weight > 0
        idx = s.index[real]
        g = np.nonzero(real)[0]
        self.assertTrue((seg[g, idx] > 0).all())
      n_loss = sum(int((s.weight > 0).sum()) for s in slabs)
      self.assertEqual(n_loss, sum(p.n_loss for p in prepared))

  def test_group_calls_balanced_with_empty_slabs(self):
    docs = make_docs(10, seed=4, lengths=(20,))
    prepared = [grads._prepare(d.tokens, d.loss_mask) for d in docs]
    slabs = grads.plan_slabs(prepared, list(range(10)), tokens_per_slab=64)
    self.assertLen(slabs, 5)  # 2 rows of 32 tokens each
    calls = grads.group_calls(slabs, 2)
    self.assertEqual([c.tokens.shape[0] for c in calls], [2, 2, 2])
    empty = [(c.weight[i] == 0).all() for c in calls for i in range(2)]
    self.assertEqual(sum(empty), 1)

  def test_document_cut_after_last_scored_position(self):
    tokens = np.arange(10, dtype=np.int32)
    mask = np.array([0, 0, 1, 1, 0, 1, 0, 0, 0, 0], np.float32)
    d = grads._prepare(tokens, mask)
    self.assertEqual(d.n_in, 5)  # position 4 predicts token 5
    np.testing.assert_array_equal(d.loss_pos, [1, 2, 4])
    np.testing.assert_array_equal(d.targets, [2, 3, 5])
    self.assertIsNone(grads._prepare(tokens, np.eye(10, dtype=np.float32)[0]))


_CHILD = """
import sys, time
from gatoms_jax.method import gradients as grads
from gatoms_jax.core.store import GradientStore
import test_grads as t

path = sys.argv[1]
mdef, base, lora = t.make_split('llama')
store = GradientStore.open(path)
append = store.append_chunk

def slow_append(ids, rows):  # commit, report, then give the parent time
  n = append(ids, rows)
  print(len(ids), flush=True)
  time.sleep(0.5)
  return n

store.append_chunk = slow_append
ex = grads.GradientExtractor(mdef, base, lora, **t.KILL_KW)
grads.extract_to_store(ex, t.store_docs(), store, chunk_size=2, progress=False)
"""

# Several shapes and several slabs per call (lax.map, skipped empty slabs).
EXTRACT_KW = {'tokens_per_slab': 100, 'slabs_per_call': 2}
# One slab per run (fewer compilations); chunk_size=2 still gives 6 chunks.
KILL_KW = {'tokens_per_slab': 4096}


def store_docs():
  """12 docs, one of them without any assistant token."""
  docs = make_docs(12, seed=5)
  d = docs[4]
  docs[4] = TokenizedDoc(
    d.doc_id, d.index, d.tokens, np.zeros_like(d.loss_mask)
  )
  return docs


class StoreTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp(prefix='test_grads_')
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
    self.split = make_split('llama')
    self.layout = layout_from_tree(self.split[2])

  def _extract(self, path, kw=EXTRACT_KW):
    store = GradientStore.open_or_create(path, self.layout)
    ex = grads.GradientExtractor(*self.split, **kw)
    stats = grads.extract_to_store(
      ex, store_docs(), store, chunk_size=2, progress=False
    )
    return stats, GradientStore.open(path)

  def test_writes_all_docs_and_skips_empty(self):
    docs = store_docs()
    stats, store = self._extract(os.path.join(self.dir, 'a'))
    self.assertEqual(stats['n_docs'], 12)
    self.assertEqual(stats['n_computed'], 11)
    self.assertEqual(stats['n_skipped'], 1)
    self.assertEqual(store.skipped, {'doc-004': grads.NO_TARGET_REASON})
    want = [d.doc_id for d in docs if d.doc_id != 'doc-004']
    self.assertCountEqual(store.ids, want)
    keep = [d for d in docs if d.doc_id != 'doc-004']
    ref = reference_rows(*self.split, keep)
    # fp32 round-off only (see PerExampleTest).
    self.assertLess(rel_err(store.rows(want), ref).max(), 2e-5)
    # A second run finds everything done and computes nothing.
    stats, _ = self._extract(os.path.join(self.dir, 'a'))
    self.assertEqual((stats['n_resumed'], stats['n_computed']), (12, 0))

  def test_resume_after_sigkill(self):
    path = os.path.join(self.dir, 'killed')
    GradientStore.create(path, self.layout)
    repo_root = os.path.dirname(os.path.dirname(gatoms_jax.__file__))
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    # The child imports this module's helpers, so both roots go on its path.
    env = dict(
      os.environ,
      PYTHONPATH=os.pathsep.join([repo_root, tests_dir]),
      JAX_PLATFORMS='cpu',
    )
    env['XLA_FLAGS'] = ''  # one device: a faster start
    with tempfile.TemporaryFile('w+') as err:
      child = subprocess.Popen(
        [sys.executable, '-c', _CHILD, path],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=env,
        cwd=repo_root,
      )
      line = child.stdout.readline()  # the first chunk is committed
      child.send_signal(signal.SIGKILL)
      child.wait()
      child.stdout.close()
      if not line:
        err.seek(0)
        self.fail(f'child ended before committing a chunk: {err.read()}')
    self.assertEqual(child.returncode, -signal.SIGKILL)
    before = GradientStore.open(path)
    n_before = before.n_rows + len(before.skipped)
    self.assertGreaterEqual(before.n_rows, 2)
    self.assertLess(before.n_rows, 11)  # killed mid-way

    stats, resumed = self._extract(path, KILL_KW)
    # Finished chunks (and the recorded skip) were not recomputed.
    self.assertEqual(stats['n_resumed'], n_before)
    self.assertEqual(stats['n_computed'], 11 - before.n_rows)
    ids = list(resumed.ids)
    self.assertLen(set(ids), len(ids))  # no duplicates
    self.assertEqual(resumed.skipped, {'doc-004': grads.NO_TARGET_REASON})
    _, whole = self._extract(os.path.join(self.dir, 'whole'), KILL_KW)
    self.assertCountEqual(ids, whole.ids)
    # The resumed run lays out fewer docs in different slabs: fp32 round-off.
    self.assertLess(rel_err(resumed.rows(ids), whole.rows(ids)).max(), 1e-5)


if __name__ == '__main__':
  absltest.main()
