"""Child process of tests/test_multiprocess.py (not a test module).

  python tests/multiprocess_driver.py JOB OUT_DIR [COORDINATOR N PROCESS_ID]

Jobs:
  pipeline  the tiny pipeline of test_pipeline.py (results under OUT_DIR)
  basics    a psum across processes, to_host of a row-sharded array, one
            writer through core.io, and an Orbax save_pytree
"""

import json
import os
import sys

job, out_dir = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:
  from gatoms_jax.core import distributed

  distributed.initialize(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from gatoms_jax.core import checkpoint, io, sharding  # noqa: E402


def basics():
  mesh = sharding.make_mesh()
  x = np.arange(24, dtype=np.float32).reshape(12, 2)
  xs, _ = sharding.shard_rows(x, mesh)
  total = jax.jit(lambda a: a.sum(0), out_shardings=sharding.replicated(mesh))
  doubled = jax.jit(lambda a: 2 * a)(xs)  # stays row-sharded
  tree = {
    'w': jax.device_put(np.ones((3, 2), np.float32), sharding.replicated(mesh))
  }
  checkpoint.save_pytree(os.path.join(out_dir, 'ckpt'), tree)
  loaded = checkpoint.load_pytree(os.path.join(out_dir, 'ckpt'))
  result = {
    'process': jax.process_index(),
    'n_processes': jax.process_count(),
    'n_devices': jax.device_count(),
    'sum': sharding.to_host(total(xs)).tolist(),
    'doubled': sharding.to_host(doubled).tolist(),
    'loaded': np.asarray(loaded['w']).tolist(),
  }
  io.write_json(
    os.path.join(out_dir, f'written_by_{jax.process_index()}.json'), result
  )
  return result


def pipeline_job():
  import test_pipeline  # tests/ is on PYTHONPATH
  from gatoms_jax import pipeline

  config = test_pipeline.tiny_config(out_dir, os.environ['TINY_TOKENIZER'])
  done = pipeline.run(config)
  return {'stages': list(done)}


print(json.dumps(basics() if job == 'basics' else pipeline_job()), flush=True)
