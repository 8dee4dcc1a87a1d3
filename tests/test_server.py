"""`llamalocal serve` driven by the official `openai` and `ollama` clients, on loopback."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from models import SMOLLM2, TESTS_DIR, model_path

openai = pytest.importorskip("openai", reason="the openai client is a test dependency ([test] extra)")
ollama = pytest.importorskip("ollama", reason="the ollama client is a test dependency ([test] extra)")

KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "LLAMALOCAL_HOME": str(tmp_path_factory.mktemp("home"))}
    proc = subprocess.Popen([sys.executable, "-m", "llamalocal.cli", "serve", str(model_path(SMOLLM2)), "--port", str(port),
                             "--parallel", "2", "--ctx", "1024", "--api-key", KEY, "--name", "smollm2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TESTS_DIR)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if json.load(r)["status"] == "ok":
                    break
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None:
                pytest.fail(f"the server exited: {proc.stderr.read()}")
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the server did not come up in 120 s")
    yield base
    proc.terminate()
    proc.wait(30)


def post(base: str, data: bytes, path: str = "/v1/chat/completions") -> tuple[int, dict]:
    """POSTs a JSON body; (status, the JSON answer), error statuses included."""
    req = urllib.request.Request(base + path, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def oa(base: str):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_openai_chat_streaming_and_not(server):
    client = oa(server)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    full = client.chat.completions.create(model="gpt-4o", messages=messages, temperature=0, max_tokens=16)
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.completion_tokens <= 16 and full.usage.prompt_tokens > 10
    pieces, usage, finish = [], None, None
    for chunk in client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=16,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == text  # the same greedy answer, streamed
    assert usage.completion_tokens == full.usage.completion_tokens and finish == full.choices[0].finish_reason
    assert [m.id for m in client.models.list().data] == ["smollm2"]


def test_openai_completion_stop_and_seed(server):
    client = oa(server)
    r = client.completions.create(model="x", prompt="One, two, three, four,", max_tokens=24, temperature=0)
    text = r.choices[0].text
    assert " six" in text
    cut = client.completions.create(model="x", prompt="One, two, three, four,", max_tokens=24, temperature=0,
                                    stop=[" six"]).choices[0].text
    assert cut == text[: text.index(" six")]
    a = [client.completions.create(model="x", prompt="Once upon a time", max_tokens=12, temperature=0.9,
                                   seed=42).choices[0].text for _ in range(2)]
    assert a[0] == a[1]


def test_errors_in_openai_shape(server):
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    client = oa(server)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[], max_tokens=4)
    assert "messages" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "word " * 2000}], max_tokens=4)
    assert "context" in str(e.value)
    # a body over the limit is refused from its announced length, before it is read
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(9 << 20))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "too_large"
    conn.close()


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - np.logaddexp.reduce(x)


def test_openai_logprobs(server):
    """Chat and text logprobs in OpenAI's shapes, each value the log-softmax of
    the model's logits at that position (recomputed here from one forward pass
    over prompt and answer), the chosen token first among the alternatives at
    temperature 0; streamed chunks carry the same entries as the whole answer."""
    from llamalocal.api import load

    client = oa(server)
    messages = [{"role": "user", "content": "Name three colors."}]
    full = client.chat.completions.create(model="x", messages=messages, temperature=0, max_tokens=10, logprobs=True,
                                          top_logprobs=3)
    content = full.choices[0].logprobs.content
    assert len(content) == full.usage.completion_tokens == 10
    assert "".join(e.token for e in content) == full.choices[0].message.content
    for e in content:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == e.logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token

    session = load(model_path(SMOLLM2), n_ctx=256).chat(temperature=0)  # the same answer, its token ids kept
    assert "".join(session.reply(messages, max_tokens=10)) == full.choices[0].message.content
    ids = session.tokens  # the prompt, then the 10 tokens answered
    m = session.lm.model
    rows = m.forward(ids, m.new_cache(256), all_logits=True)[len(ids) - 11 : -1]
    for e, t, row in zip(content, ids[-10:], rows):
        assert abs(e.logprob - log_softmax(row)[t]) < 0.05, (e.token, e.logprob, log_softmax(row)[t])

    streamed = []
    for chunk in client.chat.completions.create(model="x", messages=messages, temperature=0, max_tokens=10,
                                                logprobs=True, top_logprobs=3, stream=True):
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                streamed += c.logprobs.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]

    text = client.completions.create(model="x", prompt="One, two, three,", max_tokens=6, temperature=0, logprobs=2)
    lp = text.choices[0].logprobs
    assert "".join(lp.tokens) == text.choices[0].text and len(lp.token_logprobs) == 6
    # offsets count from the prompt's start, as OpenAI's and llama-cpp-python's do
    assert lp.text_offset == [len("One, two, three,") + sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert all(len(top) <= 2 and max(top.values()) == v for top, v in zip(lp.top_logprobs, lp.token_logprobs))
    none = client.chat.completions.create(model="x", messages=messages, temperature=0, max_tokens=4)
    assert none.choices[0].logprobs is None

    for kwargs in ({"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="x", messages=messages, max_tokens=2, **kwargs)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="x", prompt="Hi", max_tokens=2, logprobs=6)


def test_ollama_client(server):
    client = ollama.Client(host=server, headers={"Authorization": f"Bearer {KEY}"})
    r = client.chat(model="smollm2", messages=[{"role": "user", "content": "Say hi."}], options={"temperature": 0,
                                                                                                 "num_predict": 8})
    assert r.message.content and r.done and r.eval_count <= 8 and r.prompt_eval_count > 0
    streamed = "".join(part.message.content for part in client.chat(
        model="smollm2", messages=[{"role": "user", "content": "Say hi."}], options={"temperature": 0, "num_predict": 8},
        stream=True))
    assert streamed == r.message.content
    g = client.generate(model="smollm2", prompt="Say hi.", options={"temperature": 0, "num_predict": 8})
    assert g.response == r.message.content  # /api/generate applies the template, as ollama does
    raw = client.generate(model="smollm2", prompt="One, two, three,", raw=True, options={"temperature": 0, "num_predict": 6})
    assert "four" in raw.response
    assert [m.model for m in client.list().models] == ["smollm2"]
    assert client.show("smollm2").details.family == "llama"


def test_two_requests_at_once_and_prefix_reuse(server):
    client = oa(server)
    convo = [{"role": "user", "content": "Name three fruits."}]
    answers = {}

    def ask(key, msgs):
        answers[key] = client.chat.completions.create(model="x", messages=msgs, temperature=0, max_tokens=24)

    threads = [threading.Thread(target=ask, args=(k, [{"role": "user", "content": q}]))
               for k, q in (("a", "Name three fruits."), ("b", "Name three rivers."))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers["a"].choices[0].message.content and answers["b"].choices[0].message.content
    alone = client.chat.completions.create(model="x", messages=convo, temperature=0, max_tokens=24)
    assert alone.choices[0].message.content == answers["a"].choices[0].message.content
    # the conversation's next turn goes to the slot that holds it, which evaluates only the new turn
    first = alone.usage.prompt_tokens + alone.usage.completion_tokens
    convo += [{"role": "assistant", "content": alone.choices[0].message.content},
              {"role": "user", "content": "And three vegetables?"}]
    nxt = client.chat.completions.create(model="x", messages=convo, temperature=0, max_tokens=8)
    assert nxt.choices[0].message.content
    with urllib.request.urlopen(f"{server}/health", timeout=10) as r:
        slots = json.load(r)["slots"]
    reused = max(s["last_prompt_reused"] for s in slots)
    assert reused >= first - 1, (reused, first, slots)
    assert min(s["last_prompt_evaluated"] for s in slots if s["last_prompt_reused"] == reused) < 20


def start(tmp_path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llamalocal.cli", "serve", str(model_path(SMOLLM2)), "--port",
                             str(port), *args], env={**os.environ, "LLAMALOCAL_HOME": str(tmp_path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=TESTS_DIR)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return proc, base
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None:
                pytest.fail(f"the server exited: {proc.stderr.read()}")
            time.sleep(0.2)
    proc.kill()
    pytest.fail("the server did not come up")


def health(base: str) -> list[dict]:
    with urllib.request.urlopen(f"{base}/health", timeout=10) as r:
        return json.load(r)["slots"]


def test_eight_concurrent_streams_get_what_each_gets_alone(tmp_path):
    """Alone: a fresh session in this process (what a fresh slot computes, the same
    prompt chunks).  Together the streams share forward passes; SmolLM2's Q4_1 and
    Q8_0 batch kernels give each row the one-row kernel's floats, so the texts are
    the same to the character."""
    from llamalocal.api import load
    from llamalocal.server.engine import SERVER_PREFILL_CHUNK

    requests = [("chat", f"Tell me one fact about the number {i}.") for i in range(4)]
    requests += [("text", f"The {w} is") for w in ("sea", "moon", "forest", "city")]
    model = load(model_path(SMOLLM2), n_ctx=512)
    alone = []
    for kind, text in requests:
        s = model.chat(temperature=0)
        s.prefill_chunk = SERVER_PREFILL_CHUNK
        pieces = s.send(text, max_tokens=24) if kind == "chat" else s.complete(text, max_tokens=24)
        alone.append("".join(pieces))

    proc, base = start(tmp_path, "--parallel", "8", "--ctx", "512")
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=300)
        got = [None] * len(requests)

        def run(i):
            kind, text = requests[i]
            if kind == "chat":
                chunks = client.chat.completions.create(model="x", messages=[{"role": "user", "content": text}],
                                                        temperature=0, max_tokens=24, stream=True)
                got[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                chunks = client.completions.create(model="x", prompt=text, temperature=0, max_tokens=24, stream=True)
                got[i] = "".join(c.choices[0].text for c in chunks if c.choices)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert got == alone
        with urllib.request.urlopen(f"{base}/health", timeout=10) as r:
            engine = json.load(r)["engine"]
        assert engine["batched_passes"] > 0 and engine["most_sequences_in_a_pass"] >= 2, engine  # decoded together
    finally:
        proc.terminate()
        proc.wait(30)


def test_disconnect_frees_the_slot_and_bad_requests_keep_it_up(tmp_path):
    proc, base = start(tmp_path, "--parallel", "1", "--ctx", "1024")
    try:
        body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "Write a very long story."}],
                           "max_tokens": 900, "temperature": 0.8, "seed": 3, "stream": True}).encode()
        host, port = base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        for _ in range(5):
            assert r.readline().startswith((b"data:", b"\r\n", b"\n", b": ping"))
        conn.close()  # the client goes away mid-answer
        for _ in range(200):  # bounded wait for the engine to notice
            slot = health(base)[0]
            if not slot["busy"]:
                break
            time.sleep(0.05)
        assert not slot["busy"] and slot["last_stop"] == "cancelled" and slot["last_generated"] < 900, slot

        msgs = [{"role": "user", "content": "Hi"}]
        for data, code in ((b"{not json", 400), (json.dumps({"messages": "hi"}).encode(), 400),
                           (json.dumps({"messages": msgs, "max_tokens": "ten"}).encode(), 400),
                           (json.dumps({"messages": msgs, "max_tokens": 5000}).encode(), 400),
                           (json.dumps({"messages": msgs, "n": 2}).encode(), 400)):
            status, err = post(base, data)
            assert status == code and err["error"]["message"], (data, status, err)

        # many requests at once: the slot and the queue take what they can, the rest get 503, all in JSON
        statuses = []
        lock = threading.Lock()

        def one():
            status, reply = post(base, json.dumps({"messages": msgs, "max_tokens": 2, "temperature": 0}).encode())
            with lock:
                statuses.append((status, "error" in reply))

        threads = [threading.Thread(target=one) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert {s for s, _ in statuses} <= {200, 503} and (503, True) in statuses and (200, False) in statuses
        assert post(base, json.dumps({"messages": msgs, "max_tokens": 2}).encode())[0] == 200  # still up
    finally:
        proc.terminate()
        proc.wait(30)
