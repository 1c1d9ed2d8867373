r"""Paper-scale plan without the hardware: per stage, bytes per device, FLOPs
and projected wall time on named accelerators (gatoms_jax/pipeline/plan.py).

  python -m experiments.plan --config=configs/gemma3_4b_paper.py \
    --mesh=data:1,model:1
  python -m experiments.plan --config=configs/gemma3_4b_paper.py \
    --mesh=data:8,model:1 --devices=8
  # parameters sharded too (FSDP over data, tensor parallelism over model)
  python -m experiments.plan --config=configs/gemma3_4b_paper.py \
    --mesh=data:4,model:2 --devices=8 --shard_params

--devices=N fakes N CPU devices (set before JAX starts its backend). The
last stdout line is one JSON object.
"""

import json
import os
import sys

# --devices must reach XLA before jax is imported (by _app below).
for _arg in sys.argv[1:]:
  if _arg.startswith('--devices='):
    _n = int(_arg.split('=', 1)[1])
    if _n > 1:
      _flags = [
        f
        for f in os.environ.get('XLA_FLAGS', '').split()
        if not f.startswith('--xla_force_host_platform_device_count')
      ]
      os.environ['XLA_FLAGS'] = ' '.join(
        _flags + [f'--xla_force_host_platform_device_count={_n}']
      )
      os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from experiments import _app  # noqa: E402
from absl import app, flags, logging  # noqa: E402

_MESH = flags.DEFINE_string(
  'mesh', 'data:-1,model:1', 'Mesh axes name:size (-1: the remaining devices).'
)
_DEVICES = flags.DEFINE_integer(
  'devices', 1, 'Fake CPU devices (XLA_FLAGS) when > 1.'
)
_SHARD_PARAMS = flags.DEFINE_bool(
  'shard_params',
  False,
  'Shard the frozen base, LoRA and AdamW state by sharding.param_shardings '
  "(FSDP over 'data', tensor parallelism over 'model'); default: replicated, "
  'as the stages run today.',
)
_STAGES = flags.DEFINE_list('stages', [], 'Stages to plan; empty: all.')
_EFFICIENCY = flags.DEFINE_float(
  'flop_efficiency',
  None,
  'Fraction of peak FLOP/s assumed; default: the '
  "plan module's DEFAULT_FLOP_EFFICIENCY.",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from gatoms_jax.pipeline import plan

  config = _app.resolved_config()
  mesh = plan.build_mesh(plan.parse_mesh(_MESH.value))
  result = plan.plan_run(
    config,
    mesh,
    stages=tuple(_STAGES.value) or plan.STAGES,
    flop_efficiency=_EFFICIENCY.value or plan.DEFAULT_FLOP_EFFICIENCY,
    shard_params=_SHARD_PARAMS.value,
    log=logging.info,
  )
  print(plan.format_table(result))
  print(json.dumps(result))


if __name__ == '__main__':
  _app.launch(main)
