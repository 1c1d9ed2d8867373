r"""Where the per-document gradient pass spends its time, per precision.

Runs `GradientExtractor` on bench_gradients' documents (same flags:
--n_docs, --min_len, --max_len, --precisions, --scan_layers, --remat,
--tokens_per_slab, --ladder_steps) with the gradients stage's own loop: one
pass to compile, one timed pass, one pass under `jax.profiler.trace`, whose
XLA:CPU thunks are summed per kind of work by
`gatoms_jax.core.profiling.op_breakdown` (matmul / convert / copy / reduce /
other thread-seconds, and the fraction of the cores' time spent in ops).
Tracing costs a little time: `pass_seconds` is the untraced pass,
`seconds` the op thread-seconds per kind.

  .venv/bin/python experiments/profile_gradients.py --precisions=float32,bfloat16

The last stdout line is one JSON object. Run it alone on the machine: the
busy fraction is meaningless when other processes take the cores.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

if __package__ in (None, ''):  # run as a script: make `gatoms_jax` importable
  sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

from gatoms_jax.core import profiling

# Thunk events exist only when XLA:CPU is told to emit them; XLA reads its
# flags once, when jax initialises its backend.
if profiling.TRACEME_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' ' + profiling.TRACEME_FLAG
  ).strip()

from absl import app, flags, logging

from configs import common
from experiments import _bench
from experiments import bench_gradients as bench  # defines the shared flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
  'trace_dir', '', 'Where traces are written (default: a temporary folder).'
)


def main(argv):
  del argv
  os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
  import jax

  from gatoms_jax.core.data.tokenizer import load_tokenizer
  from gatoms_jax.method import gradients as grads

  docs, source = bench.build_documents(
    load_tokenizer('embedded'),
    FLAGS.n_docs,
    FLAGS.min_len,
    FLAGS.max_len,
    FLAGS.seed,
  )
  scan_layers = FLAGS.scan_layers
  if scan_layers is None:
    scan_layers = common.base_config().gradients.scan_layers
  mdef, base, lora = bench.load_jax(
    FLAGS.seed, FLAGS.b_std, scan_layers=scan_layers, remat=FLAGS.remat
  )
  kw = {}
  if FLAGS.tokens_per_slab:
    kw['tokens_per_slab'] = FLAGS.tokens_per_slab
  if FLAGS.ladder_steps:
    kw['ladder_steps'] = FLAGS.ladder_steps
  trace_root = FLAGS.trace_dir or tempfile.mkdtemp(prefix='gatoms_profile_')
  load_start = _bench.load_average()
  cpu_start = _bench.cpu_snapshot()
  out = {'n_docs': len(docs), 'docs_source': source, 'by_precision': {}}
  for precision in FLAGS.precisions:
    extractor = grads.GradientExtractor(
      mdef, base, lora, compute_dtype=precision, **kw
    )
    start = time.perf_counter()
    extractor.gradients(docs)  # compiles every shape
    first = time.perf_counter() - start
    start = time.perf_counter()
    extractor.gradients(docs)
    seconds = time.perf_counter() - start
    trace_dir = os.path.join(trace_root, precision)
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      extractor.gradients(docs)
      traced = time.perf_counter() - start
    breakdown = profiling.op_breakdown(trace_dir, traced)
    breakdown.update(
      pass_seconds=round(seconds, 3),
      traced_seconds=round(traced, 3),
      first_pass_seconds=round(first, 3),
    )
    out['by_precision'][precision] = breakdown
    logging.info(
      '%s: %.2f s (traced %.2f s); op thread-seconds %s; busy %.2f',
      precision,
      seconds,
      traced,
      breakdown['seconds'],
      breakdown['busy_fraction'],
    )
  out.update(
    scan_layers=scan_layers,
    remat=FLAGS.remat,
    trace_dir=trace_root,
    devices=len(jax.devices()),
    kinds_note=(
      'kinds are read from XLA:CPU thunk names (gatoms_jax.core.profiling): '
      'matmul = dots and YNNPACK fusions, which also hold the element-wise '
      'ops fused around a dot'
    ),
  )
  _bench.finish_from_flags(out, {}, load_start, cpu_start)
  print(json.dumps(out))


if __name__ == '__main__':
  app.run(main)
