"""Tests for gatoms_jax/checkpoint.py (Orbax V1 helpers), and the real thing:
a fine-tuning run killed with SIGKILL resumes and ends like an uninterrupted
one (gatoms_jax/finetune.py on configs/tiny_test.py).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from gatoms_jax.core import checkpoint as ckpt_lib
from gatoms_jax.core import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import tiny_tokenizer  # noqa: E402

# The killed run: finetune on configs/tiny_test.py, sleeping after each step
# so that the parent can kill it mid-run. argv: workdir, tokenizer dir, sleep.
_DRIVER = textwrap.dedent(
  """
  import sys, time
  from configs import tiny_test
  from gatoms_jax.method import finetune
  workdir, tok, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
  config = tiny_test.get_config()
  config.model.tokenizer = tok
  finetune.finetune(config, workdir, progress=False,
                    on_step=lambda step, entry: time.sleep(delay))
  """
)


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


class ResumeAfterSigkillTest(_TempDirTest):
  def test_killed_run_resumes_and_matches_uninterrupted_run(self):
    tok = tiny_tokenizer.save(os.path.join(self.dir, 'tokenizer'))
    driver = os.path.join(self.dir, 'driver.py')
    with open(driver, 'w') as f:
      f.write(_DRIVER.format(repo=REPO))
    # A shared persistent compilation cache: the first run compiles, the
    # others load the same executables (and save ~10 s each).
    env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      JAX_COMPILATION_CACHE_DIR=os.path.join(self.dir, 'jax_cache'),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    )
    # The app's --workdir is the results root: <root>/<run_name>/finetune.
    killed_root = os.path.join(self.dir, 'killed')
    killed = os.path.join(killed_root, 'tiny_test', 'finetune')
    steps = 8  # configs/tiny_test.py; checkpoints every 2 steps
    proc = subprocess.Popen(
      [sys.executable, driver, killed, tok, '0.3'],
      cwd=REPO,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
    )
    committed = os.path.join(killed, 'checkpoints', '4')
    deadline = time.time() + 300
    while not os.path.isdir(committed) and proc.poll() is None:
      self.assertLess(time.time(), deadline, 'no checkpoint at step 4')
      time.sleep(0.05)
    if proc.poll() is not None:
      self.fail(f'run ended early: {proc.communicate()[1].decode()[-3000:]}')
    # ≥ 4 × 0.3 s of training remain: the kill lands before the end.
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    self.assertEqual(proc.returncode, -signal.SIGKILL)
    self.assertFalse(os.path.exists(os.path.join(killed, 'result.json')))

    def cli(workdir):
      out = subprocess.run(
        [
          sys.executable,
          '-m',
          'experiments.finetune',
          f'--config={os.path.join(REPO, "configs", "tiny_test.py")}',
          f'--config.model.tokenizer={tok}',
          f'--workdir={workdir}',
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=False,
      )
      self.assertEqual(out.returncode, 0, out.stderr.decode()[-3000:])
      stage_dir = os.path.join(workdir, 'tiny_test', 'finetune')
      with open(os.path.join(stage_dir, 'result.json')) as f:
        return json.load(f)

    resumed = cli(killed_root)
    self.assertGreaterEqual(resumed['resumed_from_step'], 4)
    self.assertLess(resumed['resumed_from_step'], steps)
    reference = cli(os.path.join(self.dir, 'reference'))
    self.assertIsNone(reference['resumed_from_step'])
    # Same data order, same restored state, same executables: the losses and
    # the parameters come out bit for bit equal.
    self.assertEqual(resumed['history'], reference['history'])
    tree = lambda d: ckpt_lib.load_pytree(os.path.join(d, 'lora'))
    reference_dir = os.path.join(self.dir, 'reference', 'tiny_test', 'finetune')
    _assert_trees_equal(self, tree(killed), tree(reference_dir))


if __name__ == '__main__':
  absltest.main()
