"""llamalocal.Llama runs llama-cpp-python's README examples unchanged but for the import,
and answers in the same shape llama-cpp-python does (compared with it where it is installed)."""
from __future__ import annotations

import pytest

from models import SMOLLM2, model_path

import llamalocal
from llamalocal import InvalidArgumentError


@pytest.fixture(scope="module")
def llm():
    from llamalocal import Llama

    m = Llama(model_path=str(model_path(SMOLLM2)), n_ctx=1024, seed=1)
    yield m
    m.close()


def test_readme_completion(llm):
    output = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\n"], echo=True)
    assert output["object"] == "text_completion"
    text = output["choices"][0]["text"]
    assert text.startswith("Q: Name the planets in the solar system? A: ") and "\n" not in text
    assert output["usage"]["completion_tokens"] <= 32 and output["choices"][0]["finish_reason"] in ("stop", "length")


def test_readme_chat_completion_and_streaming(llm):
    messages = [{"role": "system", "content": "You are an assistant who perfectly describes images."},
                {"role": "user", "content": "Describe this image in detail please."}]
    whole = llm.create_chat_completion(messages=messages, temperature=0, max_tokens=24)
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["role"] == "assistant"
    # a cached prompt has its last token evaluated alone, which rounds differently from the batch it was in
    # (as in llama.cpp); without the cache the same request gives the same text
    llm.reset()
    streamed = "".join(chunk["choices"][0]["delta"].get("content", "")
                       for chunk in llm.create_chat_completion(messages=messages, temperature=0, max_tokens=24,
                                                               stream=True) if chunk["choices"])
    assert streamed == whole["choices"][0]["message"]["content"]


def test_tokens_and_unknown_arguments(llm):
    ids = llm.tokenize(b"Hello world", add_bos=False)
    assert llm.detokenize(ids) == b"Hello world"
    with pytest.raises(InvalidArgumentError, match="mirostat_tau"):
        llm.create_completion("x", mirostat_tau=5.0)
    assert isinstance(llamalocal.Llama, type)


def test_same_shape_as_llama_cpp_python(llm):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python, the reference, is not installed")
    ref = llama_cpp.Llama(model_path=str(model_path(SMOLLM2)), n_ctx=1024, seed=1, verbose=False)
    messages = [{"role": "user", "content": "Say hi."}]
    for ours, theirs in ((llm.create_chat_completion(messages=messages, temperature=0, max_tokens=8),
                          ref.create_chat_completion(messages=messages, temperature=0, max_tokens=8)),
                         (llm("Once upon a time", max_tokens=8, temperature=0),
                          ref("Once upon a time", max_tokens=8, temperature=0))):
        assert set(theirs) <= set(ours), set(theirs) - set(ours)
        assert set(theirs["choices"][0]) <= set(ours["choices"][0])
        assert set(theirs["usage"]) == set(ours["usage"])
        assert theirs["usage"]["prompt_tokens"] == ours["usage"]["prompt_tokens"]


def test_logprobs_in_both_shapes(llm):
    chat = llm.create_chat_completion(messages=[{"role": "user", "content": "Say hi."}], temperature=0, max_tokens=6,
                                      logprobs=True, top_logprobs=2)
    content = chat["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == chat["choices"][0]["message"]["content"]
    assert all(len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["logprob"] == e["logprob"] for e in content)
    with pytest.raises(InvalidArgumentError, match="top_logprobs"):
        llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], top_logprobs=2)
    text = llm("Once upon a time", max_tokens=6, temperature=0, logprobs=2, echo=True)
    lp = text["choices"][0]["logprobs"]
    assert lp["text_offset"][0] == len("Once upon a time") and len(lp["tokens"]) == 6  # from the prompt's start

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python, the reference, is not installed")
    ref = llama_cpp.Llama(model_path=str(model_path(SMOLLM2)), n_ctx=1024, seed=1, verbose=False, logits_all=True)
    theirs = ref("Once upon a time", max_tokens=6, temperature=0, logprobs=2)["choices"][0]["logprobs"]
    ours = llm("Once upon a time", max_tokens=6, temperature=0, logprobs=2)["choices"][0]["logprobs"]
    assert set(theirs) == set(ours) and ours["tokens"] == theirs["tokens"]
    assert ours["text_offset"] == theirs["text_offset"]
    for a, b in zip(ours["token_logprobs"], theirs["token_logprobs"]):
        assert abs(a - b) < 0.05, (ours["token_logprobs"], theirs["token_logprobs"])
    for a, b in zip(ours["top_logprobs"], theirs["top_logprobs"]):
        assert set(a) == set(b)
