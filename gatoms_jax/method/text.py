"""Text utilities for atom characterisation and steering evaluation.

Two model-independent jobs live here:

* Keywords of an atom (characterisation step of the method): words of the
  assistant responses of the atom's top documents, stopwords removed, ranked
  by how much more often they occur in those documents than in the whole
  training corpus (a tf-idf-like lift score, see `keyword_scores`).
* Degeneracy of generated text (guard of the steering evaluation): whether a
  steered generation has collapsed into a loop or a tiny vocabulary, see
  `is_degenerate` for the exact rule.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Iterable, Mapping, Sequence

# Common English function words, plus filler words that dominate assistant
# replies ("sure", "here", "certainly") without saying what a document teaches.
# "yes" and "no" are kept: they are what a yes/no atom's documents share.
STOPWORDS = frozenset(
  """
  a about above after again against all also am an and any are aren't as at be
  because been before being below between both but by can can't cannot could
  couldn't did didn't do does doesn't doing don't down during each either else
  etc ever every few for from further had hadn't has hasn't have haven't having
  he he'd he'll he's her here here's hers herself him himself his how how's i
  i'd i'll i'm i've if in into is isn't it it's its itself just let let's like
  may me might more most much must mustn't my myself neither nor not now of
  off often on once one only or other ought our ours ourselves out over own
  per quite rather really same shall shan't she she'd she'll she's should
  shouldn't since so some such than that that's the their theirs them
  themselves then there there's these they they'd they'll they're they've this
  those though through thus to too under until up upon us use used using very
  via was wasn't we we'd we'll we're we've were weren't what what's when
  when's where where's whether which while who who's whom whose why why's will
  with within without won't would wouldn't yet you you'd you'll you're you've
  your yours yourself yourselves
  sure certainly course absolutely definitely okay ok great happy glad
  help hope following below answer example examples get got make made many
  well way want need needs things thing something anything everything
  """.split()
)

_WORD_RE = re.compile(r"[a-z][a-z0-9_']*[a-z0-9_]|[a-z]")
# Words, numbers and runs of punctuation: a loop of "!!!!" or "- - -" is as
# degenerate as a loop of words, so punctuation counts as tokens here.
_REP_TOKEN_RE = re.compile(r'\w+|[^\w\s]+')


def words(text: str) -> list[str]:
  """Lower-cased word tokens (letters first, then letters/digits/_/')."""
  return _WORD_RE.findall(text.lower())


def content_words(text: str, min_length: int = 2) -> list[str]:
  """`words` without stopwords and without words shorter than `min_length`."""
  return [w for w in words(text) if len(w) >= min_length and w not in STOPWORDS]


def document_frequencies(
  texts: Iterable[str],
) -> tuple[collections.Counter, int]:
  """Counts, for each content word, the number of texts containing it.

  Args:
    texts: the corpus (e.g. every training response).

  Returns:
    (counter word -> number of texts containing it, number of texts).
  """
  df = collections.Counter()
  n = 0
  for text in texts:
    df.update(set(content_words(text)))
    n += 1
  return df, n


def keyword_scores(
  texts: Sequence[str],
  corpus_df: Mapping[str, int],
  n_corpus: int,
  n_keywords: int = 8,
  min_docs: int = 2,
) -> list[tuple[str, float]]:
  """Ranks the words that distinguish `texts` from the corpus.

  Document frequencies, not raw counts, are used so that one long response
  cannot dominate. With p = fraction of `texts` containing the word and
  q = (corpus texts containing it + 1) / (n_corpus + 1), the score is
  p * log(p / q): high when the word is common among these texts (p) and
  over-represented relative to the corpus (p / q) -- the tf-idf idea applied
  to a group of documents.

  Args:
    texts: responses of one atom's top documents.
    corpus_df: document frequencies over the corpus (`document_frequencies`).
    n_corpus: number of corpus texts.
    n_keywords: how many keywords to return.
    min_docs: a word must occur in at least min(min_docs, len(texts)) of the
      texts, so one-off words of a single document are not keywords.

  Returns:
    Up to `n_keywords` (word, score) pairs with positive score, best first;
    ties broken alphabetically.
  """
  if not texts or n_keywords <= 0:
    return []
  df = collections.Counter()
  for text in texts:
    df.update(set(content_words(text)))
  need = min(min_docs, len(texts))
  scored = []
  for word, count in df.items():
    if count < need:
      continue
    p = count / len(texts)
    # The top documents are part of the corpus, so the corpus count is at
    # least `count`; max() keeps q sane if the caller passed another corpus.
    q = (max(corpus_df.get(word, 0), count) + 1) / (n_corpus + 1)
    score = p * math.log(p / q)
    if score > 0:
      scored.append((word, score))
  scored.sort(key=lambda ws: (-ws[1], ws[0]))
  return scored[:n_keywords]


def repetition_tokens(text: str) -> list[str]:
  """Lower-cased word and punctuation-run tokens used by the degeneracy rule."""
  return _REP_TOKEN_RE.findall(text.lower())


def distinct_ratio(tokens: Sequence[str]) -> float:
  """Number of distinct tokens divided by number of tokens (1.0 if empty)."""
  if not tokens:
    return 1.0
  return len(set(tokens)) / len(tokens)


def repeated_ngram_coverage(
  tokens: Sequence[str], n: int = 4, min_repeats: int = 3
) -> float:
  """Fraction of token positions covered by an n-gram repeated often.

  A position is covered when it lies inside some occurrence of an n-gram that
  occurs at least `min_repeats` times in the text. A loop ("I am here. I am
  here. I am here. ...") covers almost everything; ordinary prose, lists and
  code rarely repeat the same n tokens three times.

  Args:
    tokens: the tokens (see `repetition_tokens`).
    n: n-gram length.
    min_repeats: occurrences needed for an n-gram to count as a loop.

  Returns:
    A fraction in [0, 1]; 0 when the text has fewer than n tokens.
  """
  if len(tokens) < n:
    return 0.0
  grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
  counts = collections.Counter(grams)
  covered = [False] * len(tokens)
  for i, gram in enumerate(grams):
    if counts[gram] >= min_repeats:
      for j in range(i, i + n):
        covered[j] = True
  return sum(covered) / len(tokens)


def is_degenerate(
  text: str,
  ngram: int = 4,
  min_repeats: int = 3,
  max_coverage: float = 0.5,
  min_distinct: float = 0.25,
  min_tokens: int = 16,
  empty_is_degenerate: bool = True,
) -> bool:
  """Judges whether one generated text has degenerated.

  The rule (tokens from `repetition_tokens`):
    1. an empty or whitespace-only text is degenerate if
       `empty_is_degenerate` (a steered model that emits nothing is broken);
    2. a text with fewer than `min_tokens` tokens is otherwise never
       degenerate ("Yes." is a fine answer);
    3. otherwise it is degenerate if repeated `ngram`-grams (occurring at
       least `min_repeats` times) cover more than `max_coverage` of the
       tokens (a loop), or if the distinct-token ratio is below
       `min_distinct` (a collapsed vocabulary, e.g. "the the a the a ...").

  Args:
    text: one generation (without the prompt).
    ngram: n-gram length of the loop test.
    min_repeats: occurrences for an n-gram to count as a loop.
    max_coverage: loop coverage above which the text is degenerate.
    min_distinct: distinct-token ratio below which the text is degenerate.
    min_tokens: texts shorter than this are only judged by rule 1.
    empty_is_degenerate: rule 1 on or off.

  Returns:
    True if degenerate.
  """
  tokens = repetition_tokens(text)
  if not tokens:
    return empty_is_degenerate
  if len(tokens) < min_tokens:
    return False
  if repeated_ngram_coverage(tokens, ngram, min_repeats) > max_coverage:
    return True
  return distinct_ratio(tokens) < min_distinct


def repetition_fraction(texts: Sequence[str], **rule) -> float:
  """Fraction of `texts` judged degenerate by `is_degenerate(text, **rule)`.

  Args:
    texts: generations of one sweep variant.
    **rule: keyword arguments of `is_degenerate` (thresholds from the
      `steering` config section: degenerate_ngram, ...).

  Returns:
    A fraction in [0, 1].

  Raises:
    ValueError: if `texts` is empty.
  """
  if not texts:
    raise ValueError('repetition_fraction needs at least one text')
  return sum(is_degenerate(t, **rule) for t in texts) / len(texts)
