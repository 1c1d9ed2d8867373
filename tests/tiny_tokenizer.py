"""A byte-level ChatML tokenizer (259 ids) that builds in milliseconds.

Tests use it instead of the embedded SmolLM2 tokenizer, whose GGUF conversion
takes 10-20 s; `save(dir)` gives a directory that `load_tokenizer` (and so
`--config.model.tokenizer=DIR`) reads.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHATML = (
  '{% for m in messages %}<|im_start|>{{ m["role"] }}\n{{ m["content"] }}'
  '<|im_end|>\n{% endfor %}'
  '{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}'
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
  """256 byte tokens (no merges) + <|im_end|>, <|endoftext|>, <|im_start|>."""
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  tok = Tokenizer(
    models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[])
  )
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  return PreTrainedTokenizerFast(
    tokenizer_object=tok,
    chat_template=CHATML,
    eos_token='<|im_end|>',
    pad_token='<|endoftext|>',
    additional_special_tokens=['<|im_start|>'],
  )


def save(directory: str) -> str:
  tiny_tokenizer().save_pretrained(directory)
  return directory
