"""bench/train_bench.py compares like with like: no side builds a KV cache while it trains, and each row
starts from an empty Dynamo cache (a row that exhausted the recompile limit left later rows eager on the
H200, bench/RESULTS.md)."""

import random
import sys

import torch

from runner import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import train_bench  # noqa: E402


def test_every_side_trains_without_kv_cache_and_rows_start_from_a_clean_dynamo(tmp_path, monkeypatch):
    from transformers import LlamaModel

    rng = random.Random(0)
    words = ["river", "stone", "light", "north", "garden", "letter", "morning", "silver", "harbour", "field"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a", "b"):
        (corpus / f"{name}.txt").write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(400)))

    seen = []
    forward = LlamaModel.forward

    def spy(self, *args, **kwargs):  # the real forward runs; only what it was asked is noted
        seen.append((self.training, self.config.use_cache))
        return forward(self, *args, **kwargs)

    resets = []
    reset = torch._dynamo.reset
    monkeypatch.setattr(LlamaModel, "forward", spy)
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (resets.append(1), reset()))
    train_bench.main(["--preset", "tiny", "--modes", "eager", "--only", "frozen base,LoRA r8",
                      "--corpus", str(corpus / "*.txt"), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "train_bench.md").read_text()
    assert all(f"| {side} | {row} | eager |" in table
               for side, row in [("floor", "frozen base"), ("ours", "LoRA r8"), ("peft", "LoRA r8")]), table
    assert "error" not in (tmp_path / "out" / "train_bench.jsonl").read_text()
    assert any(training for training, _ in seen)
    assert all(use_cache is False for training, use_cache in seen if training)
    assert len(resets) >= 4  # after the warm-up and after each of the three rows
