"""Tests for experiments/_bench.py: load fields and refused ratios."""

import json
import os
import subprocess
import sys
import time

from absl.testing import absltest

from experiments import _bench

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FinishTest(absltest.TestCase):
  def test_quiet_run_reports_ratios(self):
    out = _bench.finish(
      {}, {'speedup': 2.0, 'other': None}, load_start=0.4, load_end=1.0
    )
    self.assertEqual(out['speedup'], 2.0)
    self.assertIsNone(out['other'])
    self.assertFalse(out['noisy'])
    self.assertEqual(out['refused_ratios'], [])
    self.assertEqual((out['load_avg_1min_start'], out['load_avg_1min_end']),
                     (0.4, 1.0))  # fmt: skip
    self.assertEqual(out['max_load'], _bench.DEFAULT_MAX_LOAD)

  def test_noisy_run_refuses_ratios_unless_allowed(self):
    out = _bench.finish({}, {'speedup': 2.0}, load_start=2.0, load_end=0.5)
    self.assertTrue(out['noisy'])
    self.assertIsNone(out['speedup'])
    self.assertEqual(out['refused_ratios'], ['speedup'])
    out = _bench.finish(
      {}, {'speedup': 2.0}, load_start=3.0, load_end=3.0, allow_noisy=True
    )
    self.assertTrue(out['noisy'])
    self.assertEqual(out['speedup'], 2.0)
    self.assertEqual(out['refused_ratios'], [])


class OtherCoresTest(absltest.TestCase):
  def test_own_load_at_the_end_is_not_noise(self):
    # A bench keeping both cores busy ends at load ~2 by itself.
    self.assertFalse(_bench.is_noisy(0.3, other=0.05))
    self.assertTrue(_bench.is_noisy(0.3, other=0.6))
    self.assertTrue(_bench.is_noisy(1.6, other=0.0))

  def test_another_process_busy_during_the_run_is_counted(self):
    start = _bench.cpu_snapshot()
    if start.machine_busy_s is None:
      self.skipTest('no /proc/stat')
    spin = 'import time\nt = time.time()\nwhile time.time() - t < 1.5: pass'
    proc = subprocess.Popen([sys.executable, '-c', spin])
    time.sleep(1.5)  # this process idles while the other one spins
    other = _bench.other_cores(start)
    out = _bench.finish(
      {}, {'speedup': 2.0}, load_start=0.0, load_end=0.0, cpu_start=start
    )
    proc.wait()  # from here on its CPU counts as this process tree's own
    # The spinner kept one core busy for most of the 1.5 s (less its start-up);
    # anything else running only adds.
    self.assertGreater(other, 0.5)
    self.assertTrue(out['noisy'])
    self.assertIsNone(out['speedup'])
    self.assertGreater(out['other_cores'], 0.5)


class BenchDictionaryTest(absltest.TestCase):
  def test_tiny_run_prints_the_fields_and_refuses_when_noisy(self):
    # max_load=-1: every load average exceeds it, so the run is noisy.
    cmd = [
      sys.executable, os.path.join(_ROOT, 'experiments', 'bench_dictionary.py'),
      '--n_rows=40', '--dim=24', '--n_planted=4', '--n_atoms=6',
      '--sklearn_max_iter=5', '--jax_max_iter=5', '--max_load=-1',
    ]  # fmt: skip
    proc = subprocess.run(
      cmd, capture_output=True, text=True, timeout=600, cwd=_ROOT
    )
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ('load_avg_1min_start', 'load_avg_1min_end', 'sklearn_s'):
      self.assertIsInstance(out[key], float)
    self.assertTrue(out['noisy'])
    self.assertIsNone(out['speedup_vs_sklearn'])
    if out['jax_s'] is not None:  # a ratio was measured, then refused
      self.assertEqual(out['refused_ratios'], ['speedup_vs_sklearn'])


if __name__ == '__main__':
  absltest.main()
