"""Steering sweeps: generate with θ − c·v for atoms and random controls.

For one behaviour (a detector and its prompt set) and a set of directions
(atom deltas and random-direction controls, all unit-norm LoRA trees):

1. baseline: greedy generations of the unsteered adapter and its next-token
   distributions on the control prompts;
2. calibration: each direction's step size is set by its EFFECT, not its raw
   norm — the scale s at which the mean next-token KL(base ‖ steered) on the
   control prompts equals `target_kl` (bisection in log space). Atom and
   random controls are therefore compared at matched model disruption;
3. the sweep: c = ±α·s for α in `alphas` ("toward" c > 0 is a descent step on
   the atom's documents, "away" c < 0), recording the detection rate over all
   prompts (and over inviting prompts / controls), the KL guard on the
   control prompts and the fraction of degenerate (repetitive) outputs.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from absl import logging

from gatoms_jax import behaviors, steer
from gatoms_jax.text import is_degenerate

PyTree = Any


def mean_first_token_kl(
  logp_base: np.ndarray, logp_variant: np.ndarray
) -> float:
  """Mean over prompts of KL(base ‖ variant) of the first generated token."""
  lp = np.asarray(logp_base, np.float64)
  lq = np.asarray(logp_variant, np.float64)
  p = np.exp(lp)
  terms = np.where(p > 0, p * (lp - np.where(np.isfinite(lq), lq, -1e30)), 0.0)
  return float(np.mean(np.sum(terms, axis=-1)))


class SweepRunner:
  """Runs steering sweeps for one model + adapter.

  Args:
    generator: a `gatoms_jax.models.generate.Generator`.
    tokenizer: the chat tokenizer (for prompt formatting and decoding).
    lora: the unsteered LoRA tree.
    max_new_tokens: tokens generated per prompt.
    target_kl: KL (nats) of a unit step (α = 1) after calibration.
    degenerate_rule: kwargs of `text.is_degenerate`.
  """

  def __init__(
    self,
    generator: Any,
    tokenizer: Any,
    lora: PyTree,
    *,
    max_new_tokens: int = 128,
    target_kl: float = 0.1,
    degenerate_rule: Optional[dict] = None,
    prompt_formatter: Optional[Callable[[str], list[int]]] = None,
  ):
    self.gen = generator
    self.tokenizer = tokenizer
    self.lora = lora
    self.max_new_tokens = max_new_tokens
    self.target_kl = target_kl
    self.degenerate_rule = degenerate_rule or {}
    self._format = prompt_formatter or self._chat_prompt

  def _chat_prompt(self, text: str) -> list[int]:
    from gatoms_jax.data.tokenize import prompt_tokens

    return list(prompt_tokens(self.tokenizer, text))

  def _decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)

  def generate_texts(
    self, lora: PyTree, prompts: Sequence[list[int]]
  ) -> list[str]:
    out = self.gen.generate(lora, prompts, max_new_tokens=self.max_new_tokens)
    return [self._decode(o) for o in out]

  def calibrate(
    self,
    delta: PyTree,
    control_prompts: Sequence[list[int]],
    base_logp: np.ndarray,
    *,
    initial: float = 1.0,
    n_steps: int = 14,
  ) -> tuple[float, float]:
    """Scale s with KL(base ‖ θ − s·delta) ≈ target_kl on control prompts.

    Returns:
      (s, the KL measured at s).
    """

    def kl_at(scale):
      logp = self.gen.next_token_logprobs(
        steer.add_scaled(self.lora, delta, scale), control_prompts
      )
      return mean_first_token_kl(base_logp, logp)

    lo, hi = 0.0, None
    scale, kl = initial, kl_at(initial)
    for _ in range(n_steps):
      if abs(math.log(max(kl, 1e-12) / self.target_kl)) < 0.1:
        break
      if kl < self.target_kl:
        lo = scale
        scale = (
          scale * 4.0 if hi is None else math.sqrt(lo * hi) if lo else hi / 2
        )
      else:
        hi = scale
        scale = math.sqrt(lo * hi) if lo else scale / 4.0
      kl = kl_at(scale)
    return scale, kl

  def sweep(
    self,
    prompt_set: behaviors.PromptSet,
    detector: str,
    directions: Mapping[str, PyTree],
    alphas: Sequence[float],
    *,
    progress: Optional[Callable[[str], None]] = None,
  ) -> dict:
    """Baseline + every direction × ±α. See the module docstring.

    Returns:
      {"behavior", "n_prompts", "baseline": {...}, "directions": {name:
      {"scale", "calibration_kl", "variants": {c: {...}}}}} where each
      variant record has rate, rate_invites, rate_controls, kl, degenerate,
      alpha, sign and two example outputs.
    """
    texts = list(prompt_set.texts)
    invites = np.array([p.invites for p in prompt_set.prompts])
    prompts = [self._format(t) for t in texts]
    control_prompts = [p for p, inv in zip(prompts, invites) if not inv]
    if not control_prompts:
      control_prompts = prompts
    detect = behaviors.get_detector(detector)
    base_logp = self.gen.next_token_logprobs(self.lora, control_prompts)

    def evaluate(lora, label):
      start = time.perf_counter()
      outs = self.generate_texts(lora, prompts)
      fired = np.array([bool(detect(o)) for o in outs])
      logp = self.gen.next_token_logprobs(lora, control_prompts)
      record = {
        'rate': 100.0 * fired.mean(),
        'rate_invites': 100.0 * fired[invites].mean()
        if invites.any()
        else None,
        'rate_controls': 100.0 * fired[~invites].mean()
        if (~invites).any()
        else None,
        'kl': mean_first_token_kl(base_logp, logp),
        'degenerate': float(
          np.mean([is_degenerate(o, **self.degenerate_rule) for o in outs])
        ),
        'examples': [
          {'prompt': texts[i], 'output': outs[i][:400]}
          for i in _example_indices(invites)
        ],
        'seconds': time.perf_counter() - start,
      }
      if progress:
        progress(
          f'{prompt_set.behavior} {label}: rate {record["rate"]:.1f}% kl {record["kl"]:.3f}'
        )
      return record

    result = {
      'behavior': prompt_set.behavior,
      'detector': detector,
      'n_prompts': len(prompts),
      'n_invites': int(invites.sum()),
      'baseline': evaluate(self.lora, 'baseline'),
      'directions': {},
    }
    for name, delta in directions.items():
      scale, cal_kl = self.calibrate(delta, control_prompts, base_logp)
      logging.info(
        '%s: %s scale %.4g (KL %.4f)', prompt_set.behavior, name, scale, cal_kl
      )
      variants = {}
      for alpha in alphas:
        for sign, label in ((1.0, 'toward'), (-1.0, 'away')):
          c = sign * alpha * scale
          rec = evaluate(
            steer.add_scaled(self.lora, delta, c), f'{name} {label} α={alpha}'
          )
          rec.update(alpha=float(alpha), sign=label, coefficient=float(c))
          variants[f'{sign * alpha:+g}'] = rec
      result['directions'][name] = {
        'scale': float(scale),
        'calibration_kl': float(cal_kl),
        'variants': variants,
      }
    return result


def _example_indices(invites: np.ndarray) -> list[int]:
  inv = np.nonzero(invites)[0]
  ctl = np.nonzero(~invites)[0]
  return [int(x) for x in (list(inv[:1]) + list(ctl[:1]))]


def summarize_sweep(
  result: dict,
  atom_names: Sequence[str],
  control_names: Sequence[str],
  *,
  min_shift_pp: float = 30.0,
  control_margin_pp: float = 10.0,
  max_kl: float = 1.0,
  max_degenerate: float = 0.2,
  direction: str = 'either',
) -> dict:
  """Best toward/away rates per atom and the verdict against controls.

  Returns:
    {"baseline": {"rate", "alpha": 0}, "best_toward": {"rate", "alpha",
    "atom"}, "best_away": {...}, "verdicts": {atom: steering_verdict}} where
    "best" only considers variants whose guards are sane; "alpha" is the
    signed coefficient in units of the calibrated step (θ − α·s·v).
  """
  base = result['baseline']['rate']

  def sweep_of(name):
    return {
      float(k): {
        'rate': v['rate'],
        'kl': v['kl'],
        'degenerate': v['degenerate'],
      }
      for k, v in result['directions'][name]['variants'].items()
    }

  controls = [sweep_of(n) for n in control_names if n in result['directions']]
  best_toward = {'rate': base, 'alpha': 0.0, 'atom': None}
  best_away = {'rate': base, 'alpha': 0.0, 'atom': None}
  verdicts = {}
  for name in atom_names:
    if name not in result['directions']:
      continue
    sweep = sweep_of(name)
    verdicts[name] = behaviors.steering_verdict(
      sweep,
      controls,
      baseline_rate=base,
      min_shift_pp=min_shift_pp,
      control_margin_pp=control_margin_pp,
      max_kl=max_kl,
      max_degenerate=max_degenerate,
      direction=direction,
    )
    # "toward"/"away" = the variant that most raises/lowers the behaviour,
    # whichever sign of c did it (atom signs are arbitrary).
    for c, rec in sweep.items():
      if rec['kl'] > max_kl or rec['degenerate'] > max_degenerate:
        continue
      if rec['rate'] > best_toward['rate']:
        best_toward = {'rate': rec['rate'], 'alpha': c, 'atom': name}
      if rec['rate'] < best_away['rate']:
        best_away = {'rate': rec['rate'], 'alpha': c, 'atom': name}
  return {
    'baseline': {'rate': base, 'alpha': 0.0},
    'best_toward': best_toward,
    'best_away': best_away,
    'verdicts': verdicts,
  }
