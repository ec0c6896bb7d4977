"""Tokenized data on disk, keyed by what produced it, so a sweep tokenizes a dataset once.

An entry is a directory `<builder>-<digest of keys>` holding ragged token arrays (flat int32 tokens,
an optional per-token loss mask, row offsets) and `meta.json`, which records the keys: the source
fingerprint, the tokenizer fingerprint, max_length, the builder name and version, and the builder's
options. Any change to them (a new tokenizer, an edited local file, a bumped builder version) names a
new entry, which is built afresh; an entry whose recorded keys differ from the run's is refused.
Entries are built in a temporary directory and renamed into place, so a crash leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

META = "meta.json"
TOKEN_DTYPE = np.int32


def tokenizer_fingerprint(tokenizer) -> dict[str, str]:
    """A hash of everything that decides token ids: the fast tokenizer's full definition (vocab, merges,
    normalizer, pre-tokenizer, added tokens) and the special tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; the data builders need one (load it with use_fast=True)"
        )
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return {"class": type(tokenizer).__name__, "sha256": digest.hexdigest()}


@dataclass
class Ragged:
    """Rows of unequal length stored flat: row i is tokens[offsets[i]:offsets[i+1]]."""

    tokens: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class Writer:
    """Appends rows to named ragged arrays in an entry being built."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._files: dict[str, tuple[Any, Any]] = {}
        self._offsets: dict[str, list[int]] = {}

    def append(self, name: str, ids, mask=None) -> None:
        if name not in self._files:
            masked = mask is not None
            self._files[name] = (
                (self.directory / f"{name}.tokens.bin").open("wb"),
                (self.directory / f"{name}.mask.bin").open("wb") if masked else None,
            )
            self._offsets[name] = [0]
        tokens_fh, mask_fh = self._files[name]
        np.asarray(ids, dtype=TOKEN_DTYPE).tofile(tokens_fh)
        if mask_fh is not None:
            np.asarray(mask, dtype=np.bool_).tofile(mask_fh)
        self._offsets[name].append(self._offsets[name][-1] + len(ids))

    def close(self, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """Finish every array; `names` that received no row are written empty."""
        arrays = {}
        for name in names:
            tokens_fh, mask_fh = self._files.pop(name, (None, None))
            for fh in (tokens_fh, mask_fh):
                if fh is not None:
                    fh.close()
            offsets = np.asarray(self._offsets.get(name, [0]), dtype=np.int64)
            np.save(self.directory / f"{name}.offsets.npy", offsets)
            arrays[name] = {"rows": len(offsets) - 1, "tokens": int(offsets[-1]), "mask": mask_fh is not None}
        return arrays


def _load(directory: Path, name: str, info: dict[str, Any]) -> Ragged:
    offsets = np.load(directory / f"{name}.offsets.npy")

    def flat(suffix: str, dtype) -> np.ndarray:
        path = directory / f"{name}.{suffix}.bin"
        if info["tokens"] == 0:
            return np.zeros(0, dtype=dtype)
        if not path.is_file() or path.stat().st_size != info["tokens"] * np.dtype(dtype).itemsize:
            raise ValueError(f"data cache {directory} is damaged ({path.name}); delete the directory to rebuild it")
        return np.memmap(path, dtype=dtype, mode="r")

    if len(offsets) != info["rows"] + 1:
        raise ValueError(f"data cache {directory} is damaged ({name}.offsets.npy); delete the directory to rebuild it")
    return Ragged(flat("tokens", TOKEN_DTYPE), offsets, flat("mask", np.bool_) if info["mask"] else None)


def _canonical(keys: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(keys, sort_keys=True))


def entry_path(cache_dir: str | os.PathLike, keys: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(_canonical(keys), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{keys['builder']}-{digest}"


def load_or_build(
    cache_dir: str | os.PathLike,
    keys: dict[str, Any],
    names: tuple[str, ...],
    build: Callable[[Writer], dict[str, Any]],
) -> tuple[dict[str, Ragged], dict[str, Any]]:
    """The arrays `names` of the entry for `keys`, built by `build(writer)` (which returns stats for
    meta.json) when no entry exists. Returns (arrays, meta)."""
    keys = _canonical(keys)
    path = entry_path(cache_dir, keys)
    if not (path / META).is_file():
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            writer = Writer(tmp)
            stats = build(writer)
            meta = {"keys": keys, "arrays": writer.close(names), "stats": stats, "created": time.time()}
            (tmp / META).write_text(json.dumps(meta, indent=1))
            try:
                tmp.rename(path)
            except OSError:  # another process finished the same entry first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    meta = json.loads((path / META).read_text())
    if meta.get("keys") != keys:
        recorded = meta.get("keys") or {}
        differ = sorted(k for k in set(recorded) | set(keys) if recorded.get(k) != keys.get(k))
        raise ValueError(
            f"data cache {path} was built with different {', '.join(differ)} than this run "
            f"(cache: {[recorded.get(k) for k in differ]}, run: {[keys.get(k) for k in differ]}); "
            f"refusing to train on it: delete {path} or point paths.cache_dir elsewhere"
        )
    return {name: _load(path, name, meta["arrays"][name]) for name in names}, meta
