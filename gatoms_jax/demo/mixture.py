"""The embedded default data: a generated mixture of chat tasks.

The method (paper step 1) needs a fine-tuning set whose documents teach
several clearly different behaviours, so that the dictionary atoms learned
over their gradients can be checked against known task types. This module
generates such a set deterministically: 15 task types, balanced, each with
many prompt phrasings and entity values, and each with a distinctive response
format (the generators live in mixture_tasks.py and mixture_formats.py, the
fact tables in mixture_tables.py). The task type is the document's label,
evaluation-only metadata that the method never sees.

Every document is a system-less [user, assistant] chat with a short answer.
Document i depends only on (seed, i) and on the documents before it (exact
duplicates are redrawn), so a larger `n_docs` extends a smaller one.
"""

from __future__ import annotations

import random
from typing import Callable

from gatoms_jax.demo import mixture_compositions as mc
from gatoms_jax.demo import mixture_formats as fm
from gatoms_jax.demo import mixture_tasks as mt
from gatoms_jax.core.data.documents import Document, make_messages

Generator = Callable[[random.Random], tuple[str, str]]

# The task types and their generators. Labels match the steering behaviours
# where they overlap (yes_no, code, bullets, numbered); `missing_input` is the
# "refusal"-like behaviour of asking for content the prompt refers to but
# does not include.
TASKS: dict[str, Generator] = {
  'factual_qa': mt.factual_qa,
  'yes_no': mt.yes_no,
  'arithmetic': mt.arithmetic,
  'word_problem': mt.word_problem,
  'topic_classification': mt.topic_classification,
  'sentiment': mt.sentiment,
  'missing_input': mt.missing_input,
  'code': fm.code,
  'bullets': fm.bullets,
  'numbered': fm.numbered,
  'word_tasks': fm.word_tasks,
  'translation': fm.translation,
  'text_transform': fm.text_transform,
  'email': fm.email,
  'grammar': fm.grammar,
}
TASK_TYPES: tuple[str, ...] = tuple(TASKS)

# Redraws allowed when a document duplicates an earlier one; after that the
# duplicate is kept (only reachable for very large n_docs).
_MAX_REDRAWS = 20


def task_of_index(index: int, seed: int) -> str:
  """The task type of document `index`.

  Documents come in blocks of len(TASK_TYPES), each block a seeded
  permutation of the task types, so any prefix of the mixture is balanced to
  within one document per task.
  """
  n = len(TASK_TYPES)
  block, pos = divmod(index, n)
  order = random.Random(f'gatoms-order:{seed}:{block}').sample(TASK_TYPES, n)
  return order[pos]


def is_compositional(index: int, seed: int, fraction: float) -> bool:
  """Whether document `index` combines two task types (seeded, per index,
  so a larger mixture extends a smaller one)."""
  if fraction <= 0:
    return False
  return random.Random(f'gatoms-comp:{seed}:{index}').random() < fraction


def generate_mixture(
  n_docs: int, seed: int = 0, compositional_fraction: float = 0.0
) -> list[Document]:
  """Generates the embedded task mixture.

  Args:
    n_docs: number of documents.
    seed: generator seed; the same seed gives identical documents.
    compositional_fraction: the share of documents (drawn per index) that
      teach two task types in one answer (mixture_compositions.py); their
      label is the composition's name ("bullets+yes_no") and `labels` holds
      both task types. The others are single-task, balanced as before.

  Returns:
    `n_docs` documents with ids `gen{seed}-{index:06d}`, label = task type.
  """
  if n_docs < 0:
    raise ValueError(f'n_docs must be >= 0, got {n_docs}')
  if not 0.0 <= compositional_fraction < 1.0:
    raise ValueError(
      f'compositional_fraction must be in [0, 1), got {compositional_fraction}'
    )
  docs = []
  seen: set[tuple[str, str]] = set()
  n_single = n_comp = 0
  names = list(mc.COMPOSITIONS)
  for index in range(n_docs):
    if is_compositional(index, seed, compositional_fraction):
      label = names[n_comp % len(names)]
      labels, make = mc.COMPOSITIONS[label]
      n_comp += 1
    else:
      # Single-task documents keep their own balanced order.
      label = task_of_index(n_single, seed)
      labels, make = (label,), TASKS[label]
      n_single += 1
    rng = random.Random(f'gatoms-doc:{seed}:{index}')
    for _ in range(_MAX_REDRAWS):
      user, assistant = make(rng)
      if (user, assistant) not in seen:
        break
    seen.add((user, assistant))
    docs.append(
      Document(
        doc_id=f'gen{seed}-{index:06d}',
        messages=make_messages([('user', user), ('assistant', assistant)]),
        label=label,
        source=f'generated:seed={seed}:{index}',
        labels=tuple(labels),
      )
    )
  return docs
