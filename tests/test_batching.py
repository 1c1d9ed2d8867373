"""Token-budget batches: every document once, the budget kept, few shapes."""

import numpy as np
from absl.testing import absltest, parameterized

from gatoms_jax.core.data import TokenizedDoc, batching


def _docs(lengths):
  return [
    TokenizedDoc(
      doc_id=str(i),
      index=i,
      tokens=np.arange(1, n + 1, dtype=np.int32),
      loss_mask=np.ones(n, np.float32),
    )
    for i, n in enumerate(lengths)
  ]


class LadderTest(absltest.TestCase):
  def test_ladder_values_and_ratio(self):
    values = [batching.ladder_length(n) for n in range(1, 5000)]
    for n, v in zip(range(1, 5000), values):
      self.assertGreaterEqual(v, n)
      self.assertEqual(v % 8, 0)
      # At most 1.5x the smallest admissible length (16 floor).
      self.assertLessEqual(v, max(16, int(np.ceil(1.5 * n / 8)) * 8))
    self.assertEqual(
      sorted(set(values))[:9], [16, 24, 32, 48, 64, 96, 128, 192, 256]
    )

  def test_four_steps_per_octave(self):
    values = [batching.ladder_length(n, steps=4) for n in range(1, 5000)]
    for n, v in zip(range(1, 5000), values):
      self.assertGreaterEqual(v, n)
      self.assertEqual(v % 8, 0)
      # At most 1.25x the smallest admissible length (16 floor, multiple 8).
      self.assertLessEqual(v, max(16, int(np.ceil(1.25 * n / 8)) * 8))
    self.assertEqual(
      sorted(set(values))[:9], [16, 24, 32, 40, 48, 56, 64, 80, 96]
    )
    # Two steps is the default ladder.
    self.assertEqual(
      [batching.ladder_length(n, steps=2) for n in range(1, 600)],
      [batching.ladder_length(n) for n in range(1, 600)],
    )
    with self.assertRaisesRegex(ValueError, 'power of two'):
      batching.ladder_length(100, steps=3)

  def test_cap_at_max_length(self):
    self.assertEqual(batching.bucket_length(700, max_length=1000), 768)
    self.assertEqual(batching.bucket_length(999, max_length=1000), 1000)
    # 2 per doubling from 16: 16..1024 is 13 lengths; 1000 caps the last.
    self.assertEqual(batching.max_shapes(1000), 13)


class PlanTest(parameterized.TestCase):
  @parameterized.parameters(
    (2048, 8, 1, False), (4096, None, 2, False), (1000, 4, 1, True)
  )
  def test_every_doc_once_budget_and_bounded_shapes(
    self, budget, max_rows, row_multiple, shuffle
  ):
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 1025, size=300)
    plan = batching.plan_batches(
      lengths,
      budget,
      max_rows=max_rows,
      max_length=1024,
      row_multiple=row_multiple,
      shuffle=shuffle,
      seed=3,
    )
    seen = sorted(i for _, _, idx in plan for i in idx)
    self.assertEqual(seen, list(range(300)))
    shapes = {(rows, width) for rows, width, _ in plan}
    # One row count per length: shapes ≤ the ladder's lengths.
    self.assertLessEqual(len(shapes), batching.max_shapes(1024))
    self.assertEqual(len(shapes), len({w for _, w in shapes}))
    for rows, width, idx in plan:
      self.assertLessEqual(len(idx), rows)
      self.assertEqual(rows % row_multiple, 0)
      self.assertTrue(all(lengths[i] <= width for i in idx))
      # Within budget unless one row alone exceeds it.
      self.assertTrue(rows * width <= budget or rows == row_multiple)
      if max_rows:
        self.assertLessEqual(rows, max(max_rows, row_multiple))

  def test_deterministic_and_seeded(self):
    lengths = np.random.default_rng(1).integers(5, 300, size=100)
    a = batching.plan_batches(lengths, 1024, shuffle=True, seed=1)
    b = batching.plan_batches(lengths, 1024, shuffle=True, seed=1)
    c = batching.plan_batches(lengths, 1024, shuffle=True, seed=2)
    self.assertEqual(a, b)
    self.assertNotEqual(a, c)
    self.assertEqual(
      batching.plan_batches(lengths, 1024), batching.plan_batches(lengths, 1024)
    )

  def test_token_batches_content(self):
    docs = _docs([3, 40, 17, 200, 9])
    batches = list(batching.token_batches(docs, 128, max_length=256))
    for b in batches:
      self.assertLessEqual(b.tokens.size, 256)  # one 200-token doc alone
      for row, i in enumerate(b.doc_index):
        if i < 0:
          self.assertEqual(b.loss_mask[row].sum(), 0)
          continue
        n = docs[i].length
        np.testing.assert_array_equal(b.tokens[row, :n], docs[i].tokens)
        self.assertEqual(b.loss_mask[row, n:].sum(), 0)

  def test_split_group_keeps_indices(self):
    docs = _docs([10, 300, 20, 250, 30, 5])
    group = [5, 3, 1, 0]
    parts = batching.split_group(docs, group, 512, max_rows=4, max_length=512)
    got = sorted(int(i) for p in parts for i in p.doc_index if i >= 0)
    self.assertEqual(got, sorted(group))
    self.assertTrue(all(p.tokens.size <= 512 for p in parts))
    # Mixed lengths that fit at the longest one stay one call (as before
    # the budget: the demo's 8-document micro-batches are single calls).
    (one,) = batching.split_group(docs, [0, 2, 4, 5], 2048, max_rows=8)
    self.assertEqual(one.tokens.shape, (8, 32))

  def test_loss_width(self):
    self.assertEqual(batching.loss_width(5, 100), 8)
    self.assertEqual(batching.loss_width(100, 100), 99)
    self.assertEqual(batching.loss_width(33, 512, 32), 64)


if __name__ == '__main__':
  absltest.main()
