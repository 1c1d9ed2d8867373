"""Where the time of a jitted program goes on XLA:CPU, from a profiler trace.

`jax.profiler.trace(dir)` with `XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true`
records one event per executed XLA:CPU thunk (a fusion, a dot, a copy) on the
thread that ran it. `op_breakdown` reads that trace (`jax.profiler.ProfileData`,
no TensorBoard needed) and sums the thunks' thread-seconds per kind of work:

  matmul     dots: `dot*` thunks and YNNPACK fusions (`ynn_fusion*`; XLA:CPU
             hands dots, with the elementwise ops fused around them, to
             YNNPACK); `*convolution*`;
  convert    fusions whose name contains `convert` (dtype changes, e.g. the
             bf16 ↔ f32 round trips XLA:CPU inserts around bf16 element-wise
             work);
  copy       `copy*` / `transpose*` fusions (layout changes);
  reduce     `reduce*` fusions and thunks;
  other      every other thunk (element-wise fusions, gathers, scatters, …).

It also reports `busy_fraction`: op thread-seconds / (wall seconds × cores),
cores = the machine's CPUs (at most the threads that ran ops; XLA:CPU runs
ops on its intra-op pool and, for small ones, on the calling thread). On a
CPU whose cores should all be busy, 1 − busy_fraction is time the runtime
left a core idle (a single-threaded op, a dependency wait).

Thunk names come from the optimised HLO; the kinds above are read from the
names XLA:CPU gives its fusions (it names a fusion after its root ops), so a
kind is an approximation, stated as such in the output.
"""

from __future__ import annotations

import collections
import glob
import os
import re
from typing import Mapping, Optional

KINDS = ('matmul', 'convert', 'copy', 'reduce', 'other')
TRACEME_FLAG = '--xla_cpu_enable_xprof_traceme=true'

# A thunk's event is named after its HLO instruction: lower case, digits,
# '_', '-', '.' (e.g. `copy_bitcast_fusion.317`, `ynn_fusion`). Everything
# else in a trace is runtime bookkeeping ('ThunkExecutor::Execute', 'Handle
# inputs', 'end: ynn_fusion') or a Python frame ('$file.py:12 f').
_HLO_NAME = re.compile(r'^[a-z][a-z0-9_.\-]*$')
# YNNPACK reports its fusions even without the flag, so a trace holding only
# those was recorded without it.
_ALWAYS_TRACED = re.compile(r'^ynn_fusion')


def op_kind(name: str) -> str:
  """The kind of work (one of KINDS) of an XLA:CPU thunk name."""
  base = re.sub(r'\.\d+$', '', name)
  if base.startswith(('ynn_fusion', 'dot', 'onednn')) or 'convolution' in base:
    return 'matmul'
  if 'convert' in base:
    return 'convert'
  if base.startswith(('copy', 'transpose')) or '_copy' in base:
    return 'copy'
  if base.startswith('reduce') or '_reduce' in base:
    return 'reduce'
  return 'other'


def trace_file(trace_dir: str) -> str:
  """The newest `*.xplane.pb` under `trace_dir`."""
  files = glob.glob(
    os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True
  )
  if not files:
    raise FileNotFoundError(f'no *.xplane.pb under {trace_dir}')
  return max(files, key=os.path.getmtime)


def op_breakdown(
  trace_dir: str,
  wall_seconds: float,
  top: int = 10,
  cores: Optional[int] = None,
) -> dict:
  """Thread-seconds per kind of XLA:CPU thunk in the newest trace of
  `trace_dir`, recorded over `wall_seconds` of wall-clock time on `cores`
  CPUs (default: this machine's).

  Returns:
    {"seconds": {kind: thread-seconds}, "fraction": {kind: share of op
    time}, "op_thread_seconds", "threads", "wall_seconds", "busy_fraction",
    "n_ops": executed thunks, "top": [(name, thread-seconds, count)] of the
    `top` costliest thunks}.
  """
  import jax

  data = jax.profiler.ProfileData.from_file(trace_file(trace_dir))
  seconds: Mapping[str, float] = collections.Counter()
  per_name: Mapping[str, float] = collections.Counter()
  counts: Mapping[str, int] = collections.Counter()
  threads = set()
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        if not _HLO_NAME.match(event.name):
          continue
        s = event.duration_ns * 1e-9
        seconds[op_kind(event.name)] += s
        per_name[event.name] += s
        counts[event.name] += 1
        threads.add((plane.name, line.name))
  total = sum(seconds.values())
  if not total or all(_ALWAYS_TRACED.match(name) for name in per_name):
    raise ValueError(
      f'no XLA:CPU thunk events in {trace_dir}: was the trace recorded with '
      f'XLA_FLAGS={TRACEME_FLAG}?'
    )
  n_threads = len(threads)
  cores = min(cores or os.cpu_count() or n_threads, n_threads)
  return {
    'seconds': {k: round(seconds.get(k, 0.0), 3) for k in KINDS},
    'fraction': {k: round(seconds.get(k, 0.0) / total, 3) for k in KINDS},
    'op_thread_seconds': round(total, 3),
    'threads': n_threads,
    'cores': cores,
    'wall_seconds': round(wall_seconds, 3),
    'busy_fraction': round(total / (wall_seconds * cores), 3),
    'n_ops': int(sum(counts.values())),
    'top': [
      (name, round(s, 3), counts[name]) for name, s in per_name.most_common(top)
    ],
  }
