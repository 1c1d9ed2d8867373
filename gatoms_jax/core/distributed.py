"""Multi-process (multi-host) runs: start-up, one writer, barriers.

JAX's multi-controller runtime runs the same program in every process; jitted
computations over a mesh that spans all processes' devices exchange data
through XLA collectives. The pipeline keeps every process's host state
identical (global inputs are placed with `jax.device_put`, results come back
to every process through `sharding.to_host`), and exactly one process, the
writer (process 0), writes files: `gatoms_jax.core.io` skips writes elsewhere
and Orbax coordinates its own. A barrier after each stage lets every process
read what the writer wrote. The results directory must be on a file system
that all processes see (NFS, GCS FUSE, one host's disk for local processes).
"""

from __future__ import annotations

import os
import jax
from absl import logging

# Environment variables that ask for a multi-process run without a config
# change (the same names a launcher such as `torchrun` would export).
ENV_COORDINATOR = 'GATOMS_COORDINATOR'
ENV_NUM_PROCESSES = 'GATOMS_NUM_PROCESSES'
ENV_PROCESS_ID = 'GATOMS_PROCESS_ID'


def initialize(
  coordinator_address: str = '',
  num_processes: int = 0,
  process_id: int = -1,
  auto: bool = False,
) -> bool:
  """Starts `jax.distributed` when asked to; returns whether it did.

  Explicit arguments win; otherwise the GATOMS_* environment variables are
  read; with `auto`, JAX's own cluster detection (TPU pods, SLURM, MPI)
  finds the coordinator. Calling it twice, or with nothing asked, is a no-op.

  Args:
    coordinator_address: 'host:port' of process 0's coordinator service.
    num_processes: number of processes in the run.
    process_id: this process's index in [0, num_processes).
    auto: let JAX detect the cluster (arguments above ignored).
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = coordinator_address or os.environ.get(
    ENV_COORDINATOR, ''
  )
  if num_processes <= 0:
    num_processes = int(os.environ.get(ENV_NUM_PROCESSES, '0') or 0)
  if process_id < 0:
    process_id = int(os.environ.get(ENV_PROCESS_ID, '-1') or -1)
  if auto:
    jax.distributed.initialize()
  elif coordinator_address:
    if num_processes <= 0 or not 0 <= process_id < num_processes:
      raise ValueError(
        f'A multi-process run needs num_processes > 0 and 0 <= process_id < '
        f'num_processes; got {num_processes=} {process_id=} (coordinator '
        f'{coordinator_address})'
      )
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
    )
  else:
    return False
  logging.info(
    'process %d of %d; %d local of %d devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def is_writer() -> bool:
  """Whether this process writes files (process 0; always in one process)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op alone)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  multihost_utils.sync_global_devices(name)
