"""Tests of llamalocal.gguf_io: agreement with gguf.GGUFReader on real files, and
fast, bounded, file-naming failures on malformed ones."""
from __future__ import annotations

import functools
import os
import re
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import gguf  # noqa: E402

from models import model_path  # noqa: E402

from llamalocal.formats import GGMLType  # noqa: E402
from llamalocal.errors import ModelFormatError
from llamalocal.io.gguf_reader import GGUFFile, TensorInfo
from llamalocal.reports import describe  # noqa: E402


STORIES = "stories260K.gguf"
SMOLLM = "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB_SPM = "ggml-vocab-llama-spm.gguf"
REAL_FILES = [STORIES, SMOLLM, VOCAB_SPM]


@functools.lru_cache(maxsize=None)
def reference(name: str):
    """gguf.GGUFReader is slow on big vocabularies (~10 s for SmolLM2): read each file once."""
    return gguf.GGUFReader(model_path(name))


def plain(v):
    """Normalize a metadata value for comparison with GGUFReader's contents()."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


# ---------------------------------------------------------------------------------------------------
# Real files agree with gguf.GGUFReader


@pytest.fixture(scope="module", params=REAL_FILES)
def real(request):
    path = model_path(request.param)
    ref = reference(request.param)
    with GGUFFile(path) as f:
        yield f, ref


def test_header_matches_reference(real):
    f, ref = real
    assert f.version == ref.fields["GGUF.version"].contents()
    assert f.alignment == ref.alignment
    assert f.file_size == os.path.getsize(f.path)
    if f.tensors:
        assert f.data_offset == ref.data_offset


def test_metadata_matches_reference(real):
    f, ref = real
    ref_fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(f.metadata) == list(ref_fields)  # same keys, same (file) order
    for key, field in ref_fields.items():
        ours = f.metadata[key]
        theirs = field.contents()
        if field.types[0] == gguf.GGUFValueType.ARRAY and field.types[-1] != gguf.GGUFValueType.STRING:
            assert isinstance(ours, np.ndarray), key
        assert plain(ours) == theirs, key
        assert type(plain(ours)) is type(theirs), key


def test_tensor_infos_and_bytes_match_reference(real):
    f, ref = real
    assert list(f.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        ti = f.tensors[t.name]
        assert isinstance(ti, TensorInfo)
        assert ti.name == t.name
        assert int(ti.type) == int(t.tensor_type)
        assert ti.shape == tuple(int(d) for d in t.shape)
        assert ti.np_shape == tuple(reversed(ti.shape))
        assert ti.n_elements == t.n_elements
        assert ti.offset == t.data_offset
        assert ti.n_bytes == t.n_bytes
        view = f.tensor_bytes(t.name)
        assert view.dtype == np.uint8
        if ti.n_dims == 1:
            assert view.shape == (ti.n_bytes,)
        else:
            assert view.shape == (ti.n_elements // ti.shape[0], ti.row_bytes)
        assert not view.flags.writeable and not view.flags.owndata
        assert np.array_equal(view.reshape(-1), t.data.view(np.uint8).reshape(-1))
        assert np.array_equal(ti.data(), view)


def test_f32_arrays_match_reference(real):
    f, ref = real
    n = 0
    for t in ref.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            continue
        arr = f.tensor_array(t.name)
        assert arr.dtype == np.float32 and arr.shape == f.tensors[t.name].np_shape
        assert arr.shape == t.data.shape
        assert np.array_equal(arr, t.data)
        assert not arr.flags.owndata  # a view into the map
        n += 1
    if f.path.name == STORIES:
        assert n == 48


def test_tensor_bytes_do_not_copy():
    with GGUFFile(model_path(SMOLLM)) as f:
        tracemalloc.start()
        try:
            views = [f.tensor_bytes(name) for name in f.tensors]
            total = sum(v.nbytes for v in views)
            checksum = sum(int(v.reshape(-1)[-1]) for v in views)  # touch the data
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total > 90_000_000 and checksum >= 0
        assert peak < 2_000_000, peak


def test_api_smollm():
    path = model_path(SMOLLM)
    with GGUFFile(path) as f:
        assert f.architecture == "llama"
        assert f.arch_get("block_count") == 30
        assert f.arch_get("attention.head_count_kv") == 3
        assert f.arch_get("no.such.key", 7) == 7
        assert f.get("tokenizer.ggml.model") == "gpt2"
        assert f.get("missing", "x") == "x"
        assert "tokenizer.chat_template" in f
        tokens = f.get("tokenizer.ggml.tokens")
        assert isinstance(tokens, list) and len(tokens) == 49152 and tokens[1] == "<|im_start|>"
        tt = f.get("tokenizer.ggml.token_type")
        assert isinstance(tt, np.ndarray) and tt.dtype == np.int32 and tt.shape == (49152,)
        types = {t.type for t in f.tensors.values()}
        assert types == {GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.F32}
        q = f.tensors["blk.0.attn_q.weight"]
        assert q.type == GGMLType.Q4_1 and q.shape == (576, 576) and q.np_shape == (576, 576)
        assert f.tensor_bytes(q.name).shape == (576, 576 // 32 * 20)
        with pytest.raises(TypeError, match="dequantize=True"):
            f.tensor_array(q.name)
        with pytest.raises(KeyError, match="no tensor named"):
            f.tensor_bytes("nope")


def test_dequantize_matches_reference():
    path = model_path(SMOLLM)
    ref = {t.name: t for t in reference(SMOLLM).tensors}
    with GGUFFile(path) as f:
        for name in ("blk.0.attn_k.weight", "blk.0.attn_norm.weight"):
            got = f.tensor_array(name, dequantize=True)
            t = ref[name]
            want = gguf.quants.dequantize(t.data, t.tensor_type)
            assert got.dtype == np.float32 and got.shape == f.tensors[name].np_shape
            np.testing.assert_array_equal(got, want.reshape(got.shape))


def test_close_and_views_outliving_file():
    with GGUFFile(model_path(STORIES)) as f:
        w = f.tensor_array("output_norm.weight")
        expected = w.copy()
        name = next(iter(f.tensors))
    assert f.closed
    assert np.array_equal(w, expected)  # the map lives as long as a view does
    with pytest.raises(ValueError, match="closed"):
        f.tensor_bytes(name)
    f.close()  # idempotent


def test_vocab_only_file():
    with GGUFFile(model_path(VOCAB_SPM)) as f:
        assert f.tensors == {}
        assert f.get("tokenizer.ggml.model") == "llama"
        assert len(f.get("tokenizer.ggml.tokens")) == 32000
        scores = f.get("tokenizer.ggml.scores")
        assert isinstance(scores, np.ndarray) and scores.dtype == np.float32


def test_describe_smollm():
    text = describe(model_path(SMOLLM))
    low = text.lower()
    assert "llama" in low
    assert "30 blocks" in text
    assert "Q4_1" in text and "Q8_0" in text and "F32" in text
    assert "chat template: present" in low and "368" in text
    assert "gpt2" in text and "smollm" in text and "49152" in text
    assert "134,515,008" in text  # parameters
    assert "90.00 MiB KV cache" in text  # 2 * 30 layers * 4096 * 3 kv heads * 64 * 2 bytes
    assert "4096 tokens" in text


def test_describe_stories_and_vocab_only():
    text = describe(model_path(STORIES))
    assert "5 blocks" in text and "F32" in text and "chat template: none" in text
    assert "2048 tokens" in text  # min(context_length, 4096)
    text = describe(model_path(VOCAB_SPM))
    assert "vocabulary-only" in text and "32000" in text


# ---------------------------------------------------------------------------------------------------
# Synthetic files


def write_gguf(path: Path, *, tensors=None, kv=None, endianess=None, alignment=None) -> Path:
    kwargs = {} if endianess is None else {"endianess": endianess}
    w = gguf.GGUFWriter(str(path), "llama", **kwargs)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_block_count(2)
    w.add_string("test.str_a", "hello")
    w.add_string("test.str_b", "world")
    w.add_array("test.strings", ["a", "bb", "ccc"])
    w.add_array("test.floats", [1.5, 2.5, 3.5])
    w.add_bool("test.flag", True)
    for k, v in (kv or {}).items():
        w.add_key_value(k, v[0], v[1], sub_type=v[2] if len(v) > 2 else None)
    if tensors is None:
        rng = np.random.default_rng(0)
        tensors = {
            "t.aa": rng.standard_normal((4, 64)).astype(np.float32),
            "t.bb": (rng.integers(0, 256, (3, 2 * 34)).astype(np.uint8), gguf.GGMLQuantizationType.Q8_0),
            "t.cc": rng.standard_normal(64).astype(np.float32),
        }
    for name, t in tensors.items():
        if isinstance(t, tuple):
            w.add_tensor(name, t[0], raw_dtype=t[1])
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small valid file and the positions of its fields (found with gguf.GGUFReader)."""
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "base.gguf")
    ref = gguf.GGUFReader(path)
    pos = {"kv": {k: f.offset for k, f in ref.fields.items() if not k.startswith("GGUF.")}}
    tinfo = {}
    for t in ref.tensors:
        at = t.field.offset
        name_len = len(t.name.encode())
        n_dims_at = at + 8 + name_len
        (n_dims,) = struct.unpack_from("<I", path.read_bytes(), n_dims_at)
        dims_at = n_dims_at + 4
        type_at = dims_at + 8 * n_dims
        tinfo[t.name] = {"at": at, "n_dims": n_dims_at, "dims": dims_at, "type": type_at, "offset": type_at + 4,
                         "data": t.data_offset, "n_bytes": t.n_bytes}
    pos["tensors"] = tinfo
    pos["data_offset"] = ref.data_offset
    return path, path.read_bytes(), pos


def patched(tmp_path: Path, data: bytes, patches: dict[int, bytes] | None = None, name="bad-model.gguf",
            truncate: int | None = None) -> Path:
    buf = bytearray(data)
    for at, b in (patches or {}).items():
        buf[at:at + len(b)] = b
    if truncate is not None:
        del buf[truncate:]
    p = tmp_path / name
    p.write_bytes(bytes(buf))
    return p


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def expect_error(path: Path, match: str, *, max_peak: int | None = None) -> str:
    if max_peak is not None:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ModelFormatError) as ei:
            GGUFFile(path)
        elapsed = time.perf_counter() - t0
        if max_peak is not None:
            _, peak = tracemalloc.get_traced_memory()
    finally:
        if max_peak is not None:
            tracemalloc.stop()
    msg = str(ei.value)
    assert path.name in msg, msg
    assert elapsed < 1.0, (elapsed, msg)
    if max_peak is not None:
        assert peak < max_peak, (peak, msg)
    assert re.search(match, msg, re.IGNORECASE), msg
    assert isinstance(ei.value, ValueError)
    return msg


def test_base_file_is_valid(base):
    path, data, pos = base
    with GGUFFile(path) as f:
        assert f.version == 3 and f.alignment == 32
        assert f.get("test.strings") == ["a", "bb", "ccc"]
        assert f.get("test.floats").tolist() == [1.5, 2.5, 3.5]
        assert f.get("test.flag") is True
        assert f.tensors["t.bb"].type == GGMLType.Q8_0 and f.tensors["t.bb"].shape == (64, 3)
        assert f.tensors["t.cc"].shape == (64,)
        assert f.data_offset == pos["data_offset"]


def test_version_2_accepted(base, tmp_path):
    _, data, _ = base
    with GGUFFile(patched(tmp_path, data, {4: u32(2)})) as f:
        assert f.version == 2 and len(f.tensors) == 3


@pytest.mark.parametrize("where", ["empty", "magic", "header", "mid_kv_key", "mid_kv_string", "mid_kv_array",
                                   "mid_tensor_infos", "before_data", "mid_data", "last_byte"])
def test_truncated(base, tmp_path, where):
    _, data, pos = base
    kv = pos["kv"]
    ti = pos["tensors"]
    cut = {
        "empty": 0,
        "magic": 3,
        "header": 20,
        "mid_kv_key": kv["test.str_a"] + 10,
        "mid_kv_string": kv["test.str_b"] + 8 + len("test.str_b") + 4 + 8 + 2,
        "mid_kv_array": kv["test.strings"] + 30,
        "mid_tensor_infos": ti["t.bb"]["dims"] + 3,
        "before_data": pos["data_offset"],
        "mid_data": ti["t.bb"]["data"] + 5,
        "last_byte": len(data) - 1,
    }[where]
    msg = expect_error(patched(tmp_path, data, truncate=cut), r"bytes|truncated|past the end|too small")
    if where in ("mid_data", "last_byte", "before_data"):
        assert "runs past the end of the file" in msg


def test_offset_past_eof(base, tmp_path):
    _, data, pos = base
    t = pos["tensors"]["t.cc"]
    msg = expect_error(patched(tmp_path, data, {t["offset"]: u64(1 << 40)}), "runs past the end of the file")
    assert "'t.cc'" in msg and str(len(data)) in msg


@pytest.mark.parametrize("field_at,label", [(8, "tensors"), (16, "metadata entries")])
@pytest.mark.parametrize("count", [2**60, 2**64 - 1, 10**6])
def test_absurd_counts(base, tmp_path, field_at, label, count):
    _, data, _ = base
    msg = expect_error(patched(tmp_path, data, {field_at: u64(count)}), f"claims {count} {label}",
                       max_peak=50 * 2**20)
    assert "can hold" in msg


def test_count_slightly_too_large(base, tmp_path):
    _, data, _ = base
    (n_tensors,) = struct.unpack_from("<Q", data, 8)
    expect_error(patched(tmp_path, data, {8: u64(n_tensors + 1)}), r"tensor|past the end|remain")


@pytest.mark.parametrize("length", [2**62, 2**64 - 1, 10**6])
def test_absurd_key_length(base, tmp_path, length):
    _, data, pos = base
    expect_error(patched(tmp_path, data, {pos["kv"]["test.str_a"]: u64(length)}), r"key of metadata entry",
                 max_peak=50 * 2**20)


def test_absurd_string_value_length(base, tmp_path):
    _, data, pos = base
    at = pos["kv"]["test.str_b"] + 8 + len("test.str_b") + 4
    expect_error(patched(tmp_path, data, {at: u64(2**62)}), r"'test\.str_b'.*claims 4611686018427387904 bytes",
                 max_peak=50 * 2**20)


def test_absurd_string_in_array(base, tmp_path):
    _, data, pos = base
    at = pos["kv"]["test.strings"] + 8 + len("test.strings") + 4 + 4 + 8  # first element's length
    expect_error(patched(tmp_path, data, {at: u64(2**61)}), r"test\.strings.*\[0\]", max_peak=50 * 2**20)


@pytest.mark.parametrize("key", ["test.strings", "test.floats"])
def test_absurd_array_length(base, tmp_path, key):
    _, data, pos = base
    at = pos["kv"][key] + 8 + len(key) + 4 + 4
    expect_error(patched(tmp_path, data, {at: u64(2**60)}), r"claims 1152921504606846976 elements",
                 max_peak=50 * 2**20)


def test_absurd_tensor_name_length(base, tmp_path):
    _, data, pos = base
    expect_error(patched(tmp_path, data, {pos["tensors"]["t.aa"]["at"]: u64(2**63)}), r"name of tensor #0",
                 max_peak=50 * 2**20)


def test_bad_magic(base, tmp_path):
    _, data, _ = base
    expect_error(patched(tmp_path, data, {0: b"GGML"}), "not a GGUF file")
    expect_error(patched(tmp_path, b"\x89PNG\r\n\x1a\n" + bytes(100), name="image.gguf"), "not a GGUF file")


def test_version_1(base, tmp_path):
    _, data, _ = base
    expect_error(patched(tmp_path, data, {4: u32(1)}), r"version 1 is not supported")


def test_version_4(base, tmp_path):
    _, data, _ = base
    expect_error(patched(tmp_path, data, {4: u32(4)}), r"unsupported GGUF version 4")


def test_big_endian(tmp_path):
    path = write_gguf(tmp_path / "model-be.gguf", endianess=gguf.GGUFEndian.BIG)
    assert path.read_bytes()[:8] == b"GGUF\x00\x00\x00\x03"
    expect_error(path, r"big-endian.*only little-endian")


def test_unaligned_offset(base, tmp_path):
    _, data, pos = base
    t = pos["tensors"]["t.bb"]
    rel = t["data"] - pos["data_offset"]
    expect_error(patched(tmp_path, data, {t["offset"]: u64(rel + 4)}), r"'t\.bb' data offset .* not a multiple "
                                                                        r"of the alignment 32")


def test_overlapping_tensors(base, tmp_path):
    _, data, pos = base
    a, b = pos["tensors"]["t.aa"], pos["tensors"]["t.bb"]
    rel_a = a["data"] - pos["data_offset"]
    assert rel_a == 0
    expect_error(patched(tmp_path, data, {b["offset"]: u64(rel_a + 32)}), r"'t\.aa'.*'t\.bb'.*overlap")


@pytest.mark.parametrize("type_id,name", [(99, "unknown"), (16, "IQ2_XXS"), (4, "Q4_2"), (9, "Q8_1"),
                                          (27, "I64")])
def test_unsupported_tensor_type(base, tmp_path, type_id, name):
    _, data, pos = base
    msg = expect_error(patched(tmp_path, data, {pos["tensors"]["t.bb"]["type"]: u32(type_id)}),
                       rf"'t\.bb' has tensor type {name}")
    assert f"id {type_id}" in msg


def test_ne0_not_multiple_of_block(base, tmp_path):
    _, data, pos = base
    expect_error(patched(tmp_path, data, {pos["tensors"]["t.bb"]["dims"]: u64(48)}),
                 r"'t\.bb' \(Q8_0\) has row length ne0=48, not a multiple of the Q8_0 block size 32")


@pytest.mark.parametrize("dim_index", [0, 1])
def test_zero_dim(base, tmp_path, dim_index):
    _, data, pos = base
    at = pos["tensors"]["t.aa"]["dims"] + 8 * dim_index
    expect_error(patched(tmp_path, data, {at: u64(0)}), r"'t\.aa' has a zero dimension")


def test_element_count_overflow(base, tmp_path):
    _, data, pos = base
    at = pos["tensors"]["t.aa"]["dims"]
    expect_error(patched(tmp_path, data, {at: u64(2**40) + u64(2**40)}), r"more than 2\*\*63-1 elements")


def test_huge_but_valid_shape_past_eof(base, tmp_path):
    _, data, pos = base
    at = pos["tensors"]["t.aa"]["dims"]
    expect_error(patched(tmp_path, data, {at: u64(2**30) + u64(2**30)}), r"runs past the end of the file",
                 max_peak=50 * 2**20)


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_bad_n_dims(base, tmp_path, n_dims):
    _, data, pos = base
    expect_error(patched(tmp_path, data, {pos["tensors"]["t.aa"]["n_dims"]: u32(n_dims)}),
                 rf"'t\.aa' has {n_dims} dimensions \(must be 1\.\.4\)")


def test_duplicate_key(base, tmp_path):
    _, data, pos = base
    at = pos["kv"]["test.str_b"] + 8
    expect_error(patched(tmp_path, data, {at: b"test.str_a"}), r"duplicate metadata key 'test\.str_a'")


def test_duplicate_tensor_name(base, tmp_path):
    _, data, pos = base
    at = pos["tensors"]["t.bb"]["at"] + 8
    expect_error(patched(tmp_path, data, {at: b"t.aa"}), r"duplicate tensor name 't\.aa'")


def test_unknown_value_type(base, tmp_path):
    _, data, pos = base
    at = pos["kv"]["test.str_a"] + 8 + len("test.str_a")
    expect_error(patched(tmp_path, data, {at: u32(13)}), r"'test\.str_a'.*unknown value type 13")


def test_unknown_array_element_type(base, tmp_path):
    _, data, pos = base
    at = pos["kv"]["test.floats"] + 8 + len("test.floats") + 4
    expect_error(patched(tmp_path, data, {at: u32(77)}), r"test\.floats.*unknown element type 77")


def test_invalid_bool(base, tmp_path):
    _, data, pos = base
    at = pos["kv"]["test.flag"] + 8 + len("test.flag") + 4
    expect_error(patched(tmp_path, data, {at: b"\x02"}), r"'test\.flag'.*invalid value 2")


@pytest.mark.parametrize("alignment", [48, 0, 3])
def test_alignment_not_power_of_two(tmp_path, alignment):
    path = write_gguf(tmp_path / "al.gguf", alignment=64)
    ref = gguf.GGUFReader(path)
    at = ref.fields["general.alignment"].offset + 8 + len("general.alignment") + 4
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, at)[0] == 64
    expect_error(patched(tmp_path, data, {at: u32(alignment)}), rf"general\.alignment = {alignment} is not a "
                                                                r"power of two")


def test_custom_alignment_accepted(tmp_path):
    path = write_gguf(tmp_path / "al64.gguf", alignment=64)
    ref = gguf.GGUFReader(path)
    with GGUFFile(path) as f:
        assert f.alignment == 64 and f.data_offset == ref.data_offset and f.data_offset % 64 == 0
        for t in ref.tensors:
            assert f.tensors[t.name].offset == t.data_offset
            assert np.array_equal(f.tensor_bytes(t.name).reshape(-1), t.data.view(np.uint8).reshape(-1))


def test_tensor_name_too_long(tmp_path):
    path = write_gguf(tmp_path / "long.gguf", tensors={"x" * 65: np.zeros(32, np.float32)})
    expect_error(path, r"name of tensor #0 .* is 65 bytes long \(the limit is 64\)")


def test_nested_arrays(tmp_path):
    nested = [[1, 2], [3, 4, 5]]
    path = write_gguf(tmp_path / "nested.gguf", kv={"test.nested": (nested, gguf.GGUFValueType.ARRAY)})
    with GGUFFile(path) as f:
        assert plain(f.get("test.nested")) == nested
    deep = [[[[[[1]]]]]]
    path = write_gguf(tmp_path / "deep.gguf", kv={"test.deep": (deep, gguf.GGUFValueType.ARRAY)})
    expect_error(path, r"test\.deep.*nested more than 4 deep")


def test_invalid_utf8_string_roundtrips(base, tmp_path):
    _, data, pos = base
    at = pos["kv"]["test.str_a"] + 8 + len("test.str_a") + 4 + 8  # "hello"
    with GGUFFile(patched(tmp_path, data, {at: b"\xff\xfe"})) as f:
        s = f.get("test.str_a")
        assert s.encode("utf-8", "surrogateescape") == b"\xff\xfello"


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        GGUFFile(tmp_path / "nope.gguf")


def test_error_names_file_and_tensor_like_spec(base, tmp_path):
    """The message format from the spec: name, offset, byte count, file size."""
    _, data, pos = base
    t = pos["tensors"]["t.aa"]
    cut = t["data"] + t["n_bytes"] - 1
    msg = expect_error(patched(tmp_path, data, truncate=cut, name="model.gguf"), "runs past")
    # t.bb / t.cc lie after t.aa, so the first failing tensor in file order is t.aa.
    assert msg == (f"{tmp_path / 'model.gguf'}: tensor 't.aa' data [offset {t['data']}, {t['n_bytes']} bytes] "
                   f"runs past the end of the file ({cut} bytes)")
