"""AdaptLLM-style reading comprehension (Cheng et al., 2023, "Adapting Large Language Models via Reading
Comprehension"), which the paper applies to its continual-pretraining corpora: each raw document is
followed by question/answer tasks mined from its own sentences by regular expressions, so that
training on domain text also keeps the model able to answer questions about what it reads.

Miners implemented here (each with one fixed template; AdaptLLM samples among many per task type):
- summarize: the document's title (a title field, or a short first line) answers "What is a suitable
  title for the text above?".
- word_to_text: (a) a sentence holding >= 3 long words (>= 10 letters, standing in for AdaptLLM's
  domain-specific words, which it finds with a SentencePiece vocabulary trained on the domain; common
  long words and the connectors below do not count) answers
  "Write a sentence about {domain} that uses these words: ..."; (b) "X is defined as / refers to Y."
  gives "How is X defined?" -> Y.
- nli: two adjacent sentences, the second opening with a connector: Therefore / Thus / Hence /
  Accordingly / Consequently -> entailment ("Yes"); However / But / In contrast / On the contrary ->
  contradiction ("No"); Moreover / Furthermore / Additionally / In addition / Also -> neutral
  ("It is not possible to tell").
- commonsense: cause and effect inside one sentence: "A because (of) / due to / owing to B" -> "What
  is the cause of A?" -> B; "A leads to / led to / results in / resulted in / gives rise to B" -> "What is
  the effect of A?" -> B.
- paraphrase: a sentence opening with Similarly / Likewise / In other words / That is supports the one
  before it ("Compose a sentence that supports ..."); Nevertheless / Nonetheless / On the other hand /
  Conversely contradicts it ("... that contradicts ...").
- text_completion: the document's first sentences (up to 6) split in half: the first half is the
  prompt, the second half the answer.
At most `max_per_miner` tasks per miner and document (AdaptLLM keeps 2 per sub-category). Not
implemented: AdaptLLM's domain SentencePiece, template sampling, and mixing in general instruction
data. The output depends only on the text, so it is deterministic.
"""

from __future__ import annotations

import re

MINERS = ("summarize", "word_to_text", "nli", "commonsense", "paraphrase", "text_completion")
MIN_SENTENCE_CHARS = 30
TITLE_MAX_WORDS = 30

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_NLI = {
    "Yes": ("Therefore", "Thus", "Hence", "Accordingly", "Consequently"),
    "No": ("However", "But", "In contrast", "On the contrary"),
    "It is not possible to tell": ("Moreover", "Furthermore", "Additionally", "In addition", "Also"),
}
_PARAPHRASE = {
    "supports": ("Similarly", "Likewise", "In other words", "That is"),
    "contradicts": ("Nevertheless", "Nonetheless", "On the other hand", "Conversely"),
}
_CAUSE = re.compile(r"^(?P<effect>.{20,}?),?\s+(?:because(?: of)?|due to|owing to)\s+(?P<cause>.{10,}?)[.!?]$")
_EFFECT = re.compile(
    r"^(?P<cause>.{20,}?)\s+(?:leads to|led to|results in|resulted in|gives rise to)\s+(?P<effect>.{10,}?)[.!?]$"
)
_DEFINITION = re.compile(r"^(?P<term>[A-Z][^,.;:]{2,60}?)\s+(?:is defined as|refers to)\s+(?P<definition>[^.]{10,})\.$")
_LONG_WORD = re.compile(r"\b[A-Za-z][a-z]{9,}\b")
# Long words that say nothing about a domain: the connectors above and common English.
_COMMON_LONG = {w.lower() for group in (*_NLI.values(), *_PARAPHRASE.values()) for w in group} | {
    "approximately", "considered", "especially", "everything", "particular",
    "previously", "respectively", "significant", "significantly", "themselves", "throughout",
}


def split_title(text: str, title: str | None) -> tuple[str | None, str]:
    """(title, body): the given title, or else a first line of at most 30 words followed by more text."""
    if title:
        return title.strip(), text
    first, _, rest = text.strip().partition("\n")
    if rest.strip() and len(first.split()) <= TITLE_MAX_WORDS:
        return first.strip(), rest
    return None, text


def sentences(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        out.extend(s.strip() for s in _SENTENCE_END.split(line.strip()) if s.strip())
    return out


def _strip_connector(sentence: str, connectors: tuple[str, ...]) -> tuple[str, str] | None:
    for word in connectors:
        if sentence.startswith(word + ",") or sentence.startswith(word + " "):
            rest = sentence[len(word) :].lstrip(", ")
            if rest:
                return word, rest[0].upper() + rest[1:]
    return None


def _clause(text: str) -> str:
    return text[0].upper() + text[1:] if text else text


def mine(text: str, title: str | None, domain: str) -> dict[str, list[tuple[str, str]]]:
    """Every (question, answer) each miner finds in one document, in document order."""
    title, body = split_title(text, title)
    sents = sentences(body)
    found: dict[str, list[tuple[str, str]]] = {m: [] for m in MINERS}
    if title and sents:
        found["summarize"].append(("What is a suitable title for the text above?", title))
    for s in sents:
        words = [w for w in dict.fromkeys(w.lower() for w in _LONG_WORD.findall(s)) if w not in _COMMON_LONG]
        if len(words) >= 3 and len(s) >= MIN_SENTENCE_CHARS:
            question = f"Write a sentence about {domain} that uses these words: {', '.join(words[:3])}."
            found["word_to_text"].append((question, s))
        if m := _DEFINITION.match(s):
            found["word_to_text"].append((f"How is {m['term']} defined?", _clause(m["definition"]) + "."))
        if m := _CAUSE.match(s):
            found["commonsense"].append((f'What is the cause of "{m["effect"]}"?', _clause(m["cause"]) + "."))
        elif m := _EFFECT.match(s):
            found["commonsense"].append((f'What is the effect of "{m["cause"]}"?', _clause(m["effect"]) + "."))
    for first, second in zip(sents, sents[1:]):
        if len(first) < MIN_SENTENCE_CHARS or len(second) < MIN_SENTENCE_CHARS:
            continue
        for answer, connectors in _NLI.items():
            if hit := _strip_connector(second, connectors):
                question = f'Premise: "{first}"\nHypothesis: "{hit[1]}"\nDoes the premise entail the hypothesis?'
                found["nli"].append((question, answer))
        for relation, connectors in _PARAPHRASE.items():
            if hit := _strip_connector(second, connectors):
                found["paraphrase"].append((f'Compose a sentence that {relation} this one: "{first}"', hit[1]))
    opening = sents[:6]
    if len(opening) >= 4:
        half = len(opening) // 2
        found["text_completion"].append(
            (f'How would you continue a text that begins: "{" ".join(opening[:half])}"?', " ".join(opening[half:]))
        )
    return found


def reading_comprehension(
    text: str, title: str | None, domain: str, miners: tuple[str, ...] = MINERS, max_per_miner: int = 2
) -> str:
    """The raw text, then each mined task as `Question: ...\\nAnswer: ...`, blank lines between."""
    found = mine(text, title, domain)
    tasks = [f"Question: {q}\nAnswer: {a}" for m in miners for q, a in found[m][:max_per_miner]]
    return "\n\n".join([text.strip(), *tasks])
