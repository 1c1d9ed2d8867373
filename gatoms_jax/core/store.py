"""GradientStore: the on-disk N x d matrix of per-document LoRA gradients.

Step 1 of Gradient Atoms computes one gradient of the fine-tuned LoRA
parameters per training document and flattens it into a d-dim row. Those rows
are the raw material of every later step (EK-FAC eigenvalue correction,
projection onto the curvature eigenbasis, atom coherence), so they are written
once, chunk by chunk while gradients are extracted, and read many times.

On-disk format (a directory, format version 1):

  meta.json
    {"format": "gatoms_jax.GradientStore", "version": 1, "dim": d,
     "storage_dtype": "float32" | "bfloat16",
     "layout": [{"path": "layers.3.q_proj.lora_a", "shape": [in, out]}, ...],
     "metadata": {free-form: model id, LoRA targets, config hash, ...}}
    A row is the row-major flattening of every layout leaf, concatenated in
    layout order; `dim` is the sum of the leaf sizes.
  chunk_000000.npy, chunk_000001.npy, ...
    Plain .npy arrays of shape (rows, d). float32 is stored as '<f4';
    bfloat16 as its raw bits in a '<u2' array (numpy has no bfloat16 descr),
    rounded to nearest even on write and widened exactly to float32 on read.
  chunk_000000.ids.json, ...
    {"ids": [doc ids of the chunk's rows, in row order]}.
  skipped.json
    {doc_id: reason} for documents that have no gradient (e.g. no assistant
    tokens); they are recorded here and never stored as zero rows.

Crash safety: every file is written under a temporary name ending in `.tmp`,
fsynced, then renamed with os.replace (atomic on POSIX) and the directory is
fsynced. A chunk's .npy is renamed first and its .ids.json last, so the ids
file is the commit record: a chunk exists iff its ids file exists. A SIGKILL
at any point therefore leaves either a whole chunk or no chunk; leftovers
(temp files, a .npy without ids) are ignored by readers and deleted by the
first write of the next writer. One writer at a time per store; any number of
readers (a reader sees the chunks committed when it opened the store).

Memory per call (d = row dim, N = stored rows; nothing ever loads all N x d):
  open / open_or_create   O(N) doc ids (the id -> row index) and npy headers.
  append_chunk(ids, rows) the n x d input, plus its storage-dtype copy (none
                          for contiguous float32) and an n x d bool check.
  iter_chunks(k)          one k x d float32 block (k = on-disk chunk size when
                          None); chunks are read through np.load(mmap_mode='r').
  rows(ids)               the m x d float32 result, m = len(ids).
  cosine_similarity(ids)  2 x m x d float32 (rows, normalized rows) + m x m.
  completed_ids()         a new O(N) set.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging

from gatoms_jax.core import distributed
from gatoms_jax.core import io as io_lib

Array = jax.Array
PyTree = Any

FORMAT_NAME = 'gatoms_jax.GradientStore'
FORMAT_VERSION = 1
STORAGE_DTYPES = ('float32', 'bfloat16')

_META = 'meta.json'
_SKIPPED = 'skipped.json'
_TMP_SUFFIX = '.tmp'
_CHUNK_IDS_RE = re.compile(r'^chunk_(\d+)\.ids\.json$')
_CHUNK_NPY_RE = re.compile(r'^chunk_(\d+)\.npy$')
_BF16_EXP_MASK = 0x7F80  # all-ones exponent: inf or nan
_BF16_ABS_MASK = 0x7FFF


@dataclasses.dataclass(frozen=True)
class LayoutLeaf:
  """One LoRA matrix in a flattened row.

  Attributes:
    path: dotted pytree path, e.g. 'layers.3.q_proj.lora_a'.
    shape: the leaf's shape, e.g. (in, out).
  """

  path: str
  shape: tuple[int, ...]

  @property
  def size(self) -> int:
    return math.prod(self.shape)


Layout = tuple[LayoutLeaf, ...]


# --------------------------------------------------------------------------
# Layout helpers: a row <-> the LoRA pytree.


def path_to_str(key_path: Sequence[Any]) -> str:
  """Returns the dotted layout path of a jax key path ('layers.3.q.lora_a')."""
  return jax.tree_util.keystr(tuple(key_path), simple=True, separator='.')


def layout_from_tree(tree: PyTree) -> Layout:
  """Returns the layout of a pytree of arrays, in jax flattening order.

  Args:
    tree: a pytree (e.g. the LoRA parameters) whose leaves have `.shape`.

  Returns:
    One LayoutLeaf per leaf, named by `path_to_str` of its key path.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return normalize_layout(
    [(path_to_str(p), tuple(np.shape(x))) for p, x in leaves]
  )


def normalize_layout(layout: Any) -> Layout:
  """Validates a layout given in any accepted form and returns a Layout.

  Args:
    layout: a sequence of LayoutLeaf, (path, shape) pairs or
      {'path': ..., 'shape': ...} dicts; or an ordered mapping path -> shape.

  Returns:
    The layout as a tuple of LayoutLeaf.

  Raises:
    ValueError: if it is empty, a path is repeated or empty, or a shape has
      a non-positive or non-integer dimension.
  """
  if isinstance(layout, Mapping):
    items = list(layout.items())
  else:
    items = []
    for leaf in layout:
      if isinstance(leaf, LayoutLeaf):
        items.append((leaf.path, leaf.shape))
      elif isinstance(leaf, Mapping):
        items.append((leaf['path'], leaf['shape']))
      else:
        path, shape = leaf
        items.append((path, shape))
  if not items:
    raise ValueError('layout is empty: a row needs at least one leaf')
  out, seen = [], set()
  for path, shape in items:
    if not isinstance(path, str) or not path:
      raise ValueError(f'layout path must be a non-empty string, got {path!r}')
    if path in seen:
      raise ValueError(f'layout path {path!r} appears twice')
    seen.add(path)
    shape = tuple(shape)
    if not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
      for s in shape
    ):
      raise ValueError(
        f'layout leaf {path!r} has shape {shape}: dims must be positive ints'
      )
    out.append(LayoutLeaf(path, tuple(int(s) for s in shape)))
  return tuple(out)


def layout_dim(layout: Layout) -> int:
  """Returns d, the length of a flattened row."""
  return sum(leaf.size for leaf in layout)


def _as_path_dict(tree: PyTree, layout: Layout) -> dict[str, Any]:
  paths = [leaf.path for leaf in layout]
  if isinstance(tree, Mapping) and set(tree.keys()) == set(paths):
    return dict(tree)
  flat = {
    path_to_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  missing = [p for p in paths if p not in flat]
  extra = [p for p in flat if p not in set(paths)]
  if missing or extra:
    raise ValueError(
      f'tree does not match the layout: missing paths {missing[:5]}'
      f'{" ..." if len(missing) > 5 else ""}, unexpected paths {extra[:5]}'
      f'{" ..." if len(extra) > 5 else ""}'
    )
  return flat


def flatten_tree(tree: PyTree, layout: Layout) -> np.ndarray | Array:
  """Flattens a LoRA pytree (or batch of them) into rows, in layout order.

  Works under jit: jax leaves are concatenated with jnp, numpy leaves with np.

  Args:
    tree: a dict path -> array, or any pytree whose `path_to_str` paths are
      the layout paths. Leaves have shape (*batch, *leaf.shape), with the same
      leading batch dims for every leaf (e.g. the output of vmap(grad)).
    layout: the row layout.

  Returns:
    An array of shape (*batch, d) (float32 for numpy input; the leaves' dtype
    promoted by jnp for jax input).

  Raises:
    ValueError: if paths or shapes do not match the layout.
  """
  flat = _as_path_dict(tree, layout)
  parts, batch = [], None
  for leaf in layout:
    x = flat[leaf.path]
    shape = tuple(np.shape(x))
    k = len(leaf.shape)
    if len(shape) < k or shape[len(shape) - k :] != leaf.shape:
      raise ValueError(
        f'leaf {leaf.path!r} has shape {shape}, layout expects (..., '
        f'{", ".join(map(str, leaf.shape))})'
      )
    b = shape[: len(shape) - k]
    if batch is None:
      batch = b
    elif b != batch:
      raise ValueError(
        f'leaf {leaf.path!r} has batch dims {b}, other leaves have {batch}'
      )
    parts.append(x)
  if any(isinstance(x, jax.Array) for x in parts):
    return jnp.concatenate([jnp.reshape(x, batch + (-1,)) for x in parts], -1)
  return np.concatenate(
    [np.asarray(x, np.float32).reshape(batch + (-1,)) for x in parts], -1
  )


def unflatten_row(
  row: np.ndarray | Array, layout: Layout, like: PyTree | None = None
) -> dict[str, Any] | PyTree:
  """Splits rows of shape (*batch, d) back into LoRA leaves.

  Args:
    row: array of shape (*batch, d); numpy or jax (then jittable).
    layout: the row layout.
    like: optional pytree whose `path_to_str` paths are the layout paths; if
      given the result has its structure, else it is a dict path -> array.

  Returns:
    dict path -> array of shape (*batch, *leaf.shape), or a pytree like `like`.

  Raises:
    ValueError: if the last dim of `row` is not the layout's d.
  """
  d = layout_dim(layout)
  if np.shape(row)[-1:] != (d,):
    raise ValueError(
      f'row has shape {np.shape(row)}, layout expects (..., {d})'
    )
  batch = tuple(np.shape(row)[:-1])
  out, start = {}, 0
  for leaf in layout:
    out[leaf.path] = row[..., start : start + leaf.size].reshape(
      batch + leaf.shape
    )
    start += leaf.size
  if like is None:
    return out
  _as_path_dict(like, layout)  # same paths, or a clear error
  return jax.tree_util.tree_map_with_path(
    lambda p, _: out[path_to_str(p)], like
  )


# --------------------------------------------------------------------------
# Atomic file writes.


def _tmp_name(directory: str, final_name: str) -> str:
  return os.path.join(
    directory, f'.{final_name}.{os.getpid()}.{uuid.uuid4().hex}{_TMP_SUFFIX}'
  )


def _atomic_write(directory: str, final_name: str, write_fn) -> None:
  """Writes via write_fn(file) to a temp file, fsyncs, renames into place."""
  io_lib.atomic_write(
    os.path.join(directory, final_name),
    write_fn,
    binary=True,
    tmp_path=_tmp_name(directory, final_name),
  )


def _atomic_write_json(directory: str, final_name: str, obj: Any) -> None:
  data = json.dumps(obj, indent=1, ensure_ascii=False).encode('utf-8')
  _atomic_write(directory, final_name, lambda f: f.write(data))


def _json_normalize(obj: Any) -> Any:
  """Round-trips through JSON so tuples/lists etc. compare like on disk."""
  return json.loads(json.dumps(obj))


def _npy_header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
  """Returns (shape, dtype, data offset) of an .npy file without reading it."""
  with open(path, 'rb') as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran:
      raise ValueError(f'{path}: Fortran-ordered chunk, expected C order')
    return tuple(shape), dtype, f.tell()


def _short(items: Iterable[str], k: int = 5) -> str:
  items = list(items)
  s = ', '.join(repr(x) for x in items[:k])
  return s + (f' ... ({len(items)} in all)' if len(items) > k else '')


@dataclasses.dataclass(frozen=True)
class _Chunk:
  index: int
  ids: tuple[str, ...]


# --------------------------------------------------------------------------
# The store.


class GradientStore:
  """An append-only N x d matrix of per-document gradients on disk.

  Create with `create`, `open` or `open_or_create`; see the module docstring
  for the format, crash safety and memory cost of each call.
  """

  def __init__(self, path: str, meta: dict[str, Any]):
    """Use `create`, `open` or `open_or_create` instead."""
    self._path = os.path.abspath(path)
    self._layout = normalize_layout(meta['layout'])
    self._dim = int(meta['dim'])
    self._storage_dtype = meta['storage_dtype']
    self._metadata = meta.get('metadata', {})
    self._chunks: list[_Chunk] = []
    self._where: dict[str, tuple[int, int]] = {}  # id -> (chunk pos, row)
    self._ids_cache: tuple[str, ...] | None = None
    self._skipped: dict[str, str] = {}
    self._cleaned = False
    if layout_dim(self._layout) != self._dim:
      raise ValueError(
        f'{self._meta_path}: dim {self._dim} != {layout_dim(self._layout)}, '
        'the total size of the layout leaves'
      )
    if self._storage_dtype not in STORAGE_DTYPES:
      raise ValueError(
        f'{self._meta_path}: storage_dtype {self._storage_dtype!r} is not one'
        f' of {STORAGE_DTYPES}'
      )
    self._scan()

  # ---- construction -------------------------------------------------------

  @classmethod
  def create(
    cls,
    path: str,
    layout: Any,
    storage_dtype: str = 'float32',
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
  ) -> GradientStore:
    """Creates an empty store.

    Args:
      path: directory to create (it may exist if empty).
      layout: the row layout, in any form `normalize_layout` accepts.
      storage_dtype: 'float32' or 'bfloat16' (half the disk; rows are rounded
        to nearest even on write and read back as float32).
      metadata: free-form JSON-serializable dict (model id, LoRA targets,
        config hash, ...); `open_or_create` compares it.
      overwrite: delete an existing store at `path` first. Directories that
        are not stores are never deleted.

    Returns:
      The new, empty store.

    Raises:
      FileExistsError: if `path` is a non-empty directory and not
        (overwrite and a store).
      ValueError: for a bad layout, dtype or non-JSON metadata.
    """
    if storage_dtype not in STORAGE_DTYPES:
      raise ValueError(
        f'storage_dtype must be one of {STORAGE_DTYPES}, got {storage_dtype!r}'
      )
    layout = normalize_layout(layout)
    try:
      metadata = _json_normalize(dict(metadata or {}))
    except TypeError as e:
      raise ValueError(f'metadata must be JSON-serializable: {e}') from e
    if os.path.exists(path):
      if not os.path.isdir(path):
        raise FileExistsError(f'{path}: exists and is not a directory')
      entries = [e for e in os.listdir(path) if not e.endswith(_TMP_SUFFIX)]
      if entries:
        if not overwrite:
          raise FileExistsError(
            f'{path}: not empty; use GradientStore.open / open_or_create, '
            'or overwrite=True'
          )
        if not cls._is_store(path):
          raise FileExistsError(
            f'{path}: not empty and not a GradientStore (no valid {_META});'
            ' refusing to delete it'
          )
        logging.info('GradientStore: deleting existing store at %s', path)
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    meta = {
      'format': FORMAT_NAME,
      'version': FORMAT_VERSION,
      'dim': layout_dim(layout),
      'storage_dtype': storage_dtype,
      'layout': [{'path': x.path, 'shape': list(x.shape)} for x in layout],
      'metadata': metadata,
    }
    _atomic_write_json(path, _META, meta)
    logging.info(
      'GradientStore: created %s (d=%d, %s)', path, meta['dim'], storage_dtype
    )
    return cls(path, meta)

  @classmethod
  def open(cls, path: str) -> GradientStore:
    """Opens an existing store (for reading, and appending if single writer).

    Opening never modifies the directory: leftovers of a killed writer are
    ignored here and deleted by this instance's first write.

    Raises:
      FileNotFoundError: if `path` has no meta.json.
      ValueError: if meta.json or a chunk is malformed or inconsistent.
    """
    meta_path = os.path.join(path, _META)
    if not os.path.isfile(meta_path):
      raise FileNotFoundError(f'{meta_path}: no GradientStore at {path}')
    meta = io_lib.read_json(meta_path)
    if not isinstance(meta, dict) or meta.get('format') != FORMAT_NAME:
      raise ValueError(f'{meta_path}: not a {FORMAT_NAME} meta file')
    if meta.get('version') != FORMAT_VERSION:
      raise ValueError(
        f'{meta_path}: format version {meta.get("version")!r}, this code '
        f'reads version {FORMAT_VERSION}'
      )
    return cls(path, meta)

  @classmethod
  def open_or_create(
    cls,
    path: str,
    layout: Any,
    storage_dtype: str = 'float32',
    metadata: Mapping[str, Any] | None = None,
  ) -> GradientStore:
    """Opens the store at `path` if it matches this config, else creates it.

    Args:
      path: store directory.
      layout: expected row layout.
      storage_dtype: expected storage dtype.
      metadata: expected metadata; compared exactly (after a JSON round trip).

    Returns:
      The store, possibly already holding rows (see `completed_ids`).

    Raises:
      ValueError: if a store at `path` was written for a different layout,
        storage dtype or metadata; the message lists every difference.
    """
    if not os.path.isfile(os.path.join(path, _META)):
      return cls.create(path, layout, storage_dtype, metadata)
    store = cls.open(path)
    layout = normalize_layout(layout)
    want_meta = _json_normalize(dict(metadata or {}))
    diffs = []
    if store.storage_dtype != storage_dtype:
      diffs.append(
        f'storage_dtype: {store.storage_dtype!r} on disk, {storage_dtype!r} '
        'requested'
      )
    if store.layout != layout:
      have = {x.path: x.shape for x in store.layout}
      want = {x.path: x.shape for x in layout}
      only_disk = [p for p in have if p not in want]
      only_req = [p for p in want if p not in have]
      shapes = [p for p in want if p in have and have[p] != want[p]]
      detail = []
      if only_disk:
        detail.append(f'leaves only on disk: {_short(only_disk)}')
      if only_req:
        detail.append(f'leaves only requested: {_short(only_req)}')
      for p in shapes[:5]:
        detail.append(f'{p!r} shape {have[p]} on disk, {want[p]} requested')
      if not detail:
        detail.append('same leaves in a different order')
      diffs.append('layout: ' + '; '.join(detail))
    for key in sorted(set(store.metadata) | set(want_meta)):
      a = store.metadata.get(key, '<absent>')
      b = want_meta.get(key, '<absent>')
      if a != b:
        diffs.append(f'metadata[{key!r}]: {a!r} on disk, {b!r} requested')
    if diffs:
      raise ValueError(
        f'{os.path.join(path, _META)}: this store was written for a different'
        ' config (use another path or delete it):\n  ' + '\n  '.join(diffs)
      )
    return store

  @staticmethod
  def _is_store(path: str) -> bool:
    try:
      meta = io_lib.read_json(os.path.join(path, _META))
    except (OSError, ValueError):
      return False
    return isinstance(meta, dict) and meta.get('format') == FORMAT_NAME

  def _scan(self) -> None:
    """Loads the committed chunks' ids and checks each chunk's npy header."""
    indices = sorted(
      int(m.group(1))
      for m in map(_CHUNK_IDS_RE.match, os.listdir(self._path))
      if m
    )
    for index in indices:
      ids_path = self._chunk_path(index, ids=True)
      entry = io_lib.read_json(ids_path)
      if not isinstance(entry, dict) or not isinstance(entry.get('ids'), list):
        raise ValueError(f'{ids_path}: expected {{"ids": [...]}}')
      ids = tuple(entry['ids'])
      npy_path = self._chunk_path(index)
      if not os.path.isfile(npy_path):
        raise ValueError(f'{ids_path}: committed chunk has no {npy_path}')
      shape, dtype, offset = _npy_header(npy_path)
      want_dtype = self._disk_dtype()
      if shape != (len(ids), self._dim) or dtype != want_dtype:
        raise ValueError(
          f'{npy_path}: shape {shape} dtype {dtype}, expected '
          f'({len(ids)}, {self._dim}) {want_dtype} from {ids_path}'
        )
      size = offset + len(ids) * self._dim * want_dtype.itemsize
      if os.path.getsize(npy_path) != size:
        raise ValueError(
          f'{npy_path}: {os.path.getsize(npy_path)} bytes, expected {size}'
        )
      self._add_chunk(_Chunk(index, ids), ids_path)
    skipped_path = os.path.join(self._path, _SKIPPED)
    if os.path.isfile(skipped_path):
      self._skipped = dict(io_lib.read_json(skipped_path))

  def _add_chunk(self, chunk: _Chunk, source: str) -> None:
    pos = len(self._chunks)
    seen, dup = set(), []
    for i in chunk.ids:
      if i in self._where or i in seen:
        dup.append(i)
      seen.add(i)
    if dup:
      raise ValueError(f'{source}: duplicate doc ids {_short(dup)}')
    for row, doc_id in enumerate(chunk.ids):
      self._where[doc_id] = (pos, row)
    self._chunks.append(chunk)
    self._ids_cache = None

  # ---- properties ---------------------------------------------------------

  @property
  def path(self) -> str:
    return self._path

  @property
  def layout(self) -> Layout:
    return self._layout

  @property
  def dim(self) -> int:
    return self._dim

  @property
  def storage_dtype(self) -> str:
    return self._storage_dtype

  @property
  def metadata(self) -> dict[str, Any]:
    return json.loads(json.dumps(self._metadata))  # a copy

  @property
  def n_rows(self) -> int:
    return len(self._where)

  def __len__(self) -> int:
    return self.n_rows

  @property
  def ids(self) -> tuple[str, ...]:
    """Doc ids of the stored rows, in store (row) order."""
    if self._ids_cache is None:
      self._ids_cache = tuple(i for c in self._chunks for i in c.ids)
    return self._ids_cache

  @property
  def skipped(self) -> dict[str, str]:
    """Recorded skipped docs: doc id -> reason."""
    return dict(self._skipped)

  def completed_ids(self, include_skipped: bool = True) -> set[str]:
    """Doc ids a resumed extraction need not process again.

    Args:
      include_skipped: also include docs recorded with `record_skipped`.

    Returns:
      Ids of stored rows (plus skipped docs by default).
    """
    done = set(self._where)
    if include_skipped:
      done.update(self._skipped)
    return done

  def __repr__(self) -> str:
    return (
      f'GradientStore({self._path!r}, n_rows={self.n_rows}, d={self._dim}, '
      f'{self._storage_dtype}, skipped={len(self._skipped)})'
    )

  # ---- writing ------------------------------------------------------------

  def _disk_dtype(self) -> np.dtype:
    return np.dtype('<f4' if self._storage_dtype == 'float32' else '<u2')

  def _chunk_path(self, index: int, ids: bool = False) -> str:
    suffix = '.ids.json' if ids else '.npy'
    return os.path.join(self._path, f'chunk_{index:06d}{suffix}')

  def _cleanup_leftovers(self) -> None:
    """Deletes what a killed writer left: temp files, uncommitted .npy."""
    if self._cleaned or not distributed.is_writer():
      return
    committed = {c.index for c in self._chunks}
    for name in os.listdir(self._path):
      m = _CHUNK_NPY_RE.match(name)
      orphan = m is not None and int(m.group(1)) not in committed
      if orphan or name.endswith(_TMP_SUFFIX):
        logging.warning('GradientStore: removing leftover %s', name)
        os.remove(os.path.join(self._path, name))
    self._cleaned = True

  def _encode(self, ids: Sequence[str], rows: Any) -> np.ndarray:
    """Validates rows and returns them in the on-disk dtype, C-contiguous."""
    rows = np.asarray(rows)
    is_bf16 = rows.dtype == np.dtype(ml_dtypes.bfloat16)
    if rows.dtype.kind != 'f' and not is_bf16:
      raise TypeError(
        f'{self._path}: rows must be floating point, got dtype {rows.dtype}'
      )
    if rows.ndim != 2 or rows.shape != (len(ids), self._dim):
      raise ValueError(
        f'{self._path}: rows have shape {rows.shape}, expected '
        f'({len(ids)}, {self._dim}) for {len(ids)} ids and d={self._dim}'
      )
    rows32 = np.ascontiguousarray(rows, dtype=np.float32)
    bad = ~np.isfinite(rows32).all(axis=1)
    if bad.any():
      raise ValueError(
        f'{self._path}: non-finite gradient (nan/inf) for doc ids '
        f'{_short(np.asarray(ids, object)[bad])}'
      )
    if self._storage_dtype == 'float32':
      stored = rows32
      zero = ~(stored != 0).any(axis=1)
    else:
      stored = rows32.astype(ml_dtypes.bfloat16).view(np.uint16)
      bad = ((stored & _BF16_EXP_MASK) == _BF16_EXP_MASK).any(axis=1)
      if bad.any():
        raise ValueError(
          f'{self._path}: gradient overflows bfloat16 for doc ids '
          f'{_short(np.asarray(ids, object)[bad])}'
        )
      zero = ~((stored & _BF16_ABS_MASK) != 0).any(axis=1)
    if zero.any():
      raise ValueError(
        f'{self._path}: all-zero gradient row for doc ids '
        f'{_short(np.asarray(ids, object)[zero])}; a doc without a gradient '
        'must go through record_skipped'
      )
    return stored

  def _check_new_ids(self, ids: Sequence[str]) -> list[str]:
    ids = list(ids)
    wrong = [i for i in ids if not isinstance(i, str)]
    if wrong:
      raise TypeError(f'{self._path}: doc ids must be str, got {wrong[:5]!r}')
    seen, dup_in = set(), []
    for i in ids:
      if i in seen:
        dup_in.append(i)
      seen.add(i)
    if dup_in:
      raise ValueError(
        f'{self._path}: doc ids repeated within the chunk: {_short(dup_in)}'
      )
    stored = [i for i in ids if i in self._where]
    if stored:
      raise ValueError(
        f'{self._path}: doc ids already stored: {_short(stored)}'
      )
    skipped = [i for i in ids if i in self._skipped]
    if skipped:
      raise ValueError(
        f'{self._path}: doc ids already recorded as skipped: {_short(skipped)}'
      )
    return ids

  def append_chunk(self, ids: Sequence[str], rows: np.ndarray | Array) -> int:
    """Validates and durably appends rows as one new chunk.

    Args:
      ids: doc ids of the rows, in order; new, distinct strings.
      rows: (len(ids), d) floating array (numpy or fully addressable jax).

    Returns:
      The number of rows appended (0 for an empty chunk, which writes nothing).

    Raises:
      TypeError: for non-str ids or a non-floating dtype.
      ValueError: for a wrong shape; a repeated, stored or skipped id; a
        non-finite or all-zero row (or one overflowing bfloat16), naming ids.
    """
    ids = self._check_new_ids(ids)
    stored = self._encode(ids, rows)
    if not ids:
      return 0
    self._cleanup_leftovers()
    index = self._chunks[-1].index + 1 if self._chunks else 0
    npy_name = os.path.basename(self._chunk_path(index))
    ids_name = os.path.basename(self._chunk_path(index, ids=True))
    # Data first, ids last: the ids file is the commit record.
    _atomic_write(
      self._path,
      npy_name,
      lambda f: np.lib.format.write_array(f, stored, allow_pickle=False),
    )
    _atomic_write_json(self._path, ids_name, {'ids': ids})
    self._add_chunk(_Chunk(index, tuple(ids)), self._chunk_path(index, True))
    return len(ids)

  def record_skipped(self, doc_id: str, reason: str) -> None:
    """Durably records a doc that has no gradient row (and why).

    Args:
      doc_id: the document id.
      reason: human-readable reason, e.g. 'no assistant tokens'.

    Raises:
      ValueError: if the doc already has a stored row.
    """
    if not isinstance(doc_id, str):
      raise TypeError(f'{self._path}: doc id must be str, got {doc_id!r}')
    if doc_id in self._where:
      raise ValueError(
        f'{self._path}: doc id {doc_id!r} has a stored row; cannot skip it'
      )
    if self._skipped.get(doc_id) == reason:
      return
    self._cleanup_leftovers()
    skipped = dict(self._skipped)
    skipped[doc_id] = str(reason)
    _atomic_write_json(self._path, _SKIPPED, skipped)
    self._skipped = skipped

  def writer(self, chunk_rows: int) -> ChunkWriter:
    """Returns a ChunkWriter that buffers rows into chunks of `chunk_rows`."""
    return ChunkWriter(self, chunk_rows)

  # ---- reading ------------------------------------------------------------

  def _load(self, pos: int) -> np.ndarray:
    """Memory-maps chunk `pos` (read-only, in the on-disk dtype)."""
    return np.load(self._chunk_path(self._chunks[pos].index), mmap_mode='r')

  def _decode(self, stored: np.ndarray) -> np.ndarray:
    """On-disk rows -> a new float32 array (bf16 widening is exact)."""
    if self._storage_dtype == 'float32':
      return np.array(stored, dtype=np.float32)
    return (np.asarray(stored).astype(np.uint32) << 16).view(np.float32)

  def iter_chunks(
    self, chunk_rows: int | None = None
  ) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yields all rows in store order as (ids, float32 rows) blocks.

    Args:
      chunk_rows: rows per yielded block (the last may be smaller); None
        yields the on-disk chunks as they are.

    Yields:
      (ids, rows) with rows a new (len(ids), d) float32 array.
    """
    if chunk_rows is not None and chunk_rows < 1:
      raise ValueError(f'chunk_rows must be >= 1, got {chunk_rows}')
    chunks = list(self._chunks)  # a snapshot: appends do not disturb us
    if chunk_rows is None:
      for pos, c in enumerate(chunks):
        yield list(c.ids), self._decode(self._load(pos))
      return
    buf_ids: list[str] = []
    buf: list[np.ndarray] = []
    n_buf = 0
    for pos, c in enumerate(chunks):
      mm = self._load(pos)
      start = 0
      while start < len(c.ids):
        take = min(chunk_rows - n_buf, len(c.ids) - start)
        buf.append(self._decode(mm[start : start + take]))
        buf_ids.extend(c.ids[start : start + take])
        n_buf += take
        start += take
        if n_buf == chunk_rows:
          yield buf_ids, (buf[0] if len(buf) == 1 else np.concatenate(buf))
          buf_ids, buf, n_buf = [], [], 0
      del mm
    if n_buf:
      yield buf_ids, (buf[0] if len(buf) == 1 else np.concatenate(buf))

  def rows(self, ids: Sequence[str]) -> np.ndarray:
    """Returns the float32 rows of `ids`, in the requested order.

    Raises:
      KeyError: naming the ids that are not stored.
    """
    ids = list(ids)
    missing = [i for i in ids if i not in self._where]
    if missing:
      raise KeyError(
        f'{self._path}: {len(missing)} doc ids not stored: {_short(missing)}'
      )
    out = np.empty((len(ids), self._dim), np.float32)
    by_chunk: dict[int, tuple[list[int], list[int]]] = {}
    for k, doc_id in enumerate(ids):
      pos, row = self._where[doc_id]
      dst, src = by_chunk.setdefault(pos, ([], []))
      dst.append(k)
      src.append(row)
    for pos, (dst, src) in sorted(by_chunk.items()):
      mm = self._load(pos)
      picked = mm[np.asarray(src)]  # reads only these rows
      if self._storage_dtype == 'bfloat16':
        picked = self._decode(picked)
      out[dst] = picked
      del mm, picked
    return out

  def row(self, doc_id: str) -> np.ndarray:
    """Returns one float32 row of shape (d,)."""
    return self.rows([doc_id])[0]

  def cosine_similarity(self, ids: Sequence[str]) -> np.ndarray:
    """Returns the m x m cosine similarity of the rows of `ids` (float32).

    Rows are rescaled by their max |entry| before the norm so the fp32 norm
    neither underflows nor overflows. Stored rows are never all-zero.
    """
    x = self.rows(ids)
    x /= np.abs(x).max(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = x @ x.T
    np.clip(c, -1.0, 1.0, out=c)
    np.fill_diagonal(c, 1.0)
    return c

  def mean_pairwise_cosine(self, ids: Sequence[str]) -> float:
    """Mean off-diagonal cosine similarity of distinct ids (atom coherence).

    Raises:
      ValueError: for fewer than 2 ids or a repeated id (which would bias the
        mean towards 1).
    """
    ids = list(ids)
    if len(set(ids)) != len(ids):
      raise ValueError(f'{self._path}: repeated doc ids in {_short(ids)}')
    m = len(ids)
    if m < 2:
      raise ValueError(f'mean_pairwise_cosine needs >= 2 ids, got {m}')
    c = self.cosine_similarity(ids).astype(np.float64)
    return float((c.sum() - np.trace(c)) / (m * (m - 1)))

  # ---- layout -------------------------------------------------------------

  def flatten(self, tree: PyTree) -> np.ndarray | Array:
    """`flatten_tree(tree, self.layout)`: LoRA pytree(s) -> row(s)."""
    return flatten_tree(tree, self._layout)

  def unflatten(
    self, row: np.ndarray | Array, like: PyTree | None = None
  ) -> dict[str, Any] | PyTree:
    """`unflatten_row(row, self.layout, like)`: row(s) -> path -> array."""
    return unflatten_row(row, self._layout, like)


class ChunkWriter:
  """Buffers rows and appends them to a store in chunks of `chunk_rows`.

  Use as a context manager: a clean exit flushes the remainder. If the block
  raises, buffered rows are dropped (a resumed run recomputes them).
  Memory: up to chunk_rows x d float32 of buffered rows.
  """

  def __init__(self, store: GradientStore, chunk_rows: int):
    if chunk_rows < 1:
      raise ValueError(f'chunk_rows must be >= 1, got {chunk_rows}')
    self._store = store
    self._chunk_rows = chunk_rows
    self._ids: list[str] = []
    self._rows: list[np.ndarray] = []

  @property
  def pending(self) -> int:
    return len(self._ids)

  def add(self, ids: Sequence[str], rows: np.ndarray | Array) -> None:
    """Buffers rows; writes a chunk each time `chunk_rows` are buffered.

    Ids are checked against the store and the buffer now; row values are
    validated when their chunk is written.
    """
    ids = self._store._check_new_ids(ids)  # pylint: disable=protected-access
    buffered = set(self._ids)
    dup = [i for i in ids if i in buffered]
    if dup:
      raise ValueError(f'doc ids already buffered: {_short(dup)}')
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] != len(ids):
      raise ValueError(f'rows have shape {rows.shape} for {len(ids)} ids')
    self._ids.extend(ids)
    self._rows.append(np.asarray(rows, np.float32))
    while len(self._ids) >= self._chunk_rows:
      self._write(self._chunk_rows)

  def flush(self) -> None:
    """Writes any buffered rows as a (possibly short) chunk."""
    if self._ids:
      self._write(len(self._ids))

  def _write(self, n: int) -> None:
    # Concatenate only the blocks this chunk needs, and copy the remainder:
    # a view would keep the whole concatenated chunk alive (for d = 2.4M and
    # 256-row chunks, 2.5 GB per retained chunk).
    take, count = [], 0
    while count < n:
      block = self._rows.pop(0)
      if count + len(block) > n:
        self._rows.insert(0, block[n - count :].copy())
        block = block[: n - count]
      take.append(block)
      count += len(block)
    rows = take[0] if len(take) == 1 else np.concatenate(take)
    del take
    ids, self._ids = self._ids[:n], self._ids[n:]
    self._store.append_chunk(ids, rows)

  def __enter__(self) -> ChunkWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.flush()
