"""Tokenizers for GGUF models, SentencePiece ``.model`` files and llama2.c
``tokenizer.bin`` files, matching llama.cpp's ids.

    tok = Tokenizer.from_gguf_metadata(meta)       # meta: GGUF key -> value
    ids = tok.encode("Hello", add_bos=None, parse_special=False)
    text = tok.decode(ids)

    dec = StreamDecoder(tok)                       # for generation loops
    for i in ids: print(dec.feed(i), end="")
    print(dec.flush())

Two vocabulary kinds are supported, as in llama.cpp:

* ``llama`` (SPM): score-ordered bigram merges with ``<0xNN>`` byte fallback,
  spaces escaped as U+2581 and, when ``add_space_prefix`` (default true), a
  space put in front of the text (and after every special token).
* ``gpt2`` (byte-level BPE): a pre-tokenizer chosen by ``tokenizer.ggml.pre``
  splits the text into words; each word's bytes are mapped to the GPT-2
  alphabet and merged by merge rank.

Special tokens (CONTROL, UNKNOWN and USER_DEFINED entries) are cut out of the
text before the model runs, longest text first, like llama.cpp's
``tokenizer_st_partition``: USER_DEFINED ones always, CONTROL/UNKNOWN ones only
with ``parse_special=True``.

Decoding: a token's bytes are its text with U+2581 -> space (SPM), the
``<0xNN>`` byte (SPM byte tokens), or the GPT-2 byte map reversed (BPE).
CONTROL/UNKNOWN tokens render as nothing unless ``special=True``;
USER_DEFINED ones render as their text.  For SPM with ``add_space_prefix``,
the leading space of the token that directly follows BOS is dropped (the
space encode added), as llama2.c's ``decode`` does; elsewhere spaces are kept,
so a streamed continuation (" Paris") keeps its space.  Invalid UTF-8 decodes
as U+FFFD.  llama.cpp's optional clean-up of spaces before punctuation for
some BPE vocabularies is not applied (the flag is kept as ``clean_spaces``).
"""
from __future__ import annotations

import codecs
from typing import Dict, Iterable, List, Mapping, Optional, Set, Union

from ..errors import TokenizerError
from .bpe import BPEEncoder, bpe_text_to_bytes
from .spm import (
    SPACE,
    TT_BYTE,
    TT_CONTROL,
    TT_NORMAL,
    TT_UNKNOWN,
    TT_USER_DEFINED,
    SPMEncoder,
    byte_token_value,
    load_llama2c_vocab,
    load_sentencepiece,
    utf8,
)

__all__ = ["Tokenizer", "StreamDecoder"]

_K = "tokenizer.ggml."

# token texts llama.cpp treats as end-of-generation (llama_vocab::load)
_EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>",
])
# texts llama.cpp picks as *the* EOT token when the file names none
_EOT_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>",
])


def _as_str(v, key: str) -> str:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "surrogateescape")
    if not isinstance(v, str):
        raise TokenizerError(f"GGUF key {key!r} should be a string, got {type(v).__name__}")
    return v


def _as_list(v, key: str) -> list:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        raise TokenizerError(f"GGUF key {key!r} should be an array, got {type(v).__name__}")
    return v.tolist() if hasattr(v, "tolist") else list(v)  # numpy arrays -> Python values


class Tokenizer:
    """A llama.cpp-compatible tokenizer.  Build it with one of the
    ``from_*`` constructors."""

    def __init__(self, meta: Mapping[str, object]):
        model = meta.get(_K + "model")
        if model is None:
            raise TokenizerError("missing 'tokenizer.ggml.model' (tokenizer kind)")
        model = _as_str(model, _K + "model")
        if model not in ("llama", "gpt2"):
            raise TokenizerError(f"unknown tokenizer model {model!r} (supported: 'llama' (SPM), 'gpt2' (byte-level BPE))")
        raw_tokens = meta.get(_K + "tokens")
        if raw_tokens is None:
            raise TokenizerError("missing 'tokenizer.ggml.tokens' (the vocabulary list)")
        tokens = [_as_str(t, _K + "tokens") for t in _as_list(raw_tokens, _K + "tokens")]
        n = len(tokens)
        if n == 0:
            raise TokenizerError("'tokenizer.ggml.tokens' is empty")
        for i, t in enumerate(tokens):
            if not t:
                tokens[i] = f"[EMPTY_{i}]"  # as llama.cpp does
        try:
            scores = [float(s) for s in _as_list(meta.get(_K + "scores", []), _K + "scores")]
        except (TypeError, ValueError):
            raise TokenizerError(f"'{_K}scores' should be an array of numbers") from None
        if len(scores) > n:
            raise TokenizerError(f"'tokenizer.ggml.scores' has {len(scores)} entries for {n} tokens")
        scores += [0.0] * (n - len(scores))
        if meta.get(_K + "token_type") is None:
            types = [TT_NORMAL] * n
        else:
            try:
                types = [int(t) for t in _as_list(meta[_K + "token_type"], _K + "token_type")]
            except (TypeError, ValueError):
                raise TokenizerError(f"'{_K}token_type' should be an array of integers") from None
            if len(types) != n:
                raise TokenizerError(f"'tokenizer.ggml.token_type' has {len(types)} entries for {n} tokens")

        self.model = model
        self.pre = _as_str(meta.get(_K + "pre") or "default", _K + "pre")
        self.tokens: List[str] = tokens
        self.scores: List[float] = scores
        self.token_types: List[int] = types
        self.token_to_id: Dict[str, int] = {}
        for i, t in enumerate(tokens):
            self.token_to_id[t] = i  # later duplicates win, like llama.cpp's map assignment

        self.warnings: List[str] = []  # what was accepted with a default, as llama.cpp logs it

        def opt_id(key: str, default: Optional[int]) -> Optional[int]:
            v = meta.get(_K + key)
            if v is None:
                return default
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise TokenizerError(f"'{_K}{key}' should be a token id, got {v!r}") from None
            if v in (-1, 0xFFFFFFFF):  # how writers say "no such token"
                return default
            if not 0 <= v < n:  # llama.cpp: "bad special token", and the default id instead
                self.warnings.append(f"'{_K}{key}' = {v} is not a token id of this {n}-token vocabulary; "
                                     f"using {'none' if default is None else default}")
                return default
            return v

        def opt_bool(key: str, default: bool) -> bool:
            v = meta.get(_K + key)
            return default if v is None else bool(v)

        if model == "llama":
            self._bos = opt_id("bos_token_id", 1)
            self._eos = opt_id("eos_token_id", 2)
            self.unk_id = opt_id("unknown_token_id", 0)
            add_bos_default, self.clean_spaces = True, False
            self.add_space_prefix = opt_bool("add_space_prefix", True)
        else:
            if meta.get(_K + "merges") is None:
                raise TokenizerError("missing 'tokenizer.ggml.merges' (needed by a 'gpt2' BPE vocabulary)")
            # llama.cpp's BPE defaults (GPT-2's id 11); GLM-4 vocabularies have no BOS
            self._bos = opt_id("bos_token_id", None if self.pre in ("glm4", "chatglm-bpe") else 11)
            self._eos = opt_id("eos_token_id", 11)
            self.unk_id = opt_id("unknown_token_id", None)
            self.add_space_prefix = opt_bool("add_space_prefix", False)
        self.pad_id = opt_id("padding_token_id", None)
        self.eot_id = opt_id("eot_token_id", None)
        self.eom_id = opt_id("eom_token_id", None)

        if model == "llama":
            self._spm: Optional[SPMEncoder] = SPMEncoder(tokens, scores, self.token_to_id, self.unk_id)
            self._bpe: Optional[BPEEncoder] = None
        else:
            merges = [_as_str(m, _K + "merges") for m in _as_list(meta[_K + "merges"], _K + "merges")]
            self._spm = None
            self._bpe = BPEEncoder(self.token_to_id, merges, self.pre)
            add_bos_default, self.clean_spaces = self._bpe.default_add_bos, self._bpe.clean_spaces
        self.add_bos = opt_bool("add_bos_token", add_bos_default)
        self.add_eos = opt_bool("add_eos_token", False)

        # end-of-generation tokens; like llama.cpp, tokens recognised by their
        # text ("<|im_end|>", ...) are made CONTROL if the file says otherwise
        eog: Set[int] = set()
        by_text: Set[int] = set()
        for text, i in self.token_to_id.items():
            if self.eot_id is None and text in _EOT_TEXTS:
                self.eot_id = i
                by_text.add(i)
            if text in _EOG_TEXTS:
                eog.add(i)
                by_text.add(i)
        for i in by_text:
            if self.token_types[i] not in (TT_CONTROL, TT_UNKNOWN):
                self.token_types[i] = TT_CONTROL
        for i in (self.eot_id, self.eom_id, self._eos):
            if i is not None:
                eog.add(i)
        self._eot_ids = frozenset(eog)

        # special tokens, longest text first (ties: lower id first)
        specials = [i for i, t in enumerate(self.token_types) if t in (TT_CONTROL, TT_USER_DEFINED, TT_UNKNOWN)]
        specials.sort(key=lambda i: (-len(tokens[i]), i))
        self._specials_all = [(tokens[i], i) for i in specials]
        self._specials_user = [(tokens[i], i) for i in specials if self.token_types[i] == TT_USER_DEFINED]

        self._piece_cache: Dict[int, bytes] = {}
        # decode drops the space encode put in front of the text (SPM only)
        self._strip_after_bos = model == "llama" and self.add_space_prefix

    # ------------------------------------------------------------------ builders

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, object]) -> "Tokenizer":
        """From a GGUF metadata mapping (key -> plain Python value)."""
        if not isinstance(meta, Mapping):
            raise TokenizerError("GGUF metadata must be a mapping of key -> value")
        return cls(meta)

    @classmethod
    def from_sentencepiece(cls, path) -> "Tokenizer":
        """From a SentencePiece ``tokenizer.model`` file."""
        return cls(load_sentencepiece(path))

    @classmethod
    def from_llama2c(cls, path) -> "Tokenizer":
        """From a llama2.c ``tokenizer.bin`` (BOS=1, EOS=2, space prefix)."""
        return cls(load_llama2c_vocab(path))

    # ------------------------------------------------------------------ properties

    @property
    def bos_id(self) -> Optional[int]:
        return self._bos

    @property
    def eos_id(self) -> Optional[int]:
        return self._eos

    @property
    def eot_ids(self) -> frozenset:
        """Ids that end a turn / generation: EOS, EOT, EOM and tokens such as
        ``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``, ``<|endoftext|>``."""
        return self._eot_ids

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def is_special(self, token_id: int) -> bool:
        """CONTROL, USER_DEFINED (and UNKNOWN) tokens."""
        return self.token_types[self._check_id(token_id)] in (TT_CONTROL, TT_USER_DEFINED, TT_UNKNOWN)

    def is_control(self, token_id: int) -> bool:
        """Tokens that render as nothing unless asked (CONTROL, UNKNOWN)."""
        return self.token_types[self._check_id(token_id)] in (TT_CONTROL, TT_UNKNOWN)

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry's text as stored (e.g. ``"\u2581the"``, ``"Ġthe"``)."""
        return self.tokens[self._check_id(token_id)]

    def piece_to_id(self, piece: str) -> Optional[int]:
        return self.token_to_id.get(piece)

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        kind = "SPM" if self.model == "llama" else f"BPE pre={self.pre!r}"
        return f"<Tokenizer {kind} n_vocab={self.n_vocab} bos={self._bos} eos={self._eos}>"

    # ------------------------------------------------------------------ encode

    def encode(self, text: str, add_bos: Optional[bool] = None, parse_special: bool = False,
               add_eos: Optional[bool] = None) -> List[int]:
        """Text -> token ids.  ``add_bos``/``add_eos`` None = the model's
        default; ``parse_special`` lets CONTROL tokens written in the text
        (e.g. ``<|im_start|>``) become their ids."""
        if not isinstance(text, str):
            raise ValueError(f"encode() takes a str, got {type(text).__name__}")
        add_bos = self.add_bos if add_bos is None else bool(add_bos)
        add_eos = self.add_eos if add_eos is None else bool(add_eos)
        out: List[int] = []
        if add_bos:
            if self._bos is None:
                raise ValueError("this vocabulary has no BOS token")
            out.append(self._bos)
        fragments = self._partition(text, parse_special) if text else []
        if self._spm is not None:
            prev_special = True  # a space goes in front of the first text and after specials
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                self._spm.encode(frag.replace(" ", SPACE), out)
                prev_special = False
        else:
            assert self._bpe is not None
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    self._bpe.encode(frag, out)
        if add_eos:
            if self._eos is None:
                raise ValueError("this vocabulary has no EOS token")
            out.append(self._eos)
        return out

    def _partition(self, text: str, parse_special: bool) -> List[Union[str, int]]:
        specials = self._specials_all if parse_special else self._specials_user
        frags: List[Union[str, int]] = [text]
        if not specials:
            return frags
        present: Dict[str, bool] = {}
        for t, i in specials:
            # prefilter: vocabularies carry thousands of specials such as
            # "<unused12>" / "[PAD100015]"; test their 4-char prefix once
            p = t[:4]
            ok = present.get(p)
            if ok is None:
                ok = present[p] = p in text
            if not ok or (len(t) > 4 and t not in text):
                continue
            new: List[Union[str, int]] = []
            for frag in frags:
                if isinstance(frag, int) or t not in frag:
                    new.append(frag)
                    continue
                parts = frag.split(t)
                for k, part in enumerate(parts):
                    if k:
                        new.append(i)
                    if part:
                        new.append(part)
            frags = new
        return frags

    # ------------------------------------------------------------------ decode

    def _check_id(self, token_id) -> int:
        try:
            i = int(token_id)
        except (TypeError, ValueError):
            raise ValueError(f"token id must be an integer, got {token_id!r}") from None
        if not 0 <= i < len(self.tokens) or i != token_id:
            raise ValueError(f"token id {token_id!r} out of range [0, {len(self.tokens)})")
        return i

    def token_to_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The raw bytes one token stands for.  CONTROL/UNKNOWN tokens give
        b"" unless ``special`` (then their text)."""
        i = self._check_id(token_id)
        ttype = self.token_types[i]
        if ttype in (TT_CONTROL, TT_UNKNOWN):
            return utf8(self.tokens[i]) if special else b""
        b = self._piece_cache.get(i)
        if b is None:
            text = self.tokens[i]
            if ttype == TT_USER_DEFINED:
                b = utf8(text)
            elif self.model == "llama":
                if ttype == TT_BYTE:
                    v = byte_token_value(text)
                    b = bytes([v]) if v is not None else b""
                elif ttype == TT_NORMAL:
                    b = utf8(text.replace(SPACE, " "))
                else:  # UNUSED / UNDEFINED: llama.cpp renders nothing
                    b = b""
            else:
                b = bpe_text_to_bytes(text) if ttype == TT_NORMAL else b""
            self._piece_cache[i] = b
        return b

    def decode_bytes(self, ids: Iterable[int], special: bool = False) -> bytes:
        parts = []
        prev: Optional[int] = None
        strip = self._strip_after_bos
        for t in ids:
            b = self.token_to_bytes(t, special)
            if strip and prev is not None and prev == self._bos and b[:1] == b" ":
                b = b[1:]
            parts.append(b)
            prev = int(t)
        return b"".join(parts)

    def decode(self, ids: Iterable[int], special: bool = False) -> str:
        """Token ids -> text (invalid UTF-8 becomes U+FFFD)."""
        return self.decode_bytes(ids, special).decode("utf-8", errors="replace")

    def stream_decoder(self, special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, special=special)


class StreamDecoder:
    """Incremental detokenizer: ``feed(id)`` returns the text completed by
    that token and never half a UTF-8 character (a CJK char or emoji split
    over byte-fallback tokens comes out whole, once its last byte arrives).
    ``flush()`` returns what is left (incomplete bytes as U+FFFD).  The
    concatenation of all results equals ``tokenizer.decode(ids)``."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._prev: Optional[int] = None

    def feed(self, token_id: int) -> str:
        tok = self.tokenizer
        b = tok.token_to_bytes(token_id, self.special)
        if tok._strip_after_bos and self._prev is not None and self._prev == tok.bos_id and b[:1] == b" ":
            b = b[1:]
        self._prev = int(token_id)
        return self._dec.decode(b)

    def flush(self) -> str:
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out

    def reset(self) -> None:
        self._dec.reset()
        self._prev = None

