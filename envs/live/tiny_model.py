"""A model folder the mocker and the frontend can load, written offline (no Hugging Face download).

The mocker never runs a network: it needs only `config.json` (for the KV bytes per token, which
the deployment overrides anyway) and a tokenizer for the frontend's preprocessor. The tokenizer is
byte-level with no merges, so an ASCII prompt of N characters is exactly N tokens: the live
workload can then build prompts with exact lengths and exact shared prefixes, block for block.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json")


def write_tiny_model(directory: Path) -> Path:
    """Write the model folder (idempotent: the same bytes every time) and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.save(str(directory / "tokenizer.json"))
    _write_json(directory / "tokenizer_config.json", _tokenizer_config())
    _write_json(directory / "config.json", _model_config(len(vocab)))
    _write_json(directory / "generation_config.json", {"bos_token_id": 0, "eos_token_id": 1})
    return directory


def _tokenizer_config() -> dict[str, object]:
    template = (
        "{% for message in messages %}{{ message['content'] }}{% endfor %}"  # raw text: exact token counts
    )
    return {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": False,
        "model_max_length": 1 << 20,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": template,
    }


def _model_config(vocab_size: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "max_position_embeddings": 1 << 20,
        "vocab_size": vocab_size,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
    }


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
