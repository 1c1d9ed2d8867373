r"""Benchmark: XLA compile time of per-document gradient extraction, unrolled
vs scanned decoder layers.

For each model (a) SmolLM2-135M and (b) Gemma 3 4B (34 layers, 5:1 sliding /
global), it lowers and compiles the jitted step that `GradientExtractor`
runs (forward + backward through LoRA-output probes, method 'taps', one slab
of `rows` × `width` tokens, `loss_width` scored positions) from ABSTRACT
inputs: the model comes from `nnx.eval_shape` and every argument is a
`jax.ShapeDtypeStruct`, so no weights are needed or allocated. Compile time
is wall time of `.lower(...).compile()` (tracing + XLA; the tracing and
lowering part is also reported on its own), `repeats` times
each, median reported; jax's in-memory caches are cleared between repeats
and no persistent compilation cache is used.

It also reports XLA's temporary-buffer estimate (`memory_analysis()`) of the
scanned step per remat policy at `mem_width` tokens for SmolLM2: the peak
working memory of one forward+backward beyond weights and inputs, which is
what the remat policy trades against recompute.

Prints one JSON line, with the 1-minute load average before and after (the
ratios are only meaningful on an otherwise idle machine).

  python experiments/bench_compile.py
  python experiments/bench_compile.py --models=smollm2 --repeats=1
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from gatoms_jax.core import sharding
from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.transformer import (
  LoraConfig,
  Transformer,
  set_layer_execution,
)
from gatoms_jax.method import gradients

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['smollm2', 'gemma3_4b'], 'Models to compile.')
flags.DEFINE_integer('rows', 1, 'Rows (documents) per slab.')
flags.DEFINE_integer('width', 512, 'Tokens per row.')
flags.DEFINE_integer('loss_width', 64, 'Scored positions per slab.')
flags.DEFINE_integer('repeats', 2, 'Compilations per setting (median).')
flags.DEFINE_string('remat', 'dots', 'Remat policy of the compared steps.')
flags.DEFINE_integer('mem_width', 1024, 'Tokens of the remat memory check.')
flags.DEFINE_list('lora_targets', ['q_proj', 'v_proj'], 'LoRA targets.')

_ARCHS = {
  'smollm2': (config_lib.smollm2_135m, jnp.float32),
  'gemma3_4b': (config_lib.gemma3_4b, jnp.bfloat16),
}


def _abstract_split(arch, dtype, scan: bool, remat: str):
  """(mdef, base, lora) with ShapeDtypeStruct leaves: no weights allocated."""
  lora_config = LoraConfig(
    rank=8, alpha=16.0, targets=tuple(FLAGS.lora_targets)
  )

  def build():
    model = Transformer(arch, lora=lora_config, dtype=dtype, rngs=nnx.Rngs(0))
    set_layer_execution(model, scan_layers=scan, remat=remat)
    return model

  model = nnx.eval_shape(build)
  mdef, base, lora = lora_lib.split(model)
  to_struct = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  return mdef, jax.tree.map(to_struct, base), jax.tree.map(to_struct, lora)


def _abstract_slab(rows: int, width: int, loss_width: int) -> gradients.Slab:
  """One slab per call (S = 1), unpacked (one document per row)."""
  i32 = lambda *s: jax.ShapeDtypeStruct((1, *s), jnp.int32)
  return gradients.Slab(
    tokens=i32(rows, width),
    positions=i32(rows, width),
    segments=i32(rows, width),
    index=i32(1, loss_width),
    targets=i32(1, loss_width),
    weight=jax.ShapeDtypeStruct((1, 1, loss_width), jnp.float32),
    doc_index=i32(rows, 1),
  )


def _compile(arch, dtype, scan, remat, width):
  mdef, base, lora = _abstract_split(arch, dtype, scan, remat)
  fn = gradients._jitted_call('taps', False, sharding.make_mesh())
  slab = _abstract_slab(FLAGS.rows, width, FLAGS.loss_width)
  jax.clear_caches()
  start = time.perf_counter()
  lowered = fn.lower(lora, mdef, base, slab)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  end = time.perf_counter()
  return end - start, lowered_at - start, compiled


def _median_compile_s(arch, dtype, scan: bool) -> tuple[float, float]:
  """Median (total, of which tracing + lowering) seconds."""
  runs = [
    _compile(arch, dtype, scan, FLAGS.remat, FLAGS.width)[:2]
    for _ in range(FLAGS.repeats)
  ]
  total = statistics.median(r[0] for r in runs)
  lower = statistics.median(r[1] for r in runs)
  return round(total, 2), round(lower, 2)


def main(argv):
  del argv
  jax.config.update('jax_enable_compilation_cache', False)
  result = {
    'backend': jax.default_backend(),
    'load_avg_1m_before': round(os.getloadavg()[0], 2),
    'rows': FLAGS.rows,
    'width': FLAGS.width,
    'loss_width': FLAGS.loss_width,
    'remat': FLAGS.remat,
    'repeats': FLAGS.repeats,
  }
  for name in FLAGS.models:
    make, dtype = _ARCHS[name]
    arch = make()
    scanned, scanned_lower = _median_compile_s(arch, dtype, True)
    unrolled, unrolled_lower = _median_compile_s(arch, dtype, False)
    result[name] = {
      'num_layers': arch.num_layers,
      'dtype': jnp.dtype(dtype).name,
      'compile_s_unrolled': unrolled,
      'compile_s_scanned': scanned,
      'speedup': round(unrolled / scanned, 2),
      # Of which tracing + lowering to StableHLO (the rest is XLA).
      'lower_s_unrolled': unrolled_lower,
      'lower_s_scanned': scanned_lower,
    }
  if 'smollm2' in FLAGS.models:
    arch, dtype = config_lib.smollm2_135m(), jnp.float32
    temp = {}
    for remat in ('none', 'full', 'dots'):
      compiled = _compile(arch, dtype, True, remat, FLAGS.mem_width)[-1]
      analysis = compiled.memory_analysis()
      temp[remat] = (
        None if analysis is None else int(analysis.temp_size_in_bytes)
      )
    result['smollm2']['temp_bytes_scanned_by_remat'] = temp
    result['smollm2']['mem_width'] = FLAGS.mem_width
  result['load_avg_1m_after'] = round(os.getloadavg()[0], 2)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
