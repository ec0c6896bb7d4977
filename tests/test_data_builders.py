"""Data builders on local fixtures in the hub schemas: loss masks token by token, packing, held-out
text, schema errors, the registry, the AdaptLLM miners and the tokenized-data cache."""

import json
import re

import numpy as np
import pytest

from mora.data import build_task
from mora.data import corpus as corpus_module
from mora.data.adaptllm import MINERS, mine, reading_comprehension
from mora.data.collate import IGNORE_INDEX
from mora.data.fixtures import news_rows, pubmed_rows, tulu_rows, write_fixtures
from mora.data.rows import PackedRows, StreamingPackedRows, permutation
from mora.data.sources import Source, buffer_shuffle
from mora.models import char_tokenizer

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n"
)
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  Hi there \n"},
        {"role": "assistant", "content": " Hello! \n"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
}
CHAT_TEXT = "<|system|>\nBe brief.\n<|user|>\nHi there\n<|assistant|>\nHello!</s>\n<|user|>\n2+2?\n<|assistant|>\n4</s>"
MATH = {"query": "What is 2+3?", "response": "2+3=5.\nThe answer is: 5"}


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE trained on the fixtures: merges, so tokens and characters differ."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    texts = [m["content"] for r in tulu_rows(64) for m in r["messages"]] + [ALPACA, CHAT_TEXT, MATH["response"]]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def build(task, tokenizer, source, cache, **options):
    return build_task(task, tokenizer, source=str(source), cache_dir=str(cache), **{"max_length": 512, **options})


def marked(tokenizer, row):
    """(token, carries loss) for every position of a row."""
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(row["input_ids"], row["labels"]))
    return [(t, lab != IGNORE_INDEX) for t, lab in zip(tokens, row["labels"])]


def char_marks(*segments):
    """Expected (token, carries loss) of the char tokenizer: one token per character, `<s>`, `</s>` one each."""
    return [(t, loss) for text, loss in segments for t in re.findall(r"</?s>|.", text, re.S)]


def test_tulu_chat_text_and_assistant_only_loss(tmp_path, tok):
    task = build("tulu_v2", tok, write_jsonl(tmp_path / "chat.jsonl", [CHAT]), tmp_path / "cache")
    assert task.render(CHAT)[0] == CHAT_TEXT
    (row,) = list(task.train_dataset())
    assert marked(tok, row) == char_marks(
        ("<s><|system|>\nBe brief.\n<|user|>\nHi there\n<|assistant|>\n", False),
        ("Hello!</s>", True),
        ("\n<|user|>\n2+2?\n<|assistant|>\n", False),
        ("4</s>", True),
    )


def test_tulu_loss_mask_with_a_subword_tokenizer(tmp_path, bpe):
    task = build("tulu_v2", bpe, write_jsonl(tmp_path / "chat.jsonl", [CHAT]), tmp_path / "cache")
    (row,) = list(task.train_dataset())
    ids = row["input_ids"]
    assert ids == [bpe.bos_token_id] + bpe(CHAT_TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(CHAT_TEXT)  # merges happened
    loss_ids = [i for i, lab in zip(ids, row["labels"]) if lab != IGNORE_INDEX]
    assert bpe.decode(loss_ids) == "Hello!</s>4</s>"
    assert loss_ids.count(bpe.eos_token_id) == 2 and ids.count(bpe.eos_token_id) == 2


def test_metamath_alpaca_prompt_and_response_only_loss(tmp_path, tok, bpe):
    path = tmp_path / "math.json"
    path.write_text(json.dumps([MATH]))
    task = build("metamath", tok, path, tmp_path / "cache")
    text = ALPACA + MATH["query"] + "\n\n### Response:" + MATH["response"] + "</s>"
    assert task.render(MATH)[0] == text
    (row,) = list(task.train_dataset())
    prompt = "<s>" + ALPACA + MATH["query"] + "\n\n### Response:"
    assert marked(tok, row) == char_marks((prompt, False), (MATH["response"] + "</s>", True))
    (row,) = list(build("metamath", bpe, path, tmp_path / "cache").train_dataset())
    loss_ids = [i for i, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE_INDEX]
    assert bpe.decode(loss_ids) == MATH["response"] + "</s>"


ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n"
)
# A MetaMathQA GSM_FOBAR row in the hub's schema (invented content): the backward question is on a
# second line, which MetaMath's training code passes as the Alpaca input.
FOBAR = {
    "type": "GSM_FOBAR",
    "query": "Tom reads x pages a day for 3 days. How many pages does he read?\n"
    "If we know the answer to the above question is 12, what is the value of unknown variable x?",
    "original_question": "Tom reads 4 pages a day for 3 days. How many pages does he read?",
    "response": "Tom reads 3 * x = 12 pages, so x = 4.\nThe answer is: 4",
}


def test_a_multi_line_metamath_query_renders_with_the_input_template(tmp_path, tok):
    path = tmp_path / "math.json"
    path.write_text(json.dumps([FOBAR, MATH]))
    task = build("metamath", tok, path, tmp_path / "cache")
    instruction, rest = FOBAR["query"].split("\n", 1)
    prompt = ALPACA_INPUT + instruction + "\n\n### Input:\n" + rest + "\n\n### Response:"
    assert task.render(FOBAR)[0] == prompt + FOBAR["response"] + "</s>"
    assert task.render(MATH)[0].startswith(ALPACA + MATH["query"] + "\n\n### Response:")  # one line: no input
    two = {"query": "Line one\nline two\nline three", "response": "r"}
    assert "### Instruction:\nLine one\n\n### Input:\nline two\nline three\n\n### Response:r</s>" in task.render(two)[0]
    assert task.render({"query": "Ends with a new line\n", "response": "r"})[0].startswith(ALPACA)  # empty input
    rows = [marked(tok, r) for r in build("metamath", tok, path, tmp_path / "cache", seed=0).train_dataset()]
    fobar = next(r for r in rows if "".join(t for t, _ in r).count("### Input:") == 1)
    assert fobar == char_marks(("<s>" + prompt, False), (FOBAR["response"] + "</s>", True))


def test_truncation_keeps_the_head_and_drops_examples_without_loss(tmp_path, tok):
    late = {"messages": [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "late"}]}
    source = write_jsonl(tmp_path / "chat.jsonl", [CHAT, late])
    task = build("tulu_v2", tok, source, tmp_path / "cache", max_length=60)
    rows = list(task.train_dataset())
    assert len(rows) == 1  # `late` has no reply token within 60 tokens
    assert rows[0]["input_ids"] == [tok.bos_token_id] + tok(CHAT_TEXT, add_special_tokens=False)["input_ids"][:59]
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("tulu_v2-*/meta.json")]
    assert meta["stats"] == {"examples": 1, "truncated": 2, "dropped_no_loss_token": 1}
    with pytest.raises(ValueError, match="no example keeps a loss-carrying token.*raise data.builder.max_length"):
        build("tulu_v2", tok, source, tmp_path / "cache", max_length=5).train_dataset()


def test_rows_are_shuffled_by_seed(tmp_path, tok):
    source = write_jsonl(tmp_path / "chat.jsonl", tulu_rows(12))
    firsts = {
        seed: [r["input_ids"] for r in build("tulu_v2", tok, source, tmp_path / "cache", seed=seed).train_dataset()]
        for seed in (0, 0, 1)
    }
    again = [r["input_ids"] for r in build("tulu_v2", tok, source, tmp_path / "cache", seed=0).train_dataset()]
    assert firsts[0] == again and firsts[0] != firsts[1] and sorted(firsts[0]) == sorted(firsts[1])
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the cache does not depend on the seed


def test_packing_keeps_every_token_and_puts_eos_between_documents(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(corpus_module, "PIECE_CHARS", 40)  # also exercise the cutting of long texts
    docs = [f"document {i}: " + "lorem ipsum\n" * (i + 1) for i in range(9)]
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    task = build("c4", tok, source, tmp_path / "cache", max_length=32, seed=3)
    rows = task.train_dataset()
    order = permutation(len(docs), 3)
    encoded = [[tok.bos_token_id, *tok(d, add_special_tokens=False)["input_ids"], tok.eos_token_id] for d in docs]
    stream = [t for k in order for t in encoded[k]]
    packed = [t for r in rows for t in r["input_ids"]]
    assert packed == stream
    assert all(len(r["input_ids"]) == 32 for r in list(rows)[:-1]) and 0 < len(rows[len(rows) - 1]["input_ids"]) <= 32
    assert all(r["labels"] == r["input_ids"] for r in rows)
    assert packed.count(tok.eos_token_id) == len(docs)
    # the streaming packer (hub C4) cuts the same stream into the same rows
    streamed = StreamingPackedRows(lambda: (encoded[k] for k in order), 32)
    assert list(streamed) == list(rows)
    ragged = PackedRows(rows.docs, np.arange(len(docs)), 1000)
    assert len(ragged) == 1 and ragged[0]["input_ids"][-1] == tok.eos_token_id


def test_text_files_hold_out_the_tail_of_each_file(tmp_path, tok):
    (tmp_path / "txt").mkdir()
    texts = {name: "".join(f"{name} line {i}\n" for i in range(100)) for name in ("a", "b")}
    for name, text in texts.items():
        (tmp_path / "txt" / f"{name}.txt").write_text(text)
    task = build("c4", tok, tmp_path / "txt" / "*.txt", tmp_path / "cache", max_length=4096, holdout_fraction=0.05)
    train = tok.decode(task.train_dataset()[0]["input_ids"])
    val = tok.decode(task.validation_dataset()[0]["input_ids"])
    for name, text in texts.items():
        head, tail = text.split(f"{name} line 95\n")
        assert f"<s>{head}</s>" in train and f"<s>{name} line 95\n{tail}</s>" in val
    assert "line 94" not in val and "line 96" not in train
    with pytest.raises(ValueError, match="no validation data"):
        build("c4", tok, tmp_path / "txt", tmp_path / "cache").validation_dataset()


def _compress(path, text: str, kind: str):
    import gzip

    import zstandard

    data = text.encode()
    path.write_bytes(gzip.compress(data) if kind == "gz" else zstandard.ZstdCompressor().compress(data))
    return path


def test_compressed_local_files_read_as_their_plain_form(tmp_path, tok):
    """.jsonl.zst (PubMed on the hub), .jsonl.gz and .json.gz give the rows, and the tokens, of the
    uncompressed file."""
    rows = pubmed_rows(5)
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    plain = build("biomed_cpt", tok, write_jsonl(tmp_path / "plain.jsonl", rows), tmp_path / "cache", max_length=64)
    expected = [r["input_ids"] for r in plain.train_dataset()]
    for name, text, kind in (("a.jsonl.zst", lines, "zst"), ("b.jsonl.gz", lines, "gz"), ("c.json.gz", json.dumps(rows), "gz")):
        path = _compress(tmp_path / name, text, kind)
        assert list(Source(str(path)).rows({"text": str})) == rows
        task = build("biomed_cpt", tok, path, tmp_path / "cache", max_length=64)
        assert [r["input_ids"] for r in task.train_dataset()] == expected
    (tmp_path / "dir").mkdir()
    _compress(tmp_path / "dir" / "part.jsonl.zst", lines, "zst")
    (tmp_path / "dir" / "notes.md").write_text("not data")
    assert len(list(Source(str(tmp_path / "dir")).rows({"text": str}))) == 5  # a directory lists .zst files


def test_streaming_packs_and_holds_out_like_the_cached_path(tmp_path, tok):
    """A streamed corpus is cut, tokenized and packed by the same functions: read through the cache
    (`streaming: true`) it is the non-streaming dataset; packed on the fly (`cache_tokens: false`, no
    shuffle) its train rows are the cached documents packed in source order, and its validation rows
    (held-out tails from the stream's head) are the cached validation rows."""
    source = write_jsonl(tmp_path / "docs.jsonl", pubmed_rows(12))
    options = dict(max_length=48, holdout_fraction=0.2, validation_sequences=4, seed=5)
    cached = build("biomed_cpt", tok, source, tmp_path / "cache", **options)
    streamed = build("biomed_cpt", tok, source, tmp_path / "cache", streaming=True, **options)
    assert list(streamed.train_dataset()) == list(cached.train_dataset())
    on_the_fly = build("biomed_cpt", tok, source, tmp_path / "cache", streaming=True, cache_tokens=False,
                       shuffle_buffer=1, **options)
    docs = cached._documents()["train"]
    in_order = list(PackedRows(docs, np.arange(len(docs)), 48))
    first = list(on_the_fly.train_dataset())
    assert len(first) == len(in_order) > 20 and first == in_order
    validation = list(on_the_fly.validation_dataset())
    assert len(validation) == 4 and validation == list(cached.validation_dataset())
    shuffled = [r["input_ids"] for r in build("biomed_cpt", tok, source, tmp_path / "cache", streaming=True,
                                              cache_tokens=False, **options).train_dataset()]
    assert shuffled != [r["input_ids"] for r in first] and sum(map(len, shuffled)) == sum(len(r["input_ids"]) for r in first)


def test_buffer_shuffle_is_a_seeded_permutation():
    items = list(range(50))
    once = list(buffer_shuffle(items, seed=1, size=8))
    assert sorted(once) == items and once != items and once == list(buffer_shuffle(items, seed=1, size=8))
    assert list(buffer_shuffle(items, seed=1, size=1)) == items
    assert list(buffer_shuffle(items, seed=2, size=8)) != once


SCHEMA_ERRORS = [
    ("tulu_v2", "jsonl", [{"id": "x"}], r"line 1: field 'messages' is missing \(fields present: \['id'\]\).*\{messages: \[\{role: str, content: str\}"),
    ("tulu_v2", "jsonl", [CHAT, {"messages": [{"role": "user", "content": 3}]}], r"line 2: field 'messages\[0\]\.content' is int, expected str"),
    ("tulu_v2", "jsonl", [{"messages": []}], r"field 'messages' is an empty list, expected a non-empty list"),
    ("tulu_v2", "jsonl", [{"messages": [{"role": "bot", "content": "hi"}]}], r"messages\[0\] has role 'bot'.*Tulu roles are"),
    ("metamath", "json", [{"query": "q", "output": "a"}], r"item 0: field 'response' is missing.*\{query: str, response: str\}"),
    ("metamath", "json", {"query": "q"}, r"must hold a list of row objects, not a dict"),
    ("metamath", "txt", "some text", r"field 'query' is missing \(fields present: \['text'\]\)"),
    ("c4", "jsonl", [{"content": "words"}], r"field 'text' is missing.*\{text: str\}"),
    ("finance_cpt", "parquet", news_rows(2), None),
]


@pytest.mark.parametrize("task,fmt,content,message", SCHEMA_ERRORS)
def test_schema_is_checked_with_a_message_that_names_the_field(tmp_path, tok, task, fmt, content, message):
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, content)
    elif fmt == "json":
        path.write_text(json.dumps(content))
    elif fmt == "txt":
        path.write_text(content)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(content), path)
    options = {"title_field": "headline"} if task == "finance_cpt" else {}
    message = message or r"row 0: field 'headline' is missing.*\{text: str, headline: str\}"
    with pytest.raises(ValueError, match=message):
        build(task, tok, path, tmp_path / "cache", **options).train_dataset()
    assert not list((tmp_path / "cache").glob("*/meta.json"))  # nothing half-built is kept


def test_bad_sources_and_options(tmp_path, tok):
    (tmp_path / "bad.jsonl").write_text('{"query": "q", "response": "r"}\n{"query": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: not valid JSON"):
        build("metamath", tok, tmp_path / "bad.jsonl", tmp_path).train_dataset()
    with pytest.raises(ValueError, match=r"matches no local file") as missing:
        build("metamath", tok, tmp_path / "missing.jsonl", tmp_path)
    assert "make fixtures" not in str(missing.value)  # only the fixtures' own names get the hint
    with pytest.raises(ValueError, match=rf"an offline fixture: write them with `make fixtures` or "
                                         rf"`python -m mora.data.fixtures {re.escape(str(tmp_path))}`"):
        build("metamath", tok, tmp_path / "metamath.json", tmp_path)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unsupported file type"):
        build("metamath", tok, tmp_path / "*.csv", tmp_path)
    with pytest.raises(ValueError, match=r"unknown data builder 'alpaca'; choose one of \['biomed_cpt', 'c4'"):
        build_task("alpaca", tok)
    with pytest.raises(ValueError, match=r"data builder 'metamath' takes no option\(s\) \['max_len'\]; allowed: \["):
        build_task("metamath", tok, source="x.json", cache_dir=str(tmp_path), max_len=5)
    with pytest.raises(ValueError, match=r"data builder 'c4'.*missing a required argument: 'source'"):
        build_task("c4", tok, max_length=8, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"max_length must be a positive integer"):
        build("c4", tok, tmp_path / "bad.jsonl", tmp_path, max_length=0)
    with pytest.raises(ValueError, match=r"unknown or no miners \['gossip'\]"):
        build("biomed_cpt", tok, tmp_path / "bad.jsonl", tmp_path, miners=["nli", "gossip"])
    with pytest.raises(ValueError, match=r"validation_split names a hub split"):
        build("c4", tok, tmp_path / "bad.jsonl", tmp_path, validation_split="validation", validation_sequences=4)
    with pytest.raises(ValueError, match=r"cache_tokens=false with holdout_fraction needs data.builder.validation_sequences"):
        build("c4", tok, tmp_path / "bad.jsonl", tmp_path, streaming=True, cache_tokens=False, holdout_fraction=0.1)


def test_adaptllm_miners_on_a_document():
    text = (
        "Aspirin and bleeding risk in older adults.\n"
        "Aspirin irreversibly inhibits platelet aggregation in most treated adults. "
        "Therefore, bleeding complications become more frequent during long treatment. "
        "However, the absolute risk remained low in the randomized cohort studied here. "
        "Similarly, the gastrointestinal findings were consistent across the subgroups. "
        "Gastric ulcers developed because prostaglandin synthesis was suppressed in the mucosa. "
        "Chronic inflammation leads to progressive fibrosis of the gastric wall. "
        "Dyspepsia is defined as persistent pain in the upper abdomen."
    )
    found = mine(text, None, "biomedicine")
    assert set(found) == set(MINERS) and all(found[m] for m in MINERS), {m: len(v) for m, v in found.items()}
    assert found["summarize"] == [("What is a suitable title for the text above?", "Aspirin and bleeding risk in older adults.")]
    nli = dict((q.split("Hypothesis: ")[1].split("\n")[0], a) for q, a in found["nli"])
    assert nli == {
        '"Bleeding complications become more frequent during long treatment."': "Yes",
        '"The absolute risk remained low in the randomized cohort studied here."': "No",
    }
    assert ('What is the cause of "Gastric ulcers developed"?', "Prostaglandin synthesis was suppressed in the mucosa.") in found["commonsense"]
    assert ('What is the effect of "Chronic inflammation"?', "Progressive fibrosis of the gastric wall.") in found["commonsense"]
    assert ("How is Dyspepsia defined?", "Persistent pain in the upper abdomen.") in found["word_to_text"]
    assert found["paraphrase"][0][1] == "The gastrointestinal findings were consistent across the subgroups."
    document = reading_comprehension(text, None, "biomedicine", max_per_miner=1)
    assert document.startswith(text + "\n\nQuestion: What is a suitable title")
    assert document.count("\nAnswer: ") == len(MINERS)
    assert reading_comprehension("Short text without patterns.", None, "finance") == "Short text without patterns."
    assert reading_comprehension(text, None, "biomedicine") == reading_comprehension(text, None, "biomedicine")


def test_cpt_builders_pack_reading_comprehension_documents(tmp_path, tok):
    paths = write_fixtures(tmp_path / "fixtures", n=4)
    bio = build("biomed_cpt", tok, paths["pubmed"], tmp_path / "cache", max_length=128)
    fin = build("finance_cpt", tok, paths["financial_news"], tmp_path / "cache", max_length=128, title_field="title")
    for task, rows, title in ((bio, pubmed_rows(4), None), (fin, news_rows(4), "title")):
        text = tok.decode([t for r in task.train_dataset() for t in r["input_ids"]])
        docs = [reading_comprehension(r["text"], r.get(title), task.domain) for r in rows]
        assert sorted(text.split("</s>")[:-1]) == sorted(f"<s>{d}" for d in docs)
        assert all("\n\nQuestion: " in d for d in docs)


def test_cache_is_reused_and_rebuilt_when_the_tokenizer_changes(tmp_path, tok, monkeypatch):
    from mora.data.chat import ChatTask

    builds = []
    original = ChatTask._build
    monkeypatch.setattr(ChatTask, "_build", lambda self, writer: builds.append(1) or original(self, writer))
    source = write_jsonl(tmp_path / "chat.jsonl", tulu_rows(6))
    cache = tmp_path / "cache"
    first = [r["input_ids"] for r in build("tulu_v2", tok, source, cache).train_dataset()]
    again = [r["input_ids"] for r in build("tulu_v2", tok, source, cache).train_dataset()]
    assert first == again and len(builds) == 1
    other = char_tokenizer("".join(reversed(char_tokenizer().convert_ids_to_tokens(list(range(4, len(tok)))))))
    changed = [r["input_ids"] for r in build("tulu_v2", other, source, cache).train_dataset()]
    assert len(builds) == 2 and changed != first
    assert len(list(cache.glob("tulu_v2-*/meta.json"))) == 2
    build("tulu_v2", tok, source, cache, max_length=256).train_dataset()
    assert len(builds) == 3  # max_length is part of the key
    write_jsonl(tmp_path / "chat.jsonl", tulu_rows(7))  # an edited local file is a new source
    assert len(build("tulu_v2", tok, source, cache).train_dataset()) == 7 and len(builds) == 4


def test_a_cache_whose_keys_differ_is_refused(tmp_path, tok):
    source = write_jsonl(tmp_path / "chat.jsonl", tulu_rows(3))
    build("tulu_v2", tok, source, tmp_path / "cache").train_dataset()
    (meta_path,) = (tmp_path / "cache").glob("tulu_v2-*/meta.json")
    original = meta_path.read_text()
    meta = json.loads(original)
    meta["keys"]["tokenizer"]["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"built with different tokenizer than this run.*refusing to train on it: delete"):
        build("tulu_v2", tok, source, tmp_path / "cache").train_dataset()
    meta_path.write_text(original)
    meta_path.parent.joinpath("train.tokens.bin").write_bytes(b"\0\0")
    with pytest.raises(ValueError, match=r"is damaged \(train.tokens.bin\); delete the directory"):
        build("tulu_v2", tok, source, tmp_path / "cache").train_dataset()


def test_the_local_bpe_is_trained_once_and_cached_whole(tmp_path, monkeypatch):
    """A grid's parallel runs all train the tokenizer of llama_*_local at once: the cache file appears
    whole or not at all (written through a renamed temporary), and the cached one is the trained one."""
    import tokenizers

    from mora.data.cache import tokenizer_fingerprint
    from mora.models import local_bpe_tokenizer

    text = tmp_path / "a.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good fortune.\n" * 20)
    cache = tmp_path / "cache"
    with monkeypatch.context() as patch:
        patch.setattr("mora.runs.os.fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):
            local_bpe_tokenizer(str(text), 400, str(cache))
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no half-written tokenizer.json, no temporary
    trained = local_bpe_tokenizer(str(text), 400, str(cache))
    assert len(trained) == 400 and len(list(cache.rglob("tokenizer.json"))) == 1
    monkeypatch.setattr(tokenizers.Tokenizer, "train", lambda *a, **k: pytest.fail("trained again"))
    cached = local_bpe_tokenizer(str(text), 400, str(cache))
    assert tokenizer_fingerprint(cached) == tokenizer_fingerprint(trained)
    assert cached("a single man")["input_ids"] == trained("a single man")["input_ids"]
