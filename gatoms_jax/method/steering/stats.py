"""Statistics for steering verdicts: held-out splits, paired tests, intervals.

A behaviour's prompts are split once into a selection half (which atom
variant, sign and KL level to report) and a test half (the reported rates),
so the reported shift is not the maximum of many noisy shifts. On the test
half each verdict gets an exact paired test of the atom variant against the
strongest null at the same KL level, and intervals on every rate and shift.
All functions are pure numpy over per-prompt detector outcomes (booleans).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def split_halves(invites: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic selection / test halves, stratified by inviting or not.

  Within the inviting prompts and within the controls, alternate positions go
  to the selection half (even) and the test half (odd), so both halves keep
  the set's mix and order effects cancel.

  Returns:
    (selection indices, test indices), sorted.
  """
  invites = np.asarray(invites, bool)
  select, test = [], []
  for group in (np.flatnonzero(invites), np.flatnonzero(~invites)):
    select.extend(group[0::2])
    test.extend(group[1::2])
  return np.sort(np.asarray(select, int)), np.sort(np.asarray(test, int))


def _binom_two_sided(k: int, n: int) -> float:
  """Exact two-sided binomial p of k successes in n at p = 1/2."""
  if n == 0:
    return 1.0
  tail = min(k, n - k)
  p = sum(math.comb(n, i) for i in range(tail + 1)) / 2.0**n
  return min(1.0, 2.0 * p)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
  """Exact (binomial) McNemar p-value, two-sided, of paired outcomes a vs b.

  Only discordant prompts carry information: under the null that a and b fire
  equally often, the prompts where exactly one fires split 50/50.
  """
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  if a.shape != b.shape:
    raise ValueError(f'paired outcomes differ in shape: {a.shape} vs {b.shape}')
  only_a = int(np.sum(a & ~b))
  only_b = int(np.sum(~a & b))
  return _binom_two_sided(only_a, only_a + only_b)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
  """95% Wilson score interval of a rate k/n, in percent."""
  if n == 0:
    return (0.0, 100.0)
  p = k / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return (100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half))


def paired_shift_interval(
  a: Sequence[bool],
  b: Sequence[bool],
  *,
  n_boot: int = 4000,
  seed: int = 0,
) -> tuple[float, float]:
  """95% paired-bootstrap interval of rate(a) − rate(b), in points.

  Prompts are resampled with replacement, keeping each prompt's pair, so the
  interval reflects that both rates were measured on the same prompts.
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f'paired outcomes differ in shape: {a.shape} vs {b.shape}')
  if a.size == 0:
    return (-100.0, 100.0)
  diff = a - b
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, diff.size, size=(n_boot, diff.size))
  means = 100.0 * diff[idx].mean(axis=1)
  lo, hi = np.percentile(means, [2.5, 97.5])
  return (float(lo), float(hi))


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
  """Holm step-down adjusted p-values of a family (None entries are skipped).

  adjusted p_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)) over the p-values
  sorted ascending, m the number of tests in the family.
  """
  present = sorted(
    ((p, name) for name, p in p_values.items() if p is not None),
    key=lambda t: (t[0], t[1]),
  )
  m = len(present)
  adjusted: dict[str, float | None] = {
    name: None for name, p in p_values.items() if p is None
  }
  running = 0.0
  for i, (p, name) in enumerate(present):
    running = max(running, min(1.0, (m - i) * p))
    adjusted[name] = running
  return adjusted
