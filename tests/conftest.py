"""Test session setup: 4 fake CPU devices so sharded code is exercised.

This must run before jax is imported anywhere, which pytest guarantees for a
top-level conftest.py.
"""

import os
import tempfile

_FLAG = '--xla_force_host_platform_device_count=4'
if _FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG
  ).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
# Input-file digests (pipeline/fingerprints.py) go to a per-session file, not
# the user's ~/.cache.
os.environ.setdefault(
  'GATOMS_JAX_FINGERPRINT_CACHE',
  os.path.join(tempfile.mkdtemp(prefix='gatoms_fp_'), 'fingerprints.json'),
)
# Never write the persistent compilation cache into the user's home: tests
# run without it unless they pass a temporary directory.
os.environ['GATOMS_COMPILE_CACHE_DIR'] = ''

# Child processes started by tests import configs/ and the tests' helpers the
# same way pytest does (pyproject's `pythonpath`).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PATHS = [_REPO, os.path.join(_REPO, 'tests')]
os.environ['PYTHONPATH'] = os.pathsep.join(
  _PATHS + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
)
