"""One function per pipeline stage: read upstream artefacts, write its own.

Each `run_<stage>(ctx)` writes into `ctx.stage_dir(stage)` and returns a small
dict of figures for the manifest. Data flows one way (DESIGN.md):

finetune → gradients (store) → curvature (factors, eigh, correction from the
store) → projection → dictionary → atoms → steering → report

With `curvature.fused` (where exact, see method/fused.py) the gradients
stage also sums the Kronecker factors in its forward/backward and saves them
in gradients/fused_factors/; the curvature stage then only eigendecomposes
and corrects, and writes the same artefacts.
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import ml_collections
import numpy as np
from absl import logging

from gatoms_jax.core import distributed
from gatoms_jax.core.io import read_json, save_npy, write_json
from gatoms_jax.pipeline.context import RunContext


# ---------------------------------------------------------------------------


def run_finetune(ctx: RunContext) -> dict:
  from gatoms_jax.method import finetune

  result = finetune.finetune(
    ctx.config,
    ctx.stage_dir('finetune'),
    model=ctx.model,
    tokenizer=ctx.tokenizer,
    documents=ctx.documents,
  )
  return {
    'heldout_loss_before': result.heldout_loss_before,
    'heldout_loss_after': result.heldout_loss_after,
    'tokens_per_s': result.tokens_per_s,
    # n_docs_read, n_truncated, n_excluded, per_label (report.md shows them).
    **result.data_stats,
    'n_shapes': result.n_shapes,
  }


def _batches(ctx: RunContext, docs, tokens_per_batch: int, max_rows: int):
  """Token-budget batches (`batching.token_batches`) of docs."""
  from gatoms_jax.core.data import batching

  multiple = ctx.config.data.bucket_multiple
  return list(
    batching.token_batches(
      docs,
      tokens_per_batch,
      max_rows=max_rows,
      min_length=multiple,
      multiple=multiple,
      max_length=ctx.config.data.max_length,
    )
  )


_FUSED_DIR = 'fused_factors'  # in the gradients stage's directory


def _fused_plan(ctx: RunContext) -> tuple[bool, str]:
  """Whether the gradients stage's one pass also gives the factors."""
  from gatoms_jax.method import fused

  c = ctx.config.curvature
  return fused.fused_applies(
    enabled=c.get('fused', False),
    fisher=c.fisher,
    token_scope=c.token_scope,
    max_docs=c.max_docs,
    n_docs=len(ctx.train_docs),
    compute_dtype=ctx.config.gradients.compute_dtype,
    model_dtype=ctx.config.model.dtype,
  )


def run_curvature(ctx: RunContext) -> dict:
  """EK-FAC at the fine-tuned adapter: Kronecker factors, their sharded
  eigendecomposition, and the eigenvalue correction streamed from the
  gradient store (Λ = E[(Q_Sᵀ G Q_A)²] over every training document)."""
  from gatoms_jax.method import curvature

  c = ctx.config.curvature
  mdef, base, _ = ctx.split_model
  docs = ctx.train_docs
  if c.max_docs and c.max_docs < len(docs):
    rng = np.random.default_rng(c.sample_seed)
    docs = [
      docs[i] for i in sorted(rng.choice(len(docs), c.max_docs, replace=False))
    ]
  fused_dir = os.path.join(ctx.stage_dir('gradients'), _FUSED_DIR)
  fused, reason = _fused_plan(ctx)
  if fused and not os.path.exists(os.path.join(fused_dir, 'factors.json')):
    fused, reason = False, 'the gradients stage saved no fused factors'
  logging.info('curvature factors: %s', reason)
  batches = []
  if fused:  # summed in the gradients stage's forward/backward
    factors = curvature.Factors.load(fused_dir)
  else:
    batches = _batches(ctx, docs, c.tokens_per_batch, c.batch_size)
    factors = curvature.fit_factors(
      mdef,
      base,
      ctx.finetuned_lora,
      batches,
      fisher=c.fisher,
      token_scope=c.token_scope,
      seed=c.sample_seed,
      n_batches=len(batches),
    )
  factors = curvature.eigendecompose(factors)
  store = ctx.store
  chunk_size = ctx.config.gradients.chunk_size
  factors = curvature.correct_eigenvalues(
    factors,
    store.iter_chunks(chunk_size),
    store.layout,
    n_chunks=-(-store.n_rows // chunk_size),
  )
  factors.save(ctx.stage_dir('curvature'))
  return {
    'n_docs': len(docs),
    'n_tokens': factors.n_tokens,
    'n_modules': len(factors.modules),
    'fused_factor_pass': fused,
    'n_shapes': len({b.tokens.shape for b in batches}),
  }


def run_gradients(ctx: RunContext) -> dict:
  """Per-document gradients of the training docs into a GradientStore."""
  from gatoms_jax.core.models import lora as lora_lib
  from gatoms_jax.method import fused as fused_lib
  from gatoms_jax.method import gradients as grads
  from gatoms_jax.core.store import GradientStore, layout_from_tree

  c = ctx.config.gradients
  mdef, base, _ = ctx.split_model
  lora = ctx.finetuned_lora
  mdef = lora_lib.with_layer_execution(
    mdef, base, lora, scan_layers=c.scan_layers
  )
  open_store = functools.partial(
    GradientStore.open_or_create,
    os.path.join(ctx.stage_dir('gradients'), 'store'),
    layout_from_tree(lora),
    storage_dtype=c.storage_dtype,
    metadata={
      'model': ctx.model_path,
      'lora_targets': list(ctx.lora_config.targets),
      'lora_rank': ctx.lora_config.rank,
      'loss': 'summed assistant-token cross-entropy',
    },
  )
  # The writer creates (or resumes) the store; the others then open it.
  store = open_store() if distributed.is_writer() else None
  distributed.barrier('gradients:store')
  store = store or open_store()
  fused, reason = _fused_plan(ctx)
  fused_dir = os.path.join(ctx.stage_dir('gradients'), _FUSED_DIR)
  if distributed.is_writer():  # never reuse factors of an earlier run
    shutil.rmtree(fused_dir, ignore_errors=True)
  make_extractor = (
    fused_lib.FusedExtractor if fused else grads.GradientExtractor
  )
  extractor = make_extractor(
    mdef,
    base,
    lora,
    compute_dtype=c.compute_dtype,
    tokens_per_slab=c.tokens_per_slab,
    ladder_steps=c.ladder_steps,
  )
  stats = grads.extract_to_store(
    extractor,
    ctx.train_docs,
    store,
    batch_size=c.batch_size,
    chunk_size=c.chunk_size,
    bucket_multiple=ctx.config.data.bucket_multiple,
  )
  # A resumed extraction summed only the documents of this run: then the
  # curvature stage runs its own factor pass.
  fused = fused and stats['n_resumed'] == 0 and extractor.n_docs > 0
  if fused:
    extractor.factors().save(fused_dir)
  stats['fused_factors'] = fused
  distributed.barrier('gradients:written')
  ctx.__dict__.pop('store', None)  # reopen to see the new chunks
  stats.update(
    n_rows=ctx.store.n_rows,
    dim=ctx.store.dim,
    n_skipped=len(ctx.store.skipped),
    n_shapes=extractor.n_compiled_shapes,
  )
  return stats


def run_projection(ctx: RunContext) -> dict:
  """G = the stored gradients in the corrected eigenbasis, top-k, whitened."""
  from gatoms_jax.method import curvature, projection

  c = ctx.config.projection
  store = ctx.store
  factors = curvature.Factors.load(ctx.stage_dir('curvature'))
  n_chunks = -(-store.n_rows // ctx.config.gradients.chunk_size)
  out = ctx.stage_dir('projection')
  spec = projection.make_spec(
    factors,
    store.layout,
    top_k=c.top_k,
    select_by=c.select_by,
    scale_by=c.scale_by,
    epsilon=c.epsilon,
  )
  spec.save(out)
  ids, G = projection.project_chunks(
    spec, store.iter_chunks(ctx.config.gradients.chunk_size), n_chunks=n_chunks
  )
  save_npy(os.path.join(out, 'projected.npy'), G)
  write_json(os.path.join(out, 'ids.json'), ids)
  return {'n_rows': len(ids), 'k_total': spec.k_total}


def run_dictionary(ctx: RunContext) -> dict:
  """Row-normalised projected gradients → dictionary D and codes A."""
  from gatoms_jax.method import dictionary

  G = ctx.load_npy('projection', 'projected.npy')
  norms = np.linalg.norm(G, axis=1, keepdims=True)
  X = (G / np.maximum(norms, 1e-30)).astype(np.float32)
  c = ctx.config.dictionary
  n_atoms = min(c.n_atoms, X.shape[0])
  if n_atoms < c.n_atoms:
    logging.warning(
      'only %d rows: using %d atoms, not %d', X.shape[0], n_atoms, c.n_atoms
    )
  cfg = ml_collections.ConfigDict(c.to_dict())
  cfg.n_atoms = n_atoms
  result = dictionary.learn_dictionary_from_config(X, cfg)
  out = ctx.stage_dir('dictionary')
  result.save(out)
  nnz = (result.codes != 0).sum(axis=1)
  return {
    'objective': result.objective,
    'mean_nnz': float(nnz.mean()),
    'n_atoms': n_atoms,
    'compile_seconds': result.compile_seconds,
    'docs_per_atom': float((result.codes != 0).sum(axis=0).mean()),
  }


def run_atoms(ctx: RunContext) -> dict:
  """Atom summaries (coherence, keywords, purity) + the k-means baseline."""
  from gatoms_jax.method import atoms

  c = ctx.config.atoms
  ids = read_json(os.path.join(ctx.stage_dir('projection'), 'ids.json'))
  codes = ctx.load_npy('dictionary', 'codes.npy')
  responses = ctx.responses(ids)
  labels = ctx.labels(ids)
  store = ctx.store
  kw = dict(
    top_n=c.top_n,
    n_keywords=c.n_keywords,
    excerpt_chars=c.excerpt_chars,
    purity_threshold=c.purity_threshold,
    keyword_min_docs=c.keyword_min_docs,
  )
  summaries = atoms.characterize_atoms(
    codes,
    ids,
    responses,
    labels,
    mean_pairwise_cosine=store.mean_pairwise_cosine,
    **kw,
  )
  out = ctx.stage_dir('atoms')
  atoms.save_atom_summaries(os.path.join(out, 'atoms.json'), summaries)

  # Baseline: k-means with K clusters on the same (row-normalised) projected
  # gradients, each cluster read like an atom.
  G = ctx.load_npy('projection', 'projected.npy')
  X = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-30)
  k = c.kmeans_k or min(codes.shape[1], X.shape[0])
  km = atoms.kmeans(
    X,
    k,
    n_iter=c.kmeans_n_iter,
    n_init=c.kmeans_n_init,
    seed=c.kmeans_seed,
    metric=c.kmeans_metric,
  )
  clusters = atoms.kmeans_cluster_summaries(
    km.assignments,
    X,
    labels,
    store.mean_pairwise_cosine,
    doc_ids=ids,
    responses=responses,
    metric=c.kmeans_metric,
    **kw,
  )
  atoms.save_atom_summaries(os.path.join(out, 'kmeans.json'), clusters)
  # Every row's cluster, for the explorer's atom <-> cluster overlaps.
  save_npy(os.path.join(out, 'kmeans_assignments.npy'), km.assignments)
  result = {'n_atoms': len(summaries), 'n_kmeans_clusters': k}
  if labels is not None:
    n_values, recovered = atoms.label_recovery(
      summaries, c.report_top, c.purity_threshold
    )
    _, km_recovered = atoms.label_recovery(
      clusters, c.report_top, c.purity_threshold
    )
    _, pure_anywhere = atoms.label_recovery(
      summaries, len(summaries), c.purity_threshold
    )
    agreement, per_label = atoms.knn_label_agreement(X, labels, k=c.knn_k)
    result.update(
      n_label_values=n_values,
      n_label_values_recovered=len(recovered),
      recovered=sorted(recovered),
      kmeans_n_label_values_recovered=len(km_recovered),
      kmeans_recovered=sorted(km_recovered),
      # Any atom, not only the top report_top by coherence.
      n_label_values_with_pure_atom=len(pure_anywhere),
      # Representation check before any dictionary: label agreement of the
      # 10 nearest projected gradients (chance ≈ 1 / n_label_values).
      knn10_label_agreement=agreement,
      knn10_label_agreement_per_label=per_label,
    )
    label_sets = ctx.label_sets(ids)
    if any(len(s) >= 2 for s in label_sets):
      from gatoms_jax.method import compositions

      single = {s[0] for s in label_sets if len(s) == 1}
      result.update(
        # Recovery of the single-task types only, comparable with mixtures
        # without compositional documents.
        n_single_label_values=len(single),
        n_single_label_values_recovered=len(set(recovered) & single),
        kmeans_n_single_label_values_recovered=len(set(km_recovered) & single),
        **compositions.composition_measures(
          codes,
          km.assignments,
          ids,
          label_sets,
          summaries,
          clusters,
          c.purity_threshold,
        ),
        compositional_examples=compositions.compositional_examples(
          codes, ids, label_sets, responses, summaries
        ),
      )
  coherences = [s['coherence'] for s in summaries if s['coherence'] is not None]
  result.update(
    n_coherence_above_0_5=int(sum(x > 0.5 for x in coherences)),
    n_coherence_above_0_1=int(sum(x > 0.1 for x in coherences)),
  )
  write_json(os.path.join(out, 'summary.json'), result)
  return result


# Steering keys that only judge finished sweeps (the verdict): changing them
# re-summarises the saved per-behaviour sweeps instead of regenerating them.
_VERDICT_KEYS = (
  'min_shift_pp',
  'control_margin_pp',
  'max_kl',
  'max_degenerate_increase',
  'shift_direction',
  'significance',
  'side_effects',
  'compose',
)


def _sweep_key(config) -> str:
  """Hash of what a behaviour's sweep depends on (for resuming the stage)."""
  import hashlib

  from gatoms_jax.pipeline.manifest import stage_keys, stage_values

  values = stage_values(config, 'steering')['steering']
  values = {k: v for k, v in values.items() if k not in _VERDICT_KEYS}
  blob = json.dumps(
    {'upstream': stage_keys(config)['atoms'], 'steering': values},
    sort_keys=True,
    default=str,
  )
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _unmatched_groups(active, matched, chosen, n_groups, coherence):
  """Atom groups for the unmatched-atom nulls of one behaviour.

  Each group has as many atoms as the behaviour's chosen set (so a composed
  direction is compared with a composed null), drawn from the active atoms the
  matcher did not rank for this behaviour, those of coherence closest to the
  chosen atoms' mean first.
  """
  if not n_groups or not chosen:
    return []
  target = float(np.mean([coherence.get(a, 0.0) for a in chosen]))
  pool = [s['atom'] for s in active if s['atom'] not in set(matched)]
  pool.sort(key=lambda a: (abs(coherence.get(a, 0.0) - target), a))
  size = len(chosen)
  groups = [pool[i * size : (i + 1) * size] for i in range(n_groups)]
  return [g for g in groups if len(g) == size]


def _ceiling_vector(projected, responses, behavior: str):
  """Supervised direction in the projected space: the mean whitened
  projected gradient of training documents whose responses fire the
  behaviour's detector minus the mean over the rest (no labels used).
  None when either group is empty."""
  from gatoms_jax.method.steering import behaviors

  detect = behaviors.get_detector(behavior)
  fired = np.array([bool(detect(r)) for r in responses])
  if fired.all() or not fired.any():
    logging.info(
      'steering %s: no ceiling (detector fires on %d of %d docs)',
      behavior,
      int(fired.sum()),
      fired.size,
    )
    return None
  return projected[fired].mean(axis=0) - projected[~fired].mean(axis=0)


def _steer_composition(c, runner, sets, results, steered, directions) -> dict:
  """Steers several behaviours at once with the unit-norm sum of their atom
  directions; the outcome is every detector firing on the same answer."""
  import jax

  from gatoms_jax.method.steering import directions as steer, sweep

  names = list(c.compose)
  atom_dirs = [
    steered[b][next(iter(results[b]['summary']['verdicts']))] for b in names
  ]
  total = jax.tree.map(lambda *xs: sum(xs), *atom_dirs)
  norm = steer.tree_norm(total)
  composed = jax.tree.map(lambda x: x / norm, total)
  controls = {
    f'random{s}': directions.random(c.control_seed + s)
    for s in range(c.n_random_controls)
  }
  prompt_set = sweep.composition_prompt_set(sets, names)
  detect = sweep.joint_detector(names)
  res = runner.sweep(
    prompt_set,
    detect,
    {'composed': composed, **controls},
    list(c.kl_levels),
    progress=logging.info,
  )
  res['held_out'] = sweep.held_out_verdicts(
    res,
    ['composed'],
    list(controls),
    min_shift_pp=c.min_shift_pp,
    control_margin_pp=c.control_margin_pp,
    max_kl=c.max_kl,
    max_degenerate_increase=c.max_degenerate_increase,
    detector=detect,
  )
  for verdict in res['held_out'].values():
    if verdict is not None:
      p = verdict['p_value']
      verdict['steers'] = bool(
        verdict['rules_hold'] and p is not None and p < c.significance
      )
  return {'behaviors': names, 'result': res}


def run_steering(ctx: RunContext) -> dict:
  """Behaviour sweeps for automatically matched atoms and random controls.

  Each behaviour's sweep is saved as soon as it is done (with the stage key),
  so a killed stage resumes at the first unfinished behaviour.
  """
  from gatoms_jax.method import atoms, projection
  from gatoms_jax.method.steering import behaviors, directions as steer, sweep
  from gatoms_jax.core.models.generate import Generator

  c = ctx.config.steering
  ids = read_json(os.path.join(ctx.stage_dir('projection'), 'ids.json'))
  summaries = atoms.load_atom_summaries(
    os.path.join(ctx.stage_dir('atoms'), 'atoms.json')
  )
  spec = projection.ProjectionSpec.load(ctx.stage_dir('projection'))
  D = ctx.load_npy('dictionary', 'dictionary.npy')
  codes = ctx.load_npy('dictionary', 'codes.npy')
  lora = ctx.finetuned_lora
  mdef, base, _ = ctx.split_model
  directions = steer.AtomDirections(
    spec, D, lora, codes=codes, mode=c.unproject, top_n=ctx.config.atoms.top_n
  )
  # Atom ↔ behaviour matching without labels: detectors on the atoms' top
  # training responses (ties broken by coherence).
  active = [s for s in summaries if s['n_active'] >= c.min_active_docs]
  responses = ctx.responses(ids)
  top_responses = atoms.atom_top_responses(active, ids, responses)
  # Read once for every behaviour's ceiling.
  projected = ctx.load_npy('projection', 'projected.npy') if c.ceiling else None
  coherence = {s['atom']: s['coherence'] for s in active}
  matches = behaviors.match_atoms_to_behaviors(
    top_responses, list(c.behaviors), tiebreak=coherence
  )
  gen = Generator(
    mdef,
    base,
    eos_ids=ctx.eos_ids,
    batch_size=c.batch_size,
    max_rows=c.max_rows,
    min_bucket=c.min_prompt_bucket,
    tokens_per_batch=c.tokens_per_batch,
  )
  runner = sweep.SweepRunner(
    gen,
    ctx.tokenizer,
    lora,
    max_new_tokens=c.max_new_tokens,
    kl_tokens=c.kl_tokens,
    degenerate_rule=behaviors.degeneracy_rule(c),
  )
  sets = behaviors.load_prompt_sets(
    list(c.behaviors), c.prompts_path, limit=c.prompts_per_behavior
  )
  out = ctx.stage_dir('steering')
  partial_dir = os.path.join(out, 'behaviors')
  os.makedirs(partial_dir, exist_ok=True)
  key = _sweep_key(ctx.config)
  results, table, steered = {}, {}, {}
  # The random controls are the same directions for every behaviour, so the
  # previous behaviour's coefficients start their calibration near the answer.
  control_hints: dict = {}
  for name in c.behaviors:
    partial = os.path.join(partial_dir, f'{name}.json')
    saved = read_json(partial) if os.path.exists(partial) else None
    if c.atoms:
      chosen = [int(a) for a in c.atoms]
    else:
      chosen = [a for a, score in matches[name][: c.atoms_per_behavior]]
    if c.combine == 'sum' and len(chosen) > 1:
      # One direction per behaviour: the matched atoms composed.
      dirs = {'atom' + '+'.join(map(str, chosen)): directions.combined(chosen)}
    else:
      dirs = {f'atom{a}': directions.delta(a) for a in chosen}
    controls = {
      f'random{s}': directions.random(c.control_seed + s)
      for s in range(c.n_random_controls)
    }
    matched = [a for a, _ in matches[name][: max(5, c.atoms_per_behavior)]]
    for u, group in enumerate(
      _unmatched_groups(
        active, matched, chosen, c.n_unmatched_controls, coherence
      )
    ):
      controls[f'unmatched{u}'] = directions.combined(group)
    ceiling = {}
    if c.ceiling:
      vector = _ceiling_vector(projected, responses, name)
      if vector is not None:
        ceiling['ceiling'] = directions.from_vector(vector)
    if saved and saved.get('key') == key:
      logging.info('steering %s: done in an earlier run, reused', name)
      res = saved['result']
    else:
      res = runner.sweep(
        sets[name],
        name,
        {**dirs, **controls, **ceiling},
        list(c.kl_levels),
        initial_coefficients=control_hints,
        progress=logging.info,
      )
      res['matched_atoms'] = [
        {'atom': a, 'score': s, 'coherence': coherence.get(a)}
        for a, s in matches[name][: max(5, c.atoms_per_behavior)]
      ]
      write_json(partial, {'key': key, 'result': res})
    rules = dict(
      min_shift_pp=c.min_shift_pp,
      control_margin_pp=c.control_margin_pp,
      max_kl=c.max_kl,
      max_degenerate_increase=c.max_degenerate_increase,
    )
    res['summary'] = sweep.summarize_sweep(
      res,
      list(dirs),
      list(controls),
      direction=c.shift_direction,
      **rules,
    )
    res['summary']['held_out'] = sweep.held_out_verdicts(
      res,
      list(dirs),
      list(controls),
      ceiling_name='ceiling' if ceiling else None,
      **rules,
    )
    control_hints = sweep.coefficients_of(
      res, [n for n in controls if n.startswith('random')]
    )
    results[name] = res
    steered[name] = {**dirs, **controls, **ceiling}
    table[name] = {
      k: res['summary'][k] for k in ('baseline', 'best_toward', 'best_away')
    }
  sweep.apply_holm(
    {n: r['summary']['held_out'] for n, r in results.items()},
    alpha=c.significance,
  )
  if c.side_effects:
    side = sweep.side_effects(runner, sets, results, steered)
    write_json(os.path.join(out, 'side_effects.json'), side)
  if c.compose and all(b in results for b in c.compose):
    composed = _steer_composition(c, runner, sets, results, steered, directions)
    write_json(os.path.join(out, 'composition.json'), composed)
  sweep.save_sweeps(out, results)
  return {'steering': table, 'n_shapes': len(gen.shapes_seen)}


def run_report(ctx: RunContext) -> dict:
  """report.md, summary.json, figures and explorer.html from the artefacts."""
  from gatoms_jax.pipeline import explorer, report

  result = report.write_report(ctx.run_dir, ctx.config)
  # The explorer shows the documents' text, read again through the data
  # config; if that fails (a moved file) the page keeps ids and codes.
  try:
    documents = ctx.documents
  except (OSError, ValueError) as e:
    logging.warning('explorer without document text: %s', e)
    documents = None
  # config.json is written after the last stage, so pass the config here.
  config = json.loads(json.dumps(ctx.config.to_dict(), default=str))
  explorer.write_explorer(ctx.run_dir, documents, config=config)
  return result


STAGE_FUNCTIONS = {
  'finetune': run_finetune,
  'curvature': run_curvature,
  'gradients': run_gradients,
  'projection': run_projection,
  'dictionary': run_dictionary,
  'atoms': run_atoms,
  'steering': run_steering,
  'report': run_report,
}
