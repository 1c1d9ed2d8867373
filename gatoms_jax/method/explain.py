"""Explaining one model output through the atoms: query → atoms → documents.

A query (prompt + response) gets the training documents' treatment: its
summed response-token loss gradient (`gradients.GradientExtractor`), the run's
projection (`projection.Projector`), row normalisation, and a lasso code `a_q`
against the dictionary (`lasso.sparse_encode`, the dictionary stage's coder).
Its active atoms name the behaviours it uses; the training documents are
ranked through them,

  score(d) = Σ_{j : a_qj ≠ 0} a_qj · a_dj,

ties broken by the reconstruction inner product ⟨Dᵀa_q, Dᵀa_d⟩ = (G a_q)·a_d
(G = D Dᵀ). The reference is exact influence in the same whitened, projected,
row-normalised space: ⟨x_q, x_d⟩ over all N documents (EK-FAC influence
restricted to the kept eigencomponents, per unit gradient norm).

Why the atom route costs (almost) nothing in N: the index keeps, per atom, its
documents sorted by code value (an inverted index), and the documents' sparse
codes (CSR). `rank_by_atoms` reads the lists of the query's atoms from the top
in blocks (Fagin's threshold algorithm): each document met is scored exactly
from its code, and reading stops as soon as the k-th best score is at least a
bound on every unread document's score. The bound is the smallest of (i) the
sum of the `max_nnz` largest per-list caps a_qj·v_j (v_j the next unread value
of list j; a document has at most `max_nnz` atoms), and (ii) the largest code
norm times ‖a_q‖ over the lists not yet exhausted (Cauchy–Schwarz). When the
codes' top values are dense (large N, many documents near each atom's largest
coefficient), the bound falls slowly and a certified stop can need a depth that
grows with N; a `budget` of list entries caps the work at a size independent
of N, and the result says whether its top k is `certified` (equal to the
exhaustive atom ranking's top k) or not.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Optional, Sequence

import numpy as np

from gatoms_jax.method import lasso


# ---------------------------------------------------------------------------
# The index.


@dataclasses.dataclass(frozen=True)
class AtomIndex:
  """Sparse codes (by document) and per-atom posting lists.

  Attributes:
    n_docs, n_atoms: N and K.
    doc_atoms: int32[N, W] each document's non-zero atoms, W = the most of
      any document (padded with atom 0 and value 0, which adds nothing).
    doc_values: float32[N, W] their values.
    pos_ptr, pos_docs, pos_values: per atom, the documents with a positive
      code, largest first (CSR by atom).
    neg_ptr, neg_docs, neg_values: per atom, the documents with a negative
      code, most negative first.
    max_nnz: W.
    max_norm: largest ‖a_d‖₂.
    scratch: int64[2, N] per-query marks (which documents a query has met),
      reset by an epoch counter, so a query touches only what it reads; one
      query at a time per index.
  """

  n_docs: int
  n_atoms: int
  doc_atoms: np.ndarray
  doc_values: np.ndarray
  pos_ptr: np.ndarray
  pos_docs: np.ndarray
  pos_values: np.ndarray
  neg_ptr: np.ndarray
  neg_docs: np.ndarray
  neg_values: np.ndarray
  max_nnz: int
  max_norm: float
  scratch: np.ndarray

  @property
  def bytes_per_doc(self) -> float:
    """Bytes kept per document: codes by document and by atom, marks."""
    arrays = (
      self.doc_atoms, self.doc_values, self.pos_ptr, self.pos_docs,
      self.pos_values, self.neg_ptr, self.neg_docs, self.neg_values,
      self.scratch,
    )  # fmt: skip
    return sum(a.nbytes for a in arrays) / max(self.n_docs, 1)

  def dense_codes(self, docs: np.ndarray) -> np.ndarray:
    """(len(docs), K) dense codes of some documents."""
    docs = np.asarray(docs, np.int64)
    out = np.zeros((len(docs), self.n_atoms), np.float32)
    rows = np.repeat(np.arange(len(docs)), self.max_nnz)
    np.add.at(
      out,
      (rows, self.doc_atoms[docs].reshape(-1)),
      self.doc_values[docs].reshape(-1),
    )
    return out


def _postings(atoms, docs, values, n_atoms, descending: bool):
  key = -values if descending else values
  order = np.lexsort((docs, key, atoms))  # by atom, then value, then doc
  ptr = np.zeros(n_atoms + 1, np.int64)
  np.add.at(ptr, atoms.astype(np.int64) + 1, 1)
  return (
    np.cumsum(ptr),
    docs[order].astype(np.int32),
    values[order].astype(np.float32),
  )


def index_from_csr(
  doc_ptr: np.ndarray,
  doc_atoms: np.ndarray,
  doc_values: np.ndarray,
  n_atoms: int,
) -> AtomIndex:
  """Builds an `AtomIndex` from codes in CSR form (rows = documents).

  Raises:
    ValueError: inconsistent arrays or atoms outside [0, n_atoms).
  """
  doc_ptr = np.asarray(doc_ptr, np.int64)
  doc_atoms = np.asarray(doc_atoms, np.int32)
  doc_values = np.asarray(doc_values, np.float32)
  if doc_ptr.ndim != 1 or doc_ptr[0] != 0 or doc_ptr[-1] != len(doc_atoms):
    raise ValueError('doc_ptr must start at 0 and end at len(doc_atoms)')
  if len(doc_atoms) != len(doc_values):
    raise ValueError('doc_atoms and doc_values differ in length')
  if len(doc_atoms) and (doc_atoms.min() < 0 or doc_atoms.max() >= n_atoms):
    raise ValueError(f'atoms must lie in [0, {n_atoms})')
  n_docs = len(doc_ptr) - 1
  counts = np.diff(doc_ptr)
  width = max(int(counts.max()) if n_docs else 0, 1)
  docs = np.repeat(np.arange(n_docs, dtype=np.int32), counts)
  slot = np.arange(len(doc_atoms)) - np.repeat(doc_ptr[:-1], counts)
  padded_atoms = np.zeros((n_docs, width), np.int32)
  padded_values = np.zeros((n_docs, width), np.float32)
  padded_atoms[docs, slot] = doc_atoms
  padded_values[docs, slot] = doc_values
  norms = np.sqrt((padded_values.astype(np.float64) ** 2).sum(axis=1))
  pos, neg = doc_values > 0, doc_values < 0
  return AtomIndex(
    n_docs,
    int(n_atoms),
    padded_atoms,
    padded_values,
    *_postings(doc_atoms[pos], docs[pos], doc_values[pos], n_atoms, True),
    *_postings(doc_atoms[neg], docs[neg], doc_values[neg], n_atoms, False),
    max_nnz=width,
    max_norm=float(norms.max()) if n_docs else 0.0,
    scratch=np.zeros((2, n_docs), np.int64),
  )


def build_index(codes: np.ndarray) -> AtomIndex:
  """Builds an `AtomIndex` from dense (N, K) codes (zeros are left out)."""
  codes = np.asarray(codes, np.float32)
  if codes.ndim != 2:
    raise ValueError(f'codes must be (N, K), got shape {codes.shape}')
  rows, atoms = np.nonzero(codes)
  ptr = np.zeros(codes.shape[0] + 1, np.int64)
  np.add.at(ptr, rows + 1, 1)
  return index_from_csr(
    np.cumsum(ptr), atoms, codes[rows, atoms], codes.shape[1]
  )


def atom_scores(
  index: AtomIndex, query_code: np.ndarray, docs: np.ndarray
) -> np.ndarray:
  """Σ_j a_qj · a_dj of each document in `docs`, from its sparse code."""
  docs = np.asarray(docs, np.int64)
  q = np.asarray(query_code, np.float32)
  return (q[index.doc_atoms[docs]] * index.doc_values[docs]).sum(axis=1)


_EPOCHS = itertools.count(1)  # marks of one query in AtomIndex.scratch


def _unseen(index: AtomIndex, docs: np.ndarray, epoch: int) -> np.ndarray:
  """The distinct documents of `docs` not marked in this epoch; marks them."""
  mark, owner = index.scratch
  docs = docs[mark[docs] != epoch]
  # Distinct without sorting: the last position writing a doc owns it.
  position = np.arange(len(docs))
  owner[docs] = position
  docs = docs[owner[docs] == position]
  mark[docs] = epoch
  return docs


# ---------------------------------------------------------------------------
# Ranking.


@dataclasses.dataclass(frozen=True)
class Ranking:
  """Top documents of one query.

  Attributes:
    docs: int[k'] document rows, best first (k' ≤ k: only documents met).
    scores: float[k'] their scores.
    tiebreak: float[k'] their reconstruction scores (atoms only; else empty).
    certified: True when `docs` equals the exhaustive ranking's top k (the
      stop bound was met, or every list was read).
    n_scored: documents scored.
    n_read: list entries read.
  """

  docs: np.ndarray
  scores: np.ndarray
  tiebreak: np.ndarray
  certified: bool
  n_scored: int
  n_read: int


def _order(scores, tiebreak, k):
  """Best-first positions: score, then tie-break, descending, then index."""
  if len(scores) > 4 * k:
    # Everything that can reach the top k: scores ≥ the k-th best.
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    keep = np.nonzero(scores >= kth)[0]
  else:
    keep = np.arange(len(scores))
  order = np.lexsort((keep, -tiebreak[keep], -scores[keep]))
  return keep[order[:k]]


def rank_by_atoms(
  index: AtomIndex,
  query_code: np.ndarray,
  k: int,
  *,
  gram: Optional[np.ndarray] = None,
  budget: Optional[int] = None,
  block: int = 64,
) -> Ranking:
  """Top-k documents by Σ_j a_qj a_dj over the query's active atoms.

  Threshold algorithm over the posting lists that can raise a score (the
  positive list of an atom with a_qj > 0, the negative list of one with
  a_qj < 0), in rounds of doubling size; see the module docstring for the
  stop bound. Only documents met in these lists are ranked (the
  others share no positively aligned atom with the query).

  Args:
    index: the training documents' `AtomIndex`.
    query_code: (K,) the query's code.
    k: documents wanted.
    gram: (K, K) D Dᵀ for the tie-break ⟨Dᵀa_q, Dᵀa_d⟩; None: no tie-break
      beyond the document index.
    budget: most list entries to read (None: until the bound certifies the
      top k or the lists run out).
    block: entries read from the heaviest list in the first round (lighter
      lists in proportion to |a_qj|); each round doubles.

  Returns:
    A `Ranking`.
  """
  q = np.asarray(query_code, np.float32).reshape(-1)
  if q.shape != (index.n_atoms,):
    raise ValueError(f'query_code must be ({index.n_atoms},), got {q.shape}')
  if k < 1 or block < 1:
    raise ValueError(f'k and block must be >= 1, got {k}, {block}')
  active = np.nonzero(q)[0]
  active = active[np.argsort(-np.abs(q[active]), kind='stable')]
  lists = []  # (weight a_qj, docs, values) of each list that can add > 0
  for j in active:
    if q[j] > 0:
      s, e = index.pos_ptr[j], index.pos_ptr[j + 1]
      lists.append((q[j], index.pos_docs[s:e], index.pos_values[s:e]))
    else:
      s, e = index.neg_ptr[j], index.neg_ptr[j + 1]
      lists.append((q[j], index.neg_docs[s:e], index.neg_values[s:e]))
  weights = np.array([w for w, _, _ in lists], np.float64)
  lengths = np.array([len(d) for _, d, _ in lists], np.int64)
  # Heavier lists are read faster: their caps a_qj·v_j fall the most per
  # entry, and their documents carry most of the score.
  steps = np.maximum(
    1,
    np.round(
      block * np.abs(weights) / max(np.abs(weights).max(initial=0), 1e-30)
    ),
  ).astype(np.int64)
  depth = np.zeros(len(lists), np.int64)
  epoch = next(_EPOCHS)
  seen_docs: list[np.ndarray] = []
  seen_scores: list[np.ndarray] = []
  best = np.zeros(0, np.float32)  # the k best scores so far
  n_read, certified = 0, False
  while True:
    live = depth < lengths
    if not live.any():
      certified = True
      break
    if budget is not None and n_read >= budget:
      break
    take = steps.copy()
    if budget is not None and take[live].sum() > budget - n_read:
      # The last round: the budget left, shared in the same proportions.
      take = np.maximum(1, take * (budget - n_read) // take[live].sum())
    new = [
      lists[i][1][depth[i] : depth[i] + take[i]] for i in np.nonzero(live)[0]
    ]
    n_read += sum(len(x) for x in new)
    depth += take
    # Rounds double in size: few rounds (each has a fixed cost) whether the
    # stop comes early or late.
    steps *= 2
    fresh = _unseen(index, np.concatenate(new).astype(np.int64), epoch)
    if len(fresh):
      scores = atom_scores(index, q, fresh)
      seen_docs.append(fresh)
      seen_scores.append(scores)
      best = np.concatenate([best, scores])
      if len(best) > k:
        best = np.partition(best, len(best) - k)[len(best) - k :]
    if len(best) < k:
      continue
    # Caps a_qj · v_j with v_j the next unread value of list j (0 if done).
    nxt = np.array(
      [v[t] if t < len(v) else 0.0 for (_, _, v), t in zip(lists, depth)],
      np.float64,
    )
    caps = weights * nxt
    top_caps = np.sort(caps)[::-1][: index.max_nnz].sum()
    norm_cap = index.max_norm * np.sqrt(np.sum(weights[caps > 0] ** 2))
    if best.min() >= min(top_caps, norm_cap):
      certified = True
      break
  if not seen_docs:
    empty = np.zeros(0)
    return Ranking(empty.astype(np.int64), empty, empty, certified, 0, n_read)
  docs = np.concatenate(seen_docs)
  scores = np.concatenate(seen_scores)
  tiebreak = np.zeros_like(scores)
  if gram is not None:
    # Only the documents tied with a top-k score need the tie-break.
    g = np.asarray(gram, np.float32) @ q
    top = _order(scores, tiebreak, k)
    tied = np.isin(scores, scores[top])
    tiebreak[tied] = atom_scores(index, g, docs[tied])
  best = _order(scores, tiebreak, k)
  return Ranking(
    docs[best], scores[best], tiebreak[best], certified, len(docs), n_read
  )


def rank_exact(X: np.ndarray, query_row: np.ndarray, k: int) -> Ranking:
  """Top-k documents by ⟨x_q, x_d⟩ over every row of X (the reference)."""
  scores = np.asarray(X, np.float32) @ np.asarray(query_row, np.float32)
  k = min(k, len(scores))
  best = _order(scores, np.zeros_like(scores), k)
  return Ranking(best, scores[best], np.zeros(0), True, len(scores), X.shape[0])


# ---------------------------------------------------------------------------
# Query codes.


def normalize_rows(G: np.ndarray) -> np.ndarray:
  """Rows divided by their norms (the dictionary stage's input)."""
  G = np.asarray(G, np.float32)
  norms = np.linalg.norm(G, axis=1, keepdims=True)
  return (G / np.maximum(norms, 1e-30)).astype(np.float32)


def code_queries(
  rows: np.ndarray,
  dictionary: np.ndarray,
  alpha: float,
  *,
  method: str = 'fista',
  max_iter: int = 1000,
  tol: float = 1e-6,
) -> np.ndarray:
  """(n, K) lasso codes of projected query rows (normalised first)."""
  codes, _ = lasso.sparse_encode(
    normalize_rows(rows), dictionary, alpha, method=method,
    max_iter=max_iter, tol=tol,
  )  # fmt: skip
  return codes


def top_atoms(query_code: np.ndarray, n: int) -> list[tuple[int, float]]:
  """The query's n largest |a_qj|: (atom, a_qj), largest first."""
  q = np.asarray(query_code).reshape(-1)
  active = np.nonzero(q)[0]
  active = active[np.argsort(-np.abs(q[active]), kind='stable')][:n]
  return [(int(j), float(q[j])) for j in active]


# ---------------------------------------------------------------------------
# Quality of a ranking (labels used only to score).


def label_agreement(
  docs: Sequence[int], labels: Sequence, query_label
) -> Optional[float]:
  """Fraction of `docs` whose label is the query's (None: no docs)."""
  if not len(docs):
    return None
  return float(np.mean([labels[d] == query_label for d in docs]))


def recall_at(found: Sequence[int], reference: Sequence[int], k: int) -> float:
  """|found[:k] ∩ reference[:k]| / min(k, len(reference))."""
  ref = set(int(d) for d in reference[:k])
  if not ref:
    return float('nan')
  return len(ref & set(int(d) for d in found[:k])) / len(ref)


def spearman_on_union(
  found_docs: Sequence[int],
  found_scores: Sequence[float],
  exact_scores: np.ndarray,
) -> float:
  """Spearman correlation of the atom and exact scores on the found docs
  together with the exact top ones (`exact_scores` covers every doc; a
  union doc the atom route did not meet scores 0 there)."""
  from scipy import stats

  exact_scores = np.asarray(exact_scores)
  n = len(found_docs)
  exact_top = np.argsort(-exact_scores, kind='stable')[: max(n, 1)]
  union = np.union1d(np.asarray(found_docs, np.int64), exact_top)
  atom = dict(zip((int(d) for d in found_docs), found_scores))
  a = np.array([atom.get(int(d), 0.0) for d in union])
  if len(union) < 2 or np.ptp(a) == 0 or np.ptp(exact_scores[union]) == 0:
    return float('nan')
  return float(stats.spearmanr(a, exact_scores[union]).statistic)


def kmeans_route(
  X: np.ndarray, assignments: np.ndarray, query_row: np.ndarray, k: int
) -> np.ndarray:
  """The baseline route: the query's nearest k-means cluster (cosine to the
  normalised cluster means), its k documents closest to the centroid."""
  X = np.asarray(X, np.float32)
  assignments = np.asarray(assignments)
  n_clusters = int(assignments.max()) + 1
  sums = np.zeros((n_clusters, X.shape[1]), np.float64)
  np.add.at(sums, assignments, X)
  centroids = normalize_rows(sums)
  cluster = int(np.argmax(centroids @ np.asarray(query_row, np.float32)))
  members = np.nonzero(assignments == cluster)[0]
  closeness = X[members] @ centroids[cluster]
  return members[np.argsort(-closeness, kind='stable')[:k]]


# ---------------------------------------------------------------------------
# The whole query path on projected rows.


def explain(
  query_rows: np.ndarray,
  dictionary: np.ndarray,
  index: AtomIndex,
  *,
  alpha: float,
  X: Optional[np.ndarray] = None,
  k: int = 10,
  n_atoms: int = 5,
  budget: Optional[int] = None,
  block: int = 64,
  coder: str = 'fista',
  max_iter: int = 1000,
  tol: float = 1e-6,
) -> list[dict]:
  """Explains projected query gradients through the atoms.

  Args:
    query_rows: (n, k_total) projected query gradients (`Projector` rows).
    dictionary: (K, k_total) the run's dictionary D.
    index: `build_index(codes)` of the training documents' codes.
    alpha, coder, max_iter, tol: the dictionary's lasso settings.
    X: (N, k_total) row-normalised projected training gradients, for the
      exact reference; None skips it.
    k: documents ranked per query.
    n_atoms: the query's largest atoms listed.
    budget, block: see `rank_by_atoms`.

  Returns:
    Per query {'code', 'top_atoms' [(atom, weight)], 'atoms' (Ranking),
    'exact' (Ranking or None)}.
  """
  x = normalize_rows(query_rows)
  codes = code_queries(
    x, dictionary, alpha, method=coder, max_iter=max_iter, tol=tol
  )
  gram = (
    np.asarray(dictionary, np.float32) @ np.asarray(dictionary, np.float32).T
  )
  return [
    {
      'code': a,
      'top_atoms': top_atoms(a, n_atoms),
      'atoms': rank_by_atoms(
        index, a, k, gram=gram, budget=budget, block=block
      ),
      'exact': None if X is None else rank_exact(X, xq, k),
    }
    for xq, a in zip(x, codes)
  ]
