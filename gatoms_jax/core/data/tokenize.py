"""Chat-template tokenisation, assistant-only loss masks and length buckets.

Every document becomes `tokens` (int32[T]) and `loss_mask` (float32[T]) with
`loss_mask[t] = 1` exactly on assistant-content tokens and on the end-of-turn
token closing each assistant turn (docs/CONTRIBUTING_NOTES.md). This is the
per-document loss whose LoRA gradient is one row of the gradient matrix the
dictionary is learned over (paper step 2).

The masks are built for any chat template without knowing its markers: the
template is rendered once for the whole chat and once per assistant turn for
the prefix of messages before it (with the generation prompt), which gives the
character where each assistant turn starts; the assistant content is located
from there, and token character offsets map it to tokens. The end-of-turn token
is the first special token after the content, inside the turn.

Documents longer than `max_length` are truncated by a policy
(`TRUNCATION_POLICIES`). 'keep_answers' (the default) drops prompt tokens
first: content tokens of the system/user turns, from the left of the earliest
one, keeping the template's markers and every assistant turn; only when the
answers alone do not fit is the sequence cut from the right (the last
answer's tail). 'right' cuts from the right, which on long-prompt data can
leave no answer token, and the document is then excluded. Instruction data
has long prompts and short answers: what must survive is the answer.

Batches group documents of similar length (sort by length, pad T up to a
multiple of `bucket_multiple`) so that padding waste stays small and the number
of distinct shapes, hence of jit compilations, stays low.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from absl import logging
from tqdm import tqdm

from gatoms_jax.core.data.documents import DataError, Document


@dataclasses.dataclass(frozen=True)
class TokenizedDoc:
  """One tokenised document.

  Attributes:
    doc_id: the document's stable id.
    index: position of the document in the list given to
      `tokenize_documents`.
    tokens: int32[T] token ids of the chat-formatted document.
    loss_mask: float32[T], 1 on assistant-content and assistant end-of-turn
      tokens, 0 elsewhere.
    label: the document's evaluation-only label.
    truncated: whether the document was cut to `max_length`.
  """

  doc_id: str
  index: int
  tokens: np.ndarray
  loss_mask: np.ndarray
  label: str | None = None
  truncated: bool = False

  @property
  def length(self) -> int:
    return int(self.tokens.shape[0])

  @property
  def n_target(self) -> int:
    """Number of tokens carrying loss."""
    return int(self.loss_mask.sum())


TRUNCATION_POLICIES = ('keep_answers', 'right')

# Appended to a turn's content to find where the template puts it (a string
# no real content holds: two NULs around a fixed tag).
_SENTINEL = '\x00gatoms-turn-end\x00'


@dataclasses.dataclass
class TokenizeStats:
  """Counts from `tokenize_documents`.

  Attributes:
    n_docs: documents given.
    n_kept: documents returned.
    n_truncated: documents cut to max_length (kept or not).
    n_no_target: documents excluded because no loss token survived truncation.
    truncated_ids: ids of the truncated documents.
    no_target_ids: ids of the excluded documents.
    lengths: int array of the kept documents' lengths.
    n_target_tokens: total number of loss tokens over kept documents.
    policy: the truncation policy used.
    n_answer_truncated: truncated documents whose answers alone did not fit,
      so the last answer's tail was cut ('keep_answers'), or whose answer
      lost tokens to the right cut ('right').
    per_label: label -> {'read', 'truncated', 'excluded'} counts, over the
      documents that have a label.
  """

  n_docs: int = 0
  n_kept: int = 0
  n_truncated: int = 0
  n_no_target: int = 0
  truncated_ids: list[str] = dataclasses.field(default_factory=list)
  no_target_ids: list[str] = dataclasses.field(default_factory=list)
  lengths: np.ndarray = dataclasses.field(
    default_factory=lambda: np.zeros((0,), np.int64)
  )
  n_target_tokens: int = 0
  policy: str = 'keep_answers'
  n_answer_truncated: int = 0
  per_label: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

  def count(self, label: str | None, what: str) -> None:
    """Adds one to `per_label[label][what]` (documents with a label only)."""
    if label is None:
      return
    counts = self.per_label.setdefault(
      label, {'read': 0, 'truncated': 0, 'excluded': 0}
    )
    counts[what] += 1

  def as_dict(self) -> dict:
    """The counts as JSON-ready values (for manifests and reports)."""
    return {
      'truncation': self.policy,
      'n_docs_read': self.n_docs,
      'n_kept': self.n_kept,
      'n_truncated': self.n_truncated,
      'n_answer_truncated': self.n_answer_truncated,
      'n_excluded': self.n_no_target,
      'excluded_ids': list(self.no_target_ids[:20]),
      'per_label': {k: dict(v) for k, v in sorted(self.per_label.items())},
    }

  def summary(self) -> str:
    """One line for the log."""
    if len(self.lengths):
      q = np.percentile(self.lengths, [0, 50, 90, 100]).astype(int)
      dist = f'length min/median/p90/max {q[0]}/{q[1]}/{q[2]}/{q[3]}'
    else:
      dist = 'no documents kept'
    return (
      f'{self.n_kept}/{self.n_docs} docs kept, {self.n_truncated} truncated, '
      f'{self.n_no_target} without target tokens excluded; {dist}; '
      f'{int(self.lengths.sum())} tokens, {self.n_target_tokens} with loss'
    )


class Batch(NamedTuple):
  """A padded batch.

  Attributes:
    tokens: int32[B, T], right-padded with pad_id.
    loss_mask: float32[B, T], 0 on padding.
    doc_index: int32[B], position in the sequence given to `make_batches`
      of each row's document; -1 for padding rows.
  """

  tokens: np.ndarray
  loss_mask: np.ndarray
  doc_index: np.ndarray


def _render(
  tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool
) -> str:
  text = tokenizer.apply_chat_template(
    list(messages), tokenize=False, add_generation_prompt=generation_prompt
  )
  if not isinstance(text, str):
    raise TypeError(f'apply_chat_template returned {type(text).__name__}')
  return text


def _special_ids(tokenizer: Any) -> frozenset[int]:
  ids = set(tokenizer.all_special_ids)
  for token_id, added in getattr(tokenizer, 'added_tokens_decoder', {}).items():
    if getattr(added, 'special', False):
      ids.add(int(token_id))
  return frozenset(ids)


def _with_system(doc: Document, system_prompt: str | None) -> list[dict]:
  messages = [dict(m) for m in doc.messages]
  if system_prompt is not None and messages[0]['role'] != 'system':
    messages.insert(0, {'role': 'system', 'content': system_prompt})
  return messages


def _assistant_spans(
  tokenizer: Any, messages: list[dict], text: str, doc_id: str
) -> list[tuple[int, int, int | None]]:
  """(content_start, content_end, turn_end or None) chars per assistant turn."""
  spans = []
  cursor = 0
  for i, m in enumerate(messages):
    if m['role'] != 'assistant' or not m['content']:
      continue
    start, end = cursor, None
    # Some templates cannot render a prefix (e.g. empty, or ending in a system
    # turn); the cursor after the previous turn is then the lower bound.
    try:
      prefix = _render(tokenizer, messages[:i], generation_prompt=True)
      if i > 0 and text.startswith(prefix):
        start = max(start, len(prefix))
    except Exception:  # pylint: disable=broad-except
      pass
    try:
      upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
      if text.startswith(upto) and len(upto) > start:
        end = len(upto)
    except Exception:  # pylint: disable=broad-except
      pass
    content = m['content']
    limit = len(text) if end is None else end
    pos = text.find(content, start, limit)
    if pos < 0:  # templates that strip or trim the content
      content = content.strip()
      pos = text.find(content, start, limit)
    if pos < 0 or not content:
      raise DataError(
        f'document {doc_id}: cannot find assistant turn {i} in the rendered '
        'chat template'
      )
    spans.append((pos, pos + len(content), end))
    cursor = pos + len(content)
  return spans


def _prompt_spans(
  tokenizer: Any, messages: list[dict], text: str
) -> list[tuple[int, int]]:
  """(content_start, content_end) chars of each system/user turn in `text`.

  The prefix of messages up to turn i is rendered with a sentinel appended to
  turn i's content: where the sentinel lands, preceded by the content and
  with the same text before it as the full rendering, is where the turn's
  content is. Turns that cannot be located (templates that rewrite content)
  are left out, so their tokens are never dropped.
  """
  spans = []
  for i, m in enumerate(messages):
    if m['role'] == 'assistant' or not m['content']:
      continue
    probe = [dict(x) for x in messages[: i + 1]]
    probe[i]['content'] = m['content'] + _SENTINEL
    try:
      rendered = _render(tokenizer, probe, generation_prompt=False)
    except Exception:  # pylint: disable=broad-except
      continue
    end = rendered.find(_SENTINEL)
    for content in (m['content'], m['content'].strip()):
      start = end - len(content)
      if (
        content
        and start >= 0
        and rendered[start:end] == content
        and text[:end] == rendered[:end]
      ):
        spans.append((start, end))
        break
  return spans


def _truncate_keep_answers(
  tokens: np.ndarray,
  mask: np.ndarray,
  offsets: Sequence[tuple[int, int]],
  prompt_spans: list[tuple[int, int]],
  max_length: int,
) -> tuple[np.ndarray, np.ndarray, bool]:
  """Drops prompt-content tokens from the left, then cuts from the right.

  Returns:
    (tokens, mask, answer_cut): answer_cut says the answers alone did not fit
    and the right cut took some of them.
  """
  excess = len(tokens) - max_length
  starts = np.array([o[0] for o in offsets])
  ends = np.array([o[1] for o in offsets])
  droppable = np.zeros((len(tokens),), bool)
  for c0, c1 in prompt_spans:
    droppable |= (starts >= c0) & (ends <= c1) & (ends > starts)
  droppable &= mask == 0
  drop = np.nonzero(droppable)[0][:excess]
  keep = np.ones((len(tokens),), bool)
  keep[drop] = False
  tokens, mask = tokens[keep], mask[keep]
  answer_cut = bool(mask[max_length:].any())
  return tokens[:max_length], mask[:max_length], answer_cut


def _mask_from_spans(
  offsets: Sequence[tuple[int, int]],
  token_ids: Sequence[int],
  spans: list[tuple[int, int, int | None]],
  text: str,
  special_ids: frozenset[int],
) -> np.ndarray:
  mask = np.zeros((len(token_ids),), np.float32)
  starts = np.array([o[0] for o in offsets])
  ends = np.array([o[1] for o in offsets])
  for c0, c1, turn_end in spans:
    inside = (starts < c1) & (ends > c0)
    mask[inside] = 1.0
    hits = np.nonzero(inside)[0]
    if not len(hits):
      continue
    # The end-of-turn token: the first non-whitespace token after the content;
    # counted only if it is special and still inside this turn.
    for k in range(hits[-1] + 1, len(token_ids)):
      if turn_end is not None and starts[k] >= turn_end:
        break
      if not text[starts[k] : ends[k]].strip() and token_ids[k] not in (
        special_ids
      ):
        continue
      if token_ids[k] in special_ids:
        mask[k] = 1.0
      break
  return mask


def tokenize_documents(
  docs: Sequence[Document],
  tokenizer: Any,
  max_length: int,
  system_prompt: str | None = None,
  truncation: str = 'keep_answers',
) -> tuple[list[TokenizedDoc], TokenizeStats]:
  """Tokenises chat documents with the tokenizer's chat template.

  Args:
    docs: the documents.
    tokenizer: a fast transformers tokenizer with a chat template.
    max_length: documents longer than this are truncated (see `truncation`).
    system_prompt: prepended as a system turn to documents without one; None
      leaves the chat as is (the template may add its default system prompt).
    truncation: 'keep_answers' drops system/user content tokens from the left
      of the earliest prompt turn first and cuts from the right only when the
      answers alone do not fit; 'right' cuts from the right.

  Returns:
    (tokenized, stats): the kept documents in input order, and the counts.
    Documents left without any loss token after truncation are excluded and
    their ids listed in `stats.no_target_ids`.

  Raises:
    DataError: an assistant turn cannot be located in the rendered template.
    ValueError: max_length < 2, an unknown truncation policy, or the
      tokenizer has no offsets mapping.
  """
  if truncation not in TRUNCATION_POLICIES:
    raise ValueError(
      f'Unknown truncation policy {truncation!r}; expected one of '
      f'{TRUNCATION_POLICIES}'
    )
  if max_length < 2:
    raise ValueError(f'max_length must be >= 2, got {max_length}')
  if not getattr(tokenizer, 'is_fast', False):
    raise ValueError('tokenize_documents needs a fast tokenizer (offsets)')
  special_ids = _special_ids(tokenizer)
  stats = TokenizeStats(n_docs=len(docs), policy=truncation)
  out: list[TokenizedDoc] = []
  lengths = []
  for index, doc in enumerate(
    tqdm(docs, desc='tokenize', leave=False, disable=len(docs) < 256)
  ):
    messages = _with_system(doc, system_prompt)
    text = _render(tokenizer, messages, generation_prompt=False)
    spans = _assistant_spans(tokenizer, messages, text, doc.doc_id)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc['input_ids'])
    mask = _mask_from_spans(
      enc['offset_mapping'], ids, spans, text, special_ids
    )
    tokens = np.asarray(ids, np.int32)
    stats.count(doc.label, 'read')
    truncated = len(tokens) > max_length
    if truncated:
      if truncation == 'keep_answers':
        tokens, mask, answer_cut = _truncate_keep_answers(
          tokens,
          mask,
          enc['offset_mapping'],
          _prompt_spans(tokenizer, messages, text),
          max_length,
        )
      else:
        answer_cut = bool(mask[max_length:].any())
        tokens, mask = tokens[:max_length], mask[:max_length]
      stats.n_truncated += 1
      stats.n_answer_truncated += answer_cut
      stats.truncated_ids.append(doc.doc_id)
      stats.count(doc.label, 'truncated')
    # Position 0 is never predicted (the loss starts at t = 1).
    if not mask[1:].any():
      stats.n_no_target += 1
      stats.no_target_ids.append(doc.doc_id)
      stats.count(doc.label, 'excluded')
      continue
    out.append(
      TokenizedDoc(
        doc_id=doc.doc_id,
        index=index,
        tokens=tokens,
        loss_mask=mask,
        label=doc.label,
        truncated=truncated,
      )
    )
    lengths.append(len(tokens))
    stats.n_target_tokens += int(mask.sum())
  stats.n_kept = len(out)
  stats.lengths = np.asarray(lengths, np.int64)
  if stats.n_no_target:
    logging.warning(
      'Excluded %d documents with no target token after truncation '
      "('%s') to %d tokens, e.g. %s",
      stats.n_no_target,
      truncation,
      max_length,
      stats.no_target_ids[:5],
    )
  logging.info('Tokenized: %s', stats.summary())
  return out, stats


def prompt_tokens(
  tokenizer: Any, user_text: str, system_prompt: str | None = None
) -> np.ndarray:
  """Token ids of a chat-formatted user prompt followed by the generation prompt.

  Args:
    tokenizer: a transformers tokenizer with a chat template.
    user_text: the user's message.
    system_prompt: optional system turn (None: the template's default).

  Returns:
    int32[T] ids, formatted exactly as the prompt part of `tokenize_documents`.
  """
  messages = [{'role': 'user', 'content': user_text}]
  if system_prompt is not None:
    messages.insert(0, {'role': 'system', 'content': system_prompt})
  text = _render(tokenizer, messages, generation_prompt=True)
  ids = tokenizer(text, add_special_tokens=False)['input_ids']
  return np.asarray(ids, np.int32)


def round_up(n: int, multiple: int) -> int:
  """n rounded up to a multiple of `multiple`."""
  return -(-n // multiple) * multiple


def num_batches(n: int, batch_size: int, drop_remainder: bool = False) -> int:
  """Number of batches `make_batches` yields for n documents."""
  return n // batch_size if drop_remainder else -(-n // batch_size)


def make_batches(
  tokenized: Sequence[TokenizedDoc],
  batch_size: int,
  bucket_multiple: int = 16,
  shuffle: bool = False,
  seed: int = 0,
  drop_remainder: bool = False,
  pad_id: int = 0,
) -> Iterator[Batch]:
  """Yields length-bucketed, right-padded batches.

  Documents are sorted by length (ties in input order, or in a seeded random
  order when shuffling) and cut into consecutive groups of `batch_size`; each
  group is padded to its longest document rounded up to `bucket_multiple`. A
  short last group is filled with padding rows (doc_index -1, zero mask) so
  every batch has `batch_size` rows, unless `drop_remainder` drops it.

  Args:
    tokenized: the documents.
    batch_size: rows per batch.
    bucket_multiple: padded lengths are multiples of this.
    shuffle: shuffle the order of equal-length documents and of the batches.
    seed: the shuffle seed; same seed, same batches.
    drop_remainder: drop the last batch if it is short.
    pad_id: token id of padding positions.

  Yields:
    `Batch` with `doc_index` pointing into `tokenized`.
  """
  if batch_size < 1 or bucket_multiple < 1:
    raise ValueError('batch_size and bucket_multiple must be >= 1')
  n = len(tokenized)
  lengths = np.array([t.length for t in tokenized], np.int64)
  rng = np.random.default_rng(seed) if shuffle else None
  tie = rng.permutation(n) if shuffle else np.arange(n)
  order = tie[np.argsort(lengths[tie], kind='stable')]
  groups = [order[i : i + batch_size] for i in range(0, n, batch_size)]
  if drop_remainder and groups and len(groups[-1]) < batch_size:
    groups.pop()
  if shuffle:
    groups = [groups[i] for i in rng.permutation(len(groups))]
  for group in groups:
    width = round_up(int(lengths[group].max()), bucket_multiple)
    tokens = np.full((batch_size, width), pad_id, np.int32)
    mask = np.zeros((batch_size, width), np.float32)
    doc_index = np.full((batch_size,), -1, np.int32)
    for row, i in enumerate(group):
      doc = tokenized[i]
      tokens[row, : doc.length] = doc.tokens
      mask[row, : doc.length] = doc.loss_mask
      doc_index[row] = i
    yield Batch(tokens=tokens, loss_mask=mask, doc_index=doc_index)


def padding_efficiency(
  batches: Iterable[Batch], tokenized: Sequence[TokenizedDoc]
) -> float:
  """Real tokens / padded tokens (B * T summed) over the batches.

  Args:
    batches: batches from `make_batches(tokenized, ...)`.
    tokenized: the sequence the batches index into.

  Returns:
    A number in (0, 1]; 1 means no padding.
  """
  real = padded = 0
  for b in batches:
    padded += b.tokens.size
    real += sum(tokenized[i].length for i in b.doc_index if i >= 0)
  return real / padded if padded else 1.0


def _unit_hash(doc_id: str, seed: int) -> float:
  digest = hashlib.sha256(f'{seed}\x00{doc_id}'.encode()).digest()
  return int.from_bytes(digest[:8], 'little') / 2.0**64


def split_heldout(
  tokenized: Sequence[Any], fraction: float, seed: int
) -> tuple[list[Any], list[Any]]:
  """Splits documents into (train, heldout) by a hash of their id.

  Each item goes to heldout iff hash(seed, doc_id) < fraction, so adding or
  removing documents never moves the others, and the heldout share is about
  `fraction` (not exact).

  Args:
    tokenized: items with a `doc_id` (TokenizedDoc or Document).
    fraction: heldout probability in [0, 1).
    seed: salts the hash.

  Returns:
    (train, heldout), each in input order.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'heldout fraction must be in [0, 1), got {fraction}')
  train, heldout = [], []
  for item in tokenized:
    (heldout if _unit_hash(item.doc_id, seed) < fraction else train).append(
      item
    )
  return train, heldout
