"""What exactly a run read: the content of local files, and the commit a hub revision resolved to.

A local file enters a run's id by the sha256 of its bytes, never by its path, so the same data gives the
same id in any directory or on any machine. Hashing 10 GB takes a while, so each digest is kept in
`<cache>/fingerprints/` under the file's resolved path, with the size, mtime, ctime and inode it had:
a later launch re-hashes the file only when one of those changed (an edit, a copy over it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mora")

CHUNK = 1 << 22
LOG_ABOVE_BYTES = 1 << 28  # say so when hashing takes a noticeable while
_MEMO: dict[tuple, str] = {}  # this process's digests, by (path, stat)


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def file_digest(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 of a file's bytes, from the cache while the file's stat is unchanged."""
    path = Path(path).resolve()
    stat = _stat_key(path)
    memo_key = (str(path), *stat.values())
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    entry = Path(cache_dir) / "fingerprints" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json") if cache_dir else None
    if entry is not None and entry.is_file():
        try:
            cached = json.loads(entry.read_text())
            if cached.get("path") == str(path) and cached.get("stat") == stat:
                _MEMO[memo_key] = cached["sha256"]
                return cached["sha256"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable: hash again and rewrite it
    if stat["size"] > LOG_ABOVE_BYTES:
        log.info("hashing %s (%.1f GB) once for the run id; later launches reuse the digest", path, stat["size"] / 1e9)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    _MEMO[memo_key] = value
    if entry is not None:
        _write_entry(entry, {"path": str(path), "stat": stat, "sha256": value})
    return value


def _write_entry(entry: Path, record: dict[str, Any]) -> None:
    """Best effort: a read-only or full cache only costs a re-hash next time."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record))
        tmp.replace(entry)
    except OSError as exc:
        log.debug("cannot cache the digest of %s in %s: %s", record["path"], entry.parent, exc)


def content_fingerprint(files: list[Path], cache_dir: str | os.PathLike | None = None) -> list[str]:
    """The files' digests in the order they are read, each with the suffix that decides how it is parsed."""
    return [f"{Path(p).suffix}:{file_digest(p, cache_dir)}" for p in files]


def directory_fingerprint(directory: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Every file under a directory (a local model) by its relative path and digest."""
    root = Path(directory)
    return {str(p.relative_to(root)): file_digest(p, cache_dir) for p in sorted(root.rglob("*")) if p.is_file()}


def hub_revision(repo_type: str, name: str, revision: str | None) -> str | None:
    """The commit `revision` (a branch, tag or commit; None = main) of a hub repository resolves to: asked
    of the hub when online, else read from the local hub cache; None when neither knows."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        from huggingface_hub import HfApi, constants
    except ImportError:
        return None
    if not constants.HF_HUB_OFFLINE:
        try:
            info = HfApi().repo_info(name, repo_type=repo_type, revision=revision)
            return info.sha
        except Exception as exc:  # no network, no access: fall back to what the cache holds
            log.debug("cannot resolve %s %s@%s on the hub: %s", repo_type, name, revision, exc)
    ref = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{name.replace('/', '--')}" / "refs" / (revision or "main")
    return ref.read_text().strip() if ref.is_file() else None
