"""The session layer and the library API: prefix reuse, llama.cpp's chat
prompts and greedy answers, threads, cancellation, the context policy."""
from __future__ import annotations

import json
import threading
import time

import pytest

from models import SMOLLM2, golden_path, model_path

import llamalocal
from llamalocal import ContextFullError, InvalidArgumentError


@pytest.fixture(scope="module")
def model():
    return llamalocal.load(model_path(SMOLLM2))


def test_first_answers_match_llama_cpp(model):
    """The rendered prompt's ids are llama.cpp's, and the greedy answer agrees with
    llama.cpp's up to its first near tie (golden/README.md)."""
    golden = json.loads(golden_path("smollm2-135m-q4_1.chat.json").read_text())
    for case in golden["cases"]:
        msgs = case["prompt"]
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
        chat = model.chat(system, temperature=0)
        pieces = chat.send(msgs[-1]["content"], max_tokens=len(case["greedy_ids"]))
        answer = "".join(pieces)
        assert chat.tokens[: len(case["token_ids"])] == case["token_ids"]
        assert chat.stats.n_prompt == len(case["token_ids"])
        generated = chat.tokens[len(case["token_ids"]):]
        sure = next((k for k, m in enumerate(case["greedy_margins"]) if m < 0.5), len(case["greedy_margins"]))
        assert generated[:sure] == case["greedy_ids"][:sure]
        if generated == case["greedy_ids"]:
            assert answer == case["greedy_text"]


def test_reply_reuses_the_cached_prefix_and_answers_as_send_does(model):
    a = model.chat(temperature=0)
    first = "".join(a.send("Name a fruit.", max_tokens=12))
    second = "".join(a.send("Name a vegetable.", max_tokens=12))

    b = model.chat(temperature=0)
    history = [{"role": "user", "content": "Name a fruit."}]
    assert "".join(b.reply(history, max_tokens=12)) == first
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "Name a vegetable."}]
    assert "".join(b.reply(history, max_tokens=12)) == second
    assert b.stats.n_reused == a.stats.n_reused > 0
    assert b.tokens == a.tokens


def test_two_sessions_in_two_threads_give_what_each_gives_alone(model):
    questions = ("Tell me about the moon.", "Tell me about the sun.")
    alone = ["".join(model.chat(temperature=0.8, seed=5).send(q, max_tokens=24)) for q in questions]
    got = [None, None]

    def run(i):
        got[i] = "".join(model.chat(temperature=0.8, seed=5).send(questions[i], max_tokens=24))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == alone


def test_cancel_from_another_thread(model):
    chat = model.chat(temperature=0.8, seed=1)
    cancel = threading.Event()
    seen = []

    def ui():
        while not seen:
            time.sleep(0.01)
        cancel.set()

    threading.Thread(target=ui).start()
    for piece in chat.send("Write a long story about a lighthouse keeper.", max_tokens=2000, cancel=cancel):
        seen.append(piece)
    assert chat.stats.stop_reason == "cancelled"
    assert chat.stats.n_generated < 200
    assert chat.messages[-1]["role"] == "assistant" and chat.messages[-1]["content"] == "".join(seen)


def test_context_policy(model):
    notices = []
    chat = model.chat(temperature=0, on_notice=notices.append)
    chat.cache = model.lm.model.new_cache(160)
    for i in range(8):
        assert "".join(chat.send(f"Give me fact {i} about rivers.", max_tokens=24))
    assert any("dropped the oldest turn" in n for n in notices)
    assert len(chat.tokens) <= 160

    strict = model.chat(temperature=0, context_policy="error")
    strict.cache = model.lm.model.new_cache(160)
    with pytest.raises(ContextFullError, match="context of 160"):
        for i in range(8):
            "".join(strict.send(f"Give me fact {i} about rivers.", max_tokens=24))
    assert strict.messages[-1]["role"] == "assistant"  # the refused question is not kept


def test_generate_stops_on_a_stop_string_and_checks_options(model):
    text = model.complete("One, two, three, four,", max_tokens=24, temperature=0)
    cut = model.complete("One, two, three, four,", max_tokens=24, temperature=0, stop=[" six"])
    assert " six" in text and cut == text[: text.index(" six")]
    with pytest.raises(InvalidArgumentError, match="temprature"):
        model.complete("x", temprature=0)
    ids = model.tokenize("Hello world")
    assert model.detokenize(ids) == "Hello world"
    assert model.logits(ids).shape == (len(ids), model.tokenizer.n_vocab)
