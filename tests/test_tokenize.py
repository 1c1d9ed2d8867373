"""Tests for gatoms_jax.core.data.tokenize and gatoms_jax.core.data.tokenizer.

Tokenizer-based tests use the embedded SmolLM2 GGUF tokenizer, loaded once
(~5 s); batching and splitting tests use synthetic documents.
"""

import collections
import copy

import numpy as np
from absl.testing import absltest, parameterized

from gatoms_jax.core.data import tokenizer as tokenizer_lib
from gatoms_jax.core.data import tokenize as tok_lib
from gatoms_jax.core.data.documents import Document, make_messages
from gatoms_jax.demo.mixture import TASK_TYPES, generate_mixture
from gatoms_jax.core.data.tokenize import TokenizedDoc

EOT = '<|im_end|>'  # SmolLM2's end-of-turn token, used only in assertions


def _doc(doc_id, *pairs, label=None):
  return Document(doc_id, make_messages(pairs), label=label)


def _masked_text(tok, td):
  return tok.decode(td.tokens[td.loss_mask == 1])


class TokenizerTest(parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tok = tokenizer_lib.load_tokenizer('embedded')

  def test_embedded_and_cache(self):
    path = tokenizer_lib.embedded_gguf_path()
    self.assertTrue(path.endswith('SmolLM2-135M-Instruct.Q4_1.gguf'))
    self.assertIs(tokenizer_lib.load_tokenizer(path), self.tok)
    self.assertIsNotNone(self.tok.chat_template)

  def test_missing_path(self):
    with self.assertRaisesRegex(FileNotFoundError, 'not found: .*nowhere'):
      tokenizer_lib.load_tokenizer('/nowhere/model')

  def test_single_turn_mask(self):
    d = _doc('a', ('user', 'What is 2 + 2?'), ('assistant', '2 + 2 = 4'))
    (td,), stats = tok_lib.tokenize_documents([d], self.tok, 256)
    self.assertEqual(_masked_text(self.tok, td), '2 + 2 = 4' + EOT)
    self.assertEqual(td.tokens.dtype, np.int32)
    self.assertEqual(td.loss_mask.dtype, np.float32)
    # Everything up to the generation prompt carries no loss.
    prompt = tok_lib.prompt_tokens(self.tok, 'What is 2 + 2?')
    np.testing.assert_array_equal(td.tokens[: len(prompt)], prompt)
    self.assertEqual(td.loss_mask[: len(prompt)].sum(), 0)
    self.assertEqual(td.loss_mask[len(prompt) :].sum(), td.n_target)
    # The trailing newline after <|im_end|> is template, not target.
    self.assertEqual(td.loss_mask[-1], 0)
    self.assertEqual(stats.n_kept, 1)
    self.assertEqual(stats.n_target_tokens, td.n_target)

  def test_multi_turn_and_system(self):
    d = _doc(
      'm',
      ('system', 'Answer briefly.'),
      ('user', 'Hi'),
      ('assistant', 'Hello there.'),
      ('user', 'Capital of Peru?'),
      ('assistant', 'Lima.\n\n- done'),
      label='chat',
    )
    (td,), _ = tok_lib.tokenize_documents([d], self.tok, 256)
    self.assertEqual(
      _masked_text(self.tok, td), 'Hello there.' + EOT + 'Lima.\n\n- done' + EOT
    )
    self.assertEqual(td.label, 'chat')
    # Two separate runs of ones: the user turn between them is not masked.
    runs = np.diff(np.concatenate([[0], td.loss_mask, [0]]))
    self.assertEqual((runs == 1).sum(), 2)
    self.assertNotIn('Capital', _masked_text(self.tok, td))

  def test_system_prompt_argument(self):
    d = _doc('s', ('user', 'Hi'), ('assistant', 'Hello.'))
    (plain,), _ = tok_lib.tokenize_documents([d], self.tok, 256)
    (sys,), _ = tok_lib.tokenize_documents(
      [d], self.tok, 256, system_prompt='You are terse.'
    )
    self.assertIn('You are terse.', self.tok.decode(sys.tokens))
    self.assertNotIn('You are terse.', self.tok.decode(plain.tokens))
    self.assertEqual(_masked_text(self.tok, sys), 'Hello.' + EOT)
    prompt = tok_lib.prompt_tokens(
      self.tok, 'Hi', system_prompt='You are terse.'
    )
    np.testing.assert_array_equal(sys.tokens[: len(prompt)], prompt)

  def test_truncation_and_no_target(self):
    long_answer = ' '.join(['word'] * 100)
    docs = [
      _doc('long', ('user', 'Say word a lot.'), ('assistant', long_answer)),
      _doc('short', ('user', 'Hi'), ('assistant', 'Hello.')),
      _doc('lost', ('user', ' '.join(['x'] * 200)), ('assistant', 'ok')),
    ]
    out, stats = tok_lib.tokenize_documents(
      docs, self.tok, 64, truncation='right'
    )
    self.assertEqual([t.doc_id for t in out], ['long', 'short'])
    self.assertEqual([t.index for t in out], [0, 1])
    self.assertEqual(out[0].length, 64)
    self.assertTrue(out[0].truncated)
    self.assertFalse(out[1].truncated)
    # Truncated from the right: the kept target is a prefix of the answer.
    self.assertTrue(long_answer.startswith(_masked_text(self.tok, out[0])))
    self.assertEqual(stats.n_truncated, 2)
    self.assertEqual(stats.truncated_ids, ['long', 'lost'])
    self.assertEqual(stats.n_no_target, 1)
    self.assertEqual(stats.no_target_ids, ['lost'])
    self.assertEqual(stats.n_kept, 2)
    self.assertIn('1 without target', stats.summary())

  def test_keep_answers_drops_prompt_from_the_left(self):
    prompt = ' '.join(f'w{i}' for i in range(150))
    d = _doc(
      'p',
      ('system', 'Be brief.'),
      ('user', prompt),
      ('assistant', 'First answer.'),
      ('user', 'And then?'),
      ('assistant', 'Second answer.'),
      label='task',
    )
    (full,), _ = tok_lib.tokenize_documents([d], self.tok, 4096)
    (td,), stats = tok_lib.tokenize_documents([d], self.tok, 64)
    self.assertEqual(td.length, 64)
    self.assertTrue(td.truncated)
    # Every answer survives whole, with its end-of-turn token.
    self.assertEqual(
      _masked_text(self.tok, td), 'First answer.' + EOT + 'Second answer.' + EOT
    )
    text = self.tok.decode(td.tokens)
    # The template's markers all survive (3 turns + 2 answers)...
    self.assertEqual(text.count('<|im_start|>'), 5)
    self.assertEqual(text.count(EOT), 5)
    # ...the earliest prompt turn (the system turn) is emptied first, then
    # the user turn loses its left: its right end is kept.
    self.assertIn('<|im_start|>system\n<|im_end|>', text)
    self.assertIn('w149<|im_end|>', text)
    self.assertNotIn('w0 ', text)
    self.assertIn('And then?', text)
    # What is kept is the full tokenisation minus a set of prompt tokens: the
    # tail after the dropped span is identical.
    tail = 40
    np.testing.assert_array_equal(td.tokens[-tail:], full.tokens[-tail:])
    self.assertEqual(stats.n_answer_truncated, 0)
    self.assertEqual(
      stats.per_label, {'task': {'read': 1, 'truncated': 1, 'excluded': 0}}
    )

  def test_keep_answers_cuts_last_answer_when_answers_do_not_fit(self):
    long_answer = ' '.join(['word'] * 100)
    d = _doc('a', ('user', 'Say word a lot, ' * 20), ('assistant', long_answer))
    (td,), stats = tok_lib.tokenize_documents([d], self.tok, 64)
    self.assertEqual(td.length, 64)
    kept = _masked_text(self.tok, td)
    self.assertTrue(long_answer.startswith(kept))
    self.assertGreater(len(kept), 100)  # the prompt gave way first
    self.assertEqual(stats.n_answer_truncated, 1)
    self.assertEqual(stats.n_no_target, 0)

  def test_unknown_truncation_policy(self):
    d = _doc('a', ('user', 'Hi'), ('assistant', 'Hello.'))
    with self.assertRaisesRegex(ValueError, 'truncation policy .*left'):
      tok_lib.tokenize_documents([d], self.tok, 64, truncation='left')

  def test_long_prompt_jsonl_keeps_every_document_and_label(self):
    # The acceptance data: user turns ~800 tokens, answers ~30, read
    # from a JSONL file and tokenised as the pipeline does (default config).
    import tempfile

    from configs import common
    from gatoms_jax.core import loading
    from gatoms_jax.core.data.documents import read_jsonl
    from long_prompts import LABELS, write_long_prompts

    with tempfile.TemporaryDirectory() as tmp:
      path = write_long_prompts(f'{tmp}/long.jsonl', 24)
      docs = read_jsonl(path, label_field='task').documents
    config = common.base_config()
    lengths = [len(self.tok(d.user_text)['input_ids']) for d in docs[:3]]
    self.assertTrue(all(700 < n < 900 for n in lengths), lengths)
    train, heldout, stats = loading.prepare_data(
      config, self.tok, docs, with_stats=True
    )
    self.assertEqual(len(train) + len(heldout), len(docs))
    self.assertEqual(stats.n_no_target, 0)
    self.assertEqual(stats.n_truncated, len(docs))
    self.assertEqual(set(stats.per_label), set(LABELS))
    self.assertEqual({t.label for t in train + heldout}, set(LABELS))
    for td in train + heldout:
      self.assertLessEqual(td.length, config.data.max_length)
      answer = docs[td.index].assistant_text
      self.assertEqual(_masked_text(self.tok, td), answer + EOT)
    # The old right cut loses them all (what the issue reported).
    config.data.truncation = 'right'
    _, _, right = loading.prepare_data(config, self.tok, docs, with_stats=True)
    self.assertEqual(right.n_no_target, len(docs))
    self.assertEqual(
      right.as_dict()['per_label']['qa'],
      {'read': 4, 'truncated': 4, 'excluded': 4},
    )

  @parameterized.named_parameters(
    (
      'plain_text_markers_with_eos',
      "{% for m in messages %}{% if m['role'] == 'user' %}### User: "
      "{{ m['content'] }}\n{% else %}### Assistant: {{ m['content'] }}"
      '<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}'
      '### Assistant:{% endif %}',
      True,
    ),
    (
      'no_end_token',
      "{% for m in messages %}[{{ m['role'] }}]\n{{ m['content'] }}\n\n"
      '{% endfor %}{% if add_generation_prompt %}[assistant]\n{% endif %}',
      False,
    ),
  )
  def test_other_templates(self, template, has_eot):
    tok = copy.deepcopy(self.tok)
    tok.chat_template = template
    d = _doc(
      't',
      ('user', 'Name a fruit.'),
      ('assistant', 'A pear.'),
      ('user', 'Another?'),
      ('assistant', 'A plum.'),
    )
    (td,), _ = tok_lib.tokenize_documents([d], tok, 256)
    # A leading space may merge with the content's first token, hence strip.
    expected = 'A pear.' + (EOT if has_eot else '')
    expected += ' A plum.' if has_eot else 'A plum.'
    expected += EOT if has_eot else ''
    got = tok.decode(td.tokens[td.loss_mask == 1])
    self.assertEqual(got.replace(' ', ''), expected.replace(' ', ''))
    self.assertNotIn('User', got)
    self.assertNotIn('assistant', got.lower())

  def test_generated_mixture(self):
    docs = generate_mixture(1200, 0)
    out, stats = tok_lib.tokenize_documents(docs, self.tok, 256)
    self.assertEqual(stats.n_kept, 1200)
    self.assertEqual(stats.n_truncated, 0)
    lengths = stats.lengths
    # Sized for CPU fine-tuning of a 135M model: most docs 40-200 tokens.
    self.assertGreater(np.mean((lengths >= 40) & (lengths <= 200)), 0.95)
    self.assertLessEqual(lengths.max(), 256)
    for d, td in zip(docs[:150], out[:150]):
      self.assertEqual(_masked_text(self.tok, td), d.assistant_text + EOT)
    labels = collections.Counter(t.label for t in out)
    self.assertEqual(set(labels), set(TASK_TYPES))


def _synthetic(lengths, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i, n in enumerate(lengths):
    mask = np.zeros((n,), np.float32)
    mask[n // 2 :] = 1.0
    out.append(
      TokenizedDoc(
        doc_id=f'd{i}',
        index=i,
        tokens=rng.integers(1, 1000, size=n).astype(np.int32),
        loss_mask=mask,
      )
    )
  return out


class BatchTest(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.docs = _synthetic(rng.integers(20, 200, size=103))

  @parameterized.product(
    batch_size=(1, 8, 16), shuffle=(False, True), drop_remainder=(False, True)
  )
  def test_covers_every_doc_once(self, batch_size, shuffle, drop_remainder):
    batches = list(
      tok_lib.make_batches(
        self.docs,
        batch_size,
        bucket_multiple=16,
        shuffle=shuffle,
        seed=3,
        drop_remainder=drop_remainder,
      )
    )
    n = len(self.docs)
    self.assertLen(batches, tok_lib.num_batches(n, batch_size, drop_remainder))
    seen = np.concatenate([b.doc_index for b in batches])
    seen = seen[seen >= 0]
    expected = (n // batch_size) * batch_size if drop_remainder else n
    self.assertLen(seen, expected)
    self.assertLen(set(seen.tolist()), expected)
    for b in batches:
      self.assertEqual(b.tokens.shape, b.loss_mask.shape)
      self.assertEqual(b.tokens.shape[0], batch_size)
      self.assertEqual(b.tokens.shape[1] % 16, 0)
      self.assertEqual(b.tokens.dtype, np.int32)
      self.assertEqual(b.loss_mask.dtype, np.float32)
      self.assertEqual(b.doc_index.dtype, np.int32)
      for row, i in enumerate(b.doc_index):
        if i < 0:  # padding row
          self.assertEqual(b.loss_mask[row].sum(), 0)
          self.assertTrue((b.tokens[row] == 0).all())
          continue
        d = self.docs[i]
        np.testing.assert_array_equal(b.tokens[row, : d.length], d.tokens)
        np.testing.assert_array_equal(b.loss_mask[row, : d.length], d.loss_mask)
        self.assertTrue((b.tokens[row, d.length :] == 0).all())
        self.assertEqual(b.loss_mask[row, d.length :].sum(), 0)

  def test_deterministic_and_seeded(self):
    def order(**kw):
      return np.concatenate(
        [b.doc_index for b in tok_lib.make_batches(self.docs, 8, **kw)]
      )

    np.testing.assert_array_equal(order(), order())
    np.testing.assert_array_equal(
      order(shuffle=True, seed=1), order(shuffle=True, seed=1)
    )
    self.assertFalse(
      np.array_equal(order(shuffle=True, seed=1), order(shuffle=True, seed=2))
    )

  def test_pad_id(self):
    (b,) = tok_lib.make_batches(_synthetic([5, 9]), 2, pad_id=7)
    self.assertEqual(b.tokens.shape, (2, 16))
    self.assertTrue((b.tokens[:, 9:] == 7).all())

  def test_buckets_reduce_padding(self):
    bucketed = tok_lib.padding_efficiency(
      tok_lib.make_batches(self.docs, 8, shuffle=True), self.docs
    )
    # Naive batching: input order, each batch padded to its longest doc.
    naive_real = naive_padded = 0
    for s in range(0, len(self.docs), 8):
      group = self.docs[s : s + 8]
      naive_real += sum(d.length for d in group)
      naive_padded += 8 * max(d.length for d in group)
    naive = naive_real / naive_padded
    self.assertGreater(bucketed, naive + 0.15)  # lengths uniform in 20..200
    self.assertGreater(bucketed, 0.8)
    self.assertLessEqual(bucketed, 1.0)


class SplitTest(absltest.TestCase):
  def test_split_is_stable_by_id(self):
    docs = _synthetic([10] * 2000)
    train, held = tok_lib.split_heldout(docs, 0.1, seed=0)
    self.assertLen(train + held, 2000)
    self.assertEmpty({d.doc_id for d in train} & {d.doc_id for d in held})
    # Binomial(2000, 0.1): mean 200, std ~13; 5 std either side.
    self.assertBetween(len(held), 135, 265)
    # Adding documents does not move the others.
    more = docs + [
      TokenizedDoc(f'new{i}', 2000 + i, docs[0].tokens, docs[0].loss_mask)
      for i in range(500)
    ]
    _, held2 = tok_lib.split_heldout(more, 0.1, seed=0)
    self.assertEqual(
      [d.doc_id for d in held2 if not d.doc_id.startswith('new')],
      [d.doc_id for d in held],
    )
    _, held3 = tok_lib.split_heldout(docs, 0.1, seed=1)
    self.assertNotEqual([d.doc_id for d in held3], [d.doc_id for d in held])
    self.assertEmpty(tok_lib.split_heldout(docs, 0.0, seed=0)[1])
    with self.assertRaises(ValueError):
      tok_lib.split_heldout(docs, 1.0, seed=0)


if __name__ == '__main__':
  absltest.main()
