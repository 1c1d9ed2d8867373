"""The tiny pipeline on long documents: bounded shapes, resources recorded.

Chat documents with long user turns (300-800 tokens with the byte-level test
tokenizer) and short answers, at data.max_length = 1024 (4x the demo's): every
model stage must run a small, bounded set of padded shapes under its token
budget, and every manifest must carry its compile time, compilations, peak
resident memory and (model stages) the memory estimate.
"""

import os
import tempfile

from absl.testing import absltest

from configs import tiny_test
from gatoms_jax import pipeline
from gatoms_jax.core.data import batching
from gatoms_jax.demo import long_docs
from gatoms_jax.pipeline import manifest

import tiny_tokenizer

_STAGES = ('finetune', 'gradients', 'curvature', 'projection', 'dictionary')


class LongDocsTest(absltest.TestCase):
  def test_long_documents_bounded_shapes_and_resources(self):
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, 'long.jsonl')
    # ~4.5 bytes a word: user turns of ~300-850 byte-level tokens.
    long_docs.write_long_chat_jsonl(data, 12, min_words=60, max_words=180)
    c = tiny_test.get_config()
    c.results_dir = os.path.join(tmp, 'results')
    c.run_name = 'long'
    c.model.tokenizer = tiny_tokenizer.save(os.path.join(tmp, 'tok'))
    c.data.path = data
    c.data.max_length = 1024
    c.finetune.steps = 1
    c.finetune.eval_every = 1
    c.finetune.checkpoint_every = 1
    c.gradients.chunk_size = 8
    c.projection.top_k = 4
    c.dictionary.n_atoms = 4
    c.dictionary.n_iter = 2
    done = pipeline.run(c, ','.join(_STAGES))
    self.assertEqual(list(done), list(_STAGES))
    bound = batching.max_shapes(1024, min_length=16, multiple=16)
    for stage in _STAGES:
      m = manifest.read_manifest(os.path.join(c.results_dir, 'long', stage))
      for key in ('compile_seconds', 'n_compilations', 'peak_rss_gb'):
        self.assertIn(key, m, (stage, key))
      self.assertGreater(m['peak_rss_gb'], 0)
      self.assertGreaterEqual(m['compile_seconds'], 0)
      if stage in ('finetune', 'gradients', 'curvature'):
        self.assertGreater(m['n_compilations'], 0, stage)
        # Peak ≤ estimate: the estimate is a (loose) upper bound.
        self.assertIsNotNone(m['estimated_peak_gb'])
        self.assertLessEqual(m['peak_rss_gb'], m['estimated_peak_gb'], stage)
        n_shapes = m['results']['n_shapes']
        self.assertBetween(n_shapes, 1, bound, stage)
    # Documents really are long: truncation aside, most exceed the demo's 256.
    ft = manifest.read_manifest(os.path.join(c.results_dir, 'long', 'finetune'))
    self.assertGreater(ft['results']['n_shapes'], 0)


if __name__ == '__main__':
  absltest.main()
