"""LoRA adapters per session over one loaded model (Transformer.with_lora, Session's
`lora`, the server's per-request `lora` field): each session computes exactly what a
model loaded with only its adapters computes, the base weights are never copied, and
no cache or prompt prefix is reused across adapter sets."""
from __future__ import annotations

import json
import queue
import re
import threading
import urllib.request

import numpy as np
import pytest
from test_lora import seed7  # noqa: F401 (a fixture: make_lora.py's seed-7 adapter)
from test_model import bits

import llamalocal
from llamalocal.chat import encode_chat
from llamalocal.errors import InvalidArgumentError, UnsupportedModelError
from llamalocal.model.lora import load_adapter
from llamalocal.model.transformer import MAX_LORA_VIEWS, Transformer
from llamalocal.server.engine import SERVER_PREFILL_CHUNK, Engine, Job
from llamalocal.session import common_prefix
from models import SMOLLM2, model_path

TURNS = ("Tell me one fact about cats.", "And one about dogs?", "Which of the two is bigger?")


@pytest.fixture(scope="module")
def model():
    """SmolLM2 loaded without adapters: every session below picks its own."""
    return llamalocal.load(model_path(SMOLLM2), n_ctx=256)


def sets(gguf_path) -> dict[str, list]:
    """The adapter sets compared: none, the seed-7 adapter at scale 1, and at scale 0.5."""
    return {"base": [], "full": [(gguf_path, 1.0)], "half": [(gguf_path, 0.5)]}


def same_cache(a, b) -> bool:
    """Two sessions' caches hold the same tokens and the same keys and values, bit for bit."""
    n = len(a.tokens)
    return (a.tokens == b.tokens and a.cache.n_tokens == b.cache.n_tokens == n
            and all(np.array_equal(bits(x[:n]), bits(y[:n])) for x, y in zip(a.cache.k + a.cache.v, b.cache.k + b.cache.v)))


# ---------------------------------------------------------------- the model layer

def test_a_view_shares_every_base_weight(model, seed7):
    """with_lora's view: other layer objects over the same mapped weights; no copy."""
    gguf_path, _ = seed7
    base = model.lm.model
    view = model.transformer([(gguf_path, 0.5)])
    assert view is not base and view.lora_key != base.lora_key and not base.lora
    assert view.tensors is base.tensors and view.config is base.config
    assert view.token_embd is base.token_embd and view.output is base.output
    assert view._layer_tensors is base._layer_tensors
    assert all(v is not b for v, b in zip(view.layers, base.layers))
    mapped = model.lm._file._base  # the array over the file's memory map
    for name in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight"):
        t = view.tensors[name]
        assert t.data.ctypes.data == base.tensors[name].data.ctypes.data
        assert np.shares_memory(t.data, mapped) and not t.data.flags.owndata
    for layer_tensors in view._layer_tensors:  # what the native layers were built from: views into the map
        assert np.shares_memory(layer_tensors["wq"][1], mapped)


def test_views_are_kept_by_adapter_set(model, seed7):
    gguf_path, _ = seed7
    base = model.lm.model
    view = model.transformer([(gguf_path, 0.5)])
    assert model.transformer([(str(gguf_path), 0.5)]) is view  # the same file: the same adapter object
    assert base.with_lora(view.lora) is view and view.with_lora(view.lora) is view
    assert view.with_lora([]) is base and base.with_lora([]) is base  # the loaded model's own set: itself
    assert model.transformer([(gguf_path, 1.0)]) is not view
    # another adapter object read from the same file is another adapter (identity, not contents)
    again = load_adapter(gguf_path, base.config)
    other = base.with_lora([(again, 0.5)])
    assert other is not view and other.lora_key != view.lora_key
    # the memo is bounded: the least recently used view goes first, and is made again on demand
    for k in range(MAX_LORA_VIEWS):
        base.with_lora([(again, 0.01 * (k + 1))])
    remade = base.with_lora([(again, 0.5)])
    assert remade is not other and remade.lora_key == other.lora_key
    ids = model.tokenize("Hello there")
    assert np.array_equal(bits(remade.forward(ids, remade.new_cache(16))), bits(other.forward(ids, other.new_cache(16))))


def test_with_lora_refuses_what_set_lora_refuses(model, seed7):
    gguf_path, _ = seed7
    base = model.lm.model
    view = model.transformer([(gguf_path, 1.0)])
    with pytest.raises(InvalidArgumentError, match="with_lora"):
        view.set_lora([])  # views are shared by sessions: never changed in place
    stories = llamalocal.load(model_path("stories260K.gguf"))
    with pytest.raises(UnsupportedModelError, match=r"blk\.0\.attn_q\.weight\.lora_a.*576.*64x64"):
        stories.transformer([gguf_path])
    adapter = load_adapter(gguf_path, base.config)
    with pytest.raises(InvalidArgumentError, match="finite"):
        base.with_lora([(adapter, float("nan"))])
    with pytest.raises(InvalidArgumentError, match="finite"):
        model.chat(lora=[(gguf_path, float("inf"))])


# ---------------------------------------------------------------- sessions

def test_interleaved_sessions_each_give_what_a_model_with_only_their_adapters_gives(model, seed7):
    """Three sessions over one loaded model (no adapter, the adapter at scale 1, at
    scale 0.5), their turns interleaved: each answer, each cached key and value and
    each logit is what a model loaded with only that session's adapters gives."""
    gguf_path, _ = seed7
    chosen = sets(gguf_path)
    sessions = {name: model.chat(temperature=0, lora=lora) for name, lora in chosen.items()}
    answers: dict[str, list[str]] = {name: [] for name in chosen}
    for turn in TURNS:
        for name, s in sessions.items():
            answers[name].append("".join(s.send(turn, max_tokens=12)))
            assert s.stats.n_reused > 0 or turn == TURNS[0]  # each keeps its own prefix across the others' turns

    for name, lora in chosen.items():
        alone_model = llamalocal.load(model_path(SMOLLM2), n_ctx=256, lora=lora)
        alone = alone_model.chat(temperature=0)
        assert [("".join(alone.send(turn, max_tokens=12))) for turn in TURNS] == answers[name], name
        assert same_cache(sessions[name], alone), name
        ids = sessions[name].tokens
        assert np.array_equal(bits(model.logits(ids, lora=lora)), bits(alone_model.logits(ids))), name
    # the adapters matter: no two sets computed the same cache
    assert not same_cache(sessions["base"], sessions["full"]) and not same_cache(sessions["full"], sessions["half"])
    assert answers["base"] != answers["full"]


def test_switching_a_sessions_adapters_starts_its_cache_again(model, seed7):
    gguf_path, _ = seed7
    s = model.chat(temperature=0)
    first = "".join(s.send(TURNS[0], max_tokens=12))
    base_key = s.cache_lora
    half = model.adapters([(gguf_path, 0.5)])
    s.set_lora(half)
    assert s.tokens == [] and s.cache.n_tokens == 0 and s.cache_lora != base_key
    second = "".join(s.send(TURNS[1], max_tokens=12))
    assert s.stats.n_reused == 0  # nothing of the base model's cache was reused
    fresh = model.chat(temperature=0, lora=half)
    conversation = [{"role": "user", "content": TURNS[0]}, {"role": "assistant", "content": first},
                    {"role": "user", "content": TURNS[1]}]
    assert "".join(fresh.reply(conversation, max_tokens=12)) == second
    assert same_cache(s, fresh)
    view = s.model
    s.set_lora(None)  # back to the loaded model's own adapters (none), the conversation kept
    assert s.model is model.lm.model and s.tokens == [] and len(s.messages) == 4
    s.set_lora(half)
    assert s.model is view  # switching back costs nothing: the same view
    s.set_lora(half)  # the same set again: the cache stays
    "".join(s.send(TURNS[2], max_tokens=4))
    n = len(s.tokens)
    s.set_lora(model.adapters([(gguf_path, 0.5)]))
    assert len(s.tokens) == n > 0


def test_the_loaded_models_set_lora_invalidates_its_sessions_caches(seed7):
    gguf_path, _ = seed7
    m = llamalocal.load(model_path(SMOLLM2), n_ctx=256)
    s = m.chat(temperature=0)
    "".join(s.send(TURNS[0], max_tokens=6))
    m.lm.model.set_lora(m.adapters([gguf_path]))
    "".join(s.send(TURNS[1], max_tokens=6))
    assert s.stats.n_reused == 0 and s.cache_lora == m.lm.model.lora_key


def test_the_loaded_adapters_are_the_default_and_a_session_may_drop_them(seed7):
    gguf_path, _ = seed7
    m = llamalocal.load(model_path(SMOLLM2), n_ctx=256, lora=[(gguf_path, 1.0)])
    assert m.chat().model is m.lm.model
    assert m.chat(lora=[(str(gguf_path), 1.0)]).model is m.lm.model  # the file is the one loaded: the same set
    plain = llamalocal.load(model_path(SMOLLM2), n_ctx=256)
    a, b = m.chat(temperature=0, lora=[]), plain.chat(temperature=0)
    assert "".join(a.send(TURNS[0], max_tokens=12)) == "".join(b.send(TURNS[0], max_tokens=12))
    assert same_cache(a, b)
    assert m.complete("The sea is", max_tokens=8, temperature=0, lora=[]) == plain.complete("The sea is", max_tokens=8,
                                                                                              temperature=0)


def test_a_saved_session_resumes_only_under_its_adapters(model, seed7, tmp_path):
    gguf_path, _ = seed7
    half = [(gguf_path, 0.5)]
    s = model.chat(temperature=0, lora=half)
    "".join(s.send(TURNS[0], max_tokens=8))
    path = s.save(tmp_path / "talk.llsession")
    with pytest.raises(InvalidArgumentError, match=r"smollm2-lora-r16\.gguf x0\.5.*not none"):
        model.load_chat(path)
    with pytest.raises(InvalidArgumentError, match="same adapters"):
        model.load_chat(path, lora=[(gguf_path, 1.0)])
    resumed = model.load_chat(path, lora=half)
    assert resumed.model is s.model and same_cache(resumed, s)
    assert "".join(resumed.send(TURNS[1], max_tokens=8)) == "".join(s.send(TURNS[1], max_tokens=8))
    assert resumed.stats.n_reused > 0


# ---------------------------------------------------------------- the server's engine

def run_jobs(engine: Engine, jobs: list[Job]) -> list[tuple[str, object]]:
    """Submits the jobs and waits for each: (text, stats)."""
    out = []
    for job in jobs:
        events: queue.Queue = queue.Queue()
        job.sink = events.put
        engine.submit(job)
        out.append(events)
    results = []
    for events in out:
        pieces = []
        while True:
            kind, value = events.get(timeout=300)
            if kind == "piece":
                pieces.append(value)
            elif kind == "done":
                results.append(("".join(pieces), value))
                break
            elif kind == "error":
                raise value
    return results


def alone(m, lora, text: str, max_tokens: int) -> str:
    """What a fresh slot computes for a chat request under `lora` (None: the model's own)."""
    s = m.chat(temperature=0, lora=lora)
    s.prefill_chunk = SERVER_PREFILL_CHUNK
    return "".join(s.send(text, max_tokens=max_tokens))


def test_engine_batches_only_slots_under_one_adapter_set(seed7, monkeypatch):
    """Five requests at once (two without adapters, one with the start-time adapter,
    two at another scale): every forward pass is over slots of one adapter set, the
    two without adapters share passes and so do the two at the other scale, and each
    answer is the one it gets alone."""
    gguf_path, _ = seed7
    m = llamalocal.load(model_path(SMOLLM2), n_ctx=256, lora=[(gguf_path, 1.0)])
    engine = Engine(m, n_slots=5)
    calls = []  # per pass: (the adapter set it ran, its sequences, whether each cache's slot is under that set)
    real_forward, real_batch = Transformer.forward, Transformer.forward_batch

    def check(model, caches):  # on the engine's thread: recorded, asserted below
        owners = [s for s in engine.slots if any(s.session.cache is c for c in caches)]
        calls.append((model.lora_key, len(caches), len(owners) == len(caches)
                      and all(o.session.model.lora_key == model.lora_key for o in owners)))

    def forward(self, tokens, cache, *args, **kwargs):
        check(self, [cache])
        return real_forward(self, tokens, cache, *args, **kwargs)

    def forward_batch(self, tokens, seq, caches):
        check(self, caches)
        return real_batch(self, tokens, seq, caches)

    monkeypatch.setattr(Transformer, "forward", forward)
    monkeypatch.setattr(Transformer, "forward_batch", forward_batch)
    half = m.adapters([(gguf_path, 0.5)])
    requests = [([], "Name three fruits."), ([], "Name three rivers."), (None, "Name three colors."),
                (half, "Name three birds."), (half, "Name three trees.")]
    try:
        with m.lock:  # the first pass waits, so the others are admitted beside it
            jobs = [Job(sink=None, messages=[{"role": "user", "content": text}], sampling={"temperature": 0},
                        max_tokens=16, lora=lora) for lora, text in requests]
            events = [queue.Queue() for _ in jobs]
            for job, q in zip(jobs, events):
                job.sink = q.put
                engine.submit(job)
        got = []
        for q in events:
            pieces = []
            while (event := q.get(timeout=300))[0] != "done":
                assert event[0] != "error", event
                if event[0] == "piece":
                    pieces.append(event[1])
            got.append("".join(pieces))
        assert all(ok for _, _, ok in calls), "a pass mixed adapter sets"
        assert engine.n_batched_passes > 0 and any(n > 1 and key == () for key, n, _ in calls), calls
        assert any(n > 1 and key == tuple(half) for key, n, _ in calls), calls
        assert {key for key, _, _ in calls} == {(), m.lm.model.lora_key, tuple(half)}

        # the slot choice: the birds prompt under the start-time set goes to that set's slot
        # (the colors one: the template's head and "Name three" in common), never to the
        # slot holding the very same prompt under the 0.5 set; under 0.5 it goes there
        prompt = [{"role": "user", "content": "Name three birds."}]
        birds = encode_chat(m.tokenizer, m.template, prompt, add_generation_prompt=True)
        colors = encode_chat(m.tokenizer, m.template, [{"role": "user", "content": "Name three colors."}],
                             add_generation_prompt=True)
        (_, other), = run_jobs(engine, [Job(sink=None, messages=prompt, sampling={"temperature": 0}, max_tokens=4)])
        assert other.n_reused == common_prefix(colors, birds) < len(birds) - 1
        (_, same), = run_jobs(engine, [Job(sink=None, messages=prompt, sampling={"temperature": 0}, max_tokens=4,
                                           lora=half)])
        assert same.n_reused == len(birds) - 1  # all of it but the last token, evaluated again for its logits
    finally:
        engine.close()
        monkeypatch.undo()
    assert got == [alone(m, lora, text, 16) for lora, text in requests]
    assert got[0] != alone(m, None, requests[0][1], 16)  # the adapter matters for that prompt


# ---------------------------------------------------------------- over HTTP

def test_server_requests_pick_their_adapters(seed7, tmp_path):
    """`serve --lora`: GET /lora-adapters lists it; concurrent requests with
    different `lora` fields each get the text they get alone; bad fields get 400."""
    pytest.importorskip("openai", reason="the openai client is a test dependency ([test] extra)")
    import openai
    from test_server import post, start

    gguf_path, _ = seed7
    proc, base = start(tmp_path, "--parallel", "4", "--ctx", "512", "--lora", str(gguf_path), "--lora-scale", "1")
    try:
        with urllib.request.urlopen(f"{base}/lora-adapters", timeout=10) as r:
            assert json.load(r) == [{"id": 0, "path": str(gguf_path), "scale": 1.0}]
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=300)
        # the two without adapters share passes (the base model's batched rows are its
        # one-row floats); the three adapter sets differ, so each of those runs alone
        requests = [("chat", None, "Name three fruits."), ("chat", [], "Name three fruits."),
                    ("chat", [{"id": 0, "scale": 0.5}], "Name three fruits."), ("text", [], "The sea is"),
                    ("text", [{"id": 0, "scale": 0.25}], "The moon is")]
        got = [None] * len(requests)

        def run(i):
            kind, lora, text = requests[i]
            extra = {} if lora is None else {"extra_body": {"lora": lora}}
            if kind == "chat":
                r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": text}],
                                                   temperature=0, max_tokens=16, **extra)
                got[i] = r.choices[0].message.content
            else:
                got[i] = client.completions.create(model="x", prompt=text, temperature=0, max_tokens=16,
                                                   **extra).choices[0].text

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)

        m = llamalocal.load(model_path(SMOLLM2), n_ctx=512, lora=[(gguf_path, 1.0)])
        want = []
        for kind, lora, text in requests:
            pairs = None if lora is None else [(gguf_path, e["scale"]) for e in lora]
            if kind == "chat":
                want.append(alone(m, pairs, text, 16))
            else:
                s = m.chat(temperature=0, lora=pairs)
                s.prefill_chunk = SERVER_PREFILL_CHUNK
                want.append("".join(s.complete(text, max_tokens=16)))
        assert got == want
        assert got[0] != got[1]  # the start-time adapter matters for that prompt

        msgs = [{"role": "user", "content": "Hi"}]
        for lora, match in (("all", "must be a list"), ([{"id": 1, "scale": 1}], "no adapter with id 1"),
                            ([{"id": 0}], "lora\\[0\\]"), ([{"id": 0, "scale": "big"}], "finite number"),
                            ([{"id": True, "scale": 1}], "no adapter with id True"),
                            ([{"id": 0, "scale": 1}, {"id": 0, "scale": 2}], "named twice")):
            for path, body in (("/v1/chat/completions", {"messages": msgs}), ("/v1/completions", {"prompt": "Hi"}),
                               ("/api/chat", {"model": "x", "messages": msgs, "stream": False})):
                status, err = post(base, json.dumps({**body, "max_tokens": 2, "lora": lora}).encode(), path)
                assert status == 400 and err["error"]["param"] == "lora", (path, lora, status, err)
                assert err["error"]["type"] == "invalid_request_error"
                assert re.search(match, err["error"]["message"]), (lora, err)
        assert post(base, json.dumps({"messages": msgs, "max_tokens": 2, "lora": []}).encode())[0] == 200  # still up
    finally:
        proc.terminate()
        proc.wait(30)
