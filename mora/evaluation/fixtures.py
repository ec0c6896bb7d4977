"""Small offline stand-ins for the benchmark datasets the eval/ tasks read, each in the exact schema of
its hub dataset, laid out where eval/utils.py's `load_split` looks for local copies: the AdaptLLM
tasks as their hub repositories hold them, the others in this project's own layout:

    DIR/AdaptLLM/<repo>/<folder on the hub>/test.json       e.g. AdaptLLM/finance-tasks/ConviFinQA/test.json
    DIR/<hub path>/<hub config>/<split>.jsonl               e.g. openai/gsm8k/main/test.jsonl

Content is templated and seeded (answers are determined by the text, so a model can learn them); it
exercises the prompts, answer extraction and scoring, not the paper's numbers. MMLU needs no fixture:
the `mmlu_dev` task reads the real dev questions lm-eval ships.

    python -m mora.evaluation.fixtures DIR [--n N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from .harness import eval_utils

MATH_SUBJECTS = (
    "algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory", "prealgebra", "precalculus",
)
BIO_MMLU_SUBJECTS = (
    "anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics", "professional_medicine",
)
NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay")
DRUGS = (("metformin", "type 2 diabetes"), ("atorvastatin", "hypercholesterolemia"), ("lisinopril", "hypertension"),
         ("albuterol", "asthma"))
COMPANIES = ("Northwind Holdings", "Contoso Capital", "Fabrikam Industries", "Tailspin Toys")


def gsm8k_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        name = rng.choice(NAMES)
        have, bags, each = rng.randint(2, 40), rng.randint(2, 9), rng.randint(2, 12)
        total = have + bags * each
        rows.append({
            "question": f"{name} has {have} marbles and buys {bags} bags with {each} marbles in each bag. How many marbles does {name} have now?",
            "answer": f"{name} buys {bags} * {each} = <<{bags}*{each}={bags * each}>>{bags * each} marbles.\n"
            f"{name} has {have} + {bags * each} = <<{have}+{bags * each}={total}>>{total} marbles.\n#### {total:,}",
        })
    return rows


def math_rows(n: int, subject: str, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        if i % 2:
            problem, answer = f"Compute $\\frac{{{a}}}{{{a * b}}}$ in lowest terms.", f"\\frac{{1}}{{{b}}}"
        else:
            problem, answer = f"What is ${a} \\cdot {b}$?", str(a * b)
        rows.append({
            "problem": problem,
            "level": f"Level {rng.randint(1, 5)}",
            "type": subject.replace("_", " ").title(),
            "solution": f"We compute directly: the result is $\\boxed{{{answer}}}$.",
        })
    return rows


def _choice_row(i: int, prompt: str, options: list[str], gold: int) -> dict:
    return {"id": i, "input": prompt, "options": options, "gold_index": gold}


def pubmedqa_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        drug, condition = rng.choice(DRUGS)
        effect = rng.choice(("reduced", "did not change", "may have reduced"))
        gold = {"reduced": 0, "did not change": 1, "may have reduced": 2}[effect]
        prompt = (f"{drug.capitalize()} {effect} symptoms of {condition} in a randomized trial of {rng.randint(50, 900)} patients.\n"
                  f"Question: Does {drug} reduce symptoms of {condition}?\nAnswer:")
        rows.append(_choice_row(i, prompt, ["yes", "no", "maybe"], gold))
    return rows


def usmle_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        drug, condition = rng.choice(DRUGS)
        options = [d for d, _ in DRUGS]
        rng.shuffle(options)
        prompt = (f"A {rng.randint(25, 80)}-year-old patient presents with {condition}. "
                  f"Which drug is the usual first-line treatment?\nAnswer:")
        rows.append(_choice_row(i, prompt, options, options.index(drug)))
    return rows


def rct_rows(n: int, rng: random.Random) -> list[dict]:
    roles = ["background", "objective", "methods", "results", "conclusions"]
    openers = {"background": "It is unknown whether", "objective": "We aimed to test whether", "methods": "We randomized patients to test whether",
               "results": "The primary endpoint showed that", "conclusions": "In conclusion,"}
    rows = []
    for i in range(n):
        drug, condition = rng.choice(DRUGS)
        role = rng.choice(roles)
        prompt = f"Sentence: {openers[role]} {drug} improves {condition}.\nWhat is the role of this sentence in the abstract?\nAnswer:"
        rows.append(_choice_row(i, prompt, roles, roles.index(role)))
    return rows


def mmlu_rows(n: int, subject: str, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        drug, condition = rng.choice(DRUGS)
        choices = [c for _, c in DRUGS]
        rng.shuffle(choices)
        rows.append({"question": f"Which condition is {drug} used to treat?", "subject": subject,
                     "choices": choices, "answer": choices.index(condition)})
    return rows


def sentiment_rows(n: int, rng: random.Random) -> list[dict]:
    words = {0: ("fell", "plunged", "missed forecasts"), 1: ("held steady", "was unchanged", "met forecasts"),
             2: ("rose", "jumped", "beat forecasts")}
    rows = []
    for i in range(n):
        gold = rng.randrange(3)
        prompt = f"{rng.choice(COMPANIES)} shares {rng.choice(words[gold])} on Tuesday.\nQuestion: what is the sentiment?\nAnswer:"
        rows.append(_choice_row(i, prompt, ["negative", "neutral", "positive"], gold))
    return rows


# Headline asks nine yes / no questions of every headline; `class_id` says which (AdaptLLM scores each
# question's F1 apart). The answers follow from the fixture headline's direction, tense and comparison.
HEADLINE_QUESTIONS = (
    ("Does the news headline talk about price going up?", lambda up, future, versus: up),
    ("Does the news headline talk about price going down?", lambda up, future, versus: not up),
    ("Does the news headline talk about price staying constant?", lambda up, future, versus: False),
    ("Does the news headline talk about price in the past?", lambda up, future, versus: not future),
    ("Does the news headline talk about price in the future?", lambda up, future, versus: future),
    ("Does the news headline talk about a general event (apart from prices) in the past?", lambda up, future, versus: False),
    ("Does the news headline talk about a general event (apart from prices) in the future?", lambda up, future, versus: False),
    ("Does the news headline compare gold with any other asset?", lambda up, future, versus: versus),
    ("Does the news headline talk about past price information?", lambda up, future, versus: not future),
)


def headline_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        up, future, versus = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5
        headline = (f"gold prices {'will rise' if future and up else 'will fall' if future else 'rise' if up else 'fall'} "
                    f"{rng.randint(1, 5)} percent{' against silver' if versus else ''}")
        class_id = i % len(HEADLINE_QUESTIONS)
        question, answer = HEADLINE_QUESTIONS[class_id]
        row = _choice_row(i, f"Headline: {headline}\n{question}\nAnswer:", ["Yes", "No"], 0 if answer(up, future, versus) else 1)
        rows.append({**row, "class_id": class_id})
    return rows


def convfinqa_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = rng.randint(100, 900), rng.randint(100, 900)
        prompt = f"Revenue was {a} million in 2019 and {b} million in 2020.\nQuestion: what was the total revenue in both years?\nAnswer:"
        rows.append({"id": f"fixture_{i}", "input": prompt, "label": str(a + b)})
    return rows


def ner_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        company, person = rng.choice(COMPANIES), rng.choice(NAMES)
        city = rng.choice(("London", "Boston", "Lagos", "Osaka"))
        prompt = f"Sentence: {person} joined {company} in {city}.\nList the entities with their types:\n"
        rows.append({"id": f"fixture_{i}", "input": prompt, "label": f"{person} (person), {company} (organization), {city} (location)"})
    return rows


def fixture_tables(n: int = 32, seed: int = 0) -> dict[tuple[str, str, str], list[dict]]:
    """{(hub path, hub config, split): rows} for every dataset an eval/ task reads from the hub."""
    rng = random.Random(seed)
    tables = {("openai/gsm8k", "main", "test"): gsm8k_rows(n, rng)}
    for subject in MATH_SUBJECTS:
        tables[("EleutherAI/hendrycks_math", subject, "test")] = math_rows(max(2, n // 4), subject, rng)
    tables[("AdaptLLM/medicine-tasks", "PubMedQA", "test")] = pubmedqa_rows(n, rng)
    tables[("AdaptLLM/medicine-tasks", "USMLE", "test")] = usmle_rows(n, rng)
    tables[("AdaptLLM/medicine-tasks", "RCT", "test")] = rct_rows(n, rng)
    for subject in BIO_MMLU_SUBJECTS:
        tables[("cais/mmlu", subject, "test")] = mmlu_rows(max(2, n // 4), subject, rng)
        tables[("cais/mmlu", subject, "dev")] = mmlu_rows(5, subject, rng)
    tables[("AdaptLLM/finance-tasks", "FiQA_SA", "test")] = sentiment_rows(n, rng)
    tables[("AdaptLLM/finance-tasks", "FPB", "test")] = sentiment_rows(n, rng)
    tables[("AdaptLLM/finance-tasks", "Headline", "test")] = headline_rows(n, rng)
    tables[("AdaptLLM/finance-tasks", "ConvFinQA", "test")] = convfinqa_rows(n, rng)
    tables[("AdaptLLM/finance-tasks", "NER", "test")] = ner_rows(max(2, n // 2), rng)
    return tables


def fixture_path(root: Path, hub_path: str, config: str, split: str) -> Path:
    """Where a fixture goes: the AdaptLLM repositories' own layout (folder names from eval/utils.py's
    HUB_FOLDERS, `test.json`), else DIR/<hub path>/<config>/<split>.jsonl."""
    if hub_path.startswith("AdaptLLM/"):
        return root / hub_path / eval_utils().HUB_FOLDERS.get((hub_path, config), config) / f"{split}.json"
    return root / hub_path / config / f"{split}.jsonl"


def write_fixtures(directory: str | Path, n: int = 32, seed: int = 0) -> Path:
    """Write every fixture under `directory` (files already there with the same content are kept)."""
    root = Path(directory)
    for (hub_path, config, split), rows in fixture_tables(n, seed).items():
        path = fixture_path(root, hub_path, config, split)
        text = json.dumps(rows, indent=1) if path.suffix == ".json" else "".join(json.dumps(r) + "\n" for r in rows)
        if path.is_file() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent writers never share a temp file
        tmp.write_text(text)
        tmp.replace(path)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--n", type=int, default=32, help="rows per task (MATH and BioMMLU subjects get n/4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_fixtures(args.directory, args.n, args.seed))


if __name__ == "__main__":
    main()
