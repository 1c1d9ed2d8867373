"""gatoms_jax.core.profiling: thunk kinds and the breakdown of a real trace."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from gatoms_jax.core import profiling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  'name,kind',
  [
    ('ynn_fusion.984', 'matmul'),
    ('dot_general', 'matmul'),
    ('dot.12', 'matmul'),
    ('convert_bitcast_fusion.357', 'convert'),
    ('add_convert_fusion', 'convert'),
    ('wrapped_convert.133', 'convert'),
    ('copy_bitcast_fusion.317', 'copy'),
    ('transpose_copy_fusion', 'copy'),
    ('reduce_fusion.3', 'reduce'),
    ('subtract_exponential_fusion', 'other'),
    ('broadcast_multiply_fusion', 'other'),
  ],
)
def test_op_kind(name, kind):
  assert profiling.op_kind(name) == kind


_CHILD = r"""
import json, os, sys, time
import jax, jax.numpy as jnp
from gatoms_jax.core import profiling
x = jnp.ones((512, 512), jnp.float32)
f = jax.jit(lambda a: jnp.tanh(a @ a) + 1.0)
f(x).block_until_ready()
with jax.profiler.trace(sys.argv[1]):
  start = time.perf_counter()
  for _ in range(20):
    f(x).block_until_ready()
  wall = time.perf_counter() - start
print(json.dumps(profiling.op_breakdown(sys.argv[1], wall)))
"""


def test_breakdown_of_a_matmul_program(tmp_path):
  env = dict(os.environ)
  env['XLA_FLAGS'] = profiling.TRACEME_FLAG
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  done = subprocess.run(
    [sys.executable, '-c', _CHILD, str(tmp_path / 'trace')],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  # 20 runs of one 512³ dot and one element-wise fusion: the dot is the
  # larger share of the op time (2·512³ FLOPs vs 512² tanh).
  assert result['seconds']['matmul'] > 0
  assert result['fraction']['matmul'] > 0.5
  assert result['n_ops'] >= 20
  assert sum(result['fraction'].values()) == pytest.approx(1.0, abs=0.01)
  # Ops fit inside the wall time on the threads that ran them (the trace's
  # own clock and perf_counter differ by microseconds, hence the margin).
  assert 0 < result['busy_fraction'] <= 1.05


def test_trace_without_thunk_events_says_how_to_record_them(tmp_path):
  if profiling.TRACEME_FLAG in os.environ.get('XLA_FLAGS', ''):
    pytest.skip('this process records thunk events')
  f = jax.jit(lambda a: a @ a)
  x = jnp.ones((64, 64))
  f(x).block_until_ready()
  with jax.profiler.trace(str(tmp_path)):
    f(x).block_until_ready()
  with pytest.raises(ValueError, match='xla_cpu_enable_xprof_traceme'):
    profiling.op_breakdown(str(tmp_path), 0.01)


def test_missing_trace_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='xplane'):
    profiling.op_breakdown(str(tmp_path), 1.0)
