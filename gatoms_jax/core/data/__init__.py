"""The data layer: documents, tokenisation, batches."""

from gatoms_jax.core.data.documents import DataError
from gatoms_jax.core.data.documents import Document
from gatoms_jax.core.data.documents import make_messages
from gatoms_jax.core.data.documents import read_jsonl
from gatoms_jax.core.data.documents import ReadResult
from gatoms_jax.core.data.tokenize import Batch
from gatoms_jax.core.data.tokenize import make_batches
from gatoms_jax.core.data.tokenize import num_batches
from gatoms_jax.core.data.tokenize import padding_efficiency
from gatoms_jax.core.data.tokenize import prompt_tokens
from gatoms_jax.core.data.tokenize import split_heldout
from gatoms_jax.core.data.tokenize import tokenize_documents
from gatoms_jax.core.data.tokenize import TokenizedDoc
from gatoms_jax.core.data.tokenize import TokenizeStats

__all__ = [
  'Batch',
  'DataError',
  'Document',
  'ReadResult',
  'TokenizeStats',
  'TokenizedDoc',
  'make_batches',
  'make_messages',
  'num_batches',
  'padding_efficiency',
  'prompt_tokens',
  'read_jsonl',
  'split_heldout',
  'tokenize_documents',
]
