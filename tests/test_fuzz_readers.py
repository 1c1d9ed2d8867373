"""Property tests of the JSONL readers on hostile input (hypothesis).

The chat/alpaca document reader (`read_jsonl`) and the steering prompts reader
(`load_prompt_jsonl`) are fed random bytes, random unicode, truncated JSON,
wrong types, huge lines, deep nesting and lone surrogate escapes, mixed with
valid lines. Every case must end in one of the documented outcomes:

* the documented error (`DataError` / `ValueError`) whose message names the
  file, and the line when a line is at fault;
* with `skip_bad_lines=True`, every non-blank line is either one document or
  one counted skip (no partial silent read);
* never another exception type, and never a hang (each case has a deadline).

Each reader gets >= 1,000 generated cases (`max_examples`); the file runs in a
few seconds per reader on one core.
"""

import json
import os
import re
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatoms_jax.core.data.documents import DataError, read_jsonl
from gatoms_jax.method.steering import behaviors

N_CASES = 1000
# Deadline per case: generous for a loaded 2-core CI machine, far below a hang.
FUZZ = settings(
  max_examples=N_CASES,
  deadline=2000,
  derandomize=True,  # the same cases on every run: CI failures reproduce
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_text = st.text(max_size=40)
_scalar = st.one_of(
  st.none(),
  st.booleans(),
  st.integers(),
  st.floats(allow_nan=True),
  _text,
)
_json_value = st.recursive(
  _scalar,
  lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(_text, inner, max_size=4),
  ),
  max_leaves=12,
)
_role = st.one_of(st.sampled_from(['system', 'user', 'assistant']), _scalar)
_message = st.one_of(
  st.fixed_dictionaries({'role': _role, 'content': st.one_of(_text, _scalar)}),
  _json_value,
)
_chat = st.fixed_dictionaries(
  {'messages': st.one_of(st.lists(_message, max_size=4), _json_value)},
  optional={
    'id': st.one_of(st.integers(), _text, _scalar),
    'task': st.one_of(_scalar, _json_value),
  },
)
_alpaca = st.fixed_dictionaries(
  {},
  optional={
    'instruction': st.one_of(_text, _scalar),
    'input': st.one_of(_text, _scalar),
    'output': st.one_of(_text, _scalar),
    'id': st.one_of(st.integers(), _text),
    'task': _scalar,
  },
)
_valid_chat = st.builds(
  lambda u, a, t: {
    'messages': [
      {'role': 'user', 'content': u},
      {'role': 'assistant', 'content': a},
    ],
    'task': t,
  },
  _text,
  _text.filter(lambda s: s != ''),
  st.sampled_from(['a', 'b']),
)
_prompt = st.fixed_dictionaries(
  {},
  optional={
    'prompt': st.one_of(_text, _scalar),
    'invites': st.one_of(st.booleans(), _scalar),
    'behavior': st.one_of(st.sampled_from(['yes_no', 'bullets']), _scalar),
  },
)


def _json_line(record_strategy):
  return record_strategy.map(lambda r: json.dumps(r).encode())


def _hostile_lines(record_strategy):
  """One line's bytes (without the newline): valid or broken in many ways."""
  as_json = _json_line(record_strategy)
  return st.one_of(
    as_json,
    as_json,
    # Truncated JSON.
    st.tuples(as_json, st.integers(0, 200)).map(lambda t: t[0][: t[1]]),
    # Random bytes (invalid UTF-8 included) and random unicode.
    st.binary(max_size=60).map(lambda b: b.replace(b'\n', b' ')),
    st.text(max_size=60).map(
      lambda s: s.encode('utf-8', 'surrogatepass').replace(b'\n', b' ')
    ),
    # Any JSON value (wrong top-level types included).
    _json_line(_json_value),
    # Deep nesting, beyond the parser's recursion limit at the high end.
    st.integers(1, 20_000).map(lambda n: b'[' * n + b']' * n),
    st.integers(1, 20_000).map(lambda n: b'{"a":' * n + b'1' + b'}' * n),
    # Huge lines: a long valid string, a huge number.
    st.integers(10_000, 400_000).map(
      lambda n: json.dumps(
        {
          'messages': [
            {'role': 'user', 'content': 'x' * n},
            {'role': 'assistant', 'content': 'y'},
          ]
        }
      ).encode()
    ),
    st.integers(4_000, 50_000).map(lambda n: b'{"instruction": ' + b'9' * n),
    # Lone surrogate escapes, a NUL, other separators, blank-looking lines.
    st.sampled_from(
      [
        b'{"instruction": "\\ud800", "output": "ok"}',
        b'{"messages": [{"role": "user", "content": "hi"}, '
        b'{"role": "assistant", "content": "\\udfff"}]}',
        b'{"prompt": "\\ud83d", "invites": true}',
        b'{"prompt": "a\\u0000b", "invites": false, "id": "\\udc00"}',
        b'\x1c',
        b'\xc2\x85',
        b'\xe2\x80\xa8',
        b'\r',
        b'   \t ',
        b'',
        b'\xef\xbb\xbf{}',
      ]
    ),
  )


def _file_bytes(record_strategy):
  lines = st.lists(_hostile_lines(record_strategy), min_size=0, max_size=6)
  return st.tuples(lines, st.booleans(), st.booleans()).map(
    lambda t: (
      (b'\xef\xbb\xbf' if t[2] else b'')
      + b'\n'.join(t[0])
      + (b'\n' if t[1] else b'')
    )
  )


def _nonblank_line_numbers(data: bytes) -> list[int]:
  out = []
  for i, raw in enumerate(data.split(b'\n'), start=1):
    if i == 1 and raw.startswith(b'\xef\xbb\xbf'):
      raw = raw[3:]
    if raw.strip(b' \t\r\n'):
      out.append(i)
  # A trailing newline does not start another line.
  return out


class _TempFile:
  def __init__(self):
    self.dir = tempfile.mkdtemp(prefix='fuzz_')
    self.path = os.path.join(self.dir, 'in.jsonl')

  def write(self, data: bytes) -> str:
    with open(self.path, 'wb') as f:
      f.write(data)
    return self.path

  def close(self):
    shutil.rmtree(self.dir, ignore_errors=True)


def _line_of(message: str, path: str, sep: str) -> int | None:
  """The line number a reader's message names (`path<sep>N`), if any."""
  assert message.startswith(path), message[:300]
  match = re.match(re.escape(path + sep) + r'(\d+)', message)
  return int(match.group(1)) if match else None


def setup_module():
  global _TMP
  _TMP = _TempFile()


def teardown_module():
  _TMP.close()


@FUZZ
@given(
  _file_bytes(st.one_of(_chat, _alpaca, _valid_chat)),
  st.sampled_from(['auto', 'chat', 'alpaca']),
)
def test_read_jsonl_raises_documented_error_or_reads_all(data, fmt):
  path = _TMP.write(data)
  nonblank = _nonblank_line_numbers(data)
  try:
    result = read_jsonl(path, format=fmt, label_field='task')
  except DataError as e:
    line = _line_of(str(e), path, ', line ')
    if line is None:  # a whole-file error: no documents at all
      assert 'no documents found' in str(e)
    else:
      assert line in nonblank, (line, nonblank)
    return
  # Read without error: every non-blank line is one document, in order.
  assert [int(d.source.rsplit(':', 1)[1]) for d in result.documents] == (
    nonblank
  )
  assert result.n_skipped == 0
  for doc in result.documents:
    assert any(m['role'] == 'assistant' and m['content'] for m in doc.messages)
    for m in doc.messages:
      m['content'].encode('utf-8')  # valid Unicode only


@FUZZ
@given(_file_bytes(st.one_of(_chat, _alpaca, _valid_chat)))
def test_read_jsonl_skip_bad_lines_counts_every_line(data):
  path = _TMP.write(data)
  nonblank = _nonblank_line_numbers(data)
  try:
    result = read_jsonl(path, label_field='task', skip_bad_lines=True)
  except DataError as e:
    # Only a file with no document left may fail, naming the file.
    assert str(e).startswith(f'{path}: no documents found'), str(e)[:300]
    assert f'({len(nonblank)} bad lines skipped)' in str(e) or not nonblank
    return
  read_lines = [int(d.source.rsplit(':', 1)[1]) for d in result.documents]
  skipped_lines = [line for line, _ in result.skipped]
  assert sorted(read_lines + skipped_lines) == nonblank
  assert result.n_skipped == len(skipped_lines)
  assert all(reason for _, reason in result.skipped)


@FUZZ
@given(_file_bytes(_prompt), st.sampled_from([None, 'yes_no', 'bullets']))
def test_prompts_reader_raises_documented_error_or_reads_all(data, behavior):
  path = _TMP.write(data)
  nonblank = _nonblank_line_numbers(data)
  try:
    prompt_set = behaviors.load_prompt_jsonl(path, behavior)
  except ValueError as e:
    assert type(e) is ValueError, type(e)  # not a UnicodeDecodeError etc.
    line = _line_of(str(e), path, ':')
    if line is not None:
      assert line in nonblank, (line, nonblank)
    return
  # Read: one prompt per line tagged for this behaviour or untagged.
  rows = [
    json.loads(data.split(b'\n')[i - 1].lstrip(b'\xef\xbb\xbf'))
    for i in nonblank
  ]
  name = prompt_set.behavior
  expected = [r['prompt'] for r in rows if r.get('behavior') in (None, name)]
  assert [p.text for p in prompt_set.prompts] == expected
