"""Where a builder's rows come from: a hub dataset id or local files, with schema checks on every row.

A real run names the hub dataset the paper used (`allenai/tulu-v2-sft-mixture`); a user with a local copy,
and every test, names files instead. Both yield the same rows, so builders never know which it was.
Local formats: .jsonl (one object a line), .json (a list of objects), .parquet, .txt (a whole file is one
row `{"text": ...}`), the text formats also compressed (`.jsonl.zst` as the hub's PubMed abstracts come,
`.jsonl.gz`, `.json.gz`, ...); a directory or a glob pattern stands for every such file it holds, in
sorted order. Local files are always read lazily; `streaming` only adds the seeded buffer shuffle.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEXT_FORMATS = (".jsonl", ".json", ".txt")
COMPRESSIONS = (".gz", ".zst")
LOCAL_SUFFIXES = (*TEXT_FORMATS, ".parquet", *(f + c for f in TEXT_FORMATS for c in COMPRESSIONS))
FORMATS = ".jsonl, .json or .txt (each also as .gz or .zst) or .parquet"

# A schema maps field names to `str`, a nested schema dict, or a one-item list [item schema]; extra
# fields in a row are allowed (hub datasets carry ids and provenance columns).
Schema = dict[str, Any]


def describe(spec: Any) -> str:
    """A schema as a short literal, for error messages: {messages: [{role: str, content: str}]}."""
    if isinstance(spec, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in spec.items()) + "}"
    if isinstance(spec, list):
        return f"[{describe(spec[0])}, ...]"
    return spec.__name__


def _mismatch(value: Any, spec: Any, path: str) -> str | None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{path or 'the row'} is {type(value).__name__}, expected an object"
        for key, sub in spec.items():
            field = f"{path}.{key}" if path else key
            if key not in value:
                return f"field '{field}' is missing (fields present: {sorted(value)})"
            problem = _mismatch(value[key], sub, field)
            if problem:
                return problem
        return None
    if isinstance(spec, list):
        if not isinstance(value, list) or not value:
            shown = "an empty list" if isinstance(value, list) else type(value).__name__
            return f"field '{path}' is {shown}, expected a non-empty list"
        for i, item in enumerate(value):
            problem = _mismatch(item, spec[0], f"{path}[{i}]")
            if problem:
                return problem
        return None
    if not isinstance(value, spec):
        return f"field '{path}' is {type(value).__name__}, expected {spec.__name__}"
    return None


def check_row(row: Any, schema: Schema, where: str) -> None:
    """Raise a ValueError naming the missing or mistyped field and the schema the builder expects."""
    problem = _mismatch(row, schema, "")
    if problem:
        raise ValueError(
            f"{where}: {problem}; this builder expects rows like {describe(schema)}: convert the data to that "
            "schema or pick the data config made for its format"
        )


def looks_local(source: str) -> bool:
    """Paths, globs and file names are local; anything else (`owner/name`) is a hub dataset id."""
    return (
        any(c in source for c in "*?[")
        or source.startswith((".", "/", "~"))
        or source.endswith(LOCAL_SUFFIXES)
        or os.path.exists(source)
    )


def local_format(path: Path) -> str | None:
    """The row format of a local file (.jsonl, .json, .txt or .parquet) under any compression suffix;
    None for a file that is not a source."""
    name = path.name
    for compression in COMPRESSIONS:
        if name.endswith(compression):
            name = name[: -len(compression)]
            return next((f for f in TEXT_FORMATS if name.endswith(f)), None)
    return next((f for f in (*TEXT_FORMATS, ".parquet") if name.endswith(f)), None)


def open_text(path: Path) -> io.TextIOBase:
    """A text stream over a local file, decompressed on the fly (.gz, .zst)."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".zst"):
        import zstandard

        # the Pile's .jsonl.zst files use long-distance windows, beyond zstandard's default limit
        reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(path.open("rb"), closefd=True)
        return io.TextIOWrapper(reader, encoding="utf-8")
    return path.open(encoding="utf-8")


def buffer_shuffle(items: Iterable, seed: int, size: int) -> Iterator:
    """Items in a seeded random order from a buffer of `size` (size 1: the source order), the way a
    stream too large to hold is shuffled."""
    rng, buffer = random.Random(seed), []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


@dataclass
class Source:
    """A hub dataset (id, config, split, revision; streamed when `streaming`) or local files."""

    name: str
    split: str = "train"
    hub_config: str | None = None
    revision: str | None = None
    streaming: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"data source must be a hub dataset id or a local path, got {self.name!r}")
        self.local = looks_local(self.name)
        self.files = _local_files(self.name) if self.local else []

    def fingerprint(self) -> dict[str, Any]:
        """What the cache is keyed on: resolved files with size and mtime, or the hub coordinates."""
        if self.local:
            stats = [(p, p.stat()) for p in self.files]
            return {"files": [{"path": str(p), "size": s.st_size, "mtime_ns": s.st_mtime_ns} for p, s in stats]}
        return {"hub": self.name, "config": self.hub_config, "split": self.split, "revision": self.revision}

    def rows(self, schema: Schema, seed: int | None = None, shuffle_buffer: int = 10_000) -> Iterator[dict]:
        """Every row, schema-checked. `seed` shuffles a stream through a buffer (map-style data is
        shuffled by the builder after caching, so caches do not depend on the seed). A source with no
        row at all is an error that says so, rather than an empty dataset failing later for another reason."""
        if self.local:
            rows = self._local_rows()
            if seed is not None and self.streaming:
                rows = buffer_shuffle(rows, seed, shuffle_buffer)
        else:
            rows = self._hub_rows(seed, shuffle_buffer)
        count = 0
        for where, row in rows:
            check_row(row, schema, where)
            count += 1
            yield row
        if not count:
            what = ", ".join(str(p) for p in self.files) if self.local else f"split {self.split!r}"
            raise ValueError(
                f"data source {self.name!r} holds no rows ({what}); point data.builder.source at a file with "
                f"rows like {describe(schema)}"
            )

    def _local_rows(self) -> Iterator[tuple[str, Any]]:
        for path in self.files:
            kind = local_format(path)
            if kind == ".parquet":
                import pyarrow.parquet as pq

                n = 0
                for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                    for row in batch.to_pylist():
                        yield f"{path} row {n}", row
                        n += 1
                continue
            with open_text(path) as fh:
                if kind == ".txt":
                    yield str(path), {"text": fh.read()}
                elif kind == ".jsonl":
                    for n, line in enumerate(fh, 1):
                        if line.strip():
                            yield f"{path} line {n}", _parse_json(line, f"{path} line {n}")
                else:
                    text = fh.read()
                    if not text.strip():
                        continue  # an empty file holds no rows
                    items = _parse_json(text, str(path))
                    if not isinstance(items, list):
                        raise ValueError(f"{path}: a .json source must hold a list of row objects, not a {type(items).__name__}")
                    for i, item in enumerate(items):
                        yield f"{path} item {i}", item

    def _hub_rows(self, seed: int | None, shuffle_buffer: int) -> Iterator[tuple[str, Any]]:
        from datasets import load_dataset

        dataset = load_dataset(
            self.name, self.hub_config, split=self.split, streaming=self.streaming, revision=self.revision
        )
        if seed is not None and self.streaming:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer)
        label = f"{self.name}" + (f" ({self.hub_config})" if self.hub_config else "") + f" split {self.split}"
        for i, row in enumerate(dataset):
            yield f"{label} row {i}", row


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _fixture_hint(source: str) -> str:
    """The *_mini experiments read fixtures that must be written once; say how when one is missing."""
    from .fixtures import FILE_NAMES

    if Path(source).name not in FILE_NAMES.values():
        return ""
    return f" (an offline fixture: write them with `make fixtures` or `python -m mora.data.fixtures {Path(source).parent}`)"


def _local_files(source: str) -> list[Path]:
    pattern = os.path.expanduser(source)
    if os.path.isdir(pattern):
        found = sorted(p for p in Path(pattern).iterdir() if local_format(p))
    else:
        found = sorted(Path(p) for p in glob.glob(pattern))
    if not found:
        raise ValueError(
            f"data source {source!r} matches no local file (relative paths start at {os.getcwd()}); "
            f"give an existing {FORMATS} file, a directory or a glob, or a hub id like owner/name"
            + _fixture_hint(source)
        )
    unknown = [p for p in found if not local_format(p)]
    if unknown:
        raise ValueError(f"{unknown[0]}: unsupported file type; local sources must be {FORMATS}")
    return [p.resolve() for p in found]
