"""Render docs/cost.md's table from `bench/cost_table.py`'s raw records (cost*.jsonl).

    python bench/cost_report.py bench/results/2026-12-02-h200/cost_call*.jsonl

For each measured shape x cost class: the paper step time projected from the measured steps
(accumulation x seconds per micro-batch), tokens/s, peak memory, and the GPU-hours of the whole paper
run on 1 H200 and on 8 (8 = ideal data parallelism: the step's micro-batches split over 8 GPUs at the
same per-GPU speed; the 2-GPU ZeRO-2 run of 2026-11-28 scaled 2.04x, bench/RESULTS.md). Later records
of a (shape, row) replace earlier ones; failed records are listed with their error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Optimizer steps of each paper run (rows x epochs / global batch, or the step count the paper gives).
PAPER_STEPS = {
    "tulu_mmlu": (5096, "326k Tulu v2 rows x 2 epochs / batch 128 (paper Sec. 4.2, Table 5)"),
    "metamath_gsm8k": (9258, "395k MetaMathQA rows x 3 epochs / batch 128 (paper Sec. 4.2, Table 5)"),
    "uuid_memorization": (1000, "10k pairs x 100 epochs / batch 1000 (paper Sec. 4.1)"),
    "c4_pretrain_250m": (10000, "10k steps (paper Sec. 4.4)"),
    "c4_pretrain_1b": (10000, "10k steps (paper Sec. 4.4)"),
}
PER_BILLION = ("biomed_cpt", "finance_cpt")  # the paper gives no corpus size: GPU-hours per 1B tokens


def load(paths: list[str]) -> list[dict]:
    latest: dict[tuple, dict] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            record = json.loads(line)
            key = (record["shape"], record["row"])
            if "error" not in record or key not in latest or "error" in latest[key]:
                latest[key] = record
    return list(latest.values())


def hours(record: dict, experiment: str) -> str:
    if experiment in PER_BILLION:
        one = 1e9 / record["tokens_per_second"] / 3600
        return f"{one:,.1f} / {one / 8:,.1f} per 1B tokens"
    steps = PAPER_STEPS[experiment][0]
    one = steps * record["paper_step_s"] / 3600
    return f"{one:,.1f} / {one / 8:,.1f}"


def table(records: list[dict]) -> str:
    lines = [
        "| experiment | method (cost class) | micro x seq | paper step s | tokens/s | peak GiB | GPU-h: 1 H200 / 8 |",
        "|---|---|---|---|---|---|---|",
    ]
    failed = []
    for record in records:
        if "error" in record:
            failed.append(f"- {record['shape']} {record['row']}: {record['error']}")
            continue
        seq = record["seq"] if record["seq"] else "UUID pairs"
        for experiment in record["covers"]:
            lines.append(
                f"| {experiment} | {record['row']} | {record['micro_batch']} x {seq} | {record['paper_step_s']:.2f} | "
                f"{record['tokens_per_second']:,.0f} | {record['peak_memory_gib']:.1f} | {hours(record, experiment)} |"
            )
    body = lines[:2] + sorted(lines[2:])
    if failed:
        body += ["", "Not measured:", *failed]
    return "\n".join(body)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    print(table(load(argv)))
    print()
    print("Paper steps: " + "; ".join(f"{k} {v[0]:,} ({v[1]})" for k, v in PAPER_STEPS.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
