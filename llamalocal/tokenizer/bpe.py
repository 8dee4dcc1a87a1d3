"""Byte-level BPE (GGUF ``tokenizer.ggml.model == "gpt2"``) as llama.cpp runs it.

Pieces:

* the GPT-2 byte <-> unicode map (every byte is shown as one printable char);
* the pre-tokenizers chosen by ``tokenizer.ggml.pre``: a list of regexes that
  are applied one after the other, each one splitting every piece produced by
  the previous one into its matches *and* the unmatched gaps between them;
* the merge loop: repeatedly merge the adjacent pair with the lowest merge
  rank (the leftmost one on ties), as llama.cpp's priority queue does.

Unicode categories.  llama.cpp does not evaluate ``\\p{L}`` and friends with a
Unicode regex engine: it "collapses" the text first, replacing every non-ASCII
code point by one stand-in byte per category (letter, number, punctuation,
accent mark, symbol, other) and every non-ASCII white-space code point by
``\\v``, and rewrites ``\\p{X}`` in the regex as ``[stand-in + ASCII members]``.
We do the same with Python's :mod:`re`, so the ASCII edge cases (``\\s`` is
``[\\t-\\r ]``; ``~`` is not a symbol) and the non-ASCII ones come out the way
llama.cpp's do.  Regexes without a category run on the real text, again with
non-ASCII white space mapped to ``\\v``.
"""
from __future__ import annotations

import heapq
import re
import unicodedata
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import TokenizerError
from .spm import utf8

# --------------------------------------------------------------------------
# GPT-2 byte <-> unicode map
# --------------------------------------------------------------------------


def _byte_to_unicode() -> List[str]:
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = [""] * 256
    for b in keep:
        table[b] = chr(b)
    n = 0
    for b in range(256):
        if not table[b]:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_UNICODE: List[str] = _byte_to_unicode()
UNICODE_TO_BYTE: Dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_UNICODE)}


def bytes_to_bpe_text(data: bytes) -> str:
    """Raw bytes -> the byte-level BPE alphabet (one char per byte)."""
    return "".join([BYTE_TO_UNICODE[b] for b in data])


def bpe_text_to_bytes(text: str) -> bytes:
    """Inverse of :func:`bytes_to_bpe_text`.  Chars outside the 256-char
    alphabet (seen only in hand-made vocabularies) are kept as their UTF-8."""
    out = bytearray()
    for ch in text:
        b = UNICODE_TO_BYTE.get(ch)
        if b is None:
            out += utf8(ch)
        else:
            out.append(b)
    return bytes(out)


# --------------------------------------------------------------------------
# Unicode category collapsing (llama.cpp unicode_regex_split)
# --------------------------------------------------------------------------

_WHITESPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
    + list(range(0x2000, 0x200B))
)  # Unicode White_Space, the set llama.cpp's tables mark is_whitespace

# stand-in chars of the collapsed text, one per category (same bytes llama.cpp uses)
_CAT_CHAR = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}
_OTHER_CHAR = "\xd0"
# ASCII members of each category, as llama.cpp's collapsed classes spell them
_CAT_ASCII = {
    "N": "0-9",
    "L": "A-Za-z",
    "P": r"!-#%-*,-/:-;?-@\[-\]_\{\}",
    "M": "",
    "S": r"\$\+<->\^`\|",
}
_UCAT = {"N": "N", "L": "L", "P": "P", "M": "M", "S": "S", "Lu": "L", "Ll": "L", "Lt": "L", "Lm": "L", "Lo": "L"}
_SPACE_CLASS = r"\t-\r "  # C++ std::regex \s in the "C" locale


class _CollapseTable(dict):
    """str.translate table: ASCII stays, the rest maps to its category stand-in."""

    def __missing__(self, cp: int) -> str:
        if cp in _WHITESPACE:
            ch = "\x0b"
        else:
            ch = _CAT_CHAR.get(unicodedata.category(chr(cp))[0], _OTHER_CHAR)
        self[cp] = ch
        return ch


class _SpaceTable(dict):
    """str.translate table for regexes without categories: only non-ASCII
    white space changes (to \\v), as llama.cpp does before std::wregex."""

    def __missing__(self, cp: int) -> str:
        ch = "\x0b" if cp in _WHITESPACE else chr(cp)
        self[cp] = ch
        return ch


# (ASCII maps to itself; str.translate would delete a char mapped to None)
_COLLAPSE = _CollapseTable({i: chr(i) for i in range(128)})
_SPACES = _SpaceTable({i: chr(i) for i in range(128)})


def _translate_regex(expr: str, collapsed: bool) -> str:
    """Rewrite one llama.cpp (ECMAScript) regex for Python's re on the
    collapsed (or whitespace-mapped) text."""
    out: List[str] = []
    inside = False
    i = 0
    n = len(expr)
    while i < n:
        c = expr[i]
        if c == "\\" and i + 1 < n:
            nxt = expr[i + 1]
            if nxt == "p" and i + 2 < n and expr[i + 2] == "{":
                end = expr.index("}", i + 3)
                name = expr[i + 3:end]
                if name not in _UCAT or not collapsed:
                    raise ValueError(f"unsupported unicode category \\p{{{name}}} in pre-tokenizer regex")
                cat = _UCAT[name]
                body = _CAT_CHAR[cat] + _CAT_ASCII[cat]
                out.append(body if inside else "[" + body + "]")
                i = end + 1
                continue
            if nxt == "s":
                out.append(_SPACE_CLASS if inside else "[" + _SPACE_CLASS + "]")
                i += 2
                continue
            if nxt == "S":
                if inside:
                    raise ValueError("\\S inside a character class is not supported")
                out.append("[^" + _SPACE_CLASS + "]")
                i += 2
                continue
            out.append(expr[i:i + 2])
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        elif c == "$" and not inside:
            out.append(r"\Z")  # ECMAScript $ without multiline: end of the piece only
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


class _Rule:
    __slots__ = ("pattern", "collapsed")

    def __init__(self, expr: str):
        self.collapsed = "\\p{" in expr
        self.pattern = re.compile(_translate_regex(expr, self.collapsed))


# --------------------------------------------------------------------------
# pre-tokenizer regexes (llama.cpp llm_tokenizer_bpe), keyed by pre-type
# --------------------------------------------------------------------------

_RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_RE_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_RE_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek LLM: cased letters of many scripts, listed as code point ranges
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF"
    "\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5"
    "\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA"
    "\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45"
    "\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE"
    "\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC"
    "\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139"
    "\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3"
    "\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06"
    "\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3"
    "\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF"
    "\U0001E900-\U0001E943"
)
_CJK_HANGUL = "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+"
_RE_PORO = " ?[^(\\s|.,!?\u2026\u3002\uFF0C\u3001\u0964\u06D4\u060C)]+"

PRE_REGEXES: Dict[str, List[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _RE_GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
    "llama3": [_RE_LLAMA3],
    "deepseek-llm": [
        "[\r\n]",
        "\\s?[" + _DEEPSEEK_LETTERS + "]+",
        "\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+",
        "\\s+$",
        _CJK_HANGUL,
        r"\p{N}+",
    ],
    "deepseek-coder": ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_HANGUL, r"\p{N}"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _RE_GPT2, "[0-9][0-9][0-9]"],
    "smollm": [r"\p{N}", _RE_GPT2],  # also starcoder, refact, command-r, codeshell, exaone, minerva
    "gpt2": [_RE_GPT2],  # also mpt, olmo, jais, exaone4
    "qwen2": [_RE_QWEN2],  # also stablelm2, megrez
    "poro": [_RE_PORO],  # also bloom, gpt3-finnish
    "viking": [_RE_PORO, r"\p{N}"],
}

# tokenizer.ggml.pre -> (regex set, clean_spaces, ignore_merges, add_bos default)
# (flags as llama.cpp's llama_vocab::load sets them for BPE vocabularies)
PRE_TYPES: Dict[str, Tuple[str, bool, bool, bool]] = {"default": ("default", True, False, False)}
for _names, _cfg in [
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
     ("llama3", True, True, True)),
    (("dbrx", "smaug-bpe"), ("llama3", True, False, False)),
    (("chatglm-bpe", "glm4"), ("llama3", True, False, False)),
    (("deepseek-llm",), ("deepseek-llm", False, False, False)),
    (("deepseek-coder",), ("deepseek-coder", False, False, False)),
    (("falcon",), ("falcon", True, False, False)),
    (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
      "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais",
      "exaone4"), ("gpt2", True, False, False)),
    (("starcoder", "refact", "codeshell", "exaone", "minerva-7b"), ("smollm", True, False, False)),
    (("command-r", "smollm"), ("smollm", False, False, False)),
    (("qwen2", "deepseek-r1-qwen", "kormo"), ("qwen2", False, False, False)),
    (("stablelm2", "megrez"), ("qwen2", True, False, False)),
    (("poro-chat",), ("poro", False, False, False)),
    (("bloom", "gpt3-finnish"), ("poro", True, False, False)),
    (("viking",), ("viking", False, False, False)),
]:
    for _name in _names:
        PRE_TYPES[_name] = _cfg


def resolve_pre(pre: Optional[str]) -> Tuple[str, bool, bool, bool]:
    """Pre-tokenizer settings for a ``tokenizer.ggml.pre`` value.  Like
    llama.cpp, a missing name means "default" and an unknown one is refused:
    another pre-tokenizer would split the text into other words, and so other
    token ids, without any sign of it."""
    if pre is None or pre == "":
        pre = "default"
    cfg = PRE_TYPES.get(pre)
    if cfg is None:
        raise TokenizerError(f"unknown pre-tokenizer tokenizer.ggml.pre = {pre!r}")
    return cfg


class PreTokenizer:
    """Splits text into words with llama.cpp's list-of-regexes semantics."""

    def __init__(self, regexes: Sequence[str]):
        self.rules = [_Rule(r) for r in regexes]
        self._need_collapse = any(r.collapsed for r in self.rules)
        self._need_plain = any(not r.collapsed for r in self.rules)

    def split(self, text: str) -> List[str]:
        if not text:
            return []
        ascii_only = text.isascii()
        collapsed = text if ascii_only or not self._need_collapse else text.translate(_COLLAPSE)
        plain = text if ascii_only or not self._need_plain else text.translate(_SPACES)
        bounds: List[Tuple[int, int]] = [(0, len(text))]
        for rule in self.rules:
            subject = collapsed if rule.collapsed else plain
            finditer = rule.pattern.finditer
            new: List[Tuple[int, int]] = []
            append = new.append
            for start, end in bounds:
                pos = start
                for m in finditer(subject, start, end):
                    a, b = m.span()
                    if a > pos:
                        append((pos, a))
                    if b > a:
                        append((a, b))
                    pos = b
                if pos < end:
                    append((pos, end))
            bounds = new
        return [text[a:b] for a, b in bounds]


# --------------------------------------------------------------------------
# merges
# --------------------------------------------------------------------------


def parse_merges(merges: Iterable[str]) -> Dict[Tuple[str, str], int]:
    """GGUF merges ("left right", rank = position) -> {(left, right): rank}."""
    ranks: Dict[Tuple[str, str], int] = {}
    for i, m in enumerate(merges):
        if isinstance(m, bytes):
            m = m.decode("utf-8")
        pos = m.find(" ", 1)
        if pos < 0:
            key = ("", "")  # llama.cpp stores malformed merges as an empty pair
        else:
            key = (m[:pos], m[pos + 1:])
        ranks.setdefault(key, i)
    return ranks


def bpe_merge(symbols: List[str], ranks: Dict[Tuple[str, str], int]) -> List[str]:
    """Merge adjacent symbols, lowest rank first, leftmost first on ties.

    Short words use a direct scan; long ones a heap with lazy invalidation
    (the same order llama.cpp's priority queue produces)."""
    n = len(symbols)
    if n < 2:
        return symbols
    if n <= 32:
        syms = list(symbols)
        get = ranks.get
        while len(syms) > 1:
            best = None
            best_i = -1
            prev = syms[0]
            for i in range(1, len(syms)):
                cur = syms[i]
                r = get((prev, cur))
                if r is not None and (best is None or r < best):
                    best = r
                    best_i = i - 1
                prev = cur
            if best is None:
                break
            syms[best_i:best_i + 2] = [syms[best_i] + syms[best_i + 1]]
        return syms
    return _bpe_merge_heap(symbols, ranks)


def _bpe_merge_heap(symbols: List[str], ranks: Dict[Tuple[str, str], int]) -> List[str]:
    n = len(symbols)
    text = list(symbols)
    alive = [True] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap: List[Tuple[int, int, int, str, str]] = []

    def push(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        r = ranks.get((text[left], text[right]))
        if r is not None:
            heapq.heappush(heap, (r, left, right, text[left], text[right]))

    for i in range(n - 1):
        push(i, i + 1)
    while heap:
        _, left, right, lt, rt = heapq.heappop(heap)
        if not (alive[left] and alive[right]) or text[left] != lt or text[right] != rt or nxt[left] != right:
            continue  # stale entry
        text[left] = lt + rt
        alive[right] = False
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        push(prev[left], left)
        push(left, nxt[left])
    out = []
    i = 0
    while i != -1:
        out.append(text[i])
        i = nxt[i]
    return out


class BPEEncoder:
    """Byte-level BPE over pre-tokenized words, with a per-word cache."""

    def __init__(self, token_to_id: Dict[str, int], merges: Iterable[str], pre: Optional[str]):
        regex_set, self.clean_spaces, self.ignore_merges, self.default_add_bos = resolve_pre(pre)
        self.pre_name = regex_set
        self.pretokenizer = PreTokenizer(PRE_REGEXES[regex_set])
        self.token_to_id = token_to_id
        self.ranks = parse_merges(merges)
        self._cache: Dict[str, Tuple[int, ...]] = {}

    def encode_word(self, word: str) -> Tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        sym = bytes_to_bpe_text(utf8(word))
        tok = self.token_to_id
        if self.ignore_merges and sym in tok:
            out: List[int] = [tok[sym]]
        else:
            out = []
            for piece in bpe_merge(list(sym), self.ranks):
                i = tok.get(piece)
                if i is not None:
                    out.append(i)
                    continue
                # llama.cpp: look each byte of the piece up as a one-byte string
                for b in utf8(piece):
                    j = tok.get(chr(b)) if b < 0x80 else None
                    if j is not None:
                        out.append(j)
        ids = tuple(out)
        if len(self._cache) < 500_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str, out: List[int]) -> None:
        enc = self.encode_word
        for word in self.pretokenizer.split(text):
            out.extend(enc(word))


__all__ = [
    "BYTE_TO_UNICODE",
    "UNICODE_TO_BYTE",
    "bytes_to_bpe_text",
    "bpe_text_to_bytes",
    "PRE_REGEXES",
    "PRE_TYPES",
    "resolve_pre",
    "PreTokenizer",
    "parse_merges",
    "bpe_merge",
    "BPEEncoder",
]
