"""Tests for gatoms_jax.core.store.GradientStore (on-disk per-document gradients)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl.testing import absltest, parameterized

import gatoms_jax
from gatoms_jax.core import store as store_lib
from gatoms_jax.core.store import GradientStore

# A small LoRA-like layout: two layers, q (4->4) and v (4->2), rank 2.
LAYOUT = [
  ('layers.0.q_proj.lora_a', (4, 2)),
  ('layers.0.q_proj.lora_b', (2, 4)),
  ('layers.0.v_proj.lora_a', (4, 2)),
  ('layers.0.v_proj.lora_b', (2, 2)),
  ('layers.1.q_proj.lora_a', (4, 2)),
  ('layers.1.q_proj.lora_b', (2, 4)),
]
D = sum(int(np.prod(s)) for _, s in LAYOUT)  # 44
META = {'model': 'random:tiny', 'targets': ['q_proj', 'v_proj'], 'hash': 'a1'}

# Shared by the test and the SIGKILLed child: the row a doc id must end up as.
_ROW_FN = """
def expected_row(doc_id, d):
  rng = np.random.default_rng(int(doc_id.split('-')[1]))
  return rng.standard_normal(d, dtype=np.float32)
"""
_ns = {'np': np}
exec(_ROW_FN, _ns)
expected_row = _ns['expected_row']

_CHILD = (
  """
import sys, time
import numpy as np
from gatoms_jax.core.store import GradientStore
"""
  + _ROW_FN
  + """
path, n_chunks, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = GradientStore.open(path)
done = store.completed_ids()
for c in range(n_chunks):
  ids = [f'doc-{c * per + r}' for r in range(per)]
  if done.issuperset(ids):
    continue
  store.append_chunk(ids, np.stack([expected_row(i, store.dim) for i in ids]))
  print(c, flush=True)
  time.sleep(0.002)
"""
)


def _ids(start, n):
  return [f'doc-{i}' for i in range(start, start + n)]


def _rows(ids, d=D):
  return np.stack([expected_row(i, d) for i in ids])


class StoreTestBase(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    # Not self.create_tempdir(): it needs absl flags parsed, pytest does not.
    self.dir = tempfile.mkdtemp(prefix='test_store_')
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
    self.path = os.path.join(self.dir, 'store')

  def _filled(self, sizes=(3, 5, 2), storage_dtype='float32'):
    store = GradientStore.create(self.path, LAYOUT, storage_dtype, META)
    start = 0
    for n in sizes:
      store.append_chunk(_ids(start, n), _rows(_ids(start, n)))
      start += n
    return store


class RoundTripTest(StoreTestBase):
  def test_float32_exact_and_reopen(self):
    store = self._filled()
    ids = _ids(0, 10)
    for s in (store, GradientStore.open(self.path)):
      self.assertEqual(s.n_rows, 10)
      self.assertLen(s, 10)
      self.assertEqual(s.dim, D)
      self.assertEqual(s.ids, tuple(ids))
      self.assertEqual(s.layout, store_lib.normalize_layout(LAYOUT))
      self.assertEqual(s.metadata, META)
      np.testing.assert_array_equal(s.rows(ids), _rows(ids))

  def test_bfloat16_rounding(self):
    store = self._filled(storage_dtype='bfloat16')
    ids = _ids(0, 10)
    got = GradientStore.open(self.path).rows(ids)
    want = _rows(ids)
    self.assertEqual(got.dtype, np.float32)
    # Exactly round-to-nearest-even bf16, widened to fp32.
    np.testing.assert_array_equal(
      got, want.astype(ml_dtypes.bfloat16).astype(np.float32)
    )
    # bf16 keeps 8 significant bits, so rounding to nearest has relative error
    # at most 2^-8 (unit roundoff) for normal numbers like these N(0,1) draws.
    np.testing.assert_array_less(
      np.abs(got - want), 2**-8 * np.abs(want) + 1e-38
    )
    self.assertEqual(store.storage_dtype, 'bfloat16')

  def test_bfloat16_halves_disk(self):
    f32 = GradientStore.create(os.path.join(self.dir, 'a'), LAYOUT)
    b16 = GradientStore.create(
      os.path.join(self.dir, 'b'), LAYOUT, storage_dtype='bfloat16'
    )
    for s in (f32, b16):
      s.append_chunk(_ids(0, 64), _rows(_ids(0, 64)))
    size = lambda s: os.path.getsize(os.path.join(s.path, 'chunk_000000.npy'))
    self.assertEqual(size(f32) - 128, 2 * (size(b16) - 128))  # 128: npy header

  def test_on_disk_format(self):
    self._filled(sizes=(3,), storage_dtype='bfloat16')
    with open(os.path.join(self.path, 'meta.json')) as f:
      meta = json.load(f)
    self.assertEqual(meta['format'], 'gatoms_jax.GradientStore')
    self.assertEqual(meta['version'], 1)
    self.assertEqual(meta['dim'], D)
    self.assertEqual(meta['storage_dtype'], 'bfloat16')
    self.assertEqual(
      meta['layout'][0], {'path': 'layers.0.q_proj.lora_a', 'shape': [4, 2]}
    )
    self.assertEqual(meta['metadata'], META)
    arr = np.load(os.path.join(self.path, 'chunk_000000.npy'))
    self.assertEqual((arr.shape, arr.dtype), ((3, D), np.uint16))
    with open(os.path.join(self.path, 'chunk_000000.ids.json')) as f:
      self.assertEqual(json.load(f), {'ids': _ids(0, 3)})

  @parameterized.parameters('float32', 'bfloat16')
  def test_jax_array_input(self, dtype):
    store = GradientStore.create(self.path, LAYOUT, storage_dtype=dtype)
    x = _rows(_ids(0, 4))
    store.append_chunk(_ids(0, 4), jnp.asarray(x))
    store.append_chunk(_ids(4, 4), jnp.asarray(x, jnp.bfloat16))
    # bf16 input is exact in either storage dtype.
    np.testing.assert_array_equal(
      store.rows(_ids(4, 4)), x.astype(ml_dtypes.bfloat16).astype(np.float32)
    )


class ReadTest(StoreTestBase):
  @parameterized.parameters(None, 1, 3, 4, 10, 100)
  def test_iter_chunks_reblocks(self, chunk_rows):
    store = self._filled(sizes=(3, 5, 2), storage_dtype='bfloat16')
    blocks = list(store.iter_chunks(chunk_rows))
    sizes = [len(i) for i, _ in blocks]
    if chunk_rows is None:
      self.assertEqual(sizes, [3, 5, 2])
    else:
      full, rest = divmod(10, chunk_rows)
      self.assertEqual(sizes, [chunk_rows] * full + ([rest] if rest else []))
    all_ids = [i for ids, _ in blocks for i in ids]
    self.assertEqual(all_ids, list(store.ids))
    for ids, rows in blocks:
      self.assertEqual((rows.dtype, rows.shape), (np.float32, (len(ids), D)))
      np.testing.assert_array_equal(rows, store.rows(ids))

  def test_rows_in_requested_order(self):
    store = self._filled()
    ids = ['doc-9', 'doc-0', 'doc-4', 'doc-3', 'doc-0']  # across chunks, dup
    np.testing.assert_array_equal(store.rows(ids), _rows(ids))
    np.testing.assert_array_equal(store.row('doc-7'), expected_row('doc-7', D))
    with self.assertRaisesRegex(KeyError, "'doc-77'.*'nope'|2 doc ids"):
      store.rows(['doc-1', 'doc-77', 'nope'])

  def test_cosine_matches_numpy(self):
    store = self._filled()
    ids = ['doc-8', 'doc-1', 'doc-5', 'doc-2']
    x = _rows(ids).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want = x @ x.T
    got = store.cosine_similarity(ids)
    self.assertEqual(got.shape, (4, 4))
    # fp32 dot products of 44 unit-norm terms: error ~ 44 * 2^-24 << 1e-5.
    np.testing.assert_allclose(got, want, atol=1e-5)
    off = want[~np.eye(4, dtype=bool)].mean()
    self.assertAlmostEqual(store.mean_pairwise_cosine(ids), off, delta=1e-5)
    with self.assertRaisesRegex(ValueError, 'repeated'):
      store.mean_pairwise_cosine(['doc-1', 'doc-1'])
    with self.assertRaisesRegex(ValueError, '>= 2'):
      store.mean_pairwise_cosine(['doc-1'])

  def test_cosine_tiny_rows_do_not_underflow(self):
    store = GradientStore.create(self.path, LAYOUT)
    x = _rows(_ids(0, 2)) * np.float32(1e-30)  # squares underflow fp32
    store.append_chunk(_ids(0, 2), x)
    c = store.cosine_similarity(_ids(0, 2))
    want = _rows(_ids(0, 2)).astype(np.float64)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    # Same fp32 accuracy argument as test_cosine_matches_numpy.
    np.testing.assert_allclose(c, want @ want.T, atol=1e-5)


class LayoutTest(StoreTestBase):
  def _tree(self, batch=()):
    rng = np.random.default_rng(0)
    t = {'layers': [{}, {}]}
    for path, shape in LAYOUT:
      _, i, mod, ab = path.split('.')
      t['layers'][int(i)].setdefault(mod, {})[ab] = rng.standard_normal(
        batch + shape
      ).astype(np.float32)
    return t

  def test_flatten_unflatten_round_trip(self):
    store = GradientStore.create(self.path, LAYOUT)
    tree = self._tree()
    row = store.flatten(tree)
    self.assertEqual(row.shape, (D,))
    # Row-major concatenation in layout order.
    np.testing.assert_array_equal(
      row[:8], tree['layers'][0]['q_proj']['lora_a'].reshape(-1)
    )
    flat = store.unflatten(row)
    self.assertEqual(list(flat), [p for p, _ in LAYOUT])
    np.testing.assert_array_equal(
      flat['layers.1.q_proj.lora_b'], (tree['layers'][1]['q_proj']['lora_b'])
    )
    np.testing.assert_array_equal(store.flatten(flat), row)  # a path dict
    back = store.unflatten(row, like=tree)
    jax.tree.map(np.testing.assert_array_equal, back, tree)
    with self.assertRaisesRegex(ValueError, 'shape'):
      store.unflatten(row[:-1])

  def test_layout_from_tree_and_jit_batched(self):
    tree = self._tree(batch=(3,))
    layout = store_lib.layout_from_tree(self._tree())
    self.assertEqual(store_lib.layout_dim(layout), D)
    rows = jax.jit(lambda t: store_lib.flatten_tree(t, layout))(tree)
    self.assertEqual(rows.shape, (3, D))
    np.testing.assert_array_equal(
      rows[1],
      store_lib.flatten_tree(jax.tree.map(lambda x: x[1], tree), layout),
    )
    back = store_lib.unflatten_row(rows, layout, like=tree)
    jax.tree.map(np.testing.assert_array_equal, back, tree)

  def test_flatten_rejects_mismatch(self):
    store = GradientStore.create(self.path, LAYOUT)
    tree = self._tree()
    tree['layers'][0]['q_proj']['lora_a'] = np.zeros((4, 3))
    with self.assertRaisesRegex(ValueError, 'layers.0.q_proj.lora_a'):
      store.flatten(tree)
    del tree['layers'][1]['q_proj']
    with self.assertRaisesRegex(ValueError, 'missing paths'):
      store.flatten(tree)

  def test_bad_layout(self):
    with self.assertRaisesRegex(ValueError, 'twice'):
      store_lib.normalize_layout([('a', (2,)), ('a', (3,))])
    with self.assertRaisesRegex(ValueError, 'positive'):
      store_lib.normalize_layout({'a': (2, 0)})


class WriteValidationTest(StoreTestBase):
  def test_duplicate_ids_rejected(self):
    store = self._filled(sizes=(3,))
    with self.assertRaisesRegex(ValueError, "already stored: 'doc-1'"):
      store.append_chunk(['doc-7', 'doc-1'], _rows(['doc-7', 'doc-1']))
    with self.assertRaisesRegex(ValueError, "within the chunk: 'doc-7'"):
      store.append_chunk(['doc-7', 'doc-7'], _rows(['doc-7', 'doc-7']))
    self.assertEqual(store.n_rows, 3)
    self.assertEqual(GradientStore.open(self.path).n_rows, 3)

  def test_non_finite_rejected_naming_id(self):
    store = self._filled(sizes=(2,))
    ids = _ids(2, 3)
    for bad in (np.nan, np.inf):
      x = _rows(ids)
      x[1, 5] = bad
      with self.assertRaisesRegex(ValueError, "non-finite.*'doc-3'"):
        store.append_chunk(ids, x)
    self.assertEqual(GradientStore.open(self.path).ids, tuple(_ids(0, 2)))
    self.assertEqual(
      sorted(os.listdir(self.path)),
      ['chunk_000000.ids.json', 'chunk_000000.npy', 'meta.json'],
    )

  def test_bf16_overflow_and_zero_rows_rejected(self):
    store = GradientStore.create(self.path, LAYOUT, 'bfloat16')
    x = _rows(_ids(0, 2))
    x[0, 0] = 3.4e38  # finite in fp32, rounds to inf in bf16
    with self.assertRaisesRegex(ValueError, "overflows bfloat16.*'doc-0'"):
      store.append_chunk(_ids(0, 2), x)
    x = _rows(_ids(0, 2))
    x[1] = 0.0
    with self.assertRaisesRegex(
      ValueError, "all-zero.*'doc-1'.*record_skipped"
    ):
      store.append_chunk(_ids(0, 2), x)

  def test_shape_and_dtype_validated(self):
    store = GradientStore.create(self.path, LAYOUT)
    with self.assertRaisesRegex(ValueError, r'shape \(2, 43\)'):
      store.append_chunk(_ids(0, 2), np.ones((2, D - 1), np.float32))
    with self.assertRaisesRegex(ValueError, 'shape'):
      store.append_chunk(_ids(0, 3), np.ones((2, D), np.float32))
    with self.assertRaisesRegex(TypeError, 'floating'):
      store.append_chunk(_ids(0, 2), np.ones((2, D), np.int32))
    with self.assertRaisesRegex(TypeError, 'str'):
      store.append_chunk([1, 2], np.ones((2, D), np.float32))
    self.assertEqual(store.append_chunk([], np.zeros((0, D), np.float32)), 0)
    self.assertEqual(store.n_rows, 0)

  def test_skipped_recorded(self):
    store = self._filled(sizes=(2,))
    store.record_skipped('doc-5', 'no assistant tokens')
    store.record_skipped('doc-6', 'no assistant tokens')
    reopened = GradientStore.open(self.path)
    self.assertEqual(
      reopened.skipped,
      {'doc-5': 'no assistant tokens', 'doc-6': 'no assistant tokens'},
    )
    self.assertEqual(reopened.n_rows, 2)  # never a silent zero row
    self.assertEqual(
      reopened.completed_ids(), {'doc-0', 'doc-1', 'doc-5', 'doc-6'}
    )
    self.assertEqual(
      reopened.completed_ids(include_skipped=False), {'doc-0', 'doc-1'}
    )
    with self.assertRaisesRegex(ValueError, "skipped: 'doc-5'"):
      reopened.append_chunk(['doc-5'], _rows(['doc-5']))
    with self.assertRaisesRegex(ValueError, "'doc-0' has a stored row"):
      reopened.record_skipped('doc-0', 'x')

  def test_chunk_writer(self):
    store = GradientStore.create(self.path, LAYOUT)
    with store.writer(chunk_rows=4) as w:
      for start in range(0, 10, 3):
        n = min(3, 10 - start)
        w.add(_ids(start, n), _rows(_ids(start, n)))
      self.assertEqual(w.pending, 2)
      with self.assertRaisesRegex(ValueError, 'buffered'):
        w.add(['doc-9'], _rows(['doc-9']))
    sizes = [len(i) for i, _ in store.iter_chunks()]
    self.assertEqual(sizes, [4, 4, 2])
    np.testing.assert_array_equal(store.rows(_ids(0, 10)), _rows(_ids(0, 10)))


class CreateOpenTest(StoreTestBase):
  def test_open_or_create_matches_config(self):
    store = GradientStore.open_or_create(self.path, LAYOUT, metadata=META)
    store.append_chunk(_ids(0, 2), _rows(_ids(0, 2)))
    # Same config (tuples vs lists do not matter): opens with its rows.
    again = GradientStore.open_or_create(
      self.path, dict(LAYOUT), metadata=dict(META, targets=('q_proj', 'v_proj'))
    )
    self.assertEqual(again.completed_ids(), {'doc-0', 'doc-1'})

  def test_open_or_create_mismatch_raises(self):
    GradientStore.create(self.path, LAYOUT, metadata=META)
    other_layout = LAYOUT[:-1] + [('layers.1.q_proj.lora_b', (2, 5))]
    with self.assertRaisesRegex(
      ValueError, r"different config(.|\n)*'layers.1.q_proj.lora_b' shape"
    ):
      GradientStore.open_or_create(self.path, other_layout, metadata=META)
    with self.assertRaisesRegex(
      ValueError, r"metadata\['hash'\]: 'a1' on disk"
    ):
      GradientStore.open_or_create(
        self.path, LAYOUT, metadata=dict(META, hash='b2')
      )
    with self.assertRaisesRegex(ValueError, 'storage_dtype'):
      GradientStore.open_or_create(self.path, LAYOUT, 'bfloat16', META)
    with self.assertRaisesRegex(ValueError, 'different order'):
      GradientStore.open_or_create(self.path, LAYOUT[::-1], metadata=META)

  def test_create_refuses_to_clobber(self):
    self._filled(sizes=(2,))
    with self.assertRaisesRegex(FileExistsError, 'not empty'):
      GradientStore.create(self.path, LAYOUT)
    fresh = GradientStore.create(self.path, LAYOUT, overwrite=True)
    self.assertEqual(fresh.n_rows, 0)
    self.assertEqual(GradientStore.open(self.path).n_rows, 0)
    other = os.path.join(self.dir, 'not_a_store')
    os.makedirs(other)
    open(os.path.join(other, 'precious.txt'), 'w').close()
    with self.assertRaisesRegex(FileExistsError, 'refusing'):
      GradientStore.create(other, LAYOUT, overwrite=True)
    self.assertTrue(os.path.exists(os.path.join(other, 'precious.txt')))
    with self.assertRaisesRegex(FileNotFoundError, 'no GradientStore'):
      GradientStore.open(os.path.join(self.dir, 'missing'))

  def test_truncated_chunk_detected(self):
    self._filled(sizes=(3, 2))
    npy = os.path.join(self.path, 'chunk_000001.npy')
    with open(npy, 'r+b') as f:
      f.truncate(os.path.getsize(npy) - 4)
    with self.assertRaisesRegex(ValueError, 'chunk_000001.npy.*bytes'):
      GradientStore.open(self.path)


class ResumeTest(StoreTestBase):
  def test_leftovers_of_killed_write_ignored_then_cleaned(self):
    self._filled(sizes=(3, 2))
    # What a writer killed during chunk 2 can leave: a temp file (killed
    # before the rename) and a renamed .npy whose ids file never landed.
    tmp = os.path.join(self.path, '.chunk_000002.npy.123.abc.tmp')
    with open(tmp, 'wb') as f:
      f.write(b'\x93NUMPY half a chunk')
    orphan = os.path.join(self.path, 'chunk_000002.npy')
    np.save(orphan, np.full((4, D), 7.0, np.float32))

    reader = GradientStore.open(self.path)
    self.assertEqual(reader.ids, tuple(_ids(0, 5)))
    self.assertEqual([len(i) for i, _ in reader.iter_chunks()], [3, 2])
    self.assertTrue(os.path.exists(tmp))  # readers never delete anything

    writer = GradientStore.open_or_create(self.path, LAYOUT, metadata=META)
    self.assertEqual(writer.completed_ids(), set(_ids(0, 5)))
    writer.append_chunk(_ids(5, 4), _rows(_ids(5, 4)))
    self.assertFalse(os.path.exists(tmp))
    final = GradientStore.open(self.path)
    self.assertEqual(final.ids, tuple(_ids(0, 9)))
    np.testing.assert_array_equal(final.rows(_ids(0, 9)), _rows(_ids(0, 9)))
    self.assertEqual(
      sorted(n for n in os.listdir(self.path) if n.endswith('.npy')),
      ['chunk_000000.npy', 'chunk_000001.npy', 'chunk_000002.npy'],
    )

  def test_sigkill_mid_run(self):
    n_chunks, per, d = 100, 16, 10_000  # 640 kB chunks, 64 MB in all
    layout = [('w', (d,))]
    GradientStore.create(self.path, layout, metadata=META)
    repo_root = os.path.dirname(os.path.dirname(gatoms_jax.__file__))
    env = dict(os.environ, PYTHONPATH=repo_root, JAX_PLATFORMS='cpu')
    rng = np.random.default_rng(0)
    committed = 0
    for _ in range(3):  # kill, reopen, verify, repeat
      with tempfile.TemporaryFile('w+') as err:
        child = subprocess.Popen(
          [sys.executable, '-c', _CHILD, self.path, str(n_chunks), str(per)],
          stdout=subprocess.PIPE,
          stderr=err,
          text=True,
          env=env,
        )
        for _ in range(3):  # at least 3 new chunks committed
          line = child.stdout.readline()
          if not line:
            err.seek(0)
            self.fail(f'child ended early: {err.read()}')
        time.sleep(rng.uniform(0, 0.03))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
      self.assertEqual(child.returncode, -signal.SIGKILL)
      store = GradientStore.open(self.path)
      ids = list(store.ids)
      self.assertLen(set(ids), len(ids))
      self.assertGreaterEqual(len(ids), committed + 3 * per)
      self.assertLess(len(ids), n_chunks * per)  # killed before the end
      self.assertEqual(ids, _ids(0, len(ids)))  # whole chunks, in order
      for block_ids, rows in store.iter_chunks(64):
        np.testing.assert_array_equal(rows, _rows(block_ids, d))
      committed = len(ids)

    # Finish like a resumed extraction: skip completed ids, append the rest.
    store = GradientStore.open_or_create(self.path, layout, metadata=META)
    done = store.completed_ids()
    todo = [i for i in _ids(0, n_chunks * per) if i not in done]
    for start in range(0, len(todo), 100):
      ids = todo[start : start + 100]
      store.append_chunk(ids, _rows(ids, d))
    final = GradientStore.open(self.path)
    self.assertEqual(final.ids, tuple(_ids(0, n_chunks * per)))
    for block_ids, rows in final.iter_chunks(256):
      np.testing.assert_array_equal(rows, _rows(block_ids, d))
    leftovers = [n for n in os.listdir(self.path) if n.endswith('.tmp')]
    self.assertEqual(leftovers, [])


if __name__ == '__main__':
  absltest.main()
