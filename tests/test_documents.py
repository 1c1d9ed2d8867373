"""Tests for gatoms_jax.core.data.documents (Document, JSONL readers)."""

import json
import os
import shutil
import tempfile

import ml_collections
from absl.testing import absltest, parameterized

from gatoms_jax.demo import sources
from gatoms_jax.core.data import documents as docs_lib
from gatoms_jax.core.data.documents import DataError, read_jsonl

CHAT = {
  'messages': [
    {'role': 'system', 'content': 'Be brief.'},
    {'role': 'user', 'content': 'Hi'},
    {'role': 'assistant', 'content': 'Hello!'},
    {'role': 'user', 'content': 'Capital of France?'},
    {'role': 'assistant', 'content': 'Paris.'},
  ],
  'task': 'greeting',
}


class ReaderTestBase(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    # Not self.create_tempdir(): it needs absl flags parsed, pytest does not.
    self.dir = tempfile.mkdtemp(prefix='test_documents_')
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

  def write(self, lines, name='data.jsonl'):
    path = os.path.join(self.dir, name)
    with open(path, 'w', encoding='utf-8') as f:
      for line in lines:
        f.write((line if isinstance(line, str) else json.dumps(line)) + '\n')
    return path


class ParseTest(ReaderTestBase):
  def test_chat_multi_turn_with_label(self):
    path = self.write([CHAT])
    result = read_jsonl(path, label_field='task')
    self.assertEqual(result.n_skipped, 0)
    (doc,) = result.documents
    self.assertEqual(doc.doc_id, 'data:1')
    self.assertEqual(doc.source, 'data.jsonl:1')
    self.assertEqual(doc.label, 'greeting')
    self.assertEqual(
      [m['role'] for m in doc.messages],
      ['system', 'user', 'assistant', 'user', 'assistant'],
    )
    self.assertEqual(doc.assistant_text, 'Hello!\n\nParis.')
    self.assertIsInstance(doc.messages, tuple)

  def test_label_absent_or_not_requested(self):
    path = self.write([CHAT, {**CHAT, 'task': None}])
    self.assertIsNone(read_jsonl(path).documents[0].label)
    labels = [d.label for d in read_jsonl(path, label_field='task').documents]
    self.assertEqual(labels, ['greeting', None])
    labels = [d.label for d in read_jsonl(path, label_field='other').documents]
    self.assertEqual(labels, [None, None])

  def test_id_field_used(self):
    path = self.write([{**CHAT, 'id': 'abc'}, {**CHAT, 'id': 7}, CHAT])
    ids = [d.doc_id for d in read_jsonl(path).documents]
    self.assertEqual(ids, ['abc', '7', 'data:3'])

  def test_alpaca(self):
    path = self.write(
      [
        {'instruction': 'Add the numbers.', 'input': '2 and 3', 'output': '5'},
        {
          'instruction': 'Say hi.',
          'input': '',
          'output': 'Hi!',
          'category': 'x',
        },
        {'instruction': 'Say bye.', 'output': 'Bye!'},
      ]
    )
    result = read_jsonl(path, format='alpaca', label_field='category')
    d0, d1, d2 = result.documents
    self.assertEqual(
      d0.messages,
      (
        {'role': 'user', 'content': 'Add the numbers.\n\n2 and 3'},
        {'role': 'assistant', 'content': '5'},
      ),
    )
    self.assertEqual(d1.user_text, 'Say hi.')
    self.assertEqual(d1.label, 'x')
    self.assertEqual(d2.assistant_text, 'Bye!')

  def test_auto_mixes_formats_and_ignores_blank_lines(self):
    path = self.write(
      [CHAT, '', '   ', {'instruction': 'Say hi.', 'output': 'Hi!'}]
    )
    result = read_jsonl(path)
    self.assertLen(result.documents, 2)
    # Line numbers count blank lines: the alpaca record is on line 4.
    self.assertEqual(result.documents[1].doc_id, 'data:4')

  def test_load_documents_from_config(self):
    path = self.write([CHAT, '{bad'])
    cfg = ml_collections.ConfigDict(
      dict(
        path=path,
        format='auto',
        label_field='task',
        skip_bad_lines=True,
        n_docs=30,
        generator_seed=0,
        compositional_fraction=0.2,
      )
    )
    (doc,) = sources.load_documents(cfg)
    self.assertEqual(doc.label, 'greeting')
    cfg.path = ''
    generated = sources.load_documents(cfg)
    self.assertLen(generated, 30)
    self.assertEqual(generated[0].doc_id, 'gen0-000000')


class ErrorTest(ReaderTestBase):
  @parameterized.named_parameters(
    ('bad_json', '{"messages": [', 'invalid JSON'),
    ('not_object', '[1, 2]', 'expected a JSON object'),
    ('unknown_format', {'text': 'hello'}, 'cannot tell the format'),
    ('alpaca_no_instruction', {'output': 'x'}, 'missing field "instruction"'),
    (
      'alpaca_output_not_string',
      {'instruction': 'a', 'output': 3},
      'field "output" must be a string',
    ),
    ('messages_not_list', {'messages': 'hi'}, 'non-empty list'),
    (
      'missing_content',
      {'messages': [{'role': 'user'}]},
      'messages[0] is missing field "content"',
    ),
    (
      'wrong_role',
      {
        'messages': [
          {'role': 'human', 'content': 'hi'},
          {'role': 'assistant', 'content': 'x'},
        ]
      },
      "unknown role 'human'",
    ),
    (
      'content_not_string',
      {'messages': [{'role': 'assistant', 'content': ['x']}]},
      'content must be a string',
    ),
    (
      'no_assistant',
      {'messages': [{'role': 'user', 'content': 'hi'}]},
      'no assistant turn',
    ),
    (
      'empty_assistant',
      {
        'messages': [
          {'role': 'user', 'content': 'hi'},
          {'role': 'assistant', 'content': ''},
        ]
      },
      'no assistant turn',
    ),
    ('alpaca_no_output', {'instruction': 'Do it.'}, 'missing field "output"'),
    (
      'alpaca_empty_output',
      {'instruction': 'Do it.', 'output': ' '},
      'empty "output"',
    ),
    ('bad_id', {**CHAT, 'id': [1]}, 'field "id"'),
  )
  def test_bad_line_names_file_line_and_problem(self, bad, expected):
    path = self.write([CHAT, bad])
    with self.assertRaises(DataError) as cm:
      read_jsonl(path)
    message = str(cm.exception)
    self.assertIn(path, message)
    self.assertIn('line 2', message)
    self.assertIn(expected, message)
    self.assertIsInstance(cm.exception, ValueError)

  def test_forced_format_mismatch(self):
    path = self.write([{'instruction': 'Say hi.', 'output': 'Hi!'}])
    with self.assertRaisesRegex(DataError, 'line 1: missing field "messages"'):
      read_jsonl(path, format='chat')
    with self.assertRaisesRegex(DataError, 'missing field "instruction"'):
      read_jsonl(self.write([CHAT], 'c.jsonl'), format='alpaca')

  def test_duplicate_id(self):
    path = self.write([{**CHAT, 'id': 'a'}, {**CHAT, 'id': 'a'}])
    with self.assertRaisesRegex(DataError, "line 2: duplicate id 'a'.*line 1"):
      read_jsonl(path)

  def test_skip_mode_counts_bad_lines(self):
    path = self.write(
      [
        CHAT,
        '{oops',
        '',
        {'messages': [{'role': 'user', 'content': 'hi'}]},
        {'instruction': 'Say hi.', 'output': 'Hi!'},
        {'messages': [{'role': 'robot', 'content': 'x'}]},
      ]
    )
    result = read_jsonl(path, skip_bad_lines=True)
    self.assertLen(result.documents, 2)
    self.assertEqual(result.n_skipped, 3)
    self.assertEqual([line for line, _ in result.skipped], [2, 4, 6])
    self.assertIn('invalid JSON', result.skipped[0][1])
    self.assertIn('no assistant turn', result.skipped[1][1])

  def test_empty_file(self):
    path = self.write([''])
    with self.assertRaisesRegex(DataError, 'no documents found'):
      read_jsonl(path)
    path = self.write(['{bad'], 'all_bad.jsonl')
    with self.assertRaisesRegex(DataError, r'no documents found \(1 bad'):
      read_jsonl(path, skip_bad_lines=True)

  def test_missing_file_names_path(self):
    path = os.path.join(self.dir, 'nope.jsonl')
    with self.assertRaisesRegex(DataError, 'not found: .*nope.jsonl'):
      read_jsonl(path)

  def test_unknown_format(self):
    with self.assertRaisesRegex(DataError, 'Unknown data format'):
      read_jsonl(self.write([CHAT]), format='sharegpt')


class MakeMessagesTest(absltest.TestCase):
  def test_validates(self):
    msgs = docs_lib.make_messages([('user', 'a'), ('assistant', 'b')])
    self.assertEqual(msgs[1], {'role': 'assistant', 'content': 'b'})
    with self.assertRaisesRegex(ValueError, 'unknown role'):
      docs_lib.make_messages([('bot', 'a')])
    with self.assertRaisesRegex(ValueError, 'no assistant turn'):
      docs_lib.make_messages([('user', 'a')])


if __name__ == '__main__':
  absltest.main()
