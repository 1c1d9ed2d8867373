"""gatoms_jax.core.io: atomic writes and the typed artefacts that use them."""

import os
import tempfile

import numpy as np
from absl.testing import absltest

from gatoms_jax.core import io as io_lib
from gatoms_jax.method.dictionary import DictionaryResult


class AtomicWriteTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()

  def test_failed_write_keeps_old_file_and_no_temp(self):
    path = os.path.join(self.dir, 'a.json')
    io_lib.write_json(path, {'x': 1})

    def boom(f):
      f.write('{"x": ')
      raise RuntimeError('killed mid-write')

    with self.assertRaises(RuntimeError):
      io_lib.atomic_write(path, boom)
    self.assertEqual(io_lib.read_json(path), {'x': 1})
    self.assertEqual(os.listdir(self.dir), ['a.json'])

  def test_numpy_values_and_file_mode(self):
    path = os.path.join(self.dir, 'sub', 'b.json')
    io_lib.write_json(path, {'n': np.int64(3), 'v': np.arange(2)})
    self.assertEqual(io_lib.read_json(path), {'n': 3, 'v': [0, 1]})
    # Not mkstemp's 0600: others may read results like any plain file.
    self.assertTrue(os.stat(path).st_mode & 0o044)

  def test_npy_and_text(self):
    io_lib.save_npy(os.path.join(self.dir, 'x.npy'), np.eye(3))
    np.testing.assert_array_equal(
      np.load(os.path.join(self.dir, 'x.npy')), np.eye(3)
    )
    io_lib.write_text(os.path.join(self.dir, 'r.md'), 'héllo')
    with open(os.path.join(self.dir, 'r.md'), encoding='utf-8') as f:
      self.assertEqual(f.read(), 'héllo')

  def test_dictionary_result_roundtrip(self):
    rng = np.random.default_rng(0)
    result = DictionaryResult(
      dictionary=rng.normal(size=(4, 6)).astype(np.float32),
      codes=rng.normal(size=(5, 4)).astype(np.float32),
      history=[{'iter': 0, 'objective': 1.5}],
      compile_seconds=0.25,
      objective=1.5,
      seconds=2.0,
    )
    result.save(self.dir)
    loaded = DictionaryResult.load(self.dir, mmap=True)
    np.testing.assert_array_equal(loaded.dictionary, result.dictionary)
    np.testing.assert_array_equal(loaded.codes, result.codes)
    self.assertEqual(loaded.history, result.history)
    self.assertEqual(loaded.objective, result.objective)


if __name__ == '__main__':
  absltest.main()
