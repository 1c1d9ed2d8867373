r"""Benchmark: per-query latency of atom-routed vs exact ranking as N grows.

  .venv/bin/python experiments/bench_explain.py [--sizes=1000,10000,...]

Synthetic codes at the demo's K (60 atoms) and an assumed sparsity: each
document has one main atom (uniform over K, value U(0.3, 1)) and a Poisson
number of secondary atoms (mean `nnz` − 1, values N(0, 0.15²)); queries come
from the same process. For each N:

  atoms_ms            `explain.rank_by_atoms` with the config's list budget
                      (`explain.budget` entries): work bounded independently
                      of N; `atoms_certified` is the fraction of queries whose
                      top 10 the stop bound certified, `atoms_recall_at_10`
                      the overlap with the exhaustive atom ranking (all N
                      codes scored) and `atoms_score_ratio` the budgeted top
                      10's summed score over the exhaustive one's — the price
                      of the budget.
  atoms_unbudgeted_ms the same without a budget (exact top 10 under the atom
                      score; its reading depth grows with N when the codes'
                      top values are dense).
  exact_ms            ⟨x_q, x_d⟩ over N random rows of `dim` (6,000: the
                      demo's projected width) + top-10. N × dim float32 rows
                      do not fit in memory at 10⁶ (24 GB), so the rows are
                      one block of `exact_block` rows read N / block times
                      (the same bytes streamed from memory as N rows).

Bytes kept per document: the index's (codes by document and by atom) vs
dim × 4 for the exact route. The last stdout line is one JSON object, with
the 1-minute load average at the start and the end: ratios measured under
load are not claims.
"""

from __future__ import annotations

import json
import os
import sys
import time

if __package__ in (None, ''):  # run as a script: make `gatoms_jax` importable
  sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

import numpy as np
from absl import app, flags

from configs import common
from gatoms_jax.method import explain

_DEFAULTS = common.base_config()
flags.DEFINE_list('sizes', ['1000', '10000', '100000', '1000000'], 'N values.')
flags.DEFINE_integer('n_atoms', 60, "K (the demo's dictionary.n_atoms).")
flags.DEFINE_float('nnz', 6.0, 'Mean non-zero codes per document (assumed).')
flags.DEFINE_integer('dim', 6000, 'Projected width of the exact route.')
flags.DEFINE_integer('n_queries', 30, 'Queries timed per N (atom routes).')
flags.DEFINE_integer('n_exact_queries', 2, 'Queries timed per N (exact).')
flags.DEFINE_integer('exact_block', 20000, 'Rows held for the exact route.')
flags.DEFINE_integer('k', 10, 'Documents ranked.')
flags.DEFINE_integer('budget', _DEFAULTS.explain.budget, 'List entries read.')
flags.DEFINE_integer('block', _DEFAULTS.explain.block, 'Entries per round.')
flags.DEFINE_integer('seed', 0, 'Data seed.')
FLAGS = flags.FLAGS


def synthetic_codes(n, k, nnz, rng):
  """CSR codes: one main atom U(0.3, 1) + Poisson(nnz − 1) small ones."""
  extra = np.minimum(rng.poisson(max(nnz - 1, 0), n), k - 1)
  counts = 1 + extra
  ptr = np.concatenate([[0], np.cumsum(counts)])
  atoms = np.empty(ptr[-1], np.int32)
  values = np.empty(ptr[-1], np.float32)
  atoms[ptr[:-1]] = rng.integers(0, k, n)
  values[ptr[:-1]] = rng.uniform(0.3, 1.0, n)
  # Distinct secondary atoms: the first `extra` of a random order of the
  # K − 1 other atoms (chunked argsort of random keys).
  for s in range(0, n, 100_000):
    e = extra[s : s + 100_000]
    order = np.argsort(rng.random((len(e), k - 1)), axis=1)
    take = np.arange(k - 1) < e[:, None]
    main = atoms[ptr[s : s + len(e)]]
    others = order + (order >= main[:, None])
    rows = np.nonzero(e)[0]
    slots = ptr[s + rows] + 1
    atoms[np.repeat(slots, e[rows]) + _ranks(e[rows])] = others[take][: e.sum()]
  secondary = np.ones(ptr[-1], bool)
  secondary[ptr[:-1]] = False
  values[secondary] = rng.normal(0, 0.15, secondary.sum())
  return ptr, atoms, values


def _ranks(counts):
  """0, 1, …, c − 1 for each count c, concatenated."""
  return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def _dense(ptr, atoms, values, k):
  out = np.zeros((len(ptr) - 1, k), np.float32)
  rows = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
  out[rows, atoms] = values
  return out


def _timed(fn, items):
  """(results, median milliseconds per call)."""
  results, times = [], []
  for item in items:
    start = time.perf_counter()
    results.append(fn(item))
    times.append((time.perf_counter() - start) * 1e3)
  return results, float(np.median(times))


def main(argv):
  del argv
  rng = np.random.default_rng(FLAGS.seed)
  k, K = FLAGS.k, FLAGS.n_atoms
  out = {
    'load_avg_1min_start': os.getloadavg()[0],
    'n_atoms': K,
    'nnz': FLAGS.nnz,
    'dim': FLAGS.dim,
    'budget': FLAGS.budget,
    'block': FLAGS.block,
    'sizes': [],
    'atoms_ms': [],
    'atoms_unbudgeted_ms': [],
    'exact_ms': [],
    'atoms_certified': [],
    'atoms_recall_at_10': [],
    'atoms_score_ratio': [],
    'atoms_docs_scored': [],
    'atoms_unbudgeted_docs_scored': [],
    'atoms_bytes_per_doc': [],
    'exact_bytes_per_doc': FLAGS.dim * 4,
  }
  block = rng.standard_normal((FLAGS.exact_block, FLAGS.dim), np.float32)
  block /= np.linalg.norm(block, axis=1, keepdims=True)
  for n in [int(s) for s in FLAGS.sizes]:
    index = explain.index_from_csr(*synthetic_codes(n, K, FLAGS.nnz, rng), K)
    queries = _dense(*synthetic_codes(FLAGS.n_queries, K, FLAGS.nnz, rng), K)
    rank = lambda q, budget: explain.rank_by_atoms(
      index, q, k, budget=budget or None, block=FLAGS.block
    )
    rank(queries[0], FLAGS.budget)  # warm-up
    budgeted, budgeted_ms = _timed(lambda q: rank(q, FLAGS.budget), queries)
    unbudgeted, unbudgeted_ms = _timed(lambda q: rank(q, None), queries)
    recalls = [
      explain.recall_at(b.docs, u.docs, k) for b, u in zip(budgeted, unbudgeted)
    ]
    # How far below the best possible the budgeted top k scores (1 = equal):
    # at large N many documents score within a hair of the top k.
    ratios = [
      b.scores.sum() / u.scores.sum()
      for b, u in zip(budgeted, unbudgeted)
      if u.scores.sum() > 0
    ]
    # Exact: N / block passes over the block (the same bytes as N rows).
    passes = max(1, n // FLAGS.exact_block)
    rows = block[: min(n, FLAGS.exact_block)]
    xq = block[:: max(1, len(block) // FLAGS.n_exact_queries)][
      : FLAGS.n_exact_queries
    ]

    def exact(x):
      scores = np.concatenate([rows @ x for _ in range(passes)])
      top = np.argpartition(-scores, k)[:k]
      return top[np.argsort(-scores[top])]

    out['sizes'].append(n)
    out['atoms_ms'].append(budgeted_ms)
    out['atoms_unbudgeted_ms'].append(unbudgeted_ms)
    out['exact_ms'].append(_timed(exact, xq)[1])
    out['atoms_certified'].append(
      float(np.mean([b.certified for b in budgeted]))
    )
    out['atoms_recall_at_10'].append(float(np.mean(recalls)))
    out['atoms_score_ratio'].append(float(np.mean(ratios)))
    out['atoms_docs_scored'].append(
      float(np.median([b.n_scored for b in budgeted]))
    )
    out['atoms_unbudgeted_docs_scored'].append(
      float(np.median([u.n_scored for u in unbudgeted]))
    )
    out['atoms_bytes_per_doc'].append(index.bytes_per_doc)
    print(
      f'N={n}: atoms {out["atoms_ms"][-1]:.3f} ms (unbudgeted '
      f'{out["atoms_unbudgeted_ms"][-1]:.3f}), exact {out["exact_ms"][-1]:.1f} ms',
      file=sys.stderr,
      flush=True,
    )
  out['atoms_growth'] = out['atoms_ms'][-1] / out['atoms_ms'][0]
  out['exact_growth'] = out['exact_ms'][-1] / out['exact_ms'][0]
  out['load_avg_1min_end'] = os.getloadavg()[0]
  print(json.dumps(out))


if __name__ == '__main__':
  app.run(main)
