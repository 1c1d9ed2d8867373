"""Steering sweeps: generate with θ − c·v for atoms and random controls.

For one behaviour (a detector and its prompt set) and a set of directions
(unit-norm LoRA trees: atom deltas and random-direction controls):

1. baseline: greedy answers of the unsteered adapter to every prompt;
2. calibration: steps are set by their EFFECT, not their raw norm. For every
   direction v, sign ("toward": θ − c·v with c > 0, a descent step on the
   atom's documents; "away": c < 0) and KL level L, c is found such that the
   per-token KL(unsteered ‖ steered) along the unsteered model's own answers
   to the control prompts (`Generator.sequence_kl`) equals L. Every atom
   variant thus has random-direction controls of exactly the same
   disruption, at each level and sign. KL grows roughly like c², so secant
   steps in log-log space find c in 2–4 rounds, all variants in one batch;
3. the sweep: all variants generated in stacked batches
   (`Generator.generate_variants`). Per variant: the detection rate over all
   prompts, over inviting prompts and over controls, the KL actually reached
   and the fraction of degenerate (looping) outputs.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence, TypedDict

import numpy as np

from gatoms_jax.core import io as io_lib
from gatoms_jax.method.steering import behaviors, directions as steer, stats
from gatoms_jax.method.text import is_degenerate

PyTree = Any
SWEEPS_FILE = 'sweeps.json'


class SweepResult(TypedDict, total=False):
  """One behaviour's sweep (`SweepRunner.run`), with the verdicts the
  steering stage adds under "summary" (`summarize_sweep`, and
  `held_out_verdicts` under summary["held_out"])."""

  behavior: str
  prompts: list[str]
  invites: list[bool]
  n_prompts: int
  n_invites: int
  baseline: dict
  directions: dict[str, dict]
  seconds: float
  summary: dict


def save_sweeps(directory: str, results: Mapping[str, SweepResult]) -> None:
  """Writes {behaviour: SweepResult} to `directory`/sweeps.json (atomic)."""
  io_lib.write_json(os.path.join(directory, SWEEPS_FILE), dict(results))


def load_sweeps(directory: str) -> dict[str, SweepResult]:
  """{behaviour: SweepResult} of a steering stage directory; {} when it has
  no sweeps (the stage did not run)."""
  return io_lib.read_json(os.path.join(directory, SWEEPS_FILE), {}) or {}


def calibrate_scales(
  kl_of: Callable[[Sequence[float], Sequence[int]], np.ndarray],
  targets: Sequence[float],
  *,
  initial: float | Sequence[float] = 1.0,
  rel_tol: float = 0.1,
  max_evals: int = 8,
) -> tuple[np.ndarray, np.ndarray, list]:
  """Finds, per direction j, the scale s_j whose KL is `targets[j]`.

  Secant iterations on log KL = a + b·log s (b = 2 until two points are
  known, then the measured slope clipped to [0.5, 4]); jumps are capped at
  ×/÷100, a direction with KL 0 grows ×100 and a non-finite KL shrinks ÷10.
  A direction that does not converge in `max_evals` keeps its best point.

  Args:
    kl_of: (scales, direction indices) → KL at those scales, one per index.
    targets: the KL wanted for each direction.
    initial: first scale tried, one for all or one per direction.
    rel_tol: stop once |log(KL / target)| < rel_tol.
    max_evals: evaluations per direction at most.

  Returns:
    (scales, KL at each scale, per direction the [(scale, KL), ...] tried).
  """
  targets = np.asarray(targets, np.float64)
  n = len(targets)
  scale = np.broadcast_to(np.asarray(initial, np.float64), (n,)).copy()
  if not np.all(np.isfinite(scale) & (scale > 0)):
    raise ValueError(f'initial scales must be finite and > 0, got {initial}')
  prev: list[Optional[tuple[float, float]]] = [None] * n
  todo = list(range(n))
  history: list[list[tuple[float, float]]] = [[] for _ in range(n)]
  for _ in range(max_evals):
    if not todo:
      break
    measured = np.asarray(kl_of([scale[j] for j in todo], todo), np.float64)
    nxt = []
    for j, value in zip(todo, measured):
      history[j].append((float(scale[j]), float(value)))
      if np.isfinite(value) and value > 0:
        if abs(math.log(value / targets[j])) < rel_tol:
          continue
        slope = 2.0
        if prev[j] is not None:
          s0, k0 = prev[j]
          if k0 > 0 and np.isfinite(k0) and s0 != scale[j] and k0 != value:
            slope = math.log(value / k0) / math.log(scale[j] / s0)
            slope = min(max(slope, 0.5), 4.0)
        prev[j] = (scale[j], value)
        factor = (targets[j] / value) ** (1.0 / slope)
        scale[j] *= min(max(factor, 0.01), 100.0)
      elif np.isfinite(value):  # KL 0: the step changes nothing yet
        scale[j] *= 100.0
      else:
        scale[j] /= 10.0
      nxt.append(j)
    todo = nxt
  best_scale, best_kl = np.empty(n), np.empty(n)
  for j, tried in enumerate(history):

    def miss(point, j=j):
      k = point[1]
      return abs(math.log(k / targets[j])) if np.isfinite(k) and k > 0 else 1e9

    best_scale[j], best_kl[j] = min(tried, key=miss)
  return best_scale, best_kl, history


class SweepRunner:
  """Runs steering sweeps for one model + adapter.

  Args:
    generator: a `gatoms_jax.core.models.generate.Generator`.
    tokenizer: the chat tokenizer (prompt formatting and decoding).
    lora: the unsteered LoRA tree.
    max_new_tokens: tokens generated per prompt.
    kl_tokens: answer positions per control prompt scored by the KL.
    degenerate_rule: kwargs of `text.is_degenerate`.
    prompt_formatter: text → prompt token ids (default: the chat template).
  """

  def __init__(
    self,
    generator: Any,
    tokenizer: Any,
    lora: PyTree,
    *,
    max_new_tokens: int = 128,
    kl_tokens: int = 32,
    degenerate_rule: Optional[dict] = None,
    prompt_formatter: Optional[Callable[[str], list[int]]] = None,
  ):
    self.gen = generator
    self.tokenizer = tokenizer
    self.lora = lora
    self.max_new_tokens = max_new_tokens
    self.kl_tokens = kl_tokens
    self.degenerate_rule = degenerate_rule or {}
    self._format = prompt_formatter or self._chat_prompt

  def _chat_prompt(self, text: str) -> list[int]:
    from gatoms_jax.core.data.tokenize import prompt_tokens

    return list(prompt_tokens(self.tokenizer, text))

  def _decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)

  def _generate(self, loras, prompts):
    return self.gen.generate_variants(
      loras, prompts, max_new_tokens=self.max_new_tokens
    )

  def _control_kl(self, loras, controls, answers) -> np.ndarray:
    """Mean per-token KL to the unsteered adapter over the control prompts."""
    kl = self.gen.sequence_kl(
      self.lora, loras, controls, answers, n_tokens=self.kl_tokens
    )
    return kl.mean(axis=1)

  def sweep(
    self,
    prompt_set: behaviors.PromptSet,
    detector: str | behaviors.Detector,
    directions: Mapping[str, PyTree],
    kl_levels: Sequence[float],
    *,
    initial_coefficients: Optional[Mapping[str, Mapping[str, float]]] = None,
    progress: Optional[Callable[[str], None]] = None,
  ) -> dict:
    """Baseline + every direction × {toward, away} × KL level.

    Args:
      prompt_set: the behaviour's prompts (inviting ones and controls).
      detector: a behaviour name or a detector function.
      directions: name → unit-norm LoRA delta.
      kl_levels: per-token KL targets (nats) of the steps.
      initial_coefficients: optional first guesses of the calibration,
        direction name → {variant key ("+0.4", "-0.8"): c}, e.g. the
        coefficients `coefficients_of` read from an earlier sweep of the
        same direction (fewer calibration rounds; the result is calibrated
        all the same).
      progress: called with one line per finished variant.

    Returns:
      {"behavior", "prompts", "invites", "n_prompts", "n_invites",
      "baseline": record, "directions": {name: {"variants": {"+L" / "-L":
      record}}}, "seconds"}; a record has rate, rate_invites, rate_controls
      (percent), kl, degenerate and every output; a variant record also has
      sign ("toward" / "away"), kl_level, coefficient c (θ − c·v) and its
      calibration history [(c, KL), ...].
    """
    start = time.perf_counter()
    texts = list(prompt_set.texts)
    invites = np.array([p.invites for p in prompt_set.prompts])
    prompts = [self._format(t) for t in texts]
    control_idx = [i for i, inv in enumerate(invites) if not inv] or list(
      range(len(prompts))
    )
    controls = [prompts[i] for i in control_idx]
    detect = behaviors.get_detector(detector)

    def record(ids, kl):
      outs = [self._decode(o) for o in ids]
      fired = np.array([bool(detect(o)) for o in outs])
      pct = lambda m: 100.0 * fired[m].mean() if m.any() else None
      return {
        'rate': 100.0 * fired.mean(),
        'rate_invites': pct(invites),
        'rate_controls': pct(~invites),
        'kl': float(kl),
        'degenerate': float(
          np.mean([is_degenerate(o, **self.degenerate_rule) for o in outs])
        ),
        'outputs': outs,
      }

    base_ids = self._generate([self.lora], prompts)[0]
    answers = [base_ids[i] for i in control_idx]
    result = {
      'behavior': prompt_set.behavior,
      'prompts': texts,
      'invites': invites.tolist(),
      'n_prompts': len(prompts),
      'n_invites': int(invites.sum()),
      'baseline': record(base_ids, 0.0),
      'directions': {name: {'variants': {}} for name in directions},
    }
    if progress:
      progress(
        f'{prompt_set.behavior} baseline: {result["baseline"]["rate"]:.1f}%'
      )

    # (name, sign, level): sign +1 is toward (θ − c·v, c > 0).
    variants = [
      (name, sign, float(level))
      for name in directions
      for sign in (1.0, -1.0)
      for level in kl_levels
    ]

    def kl_of(scales, idx):
      loras = [
        steer.add_scaled(
          self.lora, directions[variants[j][0]], variants[j][1] * c
        )
        for c, j in zip(scales, idx)
      ]
      return self._control_kl(loras, controls, answers)

    hints = initial_coefficients or {}
    initial = [
      abs(hints.get(name, {}).get(f'{sign * level:+g}', 0.0)) or 1.0
      for name, sign, level in variants
    ]
    scales, reached, history = calibrate_scales(
      kl_of, [level for _, _, level in variants], initial=initial
    )
    loras = [
      steer.add_scaled(self.lora, directions[name], sign * c)
      for (name, sign, _), c in zip(variants, scales)
    ]
    ids = self._generate(loras, prompts)
    for j, ((name, sign, level), out) in enumerate(zip(variants, ids)):
      rec = record(out, reached[j])
      rec.update(
        sign='toward' if sign > 0 else 'away',
        kl_level=level,
        coefficient=float(sign * scales[j]),
        calibration=[(sign * c, k) for c, k in history[j]],
      )
      result['directions'][name]['variants'][f'{sign * level:+g}'] = rec
      if progress:
        progress(
          f'{prompt_set.behavior} {name} {rec["sign"]} KL {level:g}: '
          f'rate {rec["rate"]:.1f}% (c = {rec["coefficient"]:+.3g}, KL '
          f'{rec["kl"]:.3f}, degenerate {rec["degenerate"]:.2f})'
        )
    result['seconds'] = time.perf_counter() - start
    return result


def coefficients_of(result: dict, names: Sequence[str]) -> dict:
  """{direction name: {variant key: calibrated c}} of a sweep result."""
  return {
    name: {
      key: float(v['coefficient'])
      for key, v in result['directions'][name]['variants'].items()
    }
    for name in names
    if name in result['directions']
  }


def summarize_sweep(
  result: dict,
  atom_names: Sequence[str],
  control_names: Sequence[str],
  *,
  min_shift_pp: float = 30.0,
  control_margin_pp: float = 10.0,
  max_kl: float = 1.0,
  max_degenerate_increase: float = 0.2,
  direction: str = 'either',
) -> dict:
  """Best toward/away rates of the atoms and their verdicts against controls.

  Variants are keyed by signed KL level, so `behaviors.steering_verdict`
  compares each atom variant with the random controls calibrated to the
  same KL (either sign).

  Returns:
    {"baseline": {"rate", "alpha": 0}, "best_toward": {"rate", "alpha",
    "kl_level", "atom"}, "best_away": {...}, "max_degenerate", "verdicts":
    {atom: steering_verdict}}: "best_toward" / "best_away" is the atom
    variant, among those whose guards hold, that most raises / lowers the
    rate (whichever sign did it: atom signs are arbitrary); "alpha" is its
    coefficient c (θ − c·v, v unit-norm).
  """
  base = result['baseline']['rate']
  max_degenerate = result['baseline']['degenerate'] + max_degenerate_increase

  def sweep_of(name):
    return {
      float(k): v for k, v in result['directions'][name]['variants'].items()
    }

  controls = [sweep_of(n) for n in control_names if n in result['directions']]
  best_toward = {'rate': base, 'alpha': 0.0, 'kl_level': 0.0, 'atom': None}
  best_away = dict(best_toward)
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
    for level, rec in sweep.items():
      if rec['kl'] > max_kl or rec['degenerate'] > max_degenerate:
        continue
      best = {
        'rate': rec['rate'],
        'alpha': rec['coefficient'],
        'kl_level': level,
        'atom': name,
      }
      if rec['rate'] > best_toward['rate']:
        best_toward = best
      if rec['rate'] < best_away['rate']:
        best_away = best
  return {
    'baseline': {'rate': base, 'alpha': 0.0},
    'best_toward': best_toward,
    'best_away': best_away,
    'max_degenerate': max_degenerate,
    'verdicts': verdicts,
  }


def _fired(record: Mapping, detect) -> np.ndarray:
  return np.array([bool(detect(o)) for o in record['outputs']])


def _pick_on_selection(
  candidates: Mapping[str, Mapping[float, Mapping]],
  base: np.ndarray,
  nulls: Sequence[Mapping[float, Mapping]],
  fired,
  sel: np.ndarray,
  sign: float,
  guard,
):
  """(name, key) of the guarded variant with the largest margin over the
  strongest null on the selection half (ties: smaller KL level). Variants
  that move the rate the asked way come first: a variant that moves it the
  other way only "beats" nulls that moved it further still."""
  best, best_score = None, (False, -math.inf)
  for name, sweep in candidates.items():
    for key, rec in sorted(sweep.items(), key=lambda kv: abs(kv[0])):
      if not guard(rec):
        continue
      effect = sign * 100.0 * (fired(rec)[sel].mean() - base[sel].mean())
      null_effects = [
        sign * 100.0 * (fired(n[k])[sel].mean() - base[sel].mean())
        for n in nulls
        for k in n
        if math.isclose(abs(k), abs(key))
      ]
      score = (effect > 0, effect - max(null_effects, default=0.0))
      if score > best_score:
        best, best_score = (name, key), score
  return best


def held_out_verdicts(
  result: dict,
  atom_names: Sequence[str],
  null_names: Sequence[str],
  *,
  ceiling_name: Optional[str] = None,
  min_shift_pp: float = 30.0,
  control_margin_pp: float = 10.0,
  max_kl: float = 1.0,
  max_degenerate_increase: float = 0.2,
  detector: Optional[behaviors.Detector] = None,
) -> dict:
  """Select on one half of the prompts, test on the other, per direction.

  For "toward" (raise the detector's rate) and "away" (lower it): the atom
  variant (atom, sign, KL level) within the guards whose shift from the
  baseline most exceeds the strongest null at the same KL level is chosen on
  the selection half (`stats.split_halves`); on the test half it is compared,
  prompt by prompt, with the strongest null at that level (the null with the
  largest same-direction shift on the test half: the conservative choice) by
  an exact McNemar test. `steers` here is provisional: the caller applies the
  Holm correction over behaviours (`apply_holm`).

  Args:
    result: a `SweepRunner.sweep` result (with every variant's outputs).
    atom_names: the atom directions of the sweep.
    null_names: the null directions (random directions, unmatched atoms).
    ceiling_name: a supervised direction swept like the atoms, or None.
    min_shift_pp, control_margin_pp, max_kl, max_degenerate_increase: the
      verdict's rules (see `behaviors.steering_verdict`).
    detector: the detector of the outcome (default: the sweep's behaviour's).

  Returns:
    {"toward" / "away": {"atom", "kl_level", "coefficient", "n_test",
    "rate", "rate_ci95", "baseline_rate", "shift_pp", "shift_ci95",
    "control", "control_shift_pp", "p_value", "ceiling_shift_pp",
    "fraction_of_ceiling", "guards_hold", "rules_hold"}} (None for a
    direction without a guarded variant).
  """
  detect = detector or behaviors.get_detector(result['behavior'])
  cache: dict[int, np.ndarray] = {}

  def fired(rec):
    if id(rec) not in cache:
      cache[id(rec)] = _fired(rec, detect)
    return cache[id(rec)]

  def sweep_of(name):
    return {
      float(k): v for k, v in result['directions'][name]['variants'].items()
    }

  base = fired(result['baseline'])
  sel, test = stats.split_halves(result['invites'])
  max_degenerate = result['baseline']['degenerate'] + max_degenerate_increase

  def guard(rec):
    return rec['kl'] <= max_kl and rec['degenerate'] <= max_degenerate

  atoms = {n: sweep_of(n) for n in atom_names if n in result['directions']}
  nulls = {n: sweep_of(n) for n in null_names if n in result['directions']}
  ceiling = None
  if ceiling_name and ceiling_name in result['directions']:
    ceiling = sweep_of(ceiling_name)
  base_rate = 100.0 * base[test].mean() if test.size else None
  out = {}
  for direction, sign in (('toward', 1.0), ('away', -1.0)):
    pick = _pick_on_selection(
      atoms, base, list(nulls.values()), fired, sel, sign, guard
    )
    if pick is None or not test.size:
      out[direction] = None
      continue
    name, key = pick
    rec = atoms[name][key]
    f = fired(rec)[test]
    shift = 100.0 * (f.mean() - base[test].mean())
    strongest, strongest_effect = None, -math.inf
    for null_name, sweep in nulls.items():
      for k, null_rec in sweep.items():
        if not math.isclose(abs(k), abs(key)):
          continue
        effect = (
          sign * 100.0 * (fired(null_rec)[test].mean() - base[test].mean())
        )
        if effect > strongest_effect:
          strongest, strongest_effect = (null_name, k), effect
    if strongest is not None:
      null_fired = fired(nulls[strongest[0]][strongest[1]])[test]
      p_value = stats.mcnemar_exact(f, null_fired)
      control_shift = sign * strongest_effect
    else:
      p_value, control_shift = None, None
    ceiling_shift = None
    if ceiling is not None:
      c_pick = _pick_on_selection(
        {ceiling_name: ceiling}, base, [], fired, sel, sign, guard
      )
      if c_pick is not None:
        c_rec = ceiling[c_pick[1]]
        ceiling_shift = 100.0 * (fired(c_rec)[test].mean() - base[test].mean())
    effect = sign * shift
    rules_hold = effect >= min_shift_pp and (
      control_shift is not None
      and effect - sign * control_shift >= control_margin_pp
    )
    out[direction] = {
      'atom': name,
      'kl_level': abs(key),
      'coefficient': float(rec['coefficient']),
      'n_test': int(test.size),
      'rate': 100.0 * f.mean(),
      'rate_ci95': stats.wilson_interval(int(f.sum()), int(f.size)),
      'baseline_rate': base_rate,
      'shift_pp': shift,
      'shift_ci95': stats.paired_shift_interval(f, base[test]),
      'control': None if strongest is None else strongest[0],
      'control_shift_pp': control_shift,
      'p_value': p_value,
      'ceiling_shift_pp': ceiling_shift,
      'fraction_of_ceiling': (
        shift / ceiling_shift
        if ceiling_shift not in (None, 0.0) and sign * ceiling_shift > 0
        else None
      ),
      'guards_hold': True,
      'rules_hold': bool(rules_hold),
    }
  return out


def apply_holm(held_out: Mapping[str, dict], alpha: float = 0.05) -> None:
  """Holm-corrects the held-out p-values over behaviours, per direction, and
  sets each verdict's `p_holm` and `steers` (in place).

  Args:
    held_out: behaviour → `held_out_verdicts` result.
    alpha: family-wise error rate.
  """
  for direction in ('toward', 'away'):
    family = {
      b: (v[direction] or {}).get('p_value') for b, v in held_out.items()
    }
    adjusted = stats.holm(family)
    for b, v in held_out.items():
      verdict = v[direction]
      if verdict is None:
        continue
      verdict['p_holm'] = adjusted.get(b)
      verdict['steers'] = bool(
        verdict['rules_hold']
        and verdict['p_holm'] is not None
        and verdict['p_holm'] < alpha
      )


def side_effects(
  runner: SweepRunner,
  prompt_sets: Mapping[str, behaviors.PromptSet],
  results: Mapping[str, dict],
  directions: Mapping[str, Mapping[str, PyTree]],
) -> dict:
  """What steering one behaviour does to the others.

  Each behaviour's held-out toward/away variant (its atom direction and
  calibrated coefficient) is applied to every behaviour's prompts, and that
  behaviour's detector rate is compared with its unsteered rate on the same
  prompts.

  Args:
    runner: the sweep runner (generator, tokenizer, unsteered adapter).
    prompt_sets: behaviour → its prompts.
    results: behaviour → sweep result with `summary.held_out`.
    directions: behaviour → {direction name: unit-norm LoRA delta}.

  Returns:
    {"rows": {steered behaviour: {"toward" / "away": {measured behaviour:
    {"rate", "baseline_rate", "shift_pp"}}}}, "seconds"}.
  """
  start = time.perf_counter()
  variants = []  # (steered behaviour, toward/away, adapter)
  for name, res in results.items():
    for direction, verdict in res['summary']['held_out'].items():
      if verdict is None:
        continue
      delta = directions[name][verdict['atom']]
      lora = steer.add_scaled(runner.lora, delta, verdict['coefficient'])
      variants.append((name, direction, lora))
  rows: dict = {}
  for measured, res in results.items():
    detect = behaviors.get_detector(measured)
    prompts = [runner._format(t) for t in prompt_sets[measured].texts]
    base = _fired(res['baseline'], detect)
    outputs = runner._generate([v[2] for v in variants], prompts)
    for (name, direction, _), ids in zip(variants, outputs):
      fired = np.array([bool(detect(runner._decode(o))) for o in ids])
      rows.setdefault(name, {}).setdefault(direction, {})[measured] = {
        'rate': 100.0 * fired.mean(),
        'baseline_rate': 100.0 * base.mean(),
        'shift_pp': 100.0 * (fired.mean() - base.mean()),
      }
  return {'rows': rows, 'seconds': time.perf_counter() - start}


def joint_detector(names: Sequence[str]) -> behaviors.Detector:
  """Fires when every named behaviour's detector fires on the same answer."""
  detectors = [behaviors.get_detector(n) for n in names]
  return lambda text: all(d(text) for d in detectors)


def composition_prompt_set(
  prompt_sets: Mapping[str, behaviors.PromptSet], names: Sequence[str]
) -> behaviors.PromptSet:
  """Prompts for steering several behaviours at once: the behaviours'
  inviting prompts taken in turn (as many as the first set has), then the
  first set's controls."""
  inviting = [list(prompt_sets[n].inviting) for n in names]
  n_inviting = len(inviting[0])
  taken: list[str] = []
  for i in range(max(len(x) for x in inviting)):
    for texts in inviting:
      if i < len(texts) and len(taken) < n_inviting:
        taken.append(texts[i])
  prompts = [behaviors.Prompt(t, True) for t in taken]
  prompts += [
    behaviors.Prompt(t, False) for t in prompt_sets[names[0]].controls
  ]
  return behaviors.PromptSet('+'.join(names), tuple(prompts))
