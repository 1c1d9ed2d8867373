"""Greedy accuracy of a model on the demo mixture's checkable tasks.

A sanity check of fine-tuning (does the adapter answer arithmetic and yes/no
items better than the base model?), scored against the generated references.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from gatoms_jax.core.data import tokenize as tokenize_lib
from gatoms_jax.core.models import generate as generate_lib
from gatoms_jax.core.models import lora as lora_lib

PyTree = Any

_NUMBER_RE = re.compile(r'-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?')
_WORD_RE = re.compile(r'[A-Za-z]+')


def final_number(text: str) -> Optional[float]:
  """The last number in `text` (thousands commas allowed), or None."""
  found = _NUMBER_RE.findall(text)
  return float(found[-1].replace(',', '')) if found else None


def first_word(text: str) -> Optional[str]:
  """The first alphabetic word of `text`, lower-cased, or None."""
  match = _WORD_RE.search(text)
  return match.group(0).lower() if match else None


def score_answer(task: str, reference: str, answer: str) -> bool:
  """Whether a generated answer matches the reference for a task.

  arithmetic (and word_problem): the answer's LAST number equals the
  reference's last number (its result: references end '... = result'), so
  an answer that shows working or ends 'The answer is 42.' counts, one that
  stops before its result does not. yes_no: the first words match
  (yes/no/true/false).

  Raises:
    ValueError: an unsupported task.
  """
  if task in ('arithmetic', 'word_problem'):
    ref, got = final_number(reference), final_number(answer)
    return ref is not None and got is not None and abs(ref - got) < 1e-6
  if task == 'yes_no':
    ref = first_word(reference)
    return ref is not None and ref == first_word(answer)
  raise ValueError(f'No scorer for task {task!r}')


def greedy_accuracy(
  mdef: lora_lib.ModelDef,
  base: PyTree,
  lora: PyTree,
  tokenizer: Any,
  documents: Sequence[Any],
  *,
  eos_ids: Sequence[int],
  tasks: Sequence[str] = ('arithmetic', 'yes_no'),
  max_new_tokens: int = 48,
  batch_size: Optional[int] = None,
  progress: bool = True,
) -> dict:
  """Greedy-decodes the documents' first user turns and scores the answers.

  Args:
    mdef, base, lora: the split model and the adapter to evaluate (pass the
      `init_lora` tree with B = 0 for the base model).
    tokenizer: the model's tokenizer.
    documents: `Document`s; those whose label is in `tasks` are used. The
      prompt is the chat up to the first assistant turn (a system turn is
      kept), the reference that turn's content.
    eos_ids: ids ending a generation (`generate.eos_token_ids`).
    tasks: labels to score (see `score_answer`).
    max_new_tokens: generated tokens per item at most.
    batch_size: generation batch (None: generate's default).
    progress: tqdm bar over generation batches.

  Returns:
    {task: {'n', 'correct', 'accuracy', 'examples': [{'doc_id', 'prompt',
    'reference', 'answer', 'correct'}]}}.
  """
  items = []
  for doc in documents:
    if doc.label not in tasks:
      continue
    system, user, reference = None, None, None
    for m in doc.messages:
      if m['role'] == 'system' and user is None:
        system = m['content']
      elif m['role'] == 'user' and user is None:
        user = m['content']
      elif m['role'] == 'assistant' and user is not None:
        reference = m['content']
        break
    if user is None or reference is None:
      continue
    prompt = tokenize_lib.prompt_tokens(tokenizer, user, system).tolist()
    items.append((doc, user, reference, prompt))
  dtype = jax.tree.leaves(base)[0].dtype
  cast = jax.tree.map(lambda x: jnp.asarray(x, dtype), lora)
  answers = generate_lib.generate(
    mdef,
    base,
    cast,
    [p for *_, p in items],
    max_new_tokens=max_new_tokens,
    eos_ids=eos_ids,
    batch_size=batch_size,
    progress=progress,
  )
  out = {t: {'n': 0, 'correct': 0, 'examples': []} for t in tasks}
  for (doc, user, reference, _), ids in zip(items, answers):
    text = tokenizer.decode(ids, skip_special_tokens=True)
    ok = score_answer(doc.label, reference, text)
    rec = out[doc.label]
    rec['n'] += 1
    rec['correct'] += int(ok)
    rec['examples'].append(
      {
        'doc_id': doc.doc_id,
        'prompt': user,
        'reference': reference,
        'answer': text,
        'correct': ok,
      }
    )
  for rec in out.values():
    rec['accuracy'] = rec['correct'] / rec['n'] if rec['n'] else math.nan
  return out
