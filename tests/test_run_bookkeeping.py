"""Run bookkeeping: input-file fingerprints in stage keys, one writer per run.

The pipeline's stage functions are replaced by recorders (the real stages are
tested in test_pipeline.py): these tests check which stages `pipeline.run`
reruns after an input file is edited, that a stage directory started from other
inputs is cleared, and the run-directory lock.
"""

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

from absl.testing import absltest

from configs import common
from gatoms_jax.pipeline import fingerprints, lock, manifest, memory

# The module (gatoms_jax.pipeline re-exports its `run` function by that name).
run_lib = importlib.import_module('gatoms_jax.pipeline.run')


def _tempdir(test):
  path = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text)
  return path


class FingerprintTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.tmp = _tempdir(self)
    cache = os.path.join(self.tmp, 'cache', 'fp.json')
    self.enter_context(
      mock.patch.dict(os.environ, {fingerprints.CACHE_ENV: cache})
    )

  def test_cached_by_path_size_mtime(self):
    path = _write(os.path.join(self.tmp, 'a.jsonl'), 'hello\n')
    calls = []
    real = fingerprints._sha256

    def counting(p):
      calls.append(p)
      return real(p)

    with mock.patch.object(fingerprints, '_sha256', counting):
      first = fingerprints.file_fingerprints([path])[path]
      self.assertEqual(fingerprints.file_fingerprints([path])[path], first)
      self.assertLen(calls, 1)  # second call: from the cache file
      self.assertTrue(os.path.exists(fingerprints.cache_path()))
      # Touched, same content: hashed again, same fingerprint.
      st = os.stat(path)
      os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
      self.assertEqual(fingerprints.file_fingerprints([path])[path], first)
      self.assertLen(calls, 2)
      # Same size, new content, new mtime: a new fingerprint.
      _write(path, 'HELLO\n')
      os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
      edited = fingerprints.file_fingerprints([path])[path]
    self.assertEqual(edited['size'], first['size'])
    self.assertNotEqual(edited['sha256'], first['sha256'])

  def test_corrupt_cache_and_missing_file(self):
    os.makedirs(os.path.dirname(fingerprints.cache_path()))
    _write(fingerprints.cache_path(), '{not json')
    path = _write(os.path.join(self.tmp, 'b'), 'x')
    self.assertEqual(fingerprints.file_fingerprints([path])[path]['size'], 1)
    missing = os.path.join(self.tmp, 'nope')
    self.assertEqual(
      fingerprints.file_fingerprints([missing])[missing], {'missing': True}
    )

  def test_model_directory_and_embedded(self):
    model = os.path.join(self.tmp, 'model')
    os.makedirs(os.path.join(model, '.cache'))
    _write(os.path.join(model, 'config.json'), '{}')
    _write(os.path.join(model, 'tokenizer.json'), '{}')
    _write(os.path.join(model, '.cache', 'ignored'), 'x')
    fp = fingerprints.model_fingerprint(model)
    self.assertEqual(set(fp), {'config.json', 'tokenizer.json'})
    self.assertEqual(
      fingerprints.model_fingerprint('random:tiny'), 'random:tiny'
    )
    # 'embedded' is the GGUF file the wheel ships, hashed by content.
    embedded = fingerprints.model_fingerprint('embedded')
    (name,) = embedded
    self.assertTrue(name.endswith('.gguf'))
    self.assertLen(embedded[name]['sha256'], 64)


def _recording_stages(calls, leftovers):
  """Stage functions that record their call and any file left in their
  directory by an earlier (killed) attempt, then leave a partial file."""

  def make(stage):
    def fn(ctx):
      stage_dir = ctx.stage_dir(stage)
      calls.append(stage)
      if os.path.exists(os.path.join(stage_dir, 'partial')):
        leftovers.append(stage)
      _write(os.path.join(stage_dir, 'partial'), stage)
      return {'ok': True}

    return fn

  return {stage: make(stage) for stage in manifest.STAGES}


class RerunTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.tmp = _tempdir(self)
    self.enter_context(
      mock.patch.dict(
        os.environ,
        {fingerprints.CACHE_ENV: os.path.join(self.tmp, 'fp.json')},
      )
    )
    self.calls, self.leftovers = [], []
    self.enter_context(
      mock.patch.dict(
        run_lib.STAGE_FUNCTIONS,
        _recording_stages(self.calls, self.leftovers),
      )
    )
    # The recorders load no model, and the files here are not a model: no
    # memory estimate (it reads the model's shapes).
    self.enter_context(
      mock.patch.object(memory.StageResources, '_estimate', return_value=None)
    )
    self.data = _write(os.path.join(self.tmp, 'data.jsonl'), 'v1\n')
    self.prompts = _write(os.path.join(self.tmp, 'prompts.jsonl'), 'p1\n')
    self.model = _write(os.path.join(self.tmp, 'model.gguf'), 'weights-1')
    self.tok_dir = os.path.join(self.tmp, 'tok')
    os.makedirs(self.tok_dir)
    _write(os.path.join(self.tok_dir, 'tokenizer.json'), '{"v": 1}')
    c = common.base_config()
    c.results_dir = os.path.join(self.tmp, 'results')
    c.run_name = 'r'
    c.data.path = self.data
    c.model.path = self.model
    c.model.tokenizer = self.tok_dir
    c.steering.prompts_path = self.prompts
    self.config = c

  def _run(self):
    del self.calls[:]
    run_lib.run(self.config)
    return set(self.calls)

  def _edit(self, path, text):
    # A new mtime even on file systems with coarse timestamps.
    st = os.stat(path)
    _write(path, text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

  def test_edits_rerun_exactly_the_stages_that_read_them(self):
    all_stages = set(manifest.STAGES)
    self.assertEqual(self._run(), all_stages)
    self.assertEqual(self._run(), set())  # nothing changed
    # Touched but unchanged: same content, nothing reruns.
    st = os.stat(self.data)
    os.utime(self.data, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    self.assertEqual(self._run(), set())

    self._edit(self.prompts, 'p2\n')
    self.assertEqual(self._run(), {'steering', 'report'})
    self._edit(self.data, 'v2\n')
    self.assertEqual(self._run(), all_stages)
    self._edit(self.model, 'weights-2')
    self.assertEqual(self._run(), all_stages)
    self._edit(os.path.join(self.tok_dir, 'tokenizer.json'), '{"v": 2}')
    self.assertEqual(self._run(), all_stages)
    self.assertEqual(self._run(), set())
    # The manifests record what they were computed from.
    m = manifest.read_manifest(os.path.join(self.tmp, 'results/r/finetune'))
    self.assertEqual(set(m['files']), {'data', 'model', 'tokenizer'})
    self.assertEqual(m['files']['data']['size'], 3)
    # Re-ran stages found their directories cleared (no stale partials).
    self.assertEqual(self.leftovers, [])

  def test_killed_stage_resumes_unless_its_inputs_changed(self):
    self._run()
    finetune_dir = os.path.join(self.tmp, 'results', 'r', 'finetune')
    # A killed finetune (manifest gone, partial work left) resumes from
    # its directory when the inputs are the same...
    manifest.invalidate(finetune_dir)
    self._run()
    self.assertEqual(self.leftovers, ['finetune'])
    # ...and starts clean when the data file changed in between.
    del self.leftovers[:]
    manifest.invalidate(finetune_dir)
    self._edit(self.data, 'v3\n')
    self._run()
    self.assertEqual(self.leftovers, [])

  def test_config_change_keeps_the_directory(self):
    # A value change is the stage's own business (steering reuses sweeps,
    # finetune checks its checkpoints' fingerprint): no clearing.
    self._run()
    self.config.steering.min_shift_pp = 7.0
    del self.calls[:]
    run_lib.run(self.config)
    self.assertEqual(set(self.calls), {'steering', 'report'})
    self.assertEqual(self.leftovers, ['steering', 'report'])


_HOLDER = """
import sys, time
from gatoms_jax.pipeline import lock
held = lock.acquire(sys.argv[1])
print('locked', flush=True)
time.sleep(120)
"""


class LockTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.run_dir = _tempdir(self)

  def _start_holder(self):
    proc = subprocess.Popen(
      [sys.executable, '-c', _HOLDER, self.run_dir],
      stdout=subprocess.PIPE,
      text=True,
    )
    self.addCleanup(proc.wait)
    self.addCleanup(lambda: proc.poll() is None and proc.kill())
    self.assertEqual(proc.stdout.readline().strip(), 'locked')
    return proc

  def test_second_writer_fails_fast_naming_the_holder(self):
    proc = self._start_holder()
    start = time.perf_counter()
    with self.assertRaises(lock.RunLockedError) as raised:
      lock.acquire(self.run_dir)
    self.assertLess(time.perf_counter() - start, 1.0)  # no waiting
    message = str(raised.exception)
    self.assertIn(f'pid {proc.pid} on host', message)
    self.assertIn(self.run_dir, message)

  def test_killed_holder_is_taken_over(self):
    proc = self._start_holder()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    held = lock.acquire(self.run_dir)
    try:
      self.assertEqual(held.took_over['pid'], proc.pid)
      with open(held.path) as f:
        self.assertEqual(json.load(f)['pid'], os.getpid())
    finally:
      held.release()

  def test_released_on_exit_and_reacquired(self):
    with lock.hold(self.run_dir) as held:
      with self.assertRaises(lock.RunLockedError):
        lock.acquire(self.run_dir)
    self.assertIsNone(held.took_over)
    with lock.hold(self.run_dir) as again:
      self.assertIsNone(again.took_over)  # a clean exit leaves no holder

  def test_pipeline_run_refuses_a_locked_directory(self):
    c = common.base_config()
    c.results_dir, c.run_name = os.path.split(self.run_dir)
    self._start_holder()
    calls = []
    with mock.patch.dict(run_lib.STAGE_FUNCTIONS, _recording_stages(calls, [])):
      with self.assertRaisesRegex(lock.RunLockedError, 'in use by'):
        run_lib.run(c)
    self.assertEqual(calls, [])

  def test_cli_exits_with_the_holder_in_the_message(self):
    results, name = os.path.split(self.run_dir)
    proc = self._start_holder()
    out = subprocess.run(
      [
        sys.executable,
        '-m',
        'experiments.pipeline',
        '--config=configs/tiny_test.py',
        f'--config.results_dir={results}',
        f'--config.run_name={name}',
        '--stages=report',
      ],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    self.assertEqual(out.returncode, 1, out.stderr[-2000:])
    self.assertIn(f'pid {proc.pid}', out.stderr)
    self.assertNotIn('Traceback', out.stderr)


if __name__ == '__main__':
  absltest.main()


class ReportDataTest(absltest.TestCase):
  def test_per_label_counts_and_loss_flag(self):
    from gatoms_jax.pipeline import report

    run_dir = _tempdir(self)
    per_label = {
      'pos_tagging': {'read': 20, 'truncated': 20, 'excluded': 20},
      'qa': {'read': 40, 'truncated': 5, 'excluded': 4},  # exactly 10%
      'summary': {'read': 30, 'truncated': 4, 'excluded': 4},  # 13%
    }
    manifest.write_manifest(
      os.path.join(run_dir, 'finetune'),
      stage='finetune',
      key='k',
      config=common.base_config(),
      input_keys={},
      seconds=1.0,
      extra={
        'results': {
          'truncation': 'right',
          'n_docs_read': 90,
          'n_truncated': 29,
          'n_answer_truncated': 29,
          'n_excluded': 28,
          'per_label': per_label,
        }
      },
    )
    config = common.base_config()
    config.run_name = 'r'
    report.write_report(run_dir, config)
    with open(os.path.join(run_dir, 'summary.json')) as f:
      data = json.load(f)['data']
    self.assertEqual(data['n_docs_read'], 90)
    self.assertEqual(data['n_excluded'], 28)
    self.assertEqual(data['per_label'], per_label)
    self.assertEqual(
      data['labels_losing_over_10pct'], ['pos_tagging', 'summary']
    )
    with open(os.path.join(run_dir, 'report.md')) as f:
      text = f.read()
    self.assertIn('excluded (no answer token left): **28**', text)
    self.assertIn('2 label value(s) lost more than 10%', text)
    self.assertIn('| pos_tagging ⚠ | 20 | 20 | 20 |', text)
    self.assertIn('| qa | 40 | 5 | 4 |', text)
