"""Explains model outputs with a finished run's artefacts (not a stage).

Reads finetune/adapter, projection/{projection.*, projected.npy, ids.json},
dictionary/{dictionary,codes}.npy and atoms/{atoms.json,
kmeans_assignments.npy}; computes each query's gradient with the same
extractor as the gradients stage, projects and codes it
(`gatoms_jax.method.explain`), and ranks the training documents through its
atoms and, as the reference, by exact influence over all N.

With `--queries=heldout` it also writes explain/explained_heldout.json, which
the report's "Explaining held-out answers" section reads.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Optional, Sequence

import numpy as np
from absl import logging

from gatoms_jax.core.io import read_json, write_json
from gatoms_jax.method import explain as explain_lib
from gatoms_jax.pipeline.context import RunContext

HELDOUT_FILE = 'explained_heldout.json'
_EXCERPT = 160


def _excerpt(text: str, n: int = _EXCERPT) -> str:
  text = ' '.join(text.split())
  return text if len(text) <= n else text[: n - 1] + '…'


def _finite(values) -> list:
  return [v for v in values if v is not None and np.isfinite(v)]


def _mean(values) -> Optional[float]:
  values = _finite(values)
  return float(np.mean(values)) if values else None


def _median(values) -> Optional[float]:
  values = _finite(values)
  return float(np.median(values)) if values else None


class Explainer:
  """A finished run's artefacts, loaded once, and the query pipeline."""

  def __init__(self, ctx: RunContext):
    from gatoms_jax.method import atoms, projection

    for stage in ('finetune', 'projection', 'dictionary', 'atoms'):
      if not os.path.exists(
        os.path.join(ctx.stage_dir(stage), 'manifest.json')
      ):
        raise FileNotFoundError(
          f'{ctx.stage_dir(stage)}: stage {stage!r} is not complete; run '
          'the pipeline up to the atoms stage first'
        )
    self.ctx = ctx
    self.config = ctx.config
    self.spec = projection.ProjectionSpec.load(ctx.stage_dir('projection'))
    self.ids = read_json(os.path.join(ctx.stage_dir('projection'), 'ids.json'))
    self.X = explain_lib.normalize_rows(
      ctx.load_npy('projection', 'projected.npy')
    )
    self.D = ctx.load_npy('dictionary', 'dictionary.npy')
    self.codes = ctx.load_npy('dictionary', 'codes.npy')
    self.gram = self.D @ self.D.T
    self.index = explain_lib.build_index(self.codes)
    summaries = atoms.load_atom_summaries(
      os.path.join(ctx.stage_dir('atoms'), 'atoms.json')
    )
    self.atoms = {s['atom']: s for s in summaries}
    self.kmeans = ctx.load_npy('atoms', 'kmeans_assignments.npy')
    self.labels = ctx.labels(self.ids)
    self.responses = ctx.responses(self.ids)

  @functools.cached_property
  def _extractor(self):
    from gatoms_jax.method import gradients

    mdef, base, _ = self.ctx.split_model
    return gradients.GradientExtractor(
      mdef,
      base,
      self.ctx.finetuned_lora,
      compute_dtype=self.config.gradients.compute_dtype,
      bucket_multiple=self.config.data.bucket_multiple,
    )

  def project(self, tokenized: Sequence[Any]) -> np.ndarray:
    """(n, k_total) projected gradients of tokenised queries."""
    from gatoms_jax.method import projection

    rows = self._extractor.gradients(tokenized)
    return projection.Projector(self.spec)(rows)

  def code(self, projected: np.ndarray) -> np.ndarray:
    c = self.config.dictionary
    return explain_lib.code_queries(
      projected, self.D, c.alpha, method=c.coder,
      max_iter=c.coder_max_iter, tol=c.coder_tol,
    )  # fmt: skip

  def _doc(self, row: int, score: float) -> dict:
    return {
      'doc_id': self.ids[row],
      'score': float(score),
      'label': self.labels[row] if self.labels else None,
      'excerpt': _excerpt(self.responses[row]),
    }

  def _atom(self, atom: int, weight: float) -> dict:
    s = self.atoms.get(atom, {})
    return {
      'atom': atom,
      'weight': weight,
      'coherence': s.get('coherence'),
      'keywords': s.get('keywords', [])[:6],
      'majority_label': s.get('majority_label'),
      'purity': s.get('purity'),
      'n_active': s.get('n_active'),
    }

  def explain(
    self, queries: Sequence[dict], tokenized: Sequence[Any]
  ) -> tuple[dict, list[dict]]:
    """Explains tokenised queries; returns (metrics, one dict per query).

    Args:
      queries: per query {'id', 'prompt', 'response', 'label'}.
      tokenized: the same queries as `TokenizedDoc`s.
    """
    c = self.config.explain
    k = c.k
    budget = c.budget or None
    start = time.perf_counter()
    x = explain_lib.normalize_rows(self.project(tokenized))
    gradient_s = time.perf_counter() - start
    start = time.perf_counter()
    a = self.code(x)
    coding_ms = (time.perf_counter() - start) * 1e3 / max(len(x), 1)
    out, atoms_ms, exact_ms = [], [], []
    agree = {'atoms': [], 'exact': [], 'kmeans': []}
    recall10, recall100, spearman = [], [], []
    for q, xq, aq in zip(queries, x, a):
      t0 = time.perf_counter()
      routed = explain_lib.rank_by_atoms(
        self.index, aq, k, gram=self.gram, budget=budget, block=c.block
      )
      t1 = time.perf_counter()
      exact = explain_lib.rank_exact(self.X, xq, max(k, 100))
      t2 = time.perf_counter()
      atoms_ms.append((t1 - t0) * 1e3)
      exact_ms.append((t2 - t1) * 1e3)
      # Recall@100 and Spearman need 100 routed documents (not timed).
      routed100 = explain_lib.rank_by_atoms(
        self.index, aq, 100, gram=self.gram, budget=budget and budget * 10,
        block=c.block,
      )  # fmt: skip
      exact_scores = self.X @ xq
      recall10.append(explain_lib.recall_at(routed.docs, exact.docs, 10))
      recall100.append(explain_lib.recall_at(routed100.docs, exact.docs, 100))
      spearman.append(
        explain_lib.spearman_on_union(
          routed100.docs, routed100.scores, exact_scores
        )
      )
      kmeans_docs = explain_lib.kmeans_route(self.X, self.kmeans, xq, k)
      if self.labels and q.get('label') is not None:
        for name, docs in (
          ('atoms', routed.docs[:10]),
          ('exact', exact.docs[:10]),
          ('kmeans', kmeans_docs[:10]),
        ):
          agree[name].append(
            explain_lib.label_agreement(docs, self.labels, q['label'])
          )
      out.append(
        {
          'query_id': q.get('id'),
          'prompt': _excerpt(q['prompt']),
          'response': _excerpt(q['response']),
          'label': q.get('label'),
          'top_atoms': [
            self._atom(j, w)
            for j, w in explain_lib.top_atoms(aq, c.n_atoms_shown)
          ],
          'atoms_top_docs': [
            self._doc(d, s) for d, s in zip(routed.docs, routed.scores)
          ],
          'exact_top_docs': [
            self._doc(d, s) for d, s in zip(exact.docs[:k], exact.scores)
          ],
          'certified': routed.certified,
          'n_scored': routed.n_scored,
        }
      )
    metrics = {
      'n_queries': len(out),
      'n_docs': len(self.ids),
      'atoms_top10_label_agreement': _mean(agree['atoms']),
      'exact_top10_label_agreement': _mean(agree['exact']),
      'kmeans_top10_label_agreement': _mean(agree['kmeans']),
      'recall_at_10': _mean(recall10),
      'recall_at_100': _mean(recall100),
      'spearman': _mean(spearman),
      'atoms_ms_per_query': _median(atoms_ms),
      'exact_ms_per_query': _median(exact_ms),
      'coding_ms_per_query': coding_ms,
      'gradient_s_per_query': gradient_s / max(len(out), 1),
      'certified_fraction': _mean([q['certified'] for q in out]),
      'mean_query_nnz': float((a != 0).sum(axis=1).mean()) if len(a) else None,
      'atoms_bytes_per_doc': self.index.bytes_per_doc,
      'exact_bytes_per_doc': int(self.X.shape[1] * 4),
    }
    return metrics, out


# ---------------------------------------------------------------------------
# Queries.


def heldout_queries(ctx: RunContext) -> tuple[list[dict], list[Any]]:
  """The run's held-out documents (the fine-tune's split) as queries."""
  from gatoms_jax.core import loading

  _, heldout = loading.prepare_data(ctx.config, ctx.tokenizer, ctx.documents)
  queries = []
  for t in heldout:
    doc = ctx.doc_by_id[t.doc_id]
    queries.append(
      {
        'id': t.doc_id,
        'prompt': doc.user_text,
        'response': doc.assistant_text,
        'label': doc.label,
      }
    )
  return queries, heldout


def _tokenize(ctx: RunContext, docs) -> list[Any]:
  from gatoms_jax.core import data as data_lib

  tokenized, stats = data_lib.tokenize_documents(
    docs, ctx.tokenizer, int(ctx.config.data.max_length)
  )
  if stats.no_target_ids:
    raise ValueError(f'queries without response tokens: {stats.no_target_ids}')
  return tokenized


def pair_queries(
  ctx: RunContext, pairs: Sequence[dict]
) -> tuple[list[dict], list[Any]]:
  """Queries from {'prompt', 'response'[, 'id', 'label']} dicts."""
  from gatoms_jax.core.data import documents

  docs, queries = [], []
  for i, p in enumerate(pairs):
    for key in ('prompt', 'response'):
      if not isinstance(p.get(key), str) or not p[key]:
        raise ValueError(f'query {i}: needs a non-empty string "{key}"')
    qid = str(p.get('id', f'query{i}'))
    docs.append(
      documents.Document(
        doc_id=qid,
        messages=documents.make_messages(
          [('user', p['prompt']), ('assistant', p['response'])]
        ),
        label=p.get('label'),
      )
    )
    queries.append({**p, 'id': qid, 'label': p.get('label')})
  return queries, _tokenize(ctx, docs)


def file_queries(ctx: RunContext, path: str) -> tuple[list[dict], list[Any]]:
  """Queries from a JSONL file of {"prompt", "response"} records."""
  pairs = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          pairs.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}:{n}: not JSON ({e})') from e
  if not pairs:
    raise ValueError(f'{path}: no queries')
  return pair_queries(ctx, pairs)


def generate_response(ctx: RunContext, prompt: str) -> str:
  """The fine-tuned model's greedy answer to a prompt."""
  from gatoms_jax.core.data import tokenize
  from gatoms_jax.core.models import generate

  mdef, base, _ = ctx.split_model
  ids = tokenize.prompt_tokens(ctx.tokenizer, prompt).tolist()
  out = generate.generate(
    mdef,
    base,
    ctx.finetuned_lora,
    [ids],
    max_new_tokens=ctx.config.explain.max_new_tokens,
    eos_ids=ctx.eos_ids,
    progress=False,
  )[0]
  return ctx.tokenizer.decode(out, skip_special_tokens=True)


def _report_queries(explained: list[dict], n: int) -> list[dict]:
  """n queries of distinct labels where possible (the first of each)."""
  picked, labels = [], set()
  for q in explained:
    if len(picked) < n and q.get('label') not in labels:
      picked.append(q)
      labels.add(q.get('label'))
  for q in explained:
    if len(picked) >= n:
      break
    if q not in picked:
      picked.append(q)
  return picked


def run_explain(
  config: Any,
  queries: str = 'heldout',
  prompt: Optional[str] = None,
) -> dict:
  """Explains held-out documents, a JSONL file of queries, or one prompt.

  Args:
    config: the finished run's resolved config.
    queries: 'heldout' or a .jsonl path of {"prompt", "response"} records.
    prompt: if given, the fine-tuned model answers it and that answer is
      explained (`queries` is ignored).

  Returns:
    {'metrics': ..., 'queries': [...]} (one explanation per query).
  """
  ctx = RunContext(config)
  explainer = Explainer(ctx)
  if prompt is not None:
    response = generate_response(ctx, prompt)
    logging.info('generated: %r', response)
    if not response:
      raise ValueError(
        'the model generated an empty answer: nothing to explain'
      )
    qs, tokenized = pair_queries(
      ctx, [{'prompt': prompt, 'response': response, 'id': 'prompt'}]
    )
  elif queries == 'heldout':
    qs, tokenized = heldout_queries(ctx)
  else:
    qs, tokenized = file_queries(ctx, queries)
  if not qs:
    raise ValueError('no queries to explain (no held-out documents?)')
  metrics, explained = explainer.explain(qs, tokenized)
  result = {'metrics': metrics, 'queries': explained}
  if prompt is None and queries == 'heldout':
    write_json(
      os.path.join(ctx.run_dir, 'explain', HELDOUT_FILE),
      {
        'metrics': metrics,
        'queries': _report_queries(explained, config.explain.report_queries),
      },
    )
  return result


# ---------------------------------------------------------------------------
# The report section (reads explain/explained_heldout.json only).


def _fmt(x, digits=2) -> str:
  return '–' if x is None else f'{x:.{digits}f}'


def heldout_section(run_dir: str) -> list[str]:
  """Markdown lines of "Explaining held-out answers" ([] without the file)."""
  path = os.path.join(run_dir, 'explain', HELDOUT_FILE)
  if not os.path.exists(path):
    return []
  data = read_json(path)
  m = data['metrics']
  lines = [
    '## Explaining held-out answers',
    '',
    'Each held-out document is a query: its response-token gradient is '
    'projected and sparse-coded against the dictionary, and the training '
    'documents are ranked through its atoms (score = Σ_j a_qj·a_dj over its '
    'atoms, read from per-atom lists under a budget of list entries) and, '
    'as the reference, by exact influence ⟨x_q, x_d⟩ over all documents in '
    'the whitened projected space (`python -m experiments.explain '
    '--queries=heldout`).',
    '',
    f'- queries: {m["n_queries"]}; training documents: {m["n_docs"]}',
    f'- top-10 label agreement: atoms {_fmt(m["atoms_top10_label_agreement"])}, '
    f"exact {_fmt(m['exact_top10_label_agreement'])}, the query's k-means "
    f'cluster {_fmt(m["kmeans_top10_label_agreement"])}',
    f'- atom route vs exact: recall@10 {_fmt(m["recall_at_10"])}, recall@100 '
    f'{_fmt(m["recall_at_100"])}, Spearman on the union '
    f'{_fmt(m["spearman"])}; top 10 certified by the stop bound: '
    f'{_fmt(m["certified_fraction"])}',
    f'- per query: atom route {_fmt(m["atoms_ms_per_query"], 3)} ms, exact '
    f'{_fmt(m["exact_ms_per_query"], 3)} ms (median); bytes kept per document '
    f'{_fmt(m["atoms_bytes_per_doc"], 0)} vs {m["exact_bytes_per_doc"]}',
    '',
  ]
  for q in data['queries']:
    label = f' [{q["label"]}]' if q.get('label') is not None else ''
    lines += [
      f'**{q["query_id"]}**{label}: {q["prompt"]} → {q["response"]}',
      '',
    ]
    lines += ['| atom | weight | coherence | majority label | keywords |']
    lines += ['|---:|---:|---:|---|---|']
    for a in q['top_atoms']:
      lines.append(
        f'| {a["atom"]} | {a["weight"]:+.3f} | {_fmt(a["coherence"])} | '
        f'{a["majority_label"] or "–"} | {", ".join(a["keywords"])} |'
      )
    lines += [
      '',
      '| rank | via atoms | via exact influence |',
      '|---:|---|---|',
    ]
    routed, exact = q['atoms_top_docs'][:5], q['exact_top_docs'][:5]
    for r in range(max(len(routed), len(exact))):
      cells = []
      for docs in (routed, exact):
        if r < len(docs):
          d = docs[r]
          tag = f' [{d["label"]}]' if d.get('label') is not None else ''
          text = d['excerpt'][:80].replace('|', '\\|')
          cells.append(f'{d["doc_id"]}{tag}: {text}')
        else:
          cells.append('–')
      lines.append(f'| {r + 1} | {cells[0]} | {cells[1]} |')
    lines.append('')
  return lines
