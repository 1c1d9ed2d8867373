"""Where a run's documents come from: the user's JSONL file, or else the
generated demo mixture (`gatoms_jax.demo.mixture`)."""

from __future__ import annotations

from typing import Any

from absl import logging

from gatoms_jax.core.data import documents as documents_lib
from gatoms_jax.core.data.documents import Document
from gatoms_jax.demo import mixture


def load_documents(data_config: Any) -> list[Document]:
  """Returns the documents named by the config's `data` section.

  Args:
    data_config: the `data` section of the config (configs/common.py): reads
      `path` (empty: the embedded generated mixture), `format`, `label_field`,
      `skip_bad_lines`, `n_docs`, `generator_seed` and
      `compositional_fraction`.

  Returns:
    The documents, in file order or generation order.

  Raises:
    DataError: as `read_jsonl`.
  """
  if not data_config.path:
    return mixture.generate_mixture(
      data_config.n_docs,
      data_config.generator_seed,
      data_config.compositional_fraction,
    )
  result = documents_lib.read_jsonl(
    data_config.path,
    format=data_config.format,
    label_field=data_config.label_field or None,
    skip_bad_lines=data_config.skip_bad_lines,
  )
  if result.n_skipped:
    logging.warning(
      'Skipped %d bad lines of %s; first: line %d: %s',
      result.n_skipped,
      data_config.path,
      *result.skipped[0],
    )
  return result.documents
