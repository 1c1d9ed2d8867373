"""One writer per run directory: a lock held for the whole pipeline run.

Two runs started on the same `results/<run_name>` would write into each other's
stages. `hold(run_dir)` takes an exclusive `flock` on `<run_dir>/.lock` and
writes the holder (pid, host, start time, command) into it; a second run fails
at once with `RunLockedError` naming the holder. The kernel drops a `flock`
when its process dies, so the lock of a killed run (SIGKILL, OOM, a lost
machine's NFS lease) is free again: the next run detects the stale holder
record, logs it, and takes the lock over. A clean exit empties the record.

Where the file system has no `flock` (some network mounts), the lock falls
back to the record alone: it is taken over only when its pid is dead on this
host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Iterator, Optional

from absl import logging

LOCK_NAME = '.lock'


class RunLockedError(RuntimeError):
  """Another live process holds the run directory's lock."""


def _holder_record() -> dict:
  return {
    'pid': os.getpid(),
    'host': socket.gethostname(),
    'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    'command': ' '.join(sys.argv)[:500],
  }


def _read_record(fd: int) -> Optional[dict]:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = b''
  while chunk := os.read(fd, 65536):
    raw += chunk
  try:
    record = json.loads(raw.decode('utf-8'))
  except (UnicodeDecodeError, ValueError):
    return None
  return record if isinstance(record, dict) and record.get('pid') else None


def _describe(record: Optional[dict]) -> str:
  if not record:
    return 'an unknown process (no holder record)'
  return (
    f'pid {record.get("pid")} on host {record.get("host")} (started '
    f'{record.get("started")}: {record.get("command")})'
  )


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  return True


def _write_record(fd: int, record: dict) -> None:
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, json.dumps(record).encode())
  os.fsync(fd)


class RunLock:
  """A held run-directory lock; `release()` (or process exit) frees it.

  Attributes:
    path: the lock file.
    took_over: the stale holder record this lock replaced, if any.
  """

  def __init__(self, path: str, fd: int, took_over: Optional[dict]):
    self.path = path
    self._fd: Optional[int] = fd
    self.took_over = took_over

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
    finally:
      # Closing drops the flock; the file stays, so that no waiting opener
      # locks an unlinked inode while a third process creates a new one.
      os.close(self._fd)
      self._fd = None


def acquire(run_dir: str) -> RunLock:
  """Takes `<run_dir>/.lock` or raises at once.

  Raises:
    RunLockedError: a live process holds it; the message names its pid, host,
      start time and command.
  """
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise RunLockedError(
        f'{run_dir} is in use by another pipeline run: '
        f'{_describe(_read_record(fd))}. '
        'Wait for it to finish (or stop it), or use another run_name.'
      ) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      # No flock here: the record alone decides.
      record = _read_record(fd)
      if record and (
        record.get('host') != socket.gethostname()
        or _pid_alive(int(record['pid']))
      ):
        raise RunLockedError(
          f'{run_dir} is in use by another pipeline run: '
          f'{_describe(record)}. If that process is gone, delete {path}.'
        ) from None
    # Locked; re-read in case a holder wrote its record meanwhile.
    record = _read_record(fd)
    if record:
      logging.warning(
        'Taking over the stale lock of %s: %s (its process is gone)',
        run_dir,
        _describe(record),
      )
    _write_record(fd, _holder_record())
  except BaseException:
    os.close(fd)
    raise
  return RunLock(path, fd, took_over=record)


@contextlib.contextmanager
def hold(run_dir: str) -> Iterator[RunLock]:
  """`acquire(run_dir)` for the duration of a with-block."""
  lock = acquire(run_dir)
  try:
    yield lock
  finally:
    lock.release()
