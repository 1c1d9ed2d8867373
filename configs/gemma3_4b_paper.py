r"""The paper's setting: Gemma 3 4B-it, LoRA r=8 on q/v, 5,000 documents.

Set model.path to a local Hugging Face directory of google/gemma-3-4b-it
(config.json + safetensors; the network is never used). Fine-tune only:

  python -m experiments.finetune --config=configs/gemma3_4b_paper.py \
    --config.model.path=/path/to/gemma-3-4b-it

The whole pipeline:

  python -m experiments.pipeline --config=configs/gemma3_4b_paper.py \
    --config.model.path=/path/to/gemma-3-4b-it

Sizes follow the paper: documents up to 500 tokens, top k=50 eigencomponents
per LoRA matrix, K=500 atoms with sparsity α=0.1, top-20 documents per atom.
Meant for an accelerator (bfloat16 weights; the LoRA tree and the optimiser
state stay in float32).
"""

from configs import common


def get_config():
  c = common.base_config()
  c.run_name = 'gemma3_4b_paper'
  c.model.path = '/path/to/gemma-3-4b-it'  # set this: a local HF directory
  c.model.preset = 'gemma3_4b'  # the shapes, for experiments.plan
  c.model.dtype = 'bfloat16'
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.targets = ('q_proj', 'v_proj')
  c.data.n_docs = 5000
  c.data.max_length = 500
  c.finetune.steps = 1000  # 16k docs ≈ 3.6 epochs of the 4,500 train docs
  c.finetune.batch_size = 16
  c.finetune.learning_rate = 2e-4
  c.finetune.warmup_steps = 50
  c.finetune.checkpoint_every = 100
  c.finetune.eval_every = 100
  c.projection.top_k = 50
  # The paper's reference code ranks and scales by the K-FAC product.
  c.projection.select_by = 'kfac'
  c.projection.scale_by = 'kfac'
  c.dictionary.n_atoms = 500
  c.dictionary.alpha = 0.1
  c.atoms.top_n = 20
  # The paper steered with one atom at a time, unprojected × sqrt λ.
  c.steering.atoms_per_behavior = 1
  c.steering.combine = 'each'
  c.steering.unproject = 'paper'
  return c
