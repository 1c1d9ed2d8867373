"""The data layer: documents, the embedded task mixture, tokenisation, batches."""

from gatoms_jax.data.documents import DataError
from gatoms_jax.data.documents import Document
from gatoms_jax.data.documents import load_documents
from gatoms_jax.data.documents import make_messages
from gatoms_jax.data.documents import read_jsonl
from gatoms_jax.data.documents import ReadResult
from gatoms_jax.data.mixture import generate_mixture
from gatoms_jax.data.mixture import TASK_TYPES
from gatoms_jax.data.tokenize import Batch
from gatoms_jax.data.tokenize import make_batches
from gatoms_jax.data.tokenize import num_batches
from gatoms_jax.data.tokenize import padding_efficiency
from gatoms_jax.data.tokenize import prompt_tokens
from gatoms_jax.data.tokenize import split_heldout
from gatoms_jax.data.tokenize import tokenize_documents
from gatoms_jax.data.tokenize import TokenizedDoc
from gatoms_jax.data.tokenize import TokenizeStats

__all__ = [
  'Batch',
  'DataError',
  'Document',
  'ReadResult',
  'TASK_TYPES',
  'TokenizeStats',
  'TokenizedDoc',
  'generate_mixture',
  'load_documents',
  'make_batches',
  'make_messages',
  'num_batches',
  'padding_efficiency',
  'prompt_tokens',
  'read_jsonl',
  'split_heldout',
  'tokenize_documents',
]
