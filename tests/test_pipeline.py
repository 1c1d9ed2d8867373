"""The whole pipeline on a tiny random Gemma-3-shaped model.

Runs every stage end to end (finetune → … → report), checks the report and
summary, that a rerun skips complete stages, that an override reruns exactly
the affected stages, and that a SIGKILL mid-stage followed by a rerun
completes without redoing finished stages.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest

from configs import common
from gatoms_jax import pipeline
from gatoms_jax.pipeline import manifest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import tiny_tokenizer  # noqa: E402

# Overrides shared by the in-process run and the subprocess run.
TINY = {
  'model.path': 'random:tiny_gemma3',
  'lora.rank': 4,
  'lora.alpha': 8.0,
  'data.n_docs': 60,
  'data.max_length': 384,
  'data.heldout_fraction': 0.15,
  # Few padded shapes, hence few compilations.
  'data.bucket_multiple': 128,
  'finetune.steps': 4,
  'finetune.batch_size': 4,
  'finetune.warmup_steps': 1,
  'finetune.checkpoint_every': 2,
  'finetune.eval_every': 4,
  'finetune.max_eval_docs': 8,
  'curvature.batch_size': 8,
  'gradients.batch_size': 8,
  'gradients.chunk_size': 8,
  'projection.top_k': 8,
  'dictionary.n_atoms': 12,
  'dictionary.n_iter': 4,
  'atoms.top_n': 5,
  'atoms.report_top': 5,
  'data.compositional_fraction': 0.2,
  'steering.behaviors': ('yes_no', 'bullets'),
  'steering.prompts_per_behavior': 6,
  'steering.kl_levels': (0.5,),
  'steering.max_new_tokens': 6,
  'steering.n_random_controls': 1,
  'steering.batch_size': 8,
}


TINY_MIN_SHIFT = common.base_config().steering.min_shift_pp


def tiny_config(results_dir: str, tokenizer_dir: str):
  c = common.base_config()
  c.results_dir = results_dir
  c.run_name = 'tiny'
  c.model.tokenizer = tokenizer_dir
  for dotted, value in TINY.items():
    section, key = dotted.split('.')
    c[section][key] = value
  return c


def _finished(run_dir: str) -> dict:
  out = {}
  for stage in manifest.STAGES:
    m = manifest.read_manifest(os.path.join(run_dir, stage))
    if m:
      out[stage] = m['finished'] + str(m['seconds'])
  return out


class PipelineTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    cls.tmp = tempfile.mkdtemp()
    cls.tok = tiny_tokenizer.save(os.path.join(cls.tmp, 'tok'))

  def test_end_to_end_skip_and_override(self):
    config = tiny_config(os.path.join(self.tmp, 'results'), self.tok)
    done = pipeline.run(config)
    self.assertEqual(list(done), list(manifest.STAGES))
    run_dir = os.path.join(self.tmp, 'results', 'tiny')
    with open(os.path.join(run_dir, 'summary.json')) as f:
      summary = json.load(f)
    for key in (
      'n_label_values',
      'n_label_values_recovered',
      'kmeans_n_label_values_recovered',
      'steering',
      'stage_seconds',
    ):
      self.assertIn(key, summary)
    # Per-stage resources (every stage that ran; model stages' estimates).
    for key in ('compile_seconds', 'n_compilations', 'peak_rss_gb'):
      self.assertEqual(
        set(summary[key]), set(manifest.STAGES) - {'report'}, key
      )
    self.assertGreater(summary['n_compilations']['finetune'], 0)
    self.assertEqual(
      set(summary['estimated_peak_gb']),
      {'finetune', 'gradients', 'curvature', 'steering'},
    )
    self.assertEqual(
      set(summary['n_shapes']),
      {'finetune', 'gradients', 'curvature', 'steering'},
    )
    self.assertIn(
      '| compile s |', open(os.path.join(run_dir, 'report.md')).read()
    )
    self.assertEqual(set(summary['steering']), {'yes_no', 'bullets'})
    for row in summary['steering'].values():
      for k in ('baseline', 'best_toward', 'best_away'):
        self.assertIn('rate', row[k])
        self.assertIn('alpha', row[k])
    # Held-out verdicts per behaviour and direction, and the side effects of
    # each behaviour's variants on every behaviour's prompts.
    fields = ('steers', 'p_value', 'p_holm', 'shift_pp', 'shift_ci95')
    fields += ('control_shift_pp', 'ceiling_shift_pp', 'n_test')
    for verdicts in summary['steering_verdicts'].values():
      for direction in ('toward', 'away'):
        if verdicts[direction] is not None:
          self.assertEqual(verdicts[direction]['n_test'], 3)
          self.assertContainsSubset(fields, verdicts[direction])
    for by_direction in summary['side_effects'].values():
      for cells in by_direction.values():
        self.assertEqual(set(cells), {'yes_no', 'bullets'})
    # The default mixture has compositional documents: the multi-label
    # measure is there for atoms and k-means alike.
    self.assertGreater(summary['n_compositional_docs'], 0)
    self.assertEqual(
      set(summary['both_labels_recovered_fraction']), {'atoms', 'kmeans'}
    )
    self.assertEqual(
      set(summary['wrong_type_named_fraction']), {'atoms', 'kmeans'}
    )
    self.assertEqual(
      set(summary['mean_active_atoms']), {'single', 'compositional'}
    )
    # bullets + yes_no steered at once (configs/common.py steering.compose).
    composition = summary['steering_composition']
    self.assertEqual(composition['behaviors'], ['bullets', 'yes_no'])
    self.assertIn('toward', composition)
    report = open(os.path.join(run_dir, 'report.md')).read()
    self.assertIn('Held-out verdicts', report)
    self.assertIn('Documents that teach two behaviours', report)
    self.assertIn('k-means', report)
    self.assertIn('random', report)
    for png in ('coherence.png', 'steering.png'):
      self.assertGreater(os.path.getsize(os.path.join(run_dir, png)), 1000)

    before = _finished(run_dir)
    pipeline.run(config)  # everything complete and current: all skipped
    self.assertEqual(_finished(run_dir), before)

    # A steer stage killed after its first behaviour resumes there; a
    # verdict threshold re-judges the saved sweeps without regenerating.
    partial = os.path.join(run_dir, 'steering', 'behaviors')
    mtime = lambda b: os.path.getmtime(os.path.join(partial, f'{b}.json'))
    first = mtime('yes_no')
    manifest.invalidate(os.path.join(run_dir, 'steering'))
    os.remove(os.path.join(partial, 'bullets.json'))
    config.steering.min_shift_pp = 5.0
    pipeline.run(config, 'steering')
    self.assertEqual(mtime('yes_no'), first)
    self.assertTrue(os.path.exists(os.path.join(partial, 'bullets.json')))
    with open(os.path.join(run_dir, 'steering', 'sweeps.json')) as f:
      self.assertEqual(set(json.load(f)), {'yes_no', 'bullets'})
    config.steering.min_shift_pp = TINY_MIN_SHIFT
    pipeline.run(config)
    before = _finished(run_dir)

    config.dictionary.alpha = 0.05
    pipeline.run(config)
    after = _finished(run_dir)
    rerun = {s for s in manifest.STAGES if after[s] != before[s]}
    # report has no manifest time of its own that could stay equal
    self.assertEqual(rerun, {'dictionary', 'atoms', 'steering', 'report'})

  def test_sigkill_mid_stage_then_rerun(self):
    results = os.path.join(self.tmp, 'killed')
    args = [
      sys.executable,
      '-m',
      'experiments.pipeline',
      '--config=configs/smollm2_demo.py',
      f'--config.results_dir={results}',
      '--config.run_name=tiny',
      f'--config.model.tokenizer={self.tok}',
      '--stages=finetune,curvature,gradients',
    ] + [
      f'--config.{k}={",".join(map(str, v)) if isinstance(v, tuple) else v}'
      for k, v in TINY.items()
    ]
    # One row per chunk, so a kill lands between committed chunks.
    args = [
      a for a in args if not a.startswith('--config.gradients.chunk_size')
    ]
    args.append('--config.gradients.chunk_size=1')
    env = dict(os.environ, PYTHONPATH=_ROOT)
    store = os.path.join(results, 'tiny', 'gradients', 'store')
    proc = subprocess.Popen(
      args,
      cwd=_ROOT,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
      chunks = os.listdir(store) if os.path.isdir(store) else []
      if sum(c.endswith('.ids.json') for c in chunks) >= 2:
        break
      time.sleep(0.2)
    self.assertIsNone(proc.poll(), 'the run ended before it could be killed')
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = os.path.join(results, 'tiny')
    before = _finished(run_dir)
    # gradients runs before curvature (whose eigenvalue correction reads it).
    self.assertEqual(set(before), {'finetune'})
    result = subprocess.run(
      args, cwd=_ROOT, env=env, capture_output=True, text=True
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    after = _finished(run_dir)
    self.assertEqual(after['finetune'], before['finetune'])
    self.assertIn('curvature', after)
    extract = manifest.read_manifest(os.path.join(run_dir, 'gradients'))
    self.assertGreaterEqual(extract['results']['n_resumed'], 2)
    self.assertEqual(
      extract['results']['n_rows'] + extract['results']['n_skipped'],
      extract['results']['n_docs'],
    )


if __name__ == '__main__':
  absltest.main()
