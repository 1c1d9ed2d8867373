"""Behaviour detectors, prompt sets and sweep bookkeeping for steering.

The model-independent half of the steering evaluation (issue 7): an atom's
weight-space direction v is added to the fine-tuned weights as θ ± α·v, the
model generates answers to prompts of a behaviour's prompt set, and this
module turns those answers into numbers and a verdict:

* `DETECTORS`: pure functions str -> bool, one per behaviour (yes_no, code,
  refusal, bullets, numbered).
* `PromptSet`s: built-in sets written for this project
  (`gatoms_jax.demo.prompt_sets`), or user JSONL files (`load_prompt_jsonl`).
* `detection_rate`, `repetition_fraction` (degeneracy guard, rule in
  `gatoms_jax.method.text.is_degenerate`) and `mean_kl` (KL guard) per sweep variant.
* `steering_verdict`: whether an atom counts as steering a behaviour, judged
  against the unsteered baseline and against random directions at the same α.
* `match_atoms_to_behaviors`: which atoms to steer with, chosen without
  labels from the responses of their top training documents.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gatoms_jax.core.data.documents import check_text, iter_json_lines
from gatoms_jax.demo import prompt_sets
from gatoms_jax.method.text import repetition_fraction  # noqa: F401  (re-exported)

Detector = Callable[[str], bool]

# ---------------------------------------------------------------------------
# Detectors.

# A fenced block runs from ``` to the next ``` or, when a generation was cut
# off by max_new_tokens, to the end of the text.
_FENCE_RE = re.compile(r'```.*?(?:```|\Z)', re.DOTALL)


def strip_code_blocks(text: str) -> str:
  """Removes fenced code blocks, so code cannot trigger text detectors."""
  return _FENCE_RE.sub('\n', text)


# Optional markdown / punctuation before the answer word: "**No**", "> Yes",
# "- True", '"Yes,"', "(No)".
_YES_NO_RE = re.compile(
  r'^[\s*_#>`"\'“‘(\[\-–—:.]*(?:yes|no|true|false)\b', re.IGNORECASE
)


def is_yes_no(text: str) -> bool:
  """Whether the first non-empty line starts with yes/no/true/false.

  Case-insensitive and on a word boundary ("Yes." and "**No**" count,
  "Yesterday" and "Nothing" do not), after optional leading markdown or
  punctuation (* _ # > ` quotes brackets dashes colons dots).

  Args:
    text: a generated answer.

  Returns:
    True if the answer opens with a yes/no/true/false verdict.
  """
  for line in text.splitlines():
    if line.strip():
      return _YES_NO_RE.match(line) is not None
  return False


def has_code(text: str) -> bool:
  """Whether the text contains a ``` code fence (opening is enough)."""
  return '```' in text


# Materials a request can refer to without including them.
_INPUT_NOUNS = (
  r'(?:text|article|passage|paragraph|document|essay|e-?mail|message|code|'
  r'snippet|function|class|script|query|file|report|data|dataset|table|chart|'
  r'graph|image|picture|screenshot|link|url|note|transcript|review|poem|'
  r'story|sentence|excerpt|lyric|recipe|log|letter|resume|résumé|cv|proof|'
  r'contract|clause|spreadsheet|menu|quote|joke|thread|content|input|'
  r'attachment|material|line|proposal|option|answer|statement|word)s?'
)
_ASK_VERBS = (
  r'(?:provide|share|paste|send|give\s+me|supply|include|upload|attach|post|'
  r'specify|clarify)'
)
_NOT_GIVEN = r'(?:provided|included|attached|given|shared|pasted|sent|uploaded)'

# The refusal detector fires when ANY of these matches (case-insensitive) the
# text outside code blocks. Each targets a way of asking for missing input:
REFUSAL_PATTERNS = tuple(
  re.compile(p, re.IGNORECASE)
  for p in (
    # "Please provide the text", "please paste it", "please kindly share".
    r'\bplease\s+(?:\w+\s+){0,2}?' + _ASK_VERBS + r'\b',
    # "Could you share the article?", "can you please paste the code".
    r'\b(?:could|can|would)\s+you\s+(?:please\s+)?' + _ASK_VERBS + r'\b',
    # "I need the text", "I'd need to see the code", "I'll need more context".
    r"\bI(?:\s+would|\s+will|'d|'ll)?\s+(?:first\s+)?need\s+"
    r'(?:to\s+(?:see|know|have|read)\s+)?'
    r'(?:the|your|more|some|that|this|a|an|you\s+to)\b',
    # "you haven't provided", "you did not include", "you forgot to attach".
    r"\byou\s+(?:haven't|have\s+not|didn't|did\s+not|forgot\s+to|"
    r'may\s+have\s+forgotten\s+to)\s+(?:\w+\s+)?'
    r'(?:provide|include|share|attach|paste|give|specify|send|upload)',
    # "no text was provided", "there's no article attached".
    r"\b(?:no|there\s+is\s+no|there's\s+no)\s+(?:\w+\s+){0,2}?"
    + _INPUT_NOUNS
    + r'\s+(?:(?:was|were|has\s+been|have\s+been|is|are)\s+)?'
    + _NOT_GIVEN,
    # "the text wasn't included", "the code is missing".
    r'\b'
    + _INPUT_NOUNS
    + r"\s+(?:(?:wasn't|weren't|was\s+not|were\s+not|isn't|is\s+not|"
    r"hasn't\s+been|has\s+not\s+been)\s+(?:\w+\s+)?"
    + _NOT_GIVEN
    + r'|(?:is|are|seems\s+to\s+be|appears\s+to\s+be|seem\s+to\s+be)\s+missing)',
    # "I don't see any text", "I can't see the attached file".
    r"\bI\s+(?:don't|do\s+not|can't|cannot)\s+see\s+(?:any|an?|the|your)\s+"
    r'(?:\w+\s+){0,2}?' + _INPUT_NOUNS + r'\b',
    # "I don't have the article", "I do not have access to your document".
    r"\bI\s+(?:don't|do\s+not)\s+have\s+(?:access\s+to\s+)?"
    r'(?:the|your|any|that|this)\s+(?:\w+\s+){0,2}?' + _INPUT_NOUNS + r'\b',
    # "Without the text, I can't ..." / "without seeing your code I cannot".
    r'\bwithout\s+(?:seeing\s+)?(?:the|your|that|this)\s+(?:\w+\s+){0,2}?'
    + _INPUT_NOUNS
    + r",?\s+I\s+(?:can't|cannot|can\s+not|won't\s+be\s+able|am\s+unable)",
    # "it didn't come through", "the file doesn't seem to have come through".
    r"\b(?:didn't|did\s+not|doesn't\s+seem\s+to\s+have|hasn't)\s+"
    r'come\s+through',
    # "Once you paste the article, I'll ...".
    r'\bonce\s+you\s+(?:\w+\s+)?(?:provide|share|paste|send|upload|give)\b',
  )
)


def is_refusal(text: str) -> bool:
  """Whether the answer asks for input that the request referred to.

  This is the "refusal" behaviour of the project: instead of doing the task,
  the model asks for the missing text/article/code ("Please provide the
  article", "Could you share the code?", "I need the text you want
  translated", "You haven't provided any document", "Without the passage, I
  can't summarize it"). See `REFUSAL_PATTERNS` for the full pattern set.
  Fenced code is ignored (generated code often contains prompts such as
  "please provide a number"). Known false positives: helpful answers that
  end with "please share more details"; they raise the baseline rate but not
  the steering shift.

  Args:
    text: a generated answer.

  Returns:
    True if any refusal pattern matches.
  """
  # Curly apostrophes ("haven’t") are common in generated text.
  prose = strip_code_blocks(text).replace('\u2019', "'")
  return any(p.search(prose) for p in REFUSAL_PATTERNS)


_BULLET_RE = re.compile(r'^[ \t]*[-*•][ \t]+\S', re.MULTILINE)
# At most three digits: a line starting with a year ("1999. ...") is not an
# item; the marker must be followed by whitespace or the end of the line so
# "3.14 is pi" does not count.
_NUMBERED_RE = re.compile(r'^[ \t]*\d{1,3}[.)](?:[ \t]|$)', re.MULTILINE)


def has_bullets(text: str) -> bool:
  """Whether ≥2 lines (outside code fences) start with -, * or • and a space.

  Indentation is allowed. "**bold**" and "---" rules do not count because
  the marker must be followed by whitespace.
  """
  return len(_BULLET_RE.findall(strip_code_blocks(text))) >= 2


def is_numbered(text: str) -> bool:
  """Whether ≥2 lines (outside code fences) start with `\\d+.` or `\\d+)`."""
  return len(_NUMBERED_RE.findall(strip_code_blocks(text))) >= 2


DETECTORS: dict[str, Detector] = {
  'yes_no': is_yes_no,
  'code': has_code,
  'refusal': is_refusal,
  'bullets': has_bullets,
  'numbered': is_numbered,
}


def get_detector(detector: str | Detector) -> Detector:
  """Returns `DETECTORS[detector]` for a name, or the callable itself."""
  if callable(detector):
    return detector
  if detector not in DETECTORS:
    raise ValueError(
      f'Unknown behavior {detector!r}; known: {sorted(DETECTORS)}'
    )
  return DETECTORS[detector]


# ---------------------------------------------------------------------------
# Prompt sets.


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One evaluation prompt; `invites` is False for neutral controls."""

  text: str
  invites: bool


@dataclasses.dataclass(frozen=True)
class PromptSet:
  """The prompts of one behaviour, inviting ones and controls."""

  behavior: str
  prompts: tuple[Prompt, ...]

  def __len__(self) -> int:
    return len(self.prompts)

  @property
  def texts(self) -> tuple[str, ...]:
    return tuple(p.text for p in self.prompts)

  @property
  def inviting(self) -> tuple[str, ...]:
    return tuple(p.text for p in self.prompts if p.invites)

  @property
  def controls(self) -> tuple[str, ...]:
    return tuple(p.text for p in self.prompts if not p.invites)

  def limited(self, limit: int | None) -> PromptSet:
    """Returns ≤ `limit` prompts keeping the inviting/control ratio.

    Deterministic: evenly spaced prompts of each kind are kept (so topic
    variety survives), in their original order, inviting ones first. When
    limit ≥ 2 and both kinds exist, at least one of each is kept.

    Args:
      limit: the number of prompts wanted, or None for all.

    Returns:
      A new PromptSet (or self when nothing has to be dropped).

    Raises:
      ValueError: if limit < 1.
    """
    if limit is None or limit >= len(self.prompts):
      return self
    if limit < 1:
      raise ValueError(f'limit must be >= 1 or None, got {limit}')
    inv = [p for p in self.prompts if p.invites]
    ctl = [p for p in self.prompts if not p.invites]
    n_inv = round(limit * len(inv) / len(self.prompts))
    if limit >= 2 and inv and ctl:
      n_inv = min(max(n_inv, 1), limit - 1)
    n_inv = min(n_inv, len(inv))
    n_ctl = min(limit - n_inv, len(ctl))
    keep = _evenly_spaced(inv, n_inv) + _evenly_spaced(ctl, n_ctl)
    return PromptSet(self.behavior, tuple(keep))


def _evenly_spaced(items: list, k: int) -> list:
  n = len(items)
  return [items[(i * n) // k] for i in range(k)] if k > 0 else []


def builtin_prompt_set(name: str, limit: int | None = None) -> PromptSet:
  """Returns the built-in prompt set of a behaviour.

  Args:
    name: a behaviour name (key of `DETECTORS`).
    limit: keep at most this many prompts (see `PromptSet.limited`).

  Returns:
    The PromptSet, inviting prompts first.

  Raises:
    ValueError: for an unknown behaviour.
  """
  if name not in prompt_sets.PROMPTS:
    raise ValueError(
      f'No built-in prompt set for {name!r}; known: '
      f'{sorted(prompt_sets.PROMPTS)}'
    )
  inviting, controls = prompt_sets.PROMPTS[name]
  prompts = tuple(Prompt(t, True) for t in inviting) + tuple(
    Prompt(t, False) for t in controls
  )
  return PromptSet(name, prompts).limited(limit)


def _read_prompt_records(path: str) -> list[tuple[int, str, bool, str | None]]:
  """Parses a prompt JSONL file into (line number, prompt, invites, behavior).

  Every non-blank line is one record or a ValueError naming `path:line`
  (bytes that are not UTF-8 and unparsable JSON included).
  """
  records = []
  for line_no, row, reason in iter_json_lines(path):
    where = f'{path}:{line_no}'
    if reason is not None:
      raise ValueError(f'{where}: {reason}')
    if not isinstance(row, dict):
      raise ValueError(
        f'{where}: expected a JSON object, got {type(row).__name__}'
      )
    prompt = row.get('prompt')
    if not isinstance(prompt, str) or not prompt.strip():
      raise ValueError(f'{where}: "prompt" must be a non-empty string')
    try:
      check_text(prompt, '"prompt"')
    except ValueError as e:
      raise ValueError(f'{where}: {e}') from None
    if 'invites' not in row:
      raise ValueError(f'{where}: missing "invites" (true or false)')
    if not isinstance(row['invites'], bool):
      raise ValueError(
        f'{where}: "invites" must be true or false, got '
        f'{_short(row["invites"])}'
      )
    behavior = row.get('behavior')
    if behavior is not None:
      if not isinstance(behavior, str) or behavior not in DETECTORS:
        raise ValueError(
          f'{where}: unknown "behavior" {_short(behavior)}; known: '
          f'{sorted(DETECTORS)}'
        )
    records.append((line_no, prompt, row['invites'], behavior))
  return records


def _short(value: Any, limit: int = 80) -> str:
  """repr of a bad value, cut for error messages (a huge line stays readable)."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + '...'


def _to_prompt_set(
  path: str, behavior: str, records: list[tuple[int, str, bool, str | None]]
) -> PromptSet:
  seen = {}
  prompts = []
  for line_no, prompt, invites, _ in records:
    if prompt in seen:
      raise ValueError(
        f'{path}:{line_no}: duplicate prompt for {behavior!r} (first on line '
        f'{seen[prompt]})'
      )
    seen[prompt] = line_no
    prompts.append(Prompt(prompt, invites))
  if not prompts:
    raise ValueError(f'{path}: no prompts for behavior {behavior!r}')
  return PromptSet(behavior, tuple(prompts))


def load_prompt_jsonl(path: str, behavior: str | None = None) -> PromptSet:
  """Loads one behaviour's prompts from a JSONL file.

  Each non-blank line is `{"prompt": str, "invites": bool, "behavior":
  optional str}`; other keys are ignored. Lines without "behavior" belong to
  every behaviour; lines naming another behaviour are skipped.

  Args:
    path: the JSONL file.
    behavior: the behaviour to load. None: the file's tagged lines must all
      name the same behaviour, which is used.

  Returns:
    The PromptSet, in file order.

  Raises:
    ValueError: naming the file and line for bad JSON, a missing/empty
      prompt, a missing or non-boolean "invites", an unknown behaviour, or a
      duplicate prompt; naming the file when no prompt is left or when the
      behaviour cannot be determined.
  """
  records = _read_prompt_records(path)
  if behavior is None:
    tagged = sorted({r[3] for r in records if r[3] is not None})
    if len(tagged) != 1:
      raise ValueError(
        f'{path}: pass behavior= (the file tags behaviours {tagged})'
        if tagged
        else f'{path}: no "behavior" field in the file; pass behavior='
      )
    behavior = tagged[0]
  elif behavior not in DETECTORS:
    raise ValueError(
      f'Unknown behavior {behavior!r}; known: {sorted(DETECTORS)}'
    )
  return _to_prompt_set(
    path, behavior, [r for r in records if r[3] in (None, behavior)]
  )


def load_prompt_sets(
  behaviors: Sequence[str], path: str = '', limit: int | None = None
) -> dict[str, PromptSet]:
  """The prompt set of each behaviour, from `path` if given else built in.

  Args:
    behaviors: behaviour names (config `steering.behaviors`).
    path: a prompt JSONL file (config `steering.prompts_path`) or ''.
    limit: prompts per behaviour (config `steering.prompts_per_behavior`).

  Returns:
    behaviour -> PromptSet.
  """
  if path:
    return {b: load_prompt_jsonl(path, b).limited(limit) for b in behaviors}
  return {b: builtin_prompt_set(b, limit) for b in behaviors}


# ---------------------------------------------------------------------------
# Sweep bookkeeping.


def detection_rate(outputs: Sequence[str], detector: str | Detector) -> float:
  """Percentage (0-100) of `outputs` on which the detector fires.

  Args:
    outputs: generated answers.
    detector: a behaviour name or a detector function.

  Returns:
    The detection rate in percent.

  Raises:
    ValueError: if `outputs` is empty.
  """
  if not outputs:
    raise ValueError('detection_rate needs at least one output')
  fn = get_detector(detector)
  return 100.0 * sum(bool(fn(o)) for o in outputs) / len(outputs)


def degeneracy_rule(config: Any) -> dict[str, Any]:
  """Keyword arguments of `text.is_degenerate` from the `steering` section."""
  keys = {
    'ngram': 'degenerate_ngram',
    'min_repeats': 'degenerate_min_repeats',
    'max_coverage': 'degenerate_coverage',
    'min_distinct': 'degenerate_min_distinct',
    'min_tokens': 'degenerate_min_tokens',
  }
  return {arg: config[key] for arg, key in keys.items() if key in config}


def _log_normalize(x: np.ndarray) -> np.ndarray:
  m = np.max(x, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  return x - (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))


def kl_sum_and_count(
  logp_base: Any, logp_variant: Any, mask: Any
) -> tuple[float, int]:
  """Sum of next-token KL(base ‖ variant) over masked positions, and count.

  For streaming over batches: mean = total sum / total count. Inputs are
  log-softmax outputs, or logits: both are renormalised over the vocabulary
  axis, which changes nothing for proper log-probabilities. Tokens with
  base probability 0 contribute 0; a token with base probability > 0 and
  variant probability 0 makes the KL infinite.

  Args:
    logp_base: [B, T, V] log-probabilities of the unsteered model.
    logp_variant: [B, T, V] log-probabilities of the steered model at the
      same positions (same token prefixes).
    mask: [B, T], nonzero where a position counts (e.g. generated tokens).

  Returns:
    (sum of per-position KL in nats, number of masked positions).
  """
  base = np.asarray(logp_base)
  variant = np.asarray(logp_variant)
  mask = np.asarray(mask) != 0
  if base.shape != variant.shape or base.shape[:-1] != mask.shape:
    raise ValueError(
      f'shape mismatch: base {base.shape}, variant {variant.shape}, '
      f'mask {mask.shape}'
    )
  total = 0.0
  # One sequence at a time keeps temporaries at T x V.
  for b in range(base.shape[0]):
    rows = mask[b]
    if not rows.any():
      continue
    lp = _log_normalize(base[b][rows].astype(np.float64))
    lq = _log_normalize(variant[b][rows].astype(np.float64))
    p = np.exp(lp)
    with np.errstate(invalid='ignore'):
      terms = np.where(p > 0, p * (lp - lq), 0.0)
    total += float(np.sum(terms))
  return total, int(mask.sum())


def mean_kl(logp_base: Any, logp_variant: Any, mask: Any) -> float:
  """Mean next-token KL(base ‖ variant) in nats over masked positions.

  Args:
    logp_base: [B, T, V] log-probabilities (or logits) of the base model.
    logp_variant: [B, T, V] the same for the steered model.
    mask: [B, T], nonzero where a position counts.

  Returns:
    The mean KL per masked position.

  Raises:
    ValueError: on shape mismatch or an all-zero mask.
  """
  total, count = kl_sum_and_count(logp_base, logp_variant, mask)
  if count == 0:
    raise ValueError('mean_kl: the mask selects no position')
  return total / count


_DIRECTIONS = ('increase', 'decrease', 'either')


def _effect(shift: float, direction: str) -> float:
  if direction == 'increase':
    return shift
  if direction == 'decrease':
    return -shift
  return abs(shift)


def steering_verdict(
  atom: Mapping[float, Mapping[str, float]],
  controls: Sequence[Mapping[float, Mapping[str, float]]],
  baseline_rate: float | None = None,
  min_shift_pp: float = 10.0,
  control_margin_pp: float = 5.0,
  max_kl: float = 1.0,
  max_degenerate: float = 0.2,
  direction: str = 'increase',
  require_controls: bool = True,
) -> dict[str, Any]:
  """Decides whether an atom counts as steering a behaviour.

  Sweep results map a signed step key α (a signed step size or KL level;
  the sign says toward or away) to {"rate": detection rate in %, "kl": mean
  KL to the base model in nats, "degenerate": fraction of degenerate
  outputs}. At each α ≠ 0 of the atom the effect is the shift of the rate
  from the baseline in the direction asked for ("increase": rate −
  baseline, "decrease": baseline − rate, "either": the direction the atom
  moved the rate, i.e. |rate − baseline|). Random controls are measured in
  that same direction: a random step that breaks the model and so lowers
  the rate does not count against an atom that raises it, but does against
  one that lowers it. An α passes when
    1. effect ≥ min_shift_pp,
    2. effect ≥ (largest same-direction effect of any random control at
       ±α) + control_margin_pp -- controls at both signs of the same |α|
       count, because a random direction has no preferred sign,
    3. kl ≤ max_kl and degenerate ≤ max_degenerate (guards: the model is
       still sane).
  The atom counts as steering when some α passes; the reported α is the one
  with the largest margin over the controls (ties: smaller |α|).

  Args:
    atom: the atom's sweep; may hold the baseline under α = 0.
    controls: one sweep per random direction (same prompts, same α grid).
    baseline_rate: the unsteered rate in %; None: `atom[0.0]["rate"]`.
    min_shift_pp: required effect in percentage points.
    control_margin_pp: required excess over the best random control.
    max_kl: largest acceptable mean KL (nats per token).
    max_degenerate: largest acceptable fraction of degenerate outputs.
    direction: "increase", "decrease" or "either".
    require_controls: if True an α without a random control fails; if False
      criterion 2 is skipped there.

  Returns:
    {"steers": bool, "alpha": best passing α or None, "shift_pp": its signed
    shift, "control_shift_pp": the best control effect at that |α|,
    "baseline_rate": float, "per_alpha": [{"alpha", "rate", "shift_pp",
    "effect_pp", "control_effect_pp", "kl", "degenerate", "passed",
    "reasons"}, ...] sorted by α}.

  Raises:
    ValueError: for an unknown direction or a missing baseline.
  """
  if direction not in _DIRECTIONS:
    raise ValueError(f'direction must be one of {_DIRECTIONS}: {direction!r}')
  if baseline_rate is None:
    zero = [a for a in atom if float(a) == 0.0]
    if not zero:
      raise ValueError('No baseline: pass baseline_rate or include alpha=0')
    baseline_rate = float(atom[zero[0]]['rate'])
  per_alpha = []
  for alpha in sorted(atom, key=float):
    if float(alpha) == 0.0:
      continue
    res = atom[alpha]
    shift = float(res['rate']) - baseline_rate
    effect = _effect(shift, direction)
    # "either" resolves to the direction this variant moved the rate.
    measured = direction
    if direction == 'either':
      measured = 'increase' if shift >= 0 else 'decrease'
    control_effects = [
      _effect(float(c[a]['rate']) - baseline_rate, measured)
      for c in controls
      for a in c
      if math.isclose(abs(float(a)), abs(float(alpha)))
    ]
    control_max = max(control_effects) if control_effects else None
    kl, degenerate = float(res['kl']), float(res['degenerate'])
    reasons = []
    if not effect >= min_shift_pp:
      reasons.append(f'effect {effect:.1f}pp < {min_shift_pp}pp')
    if control_max is None:
      if require_controls:
        reasons.append('no random control at this |alpha|')
    elif not effect >= control_max + control_margin_pp:
      reasons.append(
        f'effect {effect:.1f}pp < random control {control_max:.1f}pp + '
        f'{control_margin_pp}pp'
      )
    if not kl <= max_kl:
      reasons.append(f'kl {kl:.3g} > {max_kl}')
    if not degenerate <= max_degenerate:
      reasons.append(f'degenerate {degenerate:.2f} > {max_degenerate}')
    per_alpha.append(
      dict(
        alpha=float(alpha),
        rate=float(res['rate']),
        shift_pp=shift,
        effect_pp=effect,
        control_effect_pp=control_max,
        kl=kl,
        degenerate=degenerate,
        passed=not reasons,
        reasons=reasons,
      )
    )
  passing = [r for r in per_alpha if r['passed']]
  best = None
  if passing:
    best = max(
      passing,
      key=lambda r: (
        r['effect_pp'] - (r['control_effect_pp'] or 0.0),
        -abs(r['alpha']),
      ),
    )
  return dict(
    steers=best is not None,
    alpha=best['alpha'] if best else None,
    shift_pp=best['shift_pp'] if best else None,
    control_shift_pp=best['control_effect_pp'] if best else None,
    baseline_rate=baseline_rate,
    per_alpha=per_alpha,
  )


# ---------------------------------------------------------------------------
# Matching atoms to behaviours without labels.


def match_atoms_to_behaviors(
  top_doc_responses: Mapping[Any, Sequence[str]],
  detectors: Mapping[str, Detector] | Sequence[str] = DETECTORS,
  tiebreak: Mapping[Any, float | None] | None = None,
) -> dict[str, list[tuple[Any, float]]]:
  """Ranks atoms per behaviour by how often their top documents show it.

  The score of an atom for a behaviour is the fraction of the assistant
  responses of its top activating training documents on which the detector
  fires. No labels are used. Ties are broken by `tiebreak` (e.g. the atom's
  raw-gradient coherence: among equally typical atoms prefer the one whose
  documents pull the weights the same way), higher first with missing/NaN
  last, then by the order of `top_doc_responses`.

  Args:
    top_doc_responses: atom id -> full responses of its top documents
      (`gatoms_jax.method.atoms.atom_top_responses`). Atoms with no response are
      left out.
    detectors: behaviour -> detector, or behaviour names of `DETECTORS`.
    tiebreak: atom id -> secondary score, or None.

  Returns:
    behaviour -> [(atom id, score in [0, 1]), ...], best first.
  """
  if not isinstance(detectors, Mapping):
    detectors = {name: get_detector(name) for name in detectors}
  tiebreak = tiebreak or {}

  def secondary(atom_id):
    value = tiebreak.get(atom_id)
    if value is None or math.isnan(value):
      return (1, 0.0)
    return (0, -float(value))

  result = {}
  for name, fn in detectors.items():
    scored = [
      (atom_id, sum(bool(fn(r)) for r in responses) / len(responses))
      for atom_id, responses in top_doc_responses.items()
      if responses
    ]
    scored.sort(key=lambda s: (-s[1], secondary(s[0])))
    result[name] = scored
  return result
