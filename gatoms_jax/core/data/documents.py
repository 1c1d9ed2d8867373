"""Chat documents and the JSONL readers that produce them.

A `Document` is one training example of the fine-tuning set (paper step 1: the
documents whose per-document LoRA gradients the dictionary is learned over). It
holds a chat (system/user/assistant turns), a stable id, and an optional label
that is evaluation-only metadata (e.g. the task type) and never reaches the
method.

Two on-disk formats are read, one JSON object per line:

* chat:   {"messages": [{"role": "user", "content": ...},
                        {"role": "assistant", "content": ...}, ...]}
* alpaca: {"instruction": ..., "input": ... (optional), "output": ...}

Bad lines raise `DataError` naming the file, the line and what was wrong, or
are skipped and counted when `skip_bad_lines=True`. A line is bad when it is
not UTF-8, not JSON (or nested too deep to parse), not an object, or does not
hold a valid document; lines are split on `\n` only and a line is blank when
it holds nothing but JSON whitespace, so every other line becomes exactly one
document or one error (tests/test_fuzz_readers.py checks this on random input).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator, Mapping, Sequence

ROLES = ('system', 'user', 'assistant')
FORMATS = ('auto', 'chat', 'alpaca')


class DataError(ValueError):
  """A data file (or one of its lines) does not hold valid documents."""


_JSON_WHITESPACE = ' \t\r\n'


def check_text(text: str, what: str) -> None:
  """Raises ValueError if `text` holds a lone surrogate (from a `\\ud800`
  style JSON escape), which is not Unicode and breaks tokenizers and writers."""
  try:
    text.encode('utf-8')
  except UnicodeEncodeError as e:
    raise ValueError(
      f'{what} holds an unpaired surrogate escape at character {e.start}'
    ) from None


def iter_json_lines(path: str) -> Iterator[tuple[int, Any, str | None]]:
  """Yields (line_no, value, None) or (line_no, None, reason) per non-blank
  line of a JSONL file (1-based line numbers, lines split on `\\n` only).

  Never raises for a line's content: bytes that are not UTF-8, invalid JSON
  and nesting too deep for the parser become the reason. A UTF-8 byte order
  mark before the first line is ignored.
  """
  with open(path, 'rb') as f:
    for line_no, raw in enumerate(f, start=1):
      if line_no == 1 and raw.startswith(b'\xef\xbb\xbf'):
        raw = raw[3:]
      try:
        line = raw.decode('utf-8')
      except UnicodeDecodeError as e:
        yield line_no, None, f'not UTF-8 (byte {e.start + 1} of the line)'
        continue
      if not line.strip(_JSON_WHITESPACE):
        continue
      try:
        value = json.loads(line)
      except json.JSONDecodeError as e:
        yield line_no, None, f'invalid JSON ({e.msg} at column {e.colno})'
        continue
      except RecursionError:
        yield line_no, None, 'invalid JSON (nested too deep)'
        continue
      except ValueError as e:  # e.g. an integer of > 4300 digits
        yield line_no, None, f'invalid JSON ({e})'
        continue
      yield line_no, value, None


@dataclasses.dataclass(frozen=True)
class Document:
  """One chat document.

  Attributes:
    doc_id: stable identifier: the record's `id` field if present, else
      `"{file_stem}:{line_no}"` for files, `"gen{seed}-{index:06d}"` for the
      generated mixture.
    messages: the turns, each a `{"role", "content"}` dict with role in
      system/user/assistant; at least one assistant turn has content.
    label: evaluation-only metadata (e.g. task type); never used by the method.
    source: where the document came from, e.g. `"train.jsonl:12"`.
    labels: evaluation-only task types the document teaches, when it teaches
      several (the generated mixture's compositional documents); empty: just
      `label`.
  """

  doc_id: str
  messages: tuple[dict[str, str], ...]
  label: str | None = None
  source: str = ''
  labels: tuple[str, ...] = ()

  @property
  def label_set(self) -> tuple[str, ...]:
    """Every task type the document teaches (evaluation-only)."""
    if self.labels:
      return tuple(self.labels)
    return () if self.label is None else (str(self.label),)

  @property
  def assistant_text(self) -> str:
    """The assistant turns' contents joined by blank lines."""
    return '\n\n'.join(
      m['content'] for m in self.messages if m['role'] == 'assistant'
    )

  @property
  def user_text(self) -> str:
    """The user turns' contents joined by blank lines."""
    return '\n\n'.join(
      m['content'] for m in self.messages if m['role'] == 'user'
    )


@dataclasses.dataclass(frozen=True)
class ReadResult:
  """What `read_jsonl` returns.

  Attributes:
    documents: the valid documents in file order.
    n_skipped: number of bad lines skipped (0 unless skip_bad_lines=True).
    skipped: (line_no, reason) for every skipped line, 1-based line numbers.
  """

  documents: list[Document]
  n_skipped: int
  skipped: list[tuple[int, str]]


def make_messages(
  pairs: Sequence[tuple[str, str]],
) -> tuple[dict[str, str], ...]:
  """Builds a messages tuple from (role, content) pairs, validating them.

  Args:
    pairs: (role, content) pairs in conversation order.

  Returns:
    A tuple of `{"role", "content"}` dicts.

  Raises:
    ValueError: on an unknown role, non-string content or no assistant turn
      with non-empty content.
  """
  messages = []
  for i, (role, content) in enumerate(pairs):
    if role not in ROLES:
      raise ValueError(f'message {i}: unknown role {role!r}; expected {ROLES}')
    if not isinstance(content, str):
      raise ValueError(f'message {i}: content must be a string')
    check_text(content, f'message {i}: content')
    messages.append({'role': role, 'content': content})
  if not any(m['role'] == 'assistant' and m['content'] for m in messages):
    raise ValueError('no assistant turn with non-empty content')
  return tuple(messages)


def _parse_chat(record: Mapping[str, Any]) -> tuple[dict[str, str], ...]:
  if 'messages' not in record:
    raise ValueError('missing field "messages"')
  raw = record['messages']
  if not isinstance(raw, list) or not raw:
    raise ValueError('"messages" must be a non-empty list')
  pairs = []
  for i, m in enumerate(raw):
    if not isinstance(m, dict):
      raise ValueError(f'messages[{i}] must be an object with role and content')
    for key in ('role', 'content'):
      if key not in m:
        raise ValueError(f'messages[{i}] is missing field "{key}"')
    if not isinstance(m['role'], str) or m['role'] not in ROLES:
      raise ValueError(
        f'messages[{i}] has unknown role {m["role"]!r}; expected one of '
        f'{", ".join(ROLES)}'
      )
    if not isinstance(m['content'], str):
      raise ValueError(
        f'messages[{i}].content must be a string, got '
        f'{type(m["content"]).__name__}'
      )
    pairs.append((m['role'], m['content']))
  return make_messages(pairs)


def _parse_alpaca(record: Mapping[str, Any]) -> tuple[dict[str, str], ...]:
  for key in ('instruction', 'output'):
    if key not in record:
      raise ValueError(f'missing field "{key}"')
  for key in ('instruction', 'input', 'output'):
    if key in record and not isinstance(record[key], str):
      raise ValueError(
        f'field "{key}" must be a string, got {type(record[key]).__name__}'
      )
  instruction = record['instruction']
  extra = record.get('input') or ''
  prompt = instruction + '\n\n' + extra if extra.strip() else instruction
  if not prompt.strip():
    raise ValueError('empty "instruction"')
  if not record['output'].strip():
    raise ValueError('empty "output" (no assistant turn with content)')
  return make_messages([('user', prompt), ('assistant', record['output'])])


def _record_format(record: Mapping[str, Any], fmt: str) -> str:
  if fmt != 'auto':
    return fmt
  if 'messages' in record:
    return 'chat'
  if 'instruction' in record or 'output' in record:
    return 'alpaca'
  raise ValueError(
    'cannot tell the format: expected "messages" (chat) or '
    '"instruction"/"output" (alpaca)'
  )


def _label(record: Mapping[str, Any], label_field: str | None) -> str | None:
  if not label_field or record.get(label_field) is None:
    return None
  value = record[label_field]
  if isinstance(value, (dict, list)):
    raise ValueError(f'label field "{label_field}" must be a scalar')
  label = str(value)
  check_text(label, f'label field "{label_field}"')
  return label


def read_jsonl(
  path: str | os.PathLike[str],
  format: str = 'auto',  # pylint: disable=redefined-builtin
  label_field: str | None = None,
  skip_bad_lines: bool = False,
) -> ReadResult:
  """Reads chat or alpaca documents from a JSONL file.

  Args:
    path: the JSONL file, one JSON object per line; blank lines are ignored.
    format: 'chat', 'alpaca', or 'auto' (decided per line by its keys).
    label_field: record field copied into `Document.label` (evaluation-only);
      a missing field gives label None.
    skip_bad_lines: skip and count bad lines instead of raising.

  Returns:
    A `ReadResult` with the documents and the skipped lines.

  Raises:
    DataError: the file is missing or holds no documents, a line is bad (and
      skip_bad_lines is False), or two records share an `id`.
  """
  path = os.fspath(path)
  if format not in FORMATS:
    raise DataError(
      f'Unknown data format {format!r}; expected one of {FORMATS}'
    )
  if not os.path.isfile(path):
    raise DataError(f'Data file not found: {path}')
  name = os.path.basename(path)
  stem = os.path.splitext(name)[0]
  documents: list[Document] = []
  skipped: list[tuple[int, str]] = []
  seen_ids: dict[str, int] = {}
  for line_no, record, reason in iter_json_lines(path):
    try:
      if reason is not None:
        raise ValueError(reason)
      if not isinstance(record, dict):
        raise ValueError(f'expected a JSON object, got {type(record).__name__}')
      fmt = _record_format(record, format)
      messages = (_parse_chat if fmt == 'chat' else _parse_alpaca)(record)
      label = _label(record, label_field)
      raw_id = record.get('id')
      if raw_id is None:
        doc_id = f'{stem}:{line_no}'
      elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
        doc_id = str(raw_id)
        check_text(doc_id, 'field "id"')
      else:
        raise ValueError('field "id" must be a string or an integer')
      if doc_id in seen_ids:
        raise ValueError(
          f'duplicate id {doc_id!r} (first seen on line {seen_ids[doc_id]})'
        )
    except ValueError as e:
      if not skip_bad_lines:
        raise DataError(f'{path}, line {line_no}: {e}') from None
      skipped.append((line_no, str(e)))
      continue
    seen_ids[doc_id] = line_no
    documents.append(
      Document(
        doc_id=doc_id,
        messages=messages,
        label=label,
        source=f'{name}:{line_no}',
      )
    )
  if not documents:
    what = f' ({len(skipped)} bad lines skipped)' if skipped else ''
    raise DataError(f'{path}: no documents found{what}')
  return ReadResult(
    documents=documents, n_skipped=len(skipped), skipped=skipped
  )
