"""SentencePiece-style tokenization (GGUF ``tokenizer.ggml.model == "llama"``).

The encoder is llama.cpp's ``llm_tokenizer_spm``: the text (spaces already
escaped to U+2581) is split into characters, then the adjacent pair whose
concatenation is a vocabulary entry with the highest score is merged, again
and again (leftmost pair on equal scores).  Characters left over that are not
vocabulary entries fall back to ``<0xNN>`` byte tokens.

Speed: merges never cross a boundary where no vocabulary entry contains the
two characters on either side of it, and merges on the two sides of such a
boundary do not influence each other.  So the text is cut in front of each
U+2581 whose left neighbour never precedes U+2581 inside an entry, and each
piece ("word") is merged on its own and cached.  The result is identical to
merging the whole text at once.

Also here: readers for SentencePiece ``.model`` files (through the
``sentencepiece`` package plus a few fields of the model protobuf) and for
llama2.c ``tokenizer.bin`` files.
"""
from __future__ import annotations

import heapq
import struct
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

SPACE = "\u2581"  # SentencePiece's visible space

# GGUF / SentencePiece token types (the numbering is the same in both)
TT_UNDEFINED, TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = range(7)


def utf8(text: str) -> bytes:
    """UTF-8 bytes of a str that may hold lone surrogates: surrogate-escaped
    bytes (how invalid UTF-8 in a vocabulary is read) give back the original
    bytes; other lone surrogates are encoded as they are."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")


def byte_token_value(text: str) -> Optional[int]:
    """``"<0x41>"`` -> 0x41, else None."""
    if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        try:
            return int(text[3:5], 16)
        except ValueError:
            return None
    return None


class SPMEncoder:
    def __init__(self, tokens: Sequence[str], scores: Sequence[float], token_to_id: Dict[str, int],
                 unk_id: Optional[int]):
        self.token_to_id = token_to_id
        self.scores = scores
        self.unk_id = unk_id
        # byte fallback table (llama_vocab::byte_to_token): <0xNN>, else the byte as a 1-char token
        self.byte_ids: List[Optional[int]] = []
        for b in range(256):
            i = token_to_id.get("<0x%02X>" % b)
            if i is None and b < 0x80:
                i = token_to_id.get(chr(b))
            self.byte_ids.append(i)
        # chars that appear right before U+2581 inside some entry: no cut after them
        self._joins_space = set()
        for t in tokens:
            k = t.find(SPACE, 1)
            while k > 0:
                self._joins_space.add(t[k - 1])
                k = t.find(SPACE, k + 1)
        self._cache: Dict[str, Tuple[int, ...]] = {}

    # -- public ---------------------------------------------------------------

    def encode(self, text: str, out: List[int]) -> None:
        """Tokenize already-escaped text (spaces as U+2581), appending ids."""
        if not text:
            return
        joins = self._joins_space
        word = self._word
        start = 0
        k = text.find(SPACE, 1)
        while k > 0:
            if text[k - 1] not in joins:
                out.extend(word(text[start:k]))
                start = k
            k = text.find(SPACE, k + 1)
        out.extend(word(text[start:]))

    # -- internals ------------------------------------------------------------

    def _word(self, seg: str) -> Tuple[int, ...]:
        ids = self._cache.get(seg)
        if ids is None:
            ids = tuple(self._merge(seg))
            if len(self._cache) < 500_000:
                self._cache[seg] = ids
        return ids

    def _merge(self, seg: str) -> List[int]:
        tok = self.token_to_id
        scores = self.scores
        n = len(seg)
        if n == 1:
            i = tok.get(seg)
            return [i] if i is not None else self._fallback(seg)
        start = list(range(n))
        length = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap: List[Tuple[float, int, int, int]] = []
        push = heapq.heappush

        def add(left: int, right: int) -> None:
            size = length[left] + length[right]
            i = tok.get(seg[start[left]:start[left] + size])
            if i is not None:
                push(heap, (-scores[i], left, right, size))

        for i in range(n - 1):
            add(i, i + 1)
        pop = heapq.heappop
        while heap:
            _, left, right, size = pop(heap)
            ll = length[left]
            lr = length[right]
            if ll == 0 or lr == 0 or ll + lr != size:
                continue  # one side was merged meanwhile
            length[left] = size
            length[right] = 0
            r = nxt[right]
            nxt[left] = r
            if r >= 0:
                prev[r] = left
            if prev[left] >= 0:
                add(prev[left], left)
            if r >= 0:
                add(left, r)
        out: List[int] = []
        i = 0
        while i != -1:
            piece = seg[start[i]:start[i] + length[i]]
            t = tok.get(piece)
            if t is not None:
                out.append(t)
            else:
                out.extend(self._fallback(piece))
            i = nxt[i]
        return out

    def _fallback(self, piece: str) -> List[int]:
        out = []
        for b in utf8(piece):
            i = self.byte_ids[b]
            if i is None:
                if self.unk_id is None:
                    raise ValueError(f"cannot encode {piece!r}: no byte token <0x{b:02X}> and no unknown token")
                # vocabularies without byte fallback: one <unk> for the whole piece
                return [self.unk_id]
            out.append(i)
        return out


# --------------------------------------------------------------------------
# SentencePiece .model files
# --------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val = buf[pos:pos + 8]
            pos += 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val = buf[pos:pos + n]
            pos += n
        elif wt == 5:
            val = buf[pos:pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        if pos > len(buf):
            raise ValueError("truncated protobuf message")
        yield field, wt, val


def sentencepiece_model_info(serialized: bytes) -> dict:
    """Token types and normalizer flags from a serialized ModelProto.

    (The ``sentencepiece`` package does not expose USER_DEFINED pieces or the
    normalizer settings, so these few fields are read directly.)"""
    types: List[int] = []
    add_dummy_prefix = True
    remove_extra_ws = True
    for field, wt, val in _proto_fields(serialized):
        if field == 1 and wt == 2:  # repeated SentencePiece pieces
            t = TT_NORMAL
            for f2, w2, v2 in _proto_fields(val):
                if f2 == 3 and w2 == 0:
                    t = v2
            types.append(t)
        elif field == 3 and wt == 2:  # NormalizerSpec
            for f2, w2, v2 in _proto_fields(val):
                if f2 == 3 and w2 == 0:
                    add_dummy_prefix = bool(v2)
                elif f2 == 4 and w2 == 0:
                    remove_extra_ws = bool(v2)
    return {"types": types, "add_dummy_prefix": add_dummy_prefix, "remove_extra_whitespaces": remove_extra_ws}


def load_sentencepiece(path) -> dict:
    """GGUF-style metadata dict for a SentencePiece ``.model`` file."""
    try:
        import sentencepiece as spm
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise ValueError("reading .model files needs the 'sentencepiece' package") from e
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no SentencePiece model at {path}")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except Exception as e:  # sentencepiece raises OSError / RuntimeError
        raise ValueError(f"{path}: not a SentencePiece model ({e})") from e
    n = sp.GetPieceSize()
    info = sentencepiece_model_info(sp.serialized_model_proto())
    types = info["types"]
    if len(types) != n:
        raise ValueError(f"{path}: {len(types)} piece types for {n} pieces")
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": [sp.IdToPiece(i) for i in range(n)],
        "tokenizer.ggml.scores": [float(sp.GetScore(i)) for i in range(n)],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.add_space_prefix": info["add_dummy_prefix"],
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    for key, val in (("bos_token_id", sp.bos_id()), ("eos_token_id", sp.eos_id()),
                     ("unknown_token_id", sp.unk_id()), ("padding_token_id", sp.pad_id())):
        if val is not None and 0 <= val < n:
            meta["tokenizer.ggml." + key] = val
    return meta


# --------------------------------------------------------------------------
# llama2.c tokenizer.bin files
# --------------------------------------------------------------------------


def load_llama2c_vocab(path) -> dict:
    """GGUF-style metadata dict for a llama2.c ``tokenizer.bin``.

    Format: int32 max_token_length, then per token f32 score, int32 byte
    length, bytes.  The vocabulary size is not stored: tokens run to the end
    of the file.  llama2.c's exporter wrote pieces with U+2581 replaced by a
    plain space and BOS/EOS as ``"\\n<s>\\n"`` / ``"\\n</s>\\n"``; they are turned
    back into SentencePiece form here (ids 0/1/2 = unk/BOS/EOS as in run.c).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read llama2.c tokenizer {path}: {e}") from e
    if len(data) < 4:
        raise ValueError(f"{path}: too short for a llama2.c tokenizer")
    (max_len,) = struct.unpack_from("<i", data, 0)
    if not 0 < max_len < 1 << 16:
        raise ValueError(f"{path}: implausible max_token_length {max_len}; not a llama2.c tokenizer")
    pos = 4
    tokens: List[str] = []
    scores: List[float] = []
    types: List[int] = []
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError(f"{path}: truncated entry {len(tokens)}")
        score, n = struct.unpack_from("<fi", data, pos)
        pos += 8
        if n < 0 or n > max_len or pos + n > len(data):
            raise ValueError(f"{path}: bad length {n} for token {len(tokens)}")
        raw = data[pos:pos + n]
        pos += n
        text = raw.decode("utf-8", "surrogateescape")
        idx = len(tokens)
        if idx in (1, 2) and text.strip() in ("<s>", "</s>"):
            text = text.strip()
            ttype = TT_CONTROL
        elif idx == 0 and text == "<unk>":
            ttype = TT_UNKNOWN
        elif byte_token_value(text) is not None:
            ttype = TT_BYTE
        else:
            text = text.replace(" ", SPACE)
            ttype = TT_NORMAL
        if not text:
            text = f"[EMPTY_{idx}]"
        tokens.append(text)
        scores.append(score)
        types.append(ttype)
    if len(tokens) < 3:
        raise ValueError(f"{path}: only {len(tokens)} tokens")
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_space_prefix": True,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
