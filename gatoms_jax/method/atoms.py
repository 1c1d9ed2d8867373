"""Characterisation of dictionary atoms, and the k-means baseline.

After the sparse dictionary is learned over the EK-FAC-projected per-document
gradients, each atom is read through the training documents that use it:

* its active documents (nonzero code), and its top documents by |code|, with
  the positive and negative sides kept apart (an atom and its negation
  describe opposite pulls on the weights);
* coherence: the mean pairwise cosine of the RAW (unprojected) LoRA
  gradients of its top documents -- do these documents really push the
  weights the same way, independently of the projection that found them;
* keywords of their assistant responses (`gatoms_jax.method.text.keyword_scores`);
* when evaluation labels exist (never used by the method), the majority
  label and its purity among the top documents.

Atoms are ranked by coherence. `label_recovery` counts the labels that some
highly ranked atom recovers, and `kmeans_label_recovery` does the same for
k-means clusters of the projected gradients (each cluster read exactly like
an atom: its top documents are the members nearest the centroid), so the two
methods compare like for like. A deterministic k-means (k-means++ init,
Lloyd iterations) is included.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from typing import Any, Callable, Sequence, TypedDict

import numpy as np
import tqdm

from gatoms_jax.core import io as io_lib
from gatoms_jax.method import text as text_lib

CosineFn = Callable[[Sequence[Any]], float]


class TopDoc(TypedDict):
  doc_id: Any
  coef: float
  excerpt: str


class AtomSummary(TypedDict):
  """What one atom (or k-means cluster) is, as saved in atoms.json.

  Fields: atom (column index of the code matrix / cluster index); n_active
  (documents with a nonzero code / cluster size); top_positive and
  top_negative (up to top_n documents on each side, largest |coef| first);
  top_doc_ids (the top_n documents by |coef|, both sides: the documents
  coherence, keywords and purity are computed on); coherence (mean pairwise
  raw-gradient cosine of top_doc_ids, None with fewer than 2); keywords and
  keyword_scores; majority_label, purity, pure (purity ≥ threshold),
  label_counts and n_label_values (label values in the corpus), all None
  without labels.
  """

  atom: int
  n_active: int
  top_positive: list[TopDoc]
  top_negative: list[TopDoc]
  top_doc_ids: list[Any]
  coherence: float | None
  keywords: list[str]
  keyword_scores: list[float]
  majority_label: str | None
  purity: float | None
  pure: bool | None
  label_counts: dict[str, int] | None
  n_label_values: int | None


# ---------------------------------------------------------------------------
# Raw-gradient coherence.


def mean_pairwise_cosine(rows: np.ndarray) -> float:
  """Mean cosine over distinct pairs of rows (zero rows count as cosine 0).

  Uses Σ_{i≠j} u_i·u_j = ‖Σ u_i‖² − Σ ‖u_i‖² for the normalised rows u_i.

  Args:
    rows: [n, D] vectors, n ≥ 2.

  Returns:
    The mean of cos(rows[i], rows[j]) over i < j.
  """
  rows = np.asarray(rows, dtype=np.float64)
  n = rows.shape[0]
  if n < 2:
    raise ValueError(f'mean_pairwise_cosine needs >= 2 rows, got {n}')
  norms = np.linalg.norm(rows, axis=1, keepdims=True)
  unit = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
  total = unit.sum(axis=0)
  off_diagonal = total @ total - np.sum(unit * unit)
  return float(off_diagonal / (n * (n - 1)))


def cosine_fn_from_rows(
  grads: np.ndarray, doc_ids: Sequence[Any] | None = None
) -> CosineFn:
  """A `mean_pairwise_cosine(ids)` callable over an in-memory gradient matrix.

  The pipeline gets this callable from the GradientStore; this version is
  for tests and small runs.

  Args:
    grads: [N, D] raw per-document gradients.
    doc_ids: the id of each row (default: the row index).

  Returns:
    A function of a sequence of doc ids returning their mean pairwise cosine.
  """
  grads = np.asarray(grads)
  if doc_ids is None:
    doc_ids = range(grads.shape[0])
  row_of = {_plain(d): i for i, d in enumerate(doc_ids)}
  return lambda ids: mean_pairwise_cosine(
    grads[[row_of[_plain(d)] for d in ids]]
  )


# ---------------------------------------------------------------------------
# Characterisation.


def _plain(value: Any) -> Any:
  """numpy scalars -> Python scalars, so ids are hashable and JSON-ready."""
  return value.item() if isinstance(value, np.generic) else value


def _excerpt(text: str, n_chars: int) -> str:
  flat = ' '.join(text.split())
  return flat if len(flat) <= n_chars else flat[: max(n_chars - 1, 0)] + '…'


@dataclasses.dataclass
class _Corpus:
  """Everything about the documents that does not depend on the atom."""

  doc_ids: list[Any]
  responses: Sequence[str] | None
  labels: list[str] | None
  cosine_fn: CosineFn
  top_n: int
  n_keywords: int
  excerpt_chars: int
  purity_threshold: float
  keyword_min_docs: int
  df: collections.Counter = dataclasses.field(
    default_factory=collections.Counter
  )
  n_docs: int = 0

  def __post_init__(self):
    if self.responses is not None:
      self.df, self.n_docs = text_lib.document_frequencies(self.responses)

  def top_docs(self, rows: np.ndarray, coefs: np.ndarray) -> list[TopDoc]:
    return [
      TopDoc(
        doc_id=self.doc_ids[r],
        coef=float(c),
        excerpt=(
          _excerpt(self.responses[r], self.excerpt_chars)
          if self.responses is not None
          else ''
        ),
      )
      for r, c in zip(rows, coefs)
    ]

  def summarize(
    self,
    atom: int,
    n_active: int,
    top_rows: np.ndarray,
    positive: tuple[np.ndarray, np.ndarray],
    negative: tuple[np.ndarray, np.ndarray],
  ) -> AtomSummary:
    """Builds a summary; `top_rows` is the set read for coherence etc."""
    ids = [self.doc_ids[r] for r in top_rows]
    coherence = None
    if len(ids) >= 2:
      value = float(self.cosine_fn(ids))
      coherence = None if math.isnan(value) else value
    keywords = []
    if self.responses is not None:
      keywords = text_lib.keyword_scores(
        [self.responses[r] for r in top_rows],
        self.df,
        self.n_docs,
        n_keywords=self.n_keywords,
        min_docs=self.keyword_min_docs,
      )
    majority = purity = pure = counts = n_values = None
    if self.labels is not None:
      n_values = len(set(self.labels))
      if len(top_rows):
        counter = collections.Counter(self.labels[r] for r in top_rows)
        # Ties between labels go to the alphabetically first one.
        majority, count = min(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        purity = count / len(top_rows)
        pure = purity >= self.purity_threshold
        counts = dict(sorted(counter.items()))
    return AtomSummary(
      atom=int(atom),
      n_active=int(n_active),
      top_positive=self.top_docs(*positive),
      top_negative=self.top_docs(*negative),
      top_doc_ids=ids,
      coherence=coherence,
      keywords=[w for w, _ in keywords],
      keyword_scores=[float(s) for _, s in keywords],
      majority_label=majority,
      purity=purity,
      pure=pure,
      label_counts=counts,
      n_label_values=n_values,
    )


def _coherence_key(s: AtomSummary) -> tuple:
  c = s['coherence']
  return (c is None, -(c if c is not None else 0.0), -s['n_active'], s['atom'])


def rank_by_coherence(summaries: Sequence[AtomSummary]) -> list[AtomSummary]:
  """Sorts by coherence, highest first, None last (ties: more active docs)."""
  return sorted(summaries, key=_coherence_key)


def _make_corpus(
  n: int,
  doc_ids,
  responses,
  labels,
  cosine_fn,
  top_n,
  n_keywords,
  excerpt_chars,
  purity_threshold,
  keyword_min_docs,
) -> _Corpus:
  doc_ids = list(range(n)) if doc_ids is None else [_plain(d) for d in doc_ids]
  for name, seq in (('doc_ids', doc_ids), ('responses', responses)):
    if seq is not None and len(seq) != n:
      raise ValueError(f'{name} has {len(seq)} entries for {n} documents')
  if labels is not None:
    if len(labels) != n:
      raise ValueError(f'labels has {len(labels)} entries for {n} documents')
    labels = [str(_plain(label)) for label in labels]
  if top_n < 1:
    raise ValueError(f'top_n must be >= 1, got {top_n}')
  return _Corpus(
    doc_ids=doc_ids,
    responses=responses,
    labels=labels,
    cosine_fn=cosine_fn,
    top_n=top_n,
    n_keywords=n_keywords,
    excerpt_chars=excerpt_chars,
    purity_threshold=purity_threshold,
    keyword_min_docs=keyword_min_docs,
  )


def characterize_atoms(
  codes: np.ndarray,
  doc_ids: Sequence[Any] | None,
  responses: Sequence[str] | None,
  labels: Sequence[Any] | None = None,
  *,
  mean_pairwise_cosine: CosineFn,
  top_n: int = 20,
  n_keywords: int = 8,
  excerpt_chars: int = 160,
  purity_threshold: float = 0.8,
  keyword_min_docs: int = 2,
  show_progress: bool = True,
) -> list[AtomSummary]:
  """Summarises every atom of a sparse code matrix, ranked by coherence.

  Per atom k (column k of `codes`): n_active = number of nonzero codes; the
  top_n documents by |code| (ties: lower row first) are the set on which
  coherence, keywords and label purity are computed; top_positive and
  top_negative list up to top_n documents of each sign separately.

  Args:
    codes: [N, K] codes A of the N documents (rows in `doc_ids` order).
    doc_ids: id of each row (None: the row index). These ids are what
      `mean_pairwise_cosine` receives and what the summaries report.
    responses: assistant response text of each row (None: no keywords and
      empty excerpts).
    labels: evaluation-only label of each row (None: no purity).
    mean_pairwise_cosine: ids -> mean pairwise cosine of their RAW
      gradients (from the GradientStore, or `cosine_fn_from_rows`).
    top_n: documents read per atom (config `atoms.top_n`).
    n_keywords: keywords per atom (`atoms.n_keywords`).
    excerpt_chars: excerpt length (`atoms.excerpt_chars`).
    purity_threshold: purity for `pure` (`atoms.purity_threshold`).
    keyword_min_docs: top documents a keyword must occur in.
    show_progress: show a tqdm bar over atoms.

  Returns:
    One AtomSummary per atom, by coherence (highest first, None last).
  """
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise ValueError(f'codes must be [N, K], got shape {codes.shape}')
  corpus = _make_corpus(
    codes.shape[0],
    doc_ids,
    responses,
    labels,
    mean_pairwise_cosine,
    top_n,
    n_keywords,
    excerpt_chars,
    purity_threshold,
    keyword_min_docs,
  )
  summaries = []
  for k in tqdm.trange(codes.shape[1], desc='atoms', disable=not show_progress):
    col = codes[:, k]
    active = np.flatnonzero(col)
    by_abs = active[np.argsort(-np.abs(col[active]), kind='stable')]
    sides = []
    for sign in (1, -1):
      rows = by_abs[sign * col[by_abs] > 0][:top_n]
      sides.append((rows, col[rows]))
    summaries.append(corpus.summarize(k, len(active), by_abs[:top_n], *sides))
  return rank_by_coherence(summaries)


def atom_top_responses(
  summaries: Sequence[AtomSummary],
  doc_ids: Sequence[Any],
  responses: Sequence[str],
  side: str = 'abs',
) -> dict[int, list[str]]:
  """Full responses of each atom's top documents (excerpts are truncated).

  Args:
    summaries: from `characterize_atoms`.
    doc_ids: id of each response.
    responses: the full assistant responses.
    side: 'abs' (top_doc_ids), 'positive' or 'negative'.

  Returns:
    atom -> responses, in summary order; input of
    `behaviors.match_atoms_to_behaviors`.
  """
  text_of = {_plain(d): r for d, r in zip(doc_ids, responses)}
  out = {}
  for s in summaries:
    if side == 'abs':
      ids = s['top_doc_ids']
    elif side in ('positive', 'negative'):
      ids = [d['doc_id'] for d in s[f'top_{side}']]
    else:
      raise ValueError(f"side must be 'abs', 'positive' or 'negative': {side}")
    out[s['atom']] = [text_of[d] for d in ids]
  return out


def label_recovery(
  summaries: Sequence[AtomSummary],
  n_top: int = 30,
  purity_threshold: float = 0.8,
  n_label_values: int | None = None,
) -> tuple[int, set[str]]:
  """Labels recovered by the most coherent atoms.

  A label is recovered when it is the majority label, with purity ≥
  `purity_threshold`, of at least one of the `n_top` atoms of highest
  coherence (None-coherence atoms rank last).

  Args:
    summaries: atom (or cluster) summaries computed with labels.
    n_top: how many atoms to look at (config `atoms.report_top`).
    purity_threshold: required purity.
    n_label_values: number of label values in the corpus (default: the
      `n_label_values` stored in the summaries).

  Returns:
    (number of label values, set of recovered labels).

  Raises:
    ValueError: if the summaries carry no labels and n_label_values is None.
  """
  if n_label_values is None:
    stored = {s['n_label_values'] for s in summaries} - {None}
    if len(stored) != 1:
      raise ValueError(
        'Summaries carry no (or inconsistent) label counts; characterise '
        'with labels or pass n_label_values'
      )
    n_label_values = stored.pop()
  recovered = {
    s['majority_label']
    for s in rank_by_coherence(summaries)[:n_top]
    if s['purity'] is not None and s['purity'] >= purity_threshold
  }
  return n_label_values, recovered


def knn_label_agreement(
  rows: np.ndarray,
  labels: Sequence[Any],
  k: int = 10,
  *,
  max_rows: int = 20000,
  chunk: int = 1024,
  seed: int = 0,
) -> tuple[float, dict[Any, float]]:
  """How well a representation separates labels, before any dictionary.

  For each row, the fraction of its k nearest rows (cosine) that share its
  label; averaged over rows and per label. 1/(number of labels) is chance
  for balanced labels. Beyond `max_rows` rows a seeded random subset is used
  (the similarity is computed in blocks of `chunk` rows).

  Args:
    rows: (N, D) e.g. the projected gradients.
    labels: evaluation-only label per row.
    k: neighbours per row.
    max_rows, chunk, seed: size bounds.

  Returns:
    (mean agreement, {label: mean agreement of its rows}).
  """
  x = np.asarray(rows, np.float32)
  labels = np.asarray(labels, dtype=object)
  if len(x) > max_rows:
    keep = np.sort(
      np.random.default_rng(seed).choice(len(x), max_rows, replace=False)
    )
    x, labels = x[keep], labels[keep]
  k = min(k, len(x) - 1)
  if k < 1:
    raise ValueError('knn_label_agreement needs at least 2 rows')
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
  agree = np.empty(len(x))
  for start in range(0, len(x), chunk):
    sim = x[start : start + chunk] @ x.T
    rows_idx = np.arange(start, min(start + chunk, len(x)))
    sim[rows_idx - start, rows_idx] = -np.inf  # not its own neighbour
    nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    agree[rows_idx] = (labels[nn] == labels[rows_idx, None]).mean(axis=1)
  per_label = {
    label: float(agree[labels == label].mean()) for label in sorted(set(labels))
  }
  return float(agree.mean()), per_label


# ---------------------------------------------------------------------------
# Saving.


def _json_ready(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  value = _plain(value)
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def save_atom_summaries(
  path: str,
  summaries: Sequence[AtomSummary],
  meta: dict[str, Any] | None = None,
) -> None:
  """Writes `{"meta": ..., "atoms": [...]}` as JSON, atomically.

  The file appears complete or not at all (temporary file + rename), so an
  interrupted run never leaves a truncated atoms.json.

  Args:
    path: destination file; its directory is created.
    summaries: AtomSummary list (kept in the given order).
    meta: run information to store alongside (config values, ...).
  """
  payload = _json_ready({'meta': meta or {}, 'atoms': list(summaries)})
  io_lib.atomic_write(
    path,
    lambda f: json.dump(
      payload, f, ensure_ascii=False, indent=1, allow_nan=False
    ),
  )


def load_atom_summaries(path: str) -> list[AtomSummary]:
  """Reads the atoms written by `save_atom_summaries`."""
  with open(path, encoding='utf-8') as f:
    payload = json.load(f)
  if not isinstance(payload, dict) or 'atoms' not in payload:
    raise ValueError(f'{path}: not an atoms file (no "atoms" key)')
  return payload['atoms']


# ---------------------------------------------------------------------------
# k-means baseline.


@dataclasses.dataclass(frozen=True)
class KMeansResult:
  centroids: np.ndarray  # [k, D] (unit rows for metric='cosine')
  assignments: np.ndarray  # [N] int cluster of each row
  inertia: float  # sum of squared distances to the assigned centroid


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
  if metric not in ('cosine', 'euclidean'):
    raise ValueError(f"metric must be 'cosine' or 'euclidean': {metric!r}")
  x = np.asarray(x, dtype=np.float64)
  if metric == 'cosine':
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
  return x


def _sq_distances(x: np.ndarray, c: np.ndarray, chunk: int) -> np.ndarray:
  """[N, k] squared euclidean distances, `chunk` rows at a time."""
  c_sq = np.sum(c * c, axis=1)
  out = np.empty((x.shape[0], c.shape[0]))
  for s in range(0, x.shape[0], chunk):
    xs = x[s : s + chunk]
    d = np.sum(xs * xs, axis=1, keepdims=True) - 2.0 * xs @ c.T + c_sq
    out[s : s + chunk] = np.maximum(d, 0.0)
  return out


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  n = x.shape[0]
  centers = [int(rng.integers(n))]
  closest = _sq_distances(x, x[centers], n)[:, 0]
  for _ in range(1, k):
    total = closest.sum()
    if total <= 0:  # fewer distinct points than clusters
      pick = int(rng.integers(n))
    else:
      pick = int(rng.choice(n, p=closest / total))
    centers.append(pick)
    closest = np.minimum(closest, _sq_distances(x, x[[pick]], n)[:, 0])
  return x[centers].copy()


def _centroids(x, assign, k, old, metric, d_assigned):
  sums = np.zeros((k, x.shape[1]))
  np.add.at(sums, assign, x)
  counts = np.bincount(assign, minlength=k)
  centroids = old.copy()
  filled = counts > 0
  centroids[filled] = sums[filled] / counts[filled, None]
  # An empty cluster restarts at the point farthest from its centroid,
  # deterministically (largest distance, then lowest row).
  order = np.argsort(-d_assigned, kind='stable')
  for j, row in zip(np.flatnonzero(~filled), order):
    centroids[j] = x[row]
  if metric == 'cosine':
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids = np.divide(
      centroids, norms, out=np.zeros_like(centroids), where=norms > 0
    )
  return centroids


def kmeans(
  x: np.ndarray,
  k: int,
  n_iter: int = 100,
  n_init: int = 1,
  seed: int = 0,
  metric: str = 'cosine',
  chunk: int = 4096,
) -> KMeansResult:
  """Deterministic k-means: k-means++ initialisation, then Lloyd iterations.

  metric='cosine' normalises the rows and keeps unit centroids (spherical
  k-means: assigning by euclidean distance between unit vectors is
  assigning by cosine); 'euclidean' clusters the raw rows.

  Args:
    x: [N, D] rows (e.g. projected gradients).
    k: number of clusters, 1 ≤ k ≤ N.
    n_iter: maximum Lloyd iterations per restart (stops when assignments
      no longer change).
    n_init: restarts with seeds seed, seed+1, ...; the lowest inertia wins.
    seed: seed of the first restart.
    metric: 'cosine' or 'euclidean'.
    chunk: rows per distance block (memory knob).

  Returns:
    KMeansResult.
  """
  x = _prepare(x, metric)
  n = x.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f'k must be in [1, {n}], got {k}')
  best = None
  for restart in range(n_init):
    rng = np.random.default_rng(seed + restart)
    centroids = _kmeans_pp(x, k, rng)
    assign = None
    for _ in range(max(n_iter, 1)):
      d = _sq_distances(x, centroids, chunk)
      new = np.argmin(d, axis=1)
      if assign is not None and np.array_equal(new, assign):
        break
      assign = new
      centroids = _centroids(
        x, assign, k, centroids, metric, d[np.arange(n), assign]
      )
    d = _sq_distances(x, centroids, chunk)
    assign = np.argmin(d, axis=1)
    inertia = float(d[np.arange(n), assign].sum())
    if best is None or inertia < best.inertia:
      best = KMeansResult(centroids, assign, inertia)
  return best


def kmeans_cluster_summaries(
  cluster_assignments: np.ndarray,
  projected_rows: np.ndarray,
  labels: Sequence[Any] | None,
  raw_cosine_fn: CosineFn,
  *,
  doc_ids: Sequence[Any] | None = None,
  responses: Sequence[str] | None = None,
  top_n: int = 20,
  n_keywords: int = 8,
  excerpt_chars: int = 160,
  purity_threshold: float = 0.8,
  keyword_min_docs: int = 2,
  metric: str = 'cosine',
) -> list[AtomSummary]:
  """Reads each k-means cluster like an atom, ranked by coherence.

  A cluster's top documents are its top_n members nearest to its centroid
  (mean of the members' rows; normalised rows and centroid for 'cosine');
  they appear in `top_positive` with coef = cosine similarity to the
  centroid ('cosine') or minus the distance ('euclidean'), and coherence,
  keywords and purity are computed on them exactly as for atoms. n_active
  is the cluster size.

  Args:
    cluster_assignments: [N] cluster index of each row.
    projected_rows: [N, D] the rows that were clustered.
    labels: evaluation-only labels, or None.
    raw_cosine_fn: ids -> mean pairwise RAW-gradient cosine.
    doc_ids: id of each row (None: row index).
    responses: response texts for keywords/excerpts, or None.
    top_n, n_keywords, excerpt_chars, purity_threshold, keyword_min_docs:
      as in `characterize_atoms`.
    metric: the k-means metric.

  Returns:
    One AtomSummary per non-empty cluster, by coherence.
  """
  assign = np.asarray(cluster_assignments)
  x = _prepare(projected_rows, metric)
  if assign.shape != (x.shape[0],):
    raise ValueError(
      f'{assign.shape[0]} assignments for {x.shape[0]} projected rows'
    )
  corpus = _make_corpus(
    x.shape[0],
    doc_ids,
    responses,
    labels,
    raw_cosine_fn,
    top_n,
    n_keywords,
    excerpt_chars,
    purity_threshold,
    keyword_min_docs,
  )
  summaries = []
  empty = (np.zeros(0, dtype=int), np.zeros(0))
  for c in np.unique(assign):
    members = np.flatnonzero(assign == c)
    center = x[members].mean(axis=0)
    if metric == 'cosine':
      norm = np.linalg.norm(center)
      center = center / norm if norm > 0 else center
      score = x[members] @ center
    else:
      score = -np.linalg.norm(x[members] - center, axis=1)
    order = np.argsort(-score, kind='stable')[:top_n]
    top = members[order]
    summaries.append(
      corpus.summarize(int(c), len(members), top, (top, score[order]), empty)
    )
  return rank_by_coherence(summaries)


def kmeans_label_recovery(
  cluster_assignments: np.ndarray,
  projected_rows: np.ndarray,
  labels: Sequence[Any],
  raw_cosine_fn: CosineFn,
  *,
  doc_ids: Sequence[Any] | None = None,
  top_n: int = 20,
  n_top: int = 30,
  purity_threshold: float = 0.8,
  metric: str = 'cosine',
) -> tuple[int, set[str]]:
  """`label_recovery` for k-means clusters read like atoms.

  Args:
    cluster_assignments: [N] cluster of each row (e.g. `kmeans(...)`).
    projected_rows: [N, D] the clustered rows.
    labels: evaluation-only label of each row.
    raw_cosine_fn: ids -> mean pairwise RAW-gradient cosine.
    doc_ids: id of each row (None: row index).
    top_n: members read per cluster (as `atoms.top_n`).
    n_top: clusters looked at, by coherence (as `atoms.report_top`).
    purity_threshold: required purity.
    metric: the k-means metric.

  Returns:
    (number of label values, set of recovered labels).
  """
  summaries = kmeans_cluster_summaries(
    cluster_assignments,
    projected_rows,
    labels,
    raw_cosine_fn,
    doc_ids=doc_ids,
    top_n=top_n,
    purity_threshold=purity_threshold,
    metric=metric,
  )
  return label_recovery(summaries, n_top, purity_threshold)
