"""Compositional documents: one answer that teaches two task types at once.

Real fine-tuning data mixes behaviours: a yes/no verdict given as a bulleted
list, code explained in numbered steps, an email that asks for missing input.
Each generator here combines a content task with a format task of the
mixture (mixture_tasks.py, mixture_formats.py) in a natural way, and returns
the two task types it teaches as evaluation-only labels. The answers keep
both tasks' surface signals, so that both behaviour detectors fire on them.
"""

from __future__ import annotations

import random
import re
from typing import Callable

from gatoms_jax.demo import mixture_formats as fm
from gatoms_jax.demo import mixture_tasks as mt

Pair = tuple[str, str]


def _sentences(text: str) -> list[str]:
  parts = re.split(r'(?<=[.!?])\s+', text.strip())
  return [p for p in parts if p]


def _cap(text: str) -> str:
  return text[0].upper() + text[1:] if text else text


def bullets_yes_no(rng: random.Random) -> Pair:
  """A yes/no (or true/false) verdict and its reason as bullets."""
  user, answer = mt.yes_no(rng)
  verdict, _, rest = answer.partition(' ')
  verdict = verdict.rstrip(',.')
  reasons = _sentences(rest) or [rest]
  ask = rng.choice([
    ' Answer as a bulleted list: the verdict first, then why.',
    ' Reply with bullet points, starting with yes or no.',
    ' Use bullets: your answer, then the reason.',
  ])  # fmt: skip
  lines = [f'- {verdict}.'] + [f'- {_cap(r)}' for r in reasons]
  return user + ask, '\n'.join(lines)


def numbered_code(rng: random.Random) -> Pair:
  """A function in a code block, then how it works in numbered steps."""
  user, answer = fm.code(rng)
  ask = rng.choice([
    ' Then explain how it works in numbered steps.',
    ' After the code, list the steps it takes, numbered.',
    ' Include a short numbered explanation below the code.',
  ])  # fmt: skip
  steps = rng.choice([
    ['Define the function and its parameters.', 'Compute the result in the body.', 'Return the result to the caller.'],
    ['Take the inputs as arguments.', 'Apply the operation step by step.', 'Return the value.'],
    ['Name the function after what it does.', 'Work through the input.', 'Give back the answer with return.'],
  ])  # fmt: skip
  numbered = '\n'.join(f'{i}. {s}' for i, s in enumerate(steps, 1))
  return user + ask, f'{answer}\n\nHow it works:\n{numbered}'


def email_missing_input(rng: random.Random) -> Pair:
  """An email that asks for the content the request refers to."""
  user, answer = mt.missing_input(rng)
  ask = rng.choice([
    ' Write your reply as an email.',
    ' Please answer in the form of a short email.',
    ' Respond with an email.',
  ])  # fmt: skip
  greeting = rng.choice(['Hello', 'Hi', 'Dear colleague'])
  sign_off = rng.choice(['Best regards', 'Kind regards', 'Thanks'])
  subject = rng.choice(
    ['Missing attachment', 'A quick question', 'Your request']
  )
  body = (
    f'Subject: {subject}\n\n{greeting},\n\n{answer}\n\n{sign_off},\n[Your name]'
  )
  return user + ask, body


def bullets_arithmetic(rng: random.Random) -> Pair:
  """A calculation with each step on its own bullet."""
  user, answer = mt.arithmetic(rng)
  ask = rng.choice([
    ' Show the working as bullet points.',
    ' Answer in bullets: the calculation, then the result.',
    ' Give the steps as a bulleted list.',
  ])  # fmt: skip
  result = answer.rsplit('=', 1)[-1].strip()
  return user + ask, f'- {answer}\n- The result is {result}.'


def numbered_word_problem(rng: random.Random) -> Pair:
  """A word problem solved in numbered steps."""
  user, answer = mt.word_problem(rng)
  ask = rng.choice([
    ' Number each step.',
    ' Solve it in numbered steps.',
    ' Show your steps as a numbered list.',
  ])  # fmt: skip
  lines = [line for line in answer.splitlines() if line.strip()]
  return user + ask, '\n'.join(f'{i}. {s}' for i, s in enumerate(lines, 1))


# name → (the two task types it teaches, generator). Task names are those of
# mixture.TASKS, so single-task and compositional labels share one vocabulary.
COMPOSITIONS: dict[
  str, tuple[tuple[str, str], Callable[[random.Random], Pair]]
] = {
  'bullets+yes_no': (('bullets', 'yes_no'), bullets_yes_no),
  'code+numbered': (('code', 'numbered'), numbered_code),
  'email+missing_input': (('email', 'missing_input'), email_missing_input),
  'arithmetic+bullets': (('arithmetic', 'bullets'), bullets_arithmetic),
  'numbered+word_problem': (
    ('numbered', 'word_problem'),
    numbered_word_problem,
  ),
}
