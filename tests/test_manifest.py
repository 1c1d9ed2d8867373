"""Stage keys: an override invalidates exactly the stages that read it."""

from absl.testing import absltest, parameterized

from configs import common
from gatoms_jax.pipeline import manifest


def _changed(**overrides) -> set[str]:
  base = manifest.stage_keys(common.base_config())
  config = common.base_config()
  for dotted, value in overrides.items():
    section, key = dotted.split('__') if '__' in dotted else (None, dotted)
    if section:
      config[section][key] = value
    else:
      config[key] = value
  new = manifest.stage_keys(config)
  return {s for s in manifest.STAGES if base[s] != new[s]}


ALL = set(manifest.STAGES)


class StageKeyTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ('model_path', dict(model__path='/x.gguf'), ALL),
    ('lora_rank', dict(lora__rank=4), ALL),
    (
      'curvature_fisher',
      dict(curvature__fisher='empirical'),
      ALL - {'finetune', 'gradients'},
    ),
    (
      'projection_k',
      dict(projection__top_k=10),
      {'projection', 'dictionary', 'atoms', 'steering', 'report'},
    ),
    (
      'dictionary_alpha',
      dict(dictionary__alpha=0.2),
      {'dictionary', 'atoms', 'steering', 'report'},
    ),
    ('atoms_top_n', dict(atoms__top_n=10), {'atoms', 'steering', 'report'}),
    (
      'label_field',
      dict(data__label_field='category'),
      {'atoms', 'steering', 'report'},
    ),
    (
      'steering_levels',
      dict(steering__kl_levels=(0.5,)),
      {'steering', 'report'},
    ),
    ('steering_max_rows', dict(steering__max_rows=64), set()),
    ('gradients_batch_size', dict(gradients__batch_size=3), set()),
    ('gradients_chunk_size', dict(gradients__chunk_size=7), set()),
    ('run_name', dict(run_name='other'), set()),
  )
  def test_override_invalidates_exactly(self, overrides, expected):
    self.assertEqual(_changed(**overrides), expected)

  def test_manifest_roundtrip_and_completeness(self):
    import tempfile

    d = tempfile.mkdtemp()
    config = common.base_config()
    key = manifest.stage_keys(config)['dictionary']
    self.assertFalse(manifest.is_complete(d, key))
    manifest.write_manifest(
      d, stage='dictionary', key=key, config=config, input_keys={}, seconds=1.5
    )
    self.assertTrue(manifest.is_complete(d, key))
    self.assertFalse(manifest.is_complete(d, 'other'))
    manifest.invalidate(d)
    self.assertFalse(manifest.is_complete(d, key))


if __name__ == '__main__':
  absltest.main()
