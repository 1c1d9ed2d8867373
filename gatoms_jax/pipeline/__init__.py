"""The end-to-end pipeline: resumable stages with manifests."""

from gatoms_jax.pipeline.manifest import STAGES, stage_keys
from gatoms_jax.pipeline.run import parse_stages, run

__all__ = ['STAGES', 'parse_stages', 'run', 'stage_keys']
