"""Vocabularies -> GGUF tokenizer metadata (``tokenizer.ggml.*``), as llama.cpp's converter writes it.

* `spm_vocab`: a SentencePiece ``tokenizer.model`` -> model "llama" (tokens, scores, token types).
* `hf_vocab`: a Hugging Face tokenizer directory.  A byte-level BPE
  ``tokenizer.json`` becomes model "gpt2" (tokens in id order, token types,
  merges, and the pre-tokenizer name); otherwise ``tokenizer.model`` is read
  with `spm_vocab`.  Special token ids come from ``tokenizer_config.json``
  (looked up by text), then ``config.json``, ``special_tokens_map.json`` and
  ``generation_config.json``, the first one found winning; add_bos/add_eos from
  ``tokenizer.json``'s post-processor template, overridden by
  ``tokenizer_config.json``; the chat template from ``tokenizer_config.json``
  (or ``chat_template.jinja`` / ``chat_template.json``).

Pre-tokenizer detection.  llama.cpp's converter names the pre-tokenizer by
hashing the ids the Hugging Face tokenizer gives for a test text, which needs
``transformers``.  Here the ``pre_tokenizer`` steps of ``tokenizer.json``
(Split regexes, ByteLevel, Digits, Punctuation) and its normalizer are matched
against the pre-tokenizers llamalocal implements (`tokenizer.bpe.PRE_REGEXES`):
a Split step must carry exactly one of the regexes llama.cpp uses for that
name (HF's ``(?i:'s|'t|...)`` spelled as llama.cpp spells it).  An unknown
structure gives "default" and a warning.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CheckpointError
from ..io.gguf_metadata import (
    MetaValue,
    V,
    array,
    boolean,
    string,
    tokenizer_metadata,
    u32,
)
from ..io.safetensors import read_json
from .bpe import PRE_REGEXES
from .spm import load_sentencepiece

__all__ = ["spm_vocab", "hf_vocab", "detect_pre", "TT_NORMAL", "TT_UNKNOWN", "TT_CONTROL", "TT_USER_DEFINED",
           "TT_UNUSED", "TT_BYTE"]

TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6
_K = "tokenizer.ggml."
MAX_SPM_BYTES = 256 * 1024 * 1024
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_ID_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
            "pad": "padding_token_id", "cls": "cls_token_id", "mask": "mask_token_id"}


# -- SentencePiece ---------------------------------------------------------------------------------------


def _looks_like_tiktoken(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            first = fh.readline(200)
    except OSError:
        return False
    return re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+\r?\n?", first) is not None


def spm_vocab(model_path: str | Path, vocab_size: Optional[int] = None) -> dict[str, MetaValue]:
    """GGUF tokenizer metadata of a SentencePiece ``tokenizer.model``.

    ``vocab_size`` (the model's embedding rows) pads the list with
    ``[PAD{i}]`` UNUSED entries, as llama.cpp does."""
    path = Path(model_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such SentencePiece tokenizer file")
    if _looks_like_tiktoken(path):
        raise CheckpointError(f"{path}: this is a tiktoken (Llama 3 style) tokenizer, not SentencePiece; "
                              f"convert the Hugging Face release (tokenizer.json) instead")
    if path.stat().st_size > MAX_SPM_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes is too large for a SentencePiece model")
    try:
        plain = load_sentencepiece(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    n = len(plain[_K + "tokens"])
    size = n if vocab_size is None else int(vocab_size)
    if size < n:
        raise CheckpointError(f"{path}: the tokenizer has {n} tokens but the model's vocabulary has only {size}")
    plain[_K + "tokens"] = plain[_K + "tokens"] + [f"[PAD{i}]" for i in range(n, size)]
    plain[_K + "scores"] = plain[_K + "scores"] + [-10000.0] * (size - n)
    plain[_K + "token_type"] = [t if 1 <= t <= 6 else TT_NORMAL for t in plain[_K + "token_type"]] + [TT_UNUSED] * (size - n)
    # llama.cpp writes add_space_prefix for SentencePiece vocabularies only where it is off (on is llama's default)
    if plain[_K + "add_space_prefix"]:
        del plain[_K + "add_space_prefix"]
    return tokenizer_metadata(plain)


# -- pre-tokenizer detection -----------------------------------------------------------------------------

_HF_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_CPP_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"


def _split(regex: str):
    return ("split", regex)


# (llama.cpp pre name, allowed normalizer types, steps); a digits step with None accepts either setting
_KNOWN_PRE = [
    ("llama-bpe", (None,), [_split(PRE_REGEXES["llama3"][0]), ("bytelevel", False)]),
    ("qwen2", (None, "NFC"), [_split(PRE_REGEXES["qwen2"][0]), ("bytelevel", False)]),
    ("smollm", (None,), [("digits", True), ("bytelevel", True)]),
    ("gpt-2", (None,), [("bytelevel", True)]),
    ("deepseek-llm", (None,), [_split(r) for r in PRE_REGEXES["deepseek-llm"][:5]]
     + [("digits", False), ("bytelevel", False)]),
    ("deepseek-coder", (None,), [_split(r) for r in PRE_REGEXES["deepseek-coder"][:4]]
     + [("digits", None), ("bytelevel", False)]),
    ("falcon", (None,), [("punctuation",), ("bytelevel", True), ("digits", False),
                         _split(PRE_REGEXES["falcon"][2])]),
]


def _pre_steps(pt, out: list) -> None:
    if pt is None:
        return
    if not isinstance(pt, dict):
        out.append(("invalid",))
        return
    kind = pt.get("type")
    if kind == "Sequence":
        subs = pt.get("pretokenizers")
        if not isinstance(subs, list):
            out.append(("invalid",))
            return
        for sub in subs:
            _pre_steps(sub, out)
    elif kind == "Split":
        pattern = pt.get("pattern") if isinstance(pt.get("pattern"), dict) else {}
        regex = pattern.get("Regex")
        if not isinstance(regex, str):
            regex = re.escape(pattern["String"]) if isinstance(pattern.get("String"), str) else None
        if regex is None or pt.get("behavior") != "Isolated" or pt.get("invert"):
            out.append(("split-other", str(pattern), pt.get("behavior"), pt.get("invert")))
        else:
            out.append(_split(regex.replace(_HF_CONTRACTIONS, _CPP_CONTRACTIONS)))
    elif kind == "ByteLevel":
        if pt.get("add_prefix_space"):
            out.append(("bytelevel-prefix-space",))
        else:
            out.append(("bytelevel", bool(pt.get("use_regex", True))))
    elif kind == "Digits":
        out.append(("digits", bool(pt.get("individual_digits", False))))
    elif kind == "Punctuation":
        out.append(("punctuation",))
    else:
        out.append((str(kind),))


def _normalizer_type(norm) -> Optional[str]:
    if norm is None:
        return None
    if isinstance(norm, dict):
        if norm.get("type") == "Sequence" and norm.get("normalizers") == []:
            return None
        return str(norm.get("type"))
    return "invalid"


def _steps_match(found: list, want: list) -> bool:
    if len(found) != len(want):
        return False
    for f, w in zip(found, want):
        if w[0] == "digits" and w[1] is None:
            if f[0] != "digits":
                return False
        elif f != w:
            return False
    return True


def detect_pre(tokenizer_json: dict) -> tuple[Optional[str], str]:
    """(llama.cpp pre-tokenizer name or None, a short description of the structure)."""
    steps: list = []
    _pre_steps(tokenizer_json.get("pre_tokenizer"), steps)
    norm = _normalizer_type(tokenizer_json.get("normalizer"))
    for name, norms, want in _KNOWN_PRE:
        if norm in norms and _steps_match(steps, want):
            return name, name
    desc = ", ".join(s[0] if s[0] != "split" else f"Split({s[1][:40]!r})" for s in steps) or "none"
    return None, f"pre_tokenizer [{desc}], normalizer {norm}"


# -- Hugging Face tokenizer directories ------------------------------------------------------------------


def _looks_special(text: str) -> bool:
    """llama.cpp's does_token_look_special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _optional_json(path: Path, what: str) -> dict:
    if not path.is_file():
        return {}
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object")
    return data


def _content(entry) -> Optional[str]:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _added_tokens(tj: dict, path: Path) -> list[dict]:
    added = tj.get("added_tokens") or []
    if not isinstance(added, list):
        raise CheckpointError(f"{path}: 'added_tokens' is not a list")
    for a in added:
        if not isinstance(a, dict) or type(a.get("id")) is not int or a["id"] < 0 or not isinstance(a.get("content"), str):
            raise CheckpointError(f"{path}: malformed added_tokens entry {str(a)[:80]}")
    return added


def _merges(model: dict, path: Path) -> list[str]:
    merges = model.get("merges")
    if not isinstance(merges, list) or not merges:
        raise CheckpointError(f"{path}: BPE model has no merges")
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m):
            # newer format: a pair; spaces inside a part are written as U+0120 as llama.cpp does
            out.append(" ".join(p.replace(" ", "\u0120") for p in m))
        else:
            raise CheckpointError(f"{path}: malformed merge {str(m)[:60]}")
    return out


def _is_byte_level(tj: dict) -> bool:
    steps: list = []
    _pre_steps(tj.get("pre_tokenizer"), steps)
    dec = tj.get("decoder")
    return any(s[0].startswith("bytelevel") for s in steps) or (isinstance(dec, dict) and dec.get("type") == "ByteLevel")


def _bpe_vocab(tj: dict, path: Path, vocab_size: Optional[int], warnings: list) -> dict[str, MetaValue]:
    model = tj["model"]
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise CheckpointError(f"{path}: BPE model has no vocab")
    by_id: dict[int, str] = {}
    for text, i in vocab.items():
        if type(i) is not int or i < 0:
            raise CheckpointError(f"{path}: vocab entry {text!r} has invalid id {i!r}")
        by_id[i] = text
    added = _added_tokens(tj, path)
    special: dict[int, bool] = {}
    for a in added:
        by_id[a["id"]] = a["content"]  # the added token's text wins, as in HF's get_vocab()
        special[a["id"]] = bool(a.get("special"))
    n = max(by_id) + 1
    if vocab_size is None and n > 2 * len(by_id) + 65536:
        raise CheckpointError(f"{path}: token id {n - 1} is implausibly large for {len(by_id)} tokens")
    if vocab_size is not None:
        if n > vocab_size:
            raise CheckpointError(f"{path}: token id {n - 1} is outside the model's vocabulary of {vocab_size}")
        n = vocab_size
    tokens, types = [], np.empty(n, dtype=np.int32)
    for i in range(n):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types[i] = TT_UNUSED
        elif i in special:
            if special[i] or _looks_special(text):
                types[i] = TT_CONTROL
            else:
                text = text.replace("\u2581", " ")
                types[i] = TT_USER_DEFINED
            tokens.append(text)
        else:
            tokens.append(text)
            types[i] = TT_NORMAL
    pre, desc = detect_pre(tj)
    if pre is None:
        warnings.append(f"{path}: unrecognized pre-tokenizer ({desc}); using 'default', "
                        f"so tokenization may differ from the original")
        pre = "default"
    return {
        _K + "model": string("gpt2"),
        _K + "pre": string(pre),
        _K + "tokens": array(tokens, V.STRING),
        _K + "token_type": array(types, V.INT32),
        _K + "merges": array(_merges(model, path), V.STRING),
    }


def _template_flags(tj: dict, bos: Optional[str], eos: Optional[str]) -> dict[str, bool]:
    """add_bos/add_eos from a TemplateProcessing / RobertaProcessing post-processor."""
    flags: dict[str, bool] = {}
    post = tj.get("post_processor")
    if not isinstance(post, dict):
        return flags
    procs = post.get("processors") if isinstance(post.get("processors"), list) else [post]
    for proc in procs:
        if not isinstance(proc, dict):
            continue
        if proc.get("type") == "RobertaProcessing":
            flags.update(bos=True, eos=True)
        elif proc.get("type") == "TemplateProcessing" and isinstance(proc.get("single"), list):
            single = [s for s in proc["single"] if isinstance(s, dict)]
            if len(single) > 1:
                first = (single[0].get("SpecialToken") or {}).get("id")
                last = (single[-1].get("SpecialToken") or {}).get("id")
                if first:
                    flags["bos"] = bos is None or first == bos
                if last:
                    flags["eos"] = eos is None or last == eos
    return flags


def _special_ids(directory: Path, tj: dict, tokens: list) -> tuple[dict[str, int], dict[str, bool], object]:
    tc = _optional_json(directory / "tokenizer_config.json", "tokenizer config")
    n = len(tokens)
    by_content: dict[str, int] = {}
    for i in range(n - 1, -1, -1):  # the first id of a text wins
        by_content[tokens[i]] = i
    for a in tj.get("added_tokens") or []:  # added tokens first, as llama.cpp looks them up
        if isinstance(a, dict) and isinstance(a.get("content"), str) and type(a.get("id")) is int:
            by_content[a["content"]] = a["id"]
    ids: dict[str, int] = {}

    def put(typ: str, tid) -> None:
        if typ not in ids and type(tid) is int and 0 <= tid < n:
            ids[typ] = tid

    texts = {typ: _content(tc.get(f"{typ}_token")) for typ in _SPECIAL_TYPES}
    texts["bos"] = texts["bos"] or texts["cls"]
    texts["eos"] = texts["eos"] or texts["sep"]
    add = _template_flags(tj, texts["bos"], texts["eos"])
    for typ in _SPECIAL_TYPES:
        if isinstance(tc.get(f"add_{typ}_token"), bool):
            add[typ] = tc[f"add_{typ}_token"]
        if texts[typ] is not None:
            put(typ, by_content.get(texts[typ]))
    config = _optional_json(directory / "config.json", "model config")
    for typ in _SPECIAL_TYPES:
        put(typ, config.get(f"{typ}_token_id"))
    stm = _optional_json(directory / "special_tokens_map.json", "special tokens map")
    for typ in _SPECIAL_TYPES:
        text = _content(stm.get(f"{typ}_token"))
        if text is not None:
            put(typ, by_content.get(text))
    gen = _optional_json(directory / "generation_config.json", "generation config")
    for typ in ("bos", "eos", "pad"):
        v = gen.get(f"{typ}_token_id")
        put(typ, v[0] if isinstance(v, list) and v else v)
    template = tc.get("chat_template")
    if template is None and (directory / "chat_template.jinja").is_file():
        try:
            template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{directory / 'chat_template.jinja'}: cannot read: {e}") from None
    elif template is None:
        template = _optional_json(directory / "chat_template.json", "chat template").get("chat_template")
    return ids, add, template


def _chat_template_meta(template, where: Path) -> dict[str, MetaValue]:
    if template is None:
        return {}
    if isinstance(template, str):
        return {"tokenizer.chat_template": string(template)}
    if not isinstance(template, list):
        raise CheckpointError(f"{where}: chat_template is neither a string nor a list of named templates")
    meta: dict[str, MetaValue] = {}
    names = []
    for choice in template:
        if not isinstance(choice, dict) or not isinstance(choice.get("template"), str):
            raise CheckpointError(f"{where}: malformed chat_template entry {str(choice)[:60]}")
        name = "".join(c if c.isascii() and c.isalnum() else "_" for c in str(choice.get("name", "")))
        if name == "default":
            meta["tokenizer.chat_template"] = string(choice["template"])
        elif name:
            names.append(name)
            meta[f"tokenizer.chat_template.{name}"] = string(choice["template"])
    if names:
        meta["tokenizer.chat_templates"] = array(names, V.STRING)
    return meta


def _apply_added_to_spm(meta: dict, directory: Path) -> None:
    """added_tokens.json / tokenizer_config's added_tokens_decoder on top of a SentencePiece vocabulary."""
    tokens = meta[_K + "tokens"].value
    scores = meta[_K + "scores"].value
    types = meta[_K + "token_type"].value
    n = len(tokens)
    extra = _optional_json(directory / "added_tokens.json", "added tokens")
    for text, tid in extra.items():
        if type(tid) is int and 0 <= tid < n:
            tokens[tid], scores[tid], types[tid] = text, -1000.0, TT_USER_DEFINED
    decoder = _optional_json(directory / "tokenizer_config.json", "tokenizer config").get("added_tokens_decoder")
    if isinstance(decoder, dict):
        for key, data in decoder.items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(data, dict)
                    and isinstance(data.get("content"), str)):
                continue
            tid, text = int(key), data["content"]
            if tid >= n:
                continue
            if data.get("special") or _looks_special(text):
                types[tid] = TT_CONTROL
            else:
                text = text.replace("\u2581", " ")
                types[tid] = TT_USER_DEFINED
            tokens[tid], scores[tid] = text, -1000.0


def hf_vocab(directory: str | Path, vocab_size: Optional[int] = None,
             warnings: Optional[list] = None) -> dict[str, MetaValue]:
    """GGUF tokenizer metadata of a Hugging Face tokenizer directory.

    ``vocab_size`` is config.json's (tokens are padded up to it); problems that
    still allow a conversion are appended to ``warnings``."""
    directory = Path(directory)
    warnings = [] if warnings is None else warnings
    tj_path = directory / "tokenizer.json"
    spm_path = directory / "tokenizer.model"
    tj: dict = {}
    if tj_path.is_file():
        tj = _optional_json(tj_path, "tokenizer")
        model = tj.get("model")
        if not isinstance(model, dict):
            raise CheckpointError(f"{tj_path}: no 'model' object")
    if tj and tj["model"].get("type", "BPE") == "BPE" and _is_byte_level(tj):
        meta = _bpe_vocab(tj, tj_path, vocab_size, warnings)
    elif spm_path.is_file():
        meta = spm_vocab(spm_path, vocab_size)
        _apply_added_to_spm(meta, directory)
    elif tj:
        raise CheckpointError(f"{tj_path}: tokenizer model {tj['model'].get('type')!r} without byte-level "
                              f"pre-tokenizer is not supported, and there is no tokenizer.model beside it")
    else:
        raise CheckpointError(f"{directory}: no tokenizer (tokenizer.json or tokenizer.model); "
                              f"pass the tokenizer's path explicitly")
    ids, add, template = _special_ids(directory, tj, meta[_K + "tokens"].value)
    for typ, tid in ids.items():
        meta[_K + _ID_KEYS[typ]] = u32(tid)
    for typ in ("bos", "eos"):
        if typ in add:
            meta[_K + f"add_{typ}_token"] = boolean(add[typ])
    meta.update(_chat_template_meta(template, directory / "tokenizer_config.json"))
    return meta
