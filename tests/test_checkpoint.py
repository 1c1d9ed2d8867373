"""Tests for gatoms_jax/checkpoint.py (Orbax V1 helpers)."""

import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from gatoms_jax import checkpoint as ckpt_lib
from gatoms_jax import sharding


def _lora_like(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  return {
    'layers': {
      0: {
        'self_attn': {
          'q_proj': {
            'lora_a': jax.random.normal(k[0], (8, 2)),
            'lora_b': jax.random.normal(k[1], (2, 8)),
          }
        }
      },
      1: {
        'self_attn': {
          'q_proj': {
            'lora_a': jax.random.normal(k[2], (8, 2)),
            'lora_b': jax.random.normal(k[3], (2, 8)),
          }
        }
      },
    }
  }


def _train_state(seed=0):
  lora = _lora_like(seed)
  opt = optax.MultiSteps(optax.adamw(1e-3), every_k_schedule=2)
  opt_state = opt.init(lora)
  # One update so that the moments are nonzero.
  grads = jax.tree.map(jnp.ones_like, lora)
  _, opt_state = opt.update(grads, opt_state, lora)
  return {
    'lora': lora,
    'opt_state': opt_state,
    'step': 7,
    'epoch': 1,
    'position': 3,
    'rng': jax.random.key_data(jax.random.key(seed)),
  }


def _assert_trees_equal(test, a, b):
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    # Checkpoints store the exact bits: no tolerance.
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class _TempDirTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    # Not self.create_tempdir(): it needs absl flags parsed, pytest does not.
    self.dir = tempfile.mkdtemp(prefix='test_checkpoint_')
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)


class PytreeTest(_TempDirTest):
  def test_round_trip_keeps_structure_and_values(self):
    state = _train_state()
    path = os.path.join(self.dir, 'tree')
    ckpt_lib.save_pytree(path, state, custom_metadata={'note': 'x'})
    restored = ckpt_lib.load_pytree(path, ckpt_lib.abstract_like(state))
    _assert_trees_equal(self, restored, state)
    # Integer dict keys and optax's named tuples come back as such.
    self.assertIn(0, restored['lora']['layers'])
    self.assertIsInstance(restored['opt_state'], optax.MultiStepsState)
    self.assertIsInstance(restored['step'], int)
    self.assertEqual(ckpt_lib.pytree_custom_metadata(path), {'note': 'x'})

  def test_overwrite_replaces_tree(self):
    path = os.path.join(self.dir, 'tree')
    ckpt_lib.save_pytree(path, _lora_like(0))
    ckpt_lib.save_pytree(path, _lora_like(1))
    restored = ckpt_lib.load_pytree(path, ckpt_lib.abstract_like(_lora_like(0)))
    _assert_trees_equal(self, restored, _lora_like(1))
    leftovers = [n for n in os.listdir(self.dir) if n != 'tree']
    self.assertEqual(leftovers, [])

  def test_interrupted_swap_is_recovered(self):
    # A crash between the two renames leaves only `path.old`.
    path = os.path.join(self.dir, 'tree')
    ckpt_lib.save_pytree(path, _lora_like(0))
    os.replace(path, path + '.old')
    restored = ckpt_lib.load_pytree(path, ckpt_lib.abstract_like(_lora_like(0)))
    _assert_trees_equal(self, restored, _lora_like(0))
    self.assertFalse(os.path.exists(path + '.old'))

  def test_missing_checkpoint_raises(self):
    with self.assertRaises(FileNotFoundError):
      ckpt_lib.load_pytree(os.path.join(self.dir, 'nothing'))

  def test_numpy_scalars_are_rejected(self):
    with self.assertRaisesRegex(TypeError, 'numpy scalar'):
      ckpt_lib.abstract_like({'step': np.int64(3)})

  def test_sharded_arrays_restore_with_their_sharding(self):
    mesh = sharding.make_mesh()
    x = jax.device_put(jnp.arange(8.0), sharding.replicated(mesh))
    path = os.path.join(self.dir, 'sharded')
    ckpt_lib.save_pytree(path, {'x': x})
    restored = ckpt_lib.load_pytree(path, ckpt_lib.abstract_like({'x': x}))
    self.assertEqual(restored['x'].sharding, x.sharding)
    np.testing.assert_array_equal(restored['x'], x)


class TrainCheckpointerTest(_TempDirTest):
  def test_save_restore_keep_latest(self):
    directory = os.path.join(self.dir, 'ckpt')
    state = _train_state()
    with ckpt_lib.TrainCheckpointer(directory, keep=2) as ckpt:
      self.assertIsNone(ckpt.latest_step)
      for step in (2, 4, 6):
        state = dict(state, step=step, lora=_lora_like(step))
        ckpt.save(step, state, custom_metadata={'history': [{'step': step}]})
      self.assertEqual(ckpt.steps, [4, 6])
    # A new checkpointer (a restarted process) sees the same steps.
    with ckpt_lib.TrainCheckpointer(directory, keep=2) as ckpt:
      self.assertEqual(ckpt.latest_step, 6)
      restored, meta = ckpt.restore(ckpt_lib.abstract_like(_train_state()))
      _assert_trees_equal(self, restored, state)
      self.assertEqual(meta['history'], [{'step': 6}])
      older, _ = ckpt.restore(ckpt_lib.abstract_like(_train_state()), step=4)
      _assert_trees_equal(self, older['lora'], _lora_like(4))
      with self.assertRaises(FileNotFoundError):
        ckpt.restore(ckpt_lib.abstract_like(_train_state()), step=2)

  def test_uncommitted_directories_are_ignored(self):
    directory = os.path.join(self.dir, 'ckpt')
    with ckpt_lib.TrainCheckpointer(directory) as ckpt:
      ckpt.save(2, _train_state())
    # What a save killed mid-write leaves behind.
    os.makedirs(os.path.join(directory, '4.orbax-checkpoint-tmp-123'))
    with ckpt_lib.TrainCheckpointer(directory) as ckpt:
      self.assertEqual(ckpt.steps, [2])

  def test_restore_without_checkpoint_raises(self):
    with ckpt_lib.TrainCheckpointer(self.dir) as ckpt:
      with self.assertRaises(FileNotFoundError):
        ckpt.restore(ckpt_lib.abstract_like(_train_state()))


if __name__ == '__main__':
  absltest.main()
