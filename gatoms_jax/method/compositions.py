"""What atoms add over clusters: documents that teach several task types.

A k-means cluster gives each document one unit; a dictionary gives it a
sparse set of atoms. For a document that teaches two task types at once
(e.g. a yes/no verdict as a bulleted list), the question is whether its units
name BOTH. The same code reads atoms and k-means clusters:

- a unit's label is the majority task type among its top documents, where a
  document votes for every task type it teaches (purity = the winner's votes
  / the number of top documents); a unit is labelled when purity ≥ the
  threshold. One label per unit, so a cluster can match at most one of a
  compositional document's two types;
- a compositional document's labels are recovered when every one of them is
  the label of some unit in its support (its non-zero atoms, or its cluster);
- the chance control (`wrong_type_named`): how often the support names one
  of the document's types together with a type it does NOT teach. Denser
  codes name more types of either kind, so a recovery rate means something
  only well above this control.

Labels are evaluation-only: nothing here feeds back into the method.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

import numpy as np


def unit_labels(
  summaries: Sequence[Mapping[str, Any]],
  label_sets: Mapping[Any, Sequence[str]],
  purity_threshold: float = 0.8,
) -> dict[int, str | None]:
  """{unit id: its majority task type, or None when below the threshold}.

  Args:
    summaries: atom (or cluster) summaries with `atom` and `top_doc_ids`.
    label_sets: document id → the task types it teaches.
    purity_threshold: smallest winning share of the top documents.
  """
  out: dict[int, str | None] = {}
  for s in summaries:
    top = list(s['top_doc_ids'])
    votes = collections.Counter(
      part for doc in top for part in label_sets.get(doc, ())
    )
    label = None
    if top and votes:
      best, count = min(votes.items(), key=lambda kv: (-kv[1], kv[0]))
      if count / len(top) >= purity_threshold:
        label = best
    out[int(s['atom'])] = label
  return out


def both_labels_recovered(
  supports: Sequence[Sequence[int]],
  labels_of_unit: Mapping[int, str | None],
  doc_label_sets: Sequence[Sequence[str]],
) -> float | None:
  """Share of multi-label documents whose every label names a unit in their
  support (None when there is no multi-label document).

  Args:
    supports: per document, the units it uses (atoms with non-zero codes, or
      its one cluster).
    labels_of_unit: `unit_labels`.
    doc_label_sets: per document, the task types it teaches.
  """
  hits = []
  for support, wanted in zip(supports, doc_label_sets):
    if len(wanted) < 2:
      continue
    named = {labels_of_unit.get(int(u)) for u in support} - {None}
    hits.append(set(wanted) <= named)
  return float(np.mean(hits)) if hits else None


def wrong_type_named(
  supports: Sequence[Sequence[int]],
  labels_of_unit: Mapping[int, str | None],
  doc_label_sets: Sequence[Sequence[str]],
) -> float | None:
  """Chance control of `both_labels_recovered`: over multi-label documents,
  their types t and every type c they do not teach (among all documents'
  types), the share of (t, c) pairs with both named by units in the
  document's support (None when there is no multi-label document)."""
  types = sorted({t for s in doc_label_sets for t in s})
  hits = []
  for support, wanted in zip(supports, doc_label_sets):
    if len(wanted) < 2:
      continue
    named = {labels_of_unit.get(int(u)) for u in support} - {None}
    for t in wanted:
      hits += [t in named and c in named for c in types if c not in wanted]
  return float(np.mean(hits)) if hits else None


def atom_supports(codes: np.ndarray) -> list[np.ndarray]:
  """Per row, the atoms with a non-zero code."""
  return [np.flatnonzero(row) for row in np.asarray(codes)]


def mean_active(
  codes: np.ndarray, doc_label_sets: Sequence[Sequence[str]]
) -> dict[str, float | None]:
  """Mean number of non-zero atoms on single- vs multi-label documents."""
  nnz = (np.asarray(codes) != 0).sum(axis=1)
  multi = np.array([len(s) >= 2 for s in doc_label_sets])

  def mean(mask):
    return float(nnz[mask].mean()) if mask.any() else None

  return {'single': mean(~multi), 'compositional': mean(multi)}


def composition_measures(
  codes: np.ndarray,
  cluster_assignments: np.ndarray,
  doc_ids: Sequence[Any],
  doc_label_sets: Sequence[Sequence[str]],
  atom_summaries: Sequence[Mapping[str, Any]],
  cluster_summaries: Sequence[Mapping[str, Any]],
  purity_threshold: float = 0.8,
) -> dict[str, Any]:
  """`both_labels_recovered_fraction` {atoms, kmeans}, its chance control
  `wrong_type_named_fraction` {atoms, kmeans} and `mean_active_atoms`
  {single, compositional}, the same measures for atoms and clusters.

  Args:
    codes: (N, K) sparse codes.
    cluster_assignments: (N,) k-means cluster of each row.
    doc_ids: id of each row.
    doc_label_sets: task types of each row's document.
    atom_summaries, cluster_summaries: `atoms.characterize_atoms` and
      `atoms.kmeans_cluster_summaries` results.
    purity_threshold: as in the atoms' label purity.
  """
  by_id = {d: tuple(s) for d, s in zip(doc_ids, doc_label_sets)}
  atom_labels = unit_labels(atom_summaries, by_id, purity_threshold)
  cluster_labels = unit_labels(cluster_summaries, by_id, purity_threshold)
  clusters = [[int(a)] for a in np.asarray(cluster_assignments)]
  supports = atom_supports(codes)
  return {
    'n_compositional_docs': int(sum(len(s) >= 2 for s in doc_label_sets)),
    'both_labels_recovered_fraction': {
      'atoms': both_labels_recovered(supports, atom_labels, doc_label_sets),
      'kmeans': both_labels_recovered(clusters, cluster_labels, doc_label_sets),
    },
    'wrong_type_named_fraction': {
      'atoms': wrong_type_named(supports, atom_labels, doc_label_sets),
      'kmeans': wrong_type_named(clusters, cluster_labels, doc_label_sets),
    },
    'mean_active_atoms': mean_active(codes, doc_label_sets),
  }


def compositional_examples(
  codes: np.ndarray,
  doc_ids: Sequence[Any],
  doc_label_sets: Sequence[Sequence[str]],
  responses: Sequence[str],
  atom_summaries: Sequence[Mapping[str, Any]],
  n: int = 3,
  purity_threshold: float = 0.8,
  excerpt_chars: int = 200,
) -> list[dict[str, Any]]:
  """A few multi-label documents with their active atoms (largest |code|
  first), each atom with its label and keywords, for the report."""
  by_id = {d: tuple(s) for d, s in zip(doc_ids, doc_label_sets)}
  labels = unit_labels(atom_summaries, by_id, purity_threshold)
  keywords = {
    int(s['atom']): list(s.get('keywords') or [])[:5] for s in atom_summaries
  }
  out = []
  for row, (doc, wanted) in enumerate(zip(doc_ids, doc_label_sets)):
    if len(wanted) < 2:
      continue
    active = np.flatnonzero(codes[row])
    active = active[np.argsort(-np.abs(codes[row][active]), kind='stable')]
    out.append(
      {
        'doc_id': doc,
        'labels': list(wanted),
        'response': responses[row][:excerpt_chars],
        'atoms': [
          {
            'atom': int(a),
            'code': float(codes[row][a]),
            'label': labels.get(int(a)),
            'keywords': keywords.get(int(a), []),
          }
          for a in active[:6]
        ],
      }
    )
    if len(out) == n:
      break
  return out
