"""Token-budget batches with a small, bounded set of padded shapes.

Every distinct (rows, length) shape of a jitted call compiles once, and the
memory of a forward/backward grows with rows × length (and length² in
attention). Batching by a fixed number of documents ties both to the longest
document; here a batch is formed under a TOKEN budget instead:

* lengths are padded up to a geometric ladder, 2^k and 3·2^(k-1)
  (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, …), so at most
  ~2·log2(max_length / min_length) + 1 lengths occur, whatever the data, and
  padding never exceeds 50 % of a row (~20 % on average);
* the rows of a batch of padded length L are the largest power of two R
  with R·L ≤ tokens_per_batch (at least 1, at most max_rows), so there is one
  row count per length: ONE shape per length bucket;
* the order is deterministic: documents sorted by length (ties in input
  order, or in a seeded random order), cut into batches per bucket.

The number of shapes is therefore bounded by the number of ladder lengths up
to max_length, independent of the number of documents.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import numpy as np

from gatoms_jax.core.data.tokenize import Batch, round_up


def ladder_length(
  n: int, min_length: int = 16, multiple: int = 8, steps: int = 2
) -> int:
  """Smallest ladder value ≥ max(n, min_length), a multiple of `multiple`.

  The ladder puts `steps` values (a power of two) in every octave: between
  2^(k-1) and 2^k, 2^(k-1)·(1 + j/steps) for j = 1..steps. The default 2 is
  2^k and 3·2^(k-1) (consecutive values differ by ≤ 1.5×); 4 pads by ≤ 25%
  for about twice the shapes.
  """
  if steps < 1 or steps & (steps - 1):
    raise ValueError(f'ladder steps must be a power of two, got {steps}')
  n = max(int(n), int(min_length), 1)
  power = 1 << max(0, n - 1).bit_length()  # smallest 2^k ≥ n
  half = power // 2
  if half < steps:  # too short for steps of a whole token: the power of two
    value = power
  else:
    step = half // steps
    value = half + step * -(-(n - half) // step)
  return round_up(value, max(1, int(multiple)))


def bucket_length(
  n: int,
  *,
  min_length: int = 16,
  multiple: int = 8,
  max_length: Optional[int] = None,
  steps: int = 2,
) -> int:
  """The padded length of a document (or batch) of n tokens.

  The ladder value (`steps` per octave), capped at max_length rounded up to
  `multiple` (so the longest bucket is not wasted beyond the truncation
  length).
  """
  value = ladder_length(n, min_length, multiple, steps)
  if max_length:
    value = min(value, round_up(max(int(max_length), int(n)), multiple))
  return value


def pow2_floor(n: int) -> int:
  """Largest power of two ≤ n (1 for n < 1)."""
  return 1 << max(0, int(n).bit_length() - 1) if n >= 1 else 1


def rows_for(
  length: int,
  tokens_per_batch: int,
  *,
  max_rows: Optional[int] = None,
  row_multiple: int = 1,
) -> int:
  """Rows of a batch of padded `length`: the largest power of two R with
  R·length ≤ tokens_per_batch (≥ 1), capped at max_rows, rounded up to a
  multiple of row_multiple (the devices the rows are sharded over)."""
  rows = pow2_floor(max(1, int(tokens_per_batch) // max(1, int(length))))
  if max_rows:
    rows = min(rows, pow2_floor(int(max_rows)))
  return round_up(rows, max(1, int(row_multiple)))


def plan_batches(
  lengths: Sequence[int],
  tokens_per_batch: int,
  *,
  max_rows: Optional[int] = None,
  min_length: int = 16,
  multiple: int = 8,
  max_length: Optional[int] = None,
  row_multiple: int = 1,
  shuffle: bool = False,
  seed: int = 0,
) -> list[tuple[int, int, list[int]]]:
  """Groups documents (by their lengths) into token-budget batches.

  Args:
    lengths: tokens of each document.
    tokens_per_batch: budget of padded rows × length per batch (a longer
      document than the budget still gets a batch of one row).
    max_rows: optional cap on the rows of a batch.
    min_length: the shortest padded length.
    multiple: padded lengths are multiples of this.
    max_length: cap on padded lengths (the truncation length).
    row_multiple: rows are a multiple of this.
    shuffle: shuffle equal-length ties and the order of the batches (seeded).
    seed: the shuffle seed.

  Returns:
    [(rows, length, document indices)], each index exactly once; a batch
    holds at most `rows` documents, all of length ≤ `length`.
  """
  if tokens_per_batch < 1:
    raise ValueError(f'tokens_per_batch must be >= 1, got {tokens_per_batch}')
  lengths = np.asarray(lengths, np.int64)
  n = len(lengths)
  rng = np.random.default_rng(seed) if shuffle else None
  tie = rng.permutation(n) if shuffle else np.arange(n)
  order = tie[np.argsort(lengths[tie], kind='stable')]
  bucket_of = lambda i: bucket_length(
    int(lengths[i]),
    min_length=min_length,
    multiple=multiple,
    max_length=max_length,
  )
  plan, start = [], 0
  while start < n:
    width = bucket_of(order[start])
    stop = start
    while stop < n and bucket_of(order[stop]) == width:
      stop += 1
    rows = rows_for(
      width, tokens_per_batch, max_rows=max_rows, row_multiple=row_multiple
    )
    for s in range(start, stop, rows):
      plan.append(
        (rows, width, [int(i) for i in order[s : min(s + rows, stop)]])
      )
    start = stop
  if shuffle:
    plan = [plan[i] for i in rng.permutation(len(plan))]
  return plan


def fill_batch(
  tokenized: Sequence[Any],
  indices: Sequence[int],
  rows: int,
  width: int,
  pad_id: int = 0,
) -> Batch:
  """A right-padded `Batch` (rows × width) of the given documents."""
  tokens = np.full((rows, width), pad_id, np.int32)
  mask = np.zeros((rows, width), np.float32)
  doc_index = np.full((rows,), -1, np.int32)
  for row, i in enumerate(indices):
    doc = tokenized[i]
    n = min(doc.length, width)
    tokens[row, :n] = doc.tokens[:n]
    mask[row, :n] = doc.loss_mask[:n]
    doc_index[row] = i
  return Batch(tokens=tokens, loss_mask=mask, doc_index=doc_index)


def token_batches(
  tokenized: Sequence[Any],
  tokens_per_batch: int,
  *,
  max_rows: Optional[int] = None,
  min_length: int = 16,
  multiple: int = 8,
  max_length: Optional[int] = None,
  row_multiple: int = 1,
  shuffle: bool = False,
  seed: int = 0,
  pad_id: int = 0,
) -> Iterator[Batch]:
  """Yields the `plan_batches` batches of `tokenized` (TokenizedDoc-likes)
  as padded `Batch`es; padding rows have doc_index -1 and a zero mask."""
  plan = plan_batches(
    [d.length for d in tokenized],
    tokens_per_batch,
    max_rows=max_rows,
    min_length=min_length,
    multiple=multiple,
    max_length=max_length,
    row_multiple=row_multiple,
    shuffle=shuffle,
    seed=seed,
  )
  for rows, width, indices in plan:
    yield fill_batch(tokenized, indices, rows, width, pad_id)


def split_group(
  tokenized: Sequence[Any],
  indices: Sequence[int],
  tokens_per_batch: int,
  *,
  max_rows: Optional[int] = None,
  min_length: int = 16,
  multiple: int = 8,
  max_length: Optional[int] = None,
  row_multiple: int = 1,
  pad_id: int = 0,
) -> list[Batch]:
  """Cuts a fixed group of documents (e.g. one fine-tuning micro-batch)
  into token-budget batches of bounded shapes.

  Longest first: each batch takes the next R documents, R = `rows_for` the
  padded length L of the longest of them, and is padded to (R, L); so a group
  that fits the budget at its longest length stays ONE batch, and there is
  one row count per length (one shape per ladder length).
  """
  kw = dict(min_length=min_length, multiple=multiple, max_length=max_length)
  order = sorted(indices, key=lambda i: -tokenized[i].length)
  out, start = [], 0
  while start < len(order):
    width = bucket_length(tokenized[order[start]].length, **kw)
    rows = rows_for(
      width, tokens_per_batch, max_rows=max_rows, row_multiple=row_multiple
    )
    part = order[start : start + rows]
    out.append(fill_batch(tokenized, part, rows, width, pad_id))
    start += rows
  return out


def max_shapes(
  max_length: int, *, min_length: int = 16, multiple: int = 8
) -> int:
  """How many padded lengths (hence batch shapes) can occur up to max_length."""
  lengths = {
    bucket_length(
      n, min_length=min_length, multiple=multiple, max_length=max_length
    )
    for n in range(1, int(max_length) + 1)
  }
  return len(lengths)


def loss_width(count: int, length: int, multiple: int = 8) -> int:
  """Bucketed width of the gathered loss positions of a batch whose fullest
  row has `count` loss positions: on the ladder, a multiple of `multiple`,
  at most length − 1."""
  width = bucket_length(max(int(count), 1), min_length=8, multiple=multiple)
  return max(1, min(width, int(length) - 1))
