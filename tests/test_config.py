"""configs/common.validate: every shipped config passes, bad values fail."""

import importlib

import ml_collections
from absl.testing import absltest, parameterized

from configs import common


class ValidateTest(parameterized.TestCase):
  @parameterized.parameters(
    'smollm2_demo',
    'smollm2_steering',
    'smollm2_compositional',
    'tiny_test',
    'gemma3_4b_paper',
    'gemma3_270m',
  )
  def test_shipped_configs_are_valid(self, name):
    common.validate(importlib.import_module(f'configs.{name}').get_config())

  @parameterized.named_parameters(
    ('choice', 'steering.combine', 'both', 'choose one of'),
    ('range', 'lora.rank', 0, 'must be >= 1'),
    ('open_range', 'dictionary.alpha', 0.0, 'must be > 0'),
    ('fraction', 'data.heldout_fraction', 1.0, r'in \[0, 1\)'),
    ('power_of_two', 'gradients.ladder_steps', 3, 'must be a power of two'),
  )
  def test_bad_value_is_named(self, key, value, message):
    config = common.base_config()
    section, name = key.split('.')
    config[section][name] = value
    with self.assertRaisesRegex(common.ConfigError, f'{key}=.*{message}'):
      common.validate(config)

  def test_unknown_and_missing_keys(self):
    config = common.base_config()
    with config.unlocked():
      config.lora.rnak = 4
      del config.atoms['knn_k']
    with self.assertRaisesRegex(common.ConfigError, 'lora.rnak: unknown'):
      common.validate(config)
    with self.assertRaisesRegex(common.ConfigError, 'atoms.knn_k: missing'):
      common.validate(config)

  def test_wrong_type(self):
    # A ConfigDict built by hand (not an override) can hold any type.
    config = ml_collections.ConfigDict(common.base_config().to_dict())
    with config.unlocked():
      del config.steering['kl_levels']
      config.steering.kl_levels = 'high'
    with self.assertRaisesRegex(common.ConfigError, 'expected tuple'):
      common.validate(config)


if __name__ == '__main__':
  absltest.main()
