"""Tests for the embedded generated task mixture (gatoms_jax.demo.mixture)."""

import ast
import collections
import re

from absl.testing import absltest, parameterized

from gatoms_jax.demo import mixture
from gatoms_jax.demo import mixture_tables as tb
from gatoms_jax.demo.mixture import TASK_TYPES, generate_mixture

N = 1200  # the demo's default mixture size
_DOCS = {}


def docs(seed=0, n=N):
  if (seed, n) not in _DOCS:
    _DOCS[seed, n] = generate_mixture(n, seed)
  return _DOCS[seed, n]


def by_task(task, seed=0):
  return [d for d in docs(seed) if d.label == task]


def _eval(expr):
  """Evaluates an integer expression with + - × ÷ and parentheses."""
  py = expr.replace('×', '*').replace('÷', '//')
  if not re.fullmatch(r'[\d\s+\-*/()]+', py):
    raise ValueError(f'not an arithmetic expression: {expr!r}')
  if '//' in py:  # the data only uses exact divisions
    a, b = py.split('//')[0].split()[-1], py.split('//')[1].split()[0]
    assert int(a) % int(b) == 0, expr
  return eval(py, {'__builtins__': {}})  # pylint: disable=eval-used


_EQUATION = re.compile(r'(\(?\d+(?: [-+×÷] \(?\d+\)?)+) = (\d+)')


class StructureTest(parameterized.TestCase):
  def test_task_types(self):
    self.assertGreaterEqual(len(TASK_TYPES), 14)
    self.assertLen(set(TASK_TYPES), len(TASK_TYPES))
    self.assertEqual({d.label for d in docs()}, set(TASK_TYPES))

  def test_ids_and_messages(self):
    ds = docs()
    self.assertLen(ds, N)
    self.assertEqual(ds[0].doc_id, 'gen0-000000')
    self.assertEqual(ds[-1].doc_id, f'gen0-{N - 1:06d}')
    self.assertLen({d.doc_id for d in ds}, N)
    for d in ds:
      self.assertEqual([m['role'] for m in d.messages], ['user', 'assistant'])
      self.assertTrue(d.messages[0]['content'].strip())
      self.assertTrue(d.messages[1]['content'].strip())
    # Exact duplicates are redrawn.
    self.assertLen({(d.user_text, d.assistant_text) for d in ds}, N)

  def test_deterministic(self):
    self.assertEqual(generate_mixture(200, 0), generate_mixture(200, 0))
    a, b = generate_mixture(200, 0), generate_mixture(200, 1)
    same = sum(x.messages == y.messages for x, y in zip(a, b))
    # Different seeds: at most a handful of coincidences (tiny answer spaces).
    self.assertLess(same, 10)
    self.assertEqual(b[0].doc_id, 'gen1-000000')

  def test_prefix_stable(self):
    self.assertEqual(generate_mixture(77, 3), generate_mixture(150, 3)[:77])

  @parameterized.parameters(15, 37, 100, 1200, 1207)
  def test_balanced(self, n):
    counts = collections.Counter(d.label for d in generate_mixture(n, 5))
    expected = n / len(TASK_TYPES)
    for task in TASK_TYPES:
      # Blocks of one document per task: every prefix is within one document.
      self.assertLessEqual(abs(counts[task] - expected), 1.0, task)

  def test_surface_variety(self):
    for task in TASK_TYPES:
      ds = by_task(task)
      users = {d.user_text for d in ds}
      # ~80 docs per task; most prompts must differ (phrasings x entities).
      self.assertGreaterEqual(len(users), 0.75 * len(ds), task)
      openings = {' '.join(u.split()[:2]) for u in users}
      self.assertGreaterEqual(len(openings), 6, task)

  def test_hundreds_of_entities(self):
    n = sum(
      len(t)
      for t in (
        tb.CAPITALS,
        tb.ELEMENTS,
        tb.BOOKS,
        tb.PAINTINGS,
        tb.CURRENCIES,
        tb.TRANSLATIONS,
        tb.PLURALS,
        tb.ANTONYMS,
        tb.WORD_POOL,
        tb.NAMES,
      )
    )
    self.assertGreater(n, 400)


class CorrectnessTest(parameterized.TestCase):
  def test_arithmetic(self):
    for d in by_task('arithmetic'):
      parts = d.assistant_text.split(' = ')
      self.assertGreaterEqual(len(parts), 2, d.assistant_text)
      values = [_eval(p) for p in parts]
      self.assertLen(set(values), 1, d.assistant_text)
      # The prompt shows the expression (or its words, in any order).
      numbers = sorted(re.findall(r'\d+', parts[0]))
      self.assertEqual(sorted(re.findall(r'\d+', d.user_text)), numbers)

  def test_word_problem(self):
    for d in by_task('word_problem'):
      text = d.assistant_text
      equations = _EQUATION.findall(text)
      self.assertGreaterEqual(len(equations), 2, text)
      for lhs, rhs in equations:
        self.assertEqual(_eval(lhs), int(rhs), text)
      final = re.search(r'The answer is (\d+)\.$', text)
      self.assertIsNotNone(final, text)
      self.assertEqual(final.group(1), equations[-1][1])

  def test_yes_no(self):
    capitals = dict(tb.CAPITALS)
    checked = 0
    for d in by_task('yes_no'):
      q, a = d.user_text, d.assistant_text
      checked += 1
      self.assertRegex(a, r'^(Yes|No|True|False)\b')
      positive = a.startswith(('Yes', 'True'))
      if m := re.search(r'Is (\d+) a prime number\?|Is (\d+) prime\?', q):
        n = int(m.group(1) or m.group(2))
        is_prime = all(n % k for k in range(2, n))
        self.assertEqual(positive, is_prime, q)
      elif m := re.search(
        r'(\d+) (?:divisible by|be divided evenly by|a multiple of) (\d+)', q
      ):
        self.assertEqual(positive, int(m.group(1)) % int(m.group(2)) == 0, q)
      elif m := re.search(r'Is (\d+) (?:greater|bigger|larger) than (\d+)', q):
        self.assertEqual(positive, int(m.group(1)) > int(m.group(2)), q)
      elif m := re.search(r'Is (\d+) an (even|odd) number', q):
        self.assertEqual(
          positive, (int(m.group(1)) % 2 == 0) == (m.group(2) == 'even'), q
        )
      elif m := re.search(r'Is (.+) the capital of (.+)\?', q):
        self.assertEqual(positive, capitals[m.group(2)] == m.group(1), q)
      else:
        checked -= 1
    # Most kinds are checked here (True/False statements are not parsed).
    self.assertGreater(checked, 30)

  def test_factual_qa(self):
    capitals = dict(tb.CAPITALS)
    symbols = {e: s for e, s, _ in tb.ELEMENTS}
    for d in by_task('factual_qa'):
      a = d.assistant_text
      self.assertTrue(a.endswith('.') and '\n' not in a, a)
      if m := re.fullmatch(r'The capital of (.+) is (.+)\.', a):
        self.assertEqual(capitals[m.group(1)], m.group(2))
        self.assertIn(m.group(1), d.user_text)
      if m := re.fullmatch(r'The chemical symbol for (\w+) is (\w+)\.', a):
        self.assertEqual(symbols[m.group(1)], m.group(2))

  def test_code_blocks_parse(self):
    for d in by_task('code'):
      m = re.fullmatch(r'```python\n(.+)\n```', d.assistant_text, re.DOTALL)
      self.assertIsNotNone(m, d.assistant_text)
      tree = ast.parse(m.group(1))
      self.assertTrue(any(isinstance(n, ast.FunctionDef) for n in tree.body))

  def test_bullets_and_numbered(self):
    for d in by_task('bullets'):
      items = [x for x in d.assistant_text.splitlines() if x.startswith('- ')]
      self.assertGreaterEqual(len(items), 3, d.assistant_text)
    for d in by_task('numbered'):
      lines = [
        x for x in d.assistant_text.splitlines() if re.match(r'\d+\. ', x)
      ]
      self.assertGreaterEqual(len(lines), 3)
      self.assertEqual(
        [int(x.split('.')[0]) for x in lines], list(range(1, len(lines) + 1))
      )

  def test_missing_input_asks_politely(self):
    for d in by_task('missing_input'):
      a = d.assistant_text
      self.assertRegex(a, r'(?i)\b(provide|share|paste|send)\b')
      self.assertRegex(a, r'(?i)please|could you')
      self.assertNotIn('\n', a)

  def test_classification_labels(self):
    for d in by_task('sentiment'):
      self.assertIn(d.assistant_text, ('Positive', 'Negative'))
    for d in by_task('topic_classification'):
      m = re.fullmatch(r'Category: (\w+)', d.assistant_text)
      self.assertIsNotNone(m)
      self.assertIn(m.group(1).lower(), d.user_text)

  def test_other_formats(self):
    translations = {r[0]: set(r[1:]) for r in tb.TRANSLATIONS}
    for d in by_task('translation'):
      word = re.search(r'"([^"]+)"|: (.+)$', d.user_text)
      word = word.group(1) or word.group(2)
      target = re.findall(r'"([^"]+)"', d.assistant_text)[-1]
      self.assertIn(target, translations[word], d.user_text)
    for d in by_task('email'):
      self.assertTrue(d.assistant_text.startswith('Subject: '))
      self.assertRegex(d.assistant_text, r'\n\n(Hi|Hello|Dear) \w+,\n\n')
    for d in by_task('grammar'):
      self.assertRegex(d.assistant_text, r'^Corrected: .+\nChange: ".+" → ".+"')
    for d in by_task('word_tasks'):
      self.assertIn('"', d.assistant_text)
      if m := re.fullmatch(
        r'The word "(\w+)" has (\d+) letters\.', d.assistant_text
      ):
        self.assertLen(m.group(1), int(m.group(2)))
    for d in by_task('text_transform'):
      if d.user_text.startswith('Convert to uppercase: '):
        self.assertEqual(
          d.assistant_text, d.user_text.split(': ', 1)[1].upper()
        )

  def test_pig_latin(self):
    from gatoms_jax.demo.mixture_formats import _pig_latin  # pylint: disable=g-import-not-at-top

    self.assertEqual(_pig_latin('dog'), 'ogday')
    self.assertEqual(_pig_latin('apple'), 'appleway')
    self.assertEqual(_pig_latin('sleepy'), 'eepyslay')

  def test_task_of_index_matches_labels(self):
    for i, d in enumerate(docs()[:60]):
      self.assertEqual(mixture.task_of_index(i, 0), d.label)


if __name__ == '__main__':
  absltest.main()
