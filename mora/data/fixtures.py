"""Small offline stand-ins for the paper's hub datasets, in their exact schemas, for the `*_mini`
experiments and the tests (which have no hub access). Content is templated and seeded: it exercises
every code path (multi-turn chats with system prompts, AdaptLLM's connectors and cause/effect
phrases), not the paper's numbers. Written as the formats a user's own copy might come in:

    tulu_v2.jsonl            allenai/tulu-v2-sft-mixture: {dataset, id, messages: [{role, content}]}
    metamath.json            meta-math/MetaMathQA (a JSON list): {type, query, original_question, response}
    pubmed.jsonl.zst         the Pile's PubMed Abstracts, zstd-compressed as the hub holds them:
                             {text: title line + abstract, meta: {pile_set_name}}
    financial_news.parquet   financial news articles: {title, text, url}

    python -m mora.data.fixtures DIR [--n N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly and exactly.")
WORDS = ("lantern", "harbor", "meadow", "cobalt", "ember", "willow", "granite", "falcon")


def tulu_rows(n: int, seed: int = 0) -> list[dict]:
    """Chats of one or two user turns, some with a system prompt."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9)
        word = rng.choice(WORDS)
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if i % 3 == 0 else []
        if i % 2:
            messages += [
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
                {"role": "user", "content": f"And that times {c}?"},
                {"role": "assistant", "content": f"{a + b} times {c} is {(a + b) * c}."},
            ]
        else:
            messages += [
                {"role": "user", "content": f"Spell the word '{word}' backwards.\n"},
                {"role": "assistant", "content": f" '{word}' backwards is '{word[::-1]}'. "},
            ]
        dataset = "fixture_arith" if i % 2 else "fixture_words"
        rows.append({"dataset": dataset, "id": f"fixture_{i}", "messages": messages})
    return rows


def metamath_rows(n: int, seed: int = 0) -> list[dict]:
    """GSM8K-style word problems whose response ends `The answer is: N`, as MetaMathQA's do; the
    GSM_FOBAR rows ask backwards as MetaMathQA's do, on a second line ("If we know the answer to the
    above question is N, what is the value of unknown variable x?")."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = rng.choice(("Ann", "Ben", "Cara", "Dev"))
        have, buy, cost = rng.randint(2, 30), rng.randint(2, 9), rng.randint(2, 9)
        question = (
            f"{name} has {have} apples and buys {buy} bags of {cost} apples each. "
            f"How many apples does {name} have now?"
        )
        total = have + buy * cost
        kind = ("GSM_AnsAug", "GSM_Rephrased", "GSM_FOBAR")[i % 3]
        if kind == "GSM_FOBAR":
            query = (
                question.replace(f"has {have} apples", "has x apples")
                + f"\nIf we know the answer to the above question is {total}, what is the value of unknown variable x?"
            )
            response = (
                f"{name} buys {buy} * {cost} = {buy * cost} apples.\n"
                f"So x + {buy * cost} = {total} and x = {have}.\nThe answer is: {have}"
            )
        else:
            query = question
            response = (
                f"{name} buys {buy} * {cost} = {buy * cost} apples.\n"
                f"So {name} has {have} + {buy * cost} = {total} apples.\nThe answer is: {total}"
            )
        rows.append({"type": kind, "query": query, "original_question": question, "response": response})
    return rows


_DRUGS = (("metformin", "type 2 diabetes"), ("atorvastatin", "hypercholesterolemia"), ("lisinopril", "hypertension"))
_COMPANIES = ("Northwind Holdings", "Contoso Capital", "Fabrikam Industries")


def _abstract(rng: random.Random) -> tuple[str, str]:
    drug, condition = rng.choice(_DRUGS)
    n, weeks, pct, side = rng.randint(80, 900), rng.randint(8, 52), rng.randint(10, 40), rng.randint(2, 9)
    title = f"Effects of {drug} on {condition} in a randomized controlled trial."
    sentences = [
        f"We randomized {n} participants with {condition} to receive {drug} or placebo for {weeks} weeks.",
        f"Treatment with {drug} reduced the primary endpoint by {pct} percent compared with placebo.",
        f"Therefore, {drug} may be considered as a first-line therapy for patients with {condition}.",
        f"However, gastrointestinal complications were reported in {side} percent of the participants.",
        "Moreover, the improvement persisted throughout the twelve month follow-up period.",
        f"The reduction of symptoms occurred because {drug} suppresses the inflammatory pathway.",
        "Persistent inflammation leads to progressive tissue damage in untreated participants.",
        "Similarly, secondary cardiovascular outcomes improved in the intervention group.",
        f"{condition.capitalize()} is defined as a chronic disorder with persistent metabolic dysregulation.",
    ]
    return title, " ".join(sentences[: rng.randint(6, len(sentences))])


def _news(rng: random.Random) -> tuple[str, str]:
    company = rng.choice(_COMPANIES)
    growth, price = rng.randint(2, 25), rng.randint(20, 400)
    title = f"{company} reports {growth} percent quarterly revenue growth"
    sentences = [
        f"{company} reported quarterly revenue growth of {growth} percent on Tuesday, beating analyst expectations.",
        f"The shares closed at {price} dollars after the announcement in afternoon trading.",
        "Therefore, several brokerages raised their price targets for the stock this week.",
        "However, operating margins narrowed as logistics and marketing expenses increased.",
        "Furthermore, management announced a share repurchase program worth two billion dollars.",
        "Investor confidence improved because the company reaffirmed its annual guidance.",
        "Higher borrowing costs led to weaker demand for consumer financing products.",
        "Nevertheless, the company expects international expansion to support profitability.",
        "Free cash flow is defined as operating cash flow minus capital expenditures.",
    ]
    return title, " ".join(sentences[: rng.randint(6, len(sentences))])


def pubmed_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        title, abstract = _abstract(rng)
        rows.append({"text": f"{title}\n{abstract}", "meta": {"pile_set_name": "PubMed Abstracts"}})
    return rows


def news_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        title, text = _news(rng)
        rows.append({"title": title, "text": text, "url": f"https://news.example.com/articles/{i}"})
    return rows


FILE_NAMES = {
    "tulu_v2": "tulu_v2.jsonl",
    "metamath": "metamath.json",
    "pubmed": "pubmed.jsonl.zst",
    "financial_news": "financial_news.parquet",
}


def write_fixtures(directory: str | Path, n: int = 256, seed: int = 0) -> dict[str, Path]:
    """Write every fixture file into `directory`; returns their paths by dataset name."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / file_name for name, file_name in FILE_NAMES.items()}
    paths["tulu_v2"].write_text("".join(json.dumps(r) + "\n" for r in tulu_rows(n, seed)))
    paths["metamath"].write_text(json.dumps(metamath_rows(n, seed), indent=1))
    pubmed = "".join(json.dumps(r) + "\n" for r in pubmed_rows(n, seed)).encode()
    paths["pubmed"].write_bytes(zstandard.ZstdCompressor().compress(pubmed))
    pq.write_table(pa.Table.from_pylist(news_rows(n, seed)), paths["financial_news"])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--n", type=int, default=256, help="rows per dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in write_fixtures(args.directory, args.n, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
