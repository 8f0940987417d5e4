"""Flash-backed FFN in the runtime (runtime/flash_ffn.cc through Engine): a converted SmolLM2 gives
bit-identical logits to the ordinary resident runtime on the source GGUF, streamed (every I/O
backend) or resident; bytes read per token match the layout's analytic count; mem_budget picks the
mode and refuses budgets below the stated minimum."""
from __future__ import annotations

import numpy as np
import pytest

from lutllm.engine import Engine

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village by the sea,"


@pytest.fixture(scope="module")
def flash_pair(smollm2_flash):
    return smollm2_flash[:2]


@pytest.fixture(scope="module")
def reference(flash_pair):
    """Logits of the resident runtime on the source GGUF: a batched prompt, then 4 single tokens."""
    src, _ = flash_pair
    e = Engine(src, n_ctx=128, n_threads=2, n_batch=8)
    toks = e.tokenizer.encode(PROMPT, add_special=True, parse_special=False)
    prompt_logits = e.eval(toks, all_logits=True)
    steps = []
    seq = list(toks)
    for _ in range(4):
        nxt = int(np.argmax(steps[-1] if steps else prompt_logits[-1]))
        seq.append(nxt)
        steps.append(e.eval(seq)[-1].copy())
    return toks, prompt_logits, seq, steps


def _run(engine, toks, seq):
    prompt_logits = engine.eval(toks, all_logits=True)
    steps = [engine.eval(seq[: len(toks) + i + 1])[-1].copy() for i in range(len(seq) - len(toks))]
    return prompt_logits, steps


@pytest.mark.parametrize("mode,io", [("dense", "uring"), ("dense", "pool"), ("dense", "buffered"),
                                     ("resident", "auto")])
def test_logits_bit_identical_to_resident_runtime(flash_pair, reference, mode, io):
    _, flash = flash_pair
    toks, ref_prompt, seq, ref_steps = reference
    try:
        e = Engine(flash, n_ctx=128, n_threads=2, n_batch=8, flash_mode=mode, flash_io=io)
    except ValueError as err:
        if io in ("uring", "pool") and ("not available" in str(err) or "O_DIRECT" in str(err)):
            pytest.skip(f"{io} unavailable here: {err}")
        raise
    info = e.flash_info()
    assert info["mode"] == mode and (io == "auto" or info["io"] == io)
    prompt_logits, steps = _run(e, toks, seq)
    np.testing.assert_array_equal(prompt_logits, ref_prompt)  # batched (GEMM) path
    for got, want in zip(steps, ref_steps):                   # one token at a time (GEMV) path
        np.testing.assert_array_equal(got, want)


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise AssertionError("no read_bytes in /proc/self/io")


@pytest.mark.parametrize("io", ["uring", "pool"])
def test_read_bytes_per_token_match_layout(flash_pair, io):
    """O_DIRECT reads are counted in /proc/self/io read_bytes: per token they equal the FFN bytes of
    the layout (every bundle, padding included) within 10%."""
    _, flash = flash_pair
    try:
        e = Engine(flash, n_ctx=64, n_threads=2, flash_mode="dense", flash_io=io)
    except ValueError as err:
        pytest.skip(str(err))
    toks = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    e.eval(toks[:2])  # warm: the resident (mapped) tensors are faulted in now
    e.flash_reset_stats()
    r0 = _read_bytes()
    n = 0
    for i in range(3, len(toks) + 1):
        e.eval(toks[:i])
        n += 1
    per_token = (_read_bytes() - r0) / n
    analytic = e.flash_layout.ffn_bytes()
    assert abs(per_token - analytic) <= 0.10 * analytic, (per_token, analytic)
    assert e.flash_info()["bytes_read"] == n * analytic  # what the reader issued: exactly the layout


@pytest.mark.parametrize("io", ["uring", "pool"])
def test_partly_resident_dense_is_identical_and_reads_only_the_rest(flash_pair, reference, io):
    """A budget between the dense minimum and the model size keeps the first bundles of every layer
    in memory: logits stay bit-identical to the resident runtime, and each token reads exactly the
    other bundles (/proc/self/io within 10 %)."""
    _, flash = flash_pair
    toks, ref_prompt, seq, ref_steps = reference
    probe = Engine(flash, n_ctx=128, n_threads=1, flash_mode="dense")
    lay = probe.flash_layout
    budget = probe.memory_plan.minimum + lay.ffn_bytes() // 2
    try:
        e = Engine(flash, n_ctx=128, n_threads=2, n_batch=8, flash_mode="dense", flash_io=io, mem_budget=budget)
    except ValueError as err:
        pytest.skip(str(err))
    r = e.memory_plan.resident_bundles
    assert 0 < r < lay.n_bundles and e.memory_plan.total <= budget
    prompt_logits, steps = _run(e, toks, seq)
    np.testing.assert_array_equal(prompt_logits, ref_prompt)
    for got, want in zip(steps, ref_steps):
        np.testing.assert_array_equal(got, want)
    e.reset()
    e.eval(toks[:2])
    e.flash_reset_stats()
    r0 = _read_bytes()
    for i in range(3, 9):
        e.eval(toks[:i])
    per_token = (_read_bytes() - r0) / 6
    streamed = sum(lay.layer_bytes(i) - r * lay.bundle_stride[i] for i in range(lay.n_layer))
    assert e.flash_info()["bytes_read"] == 6 * streamed
    assert abs(per_token - streamed) <= 0.10 * streamed, (per_token, streamed)


def test_mem_budget_selects_mode_and_states_minimum(flash_pair):
    src, flash = flash_pair
    big = Engine(flash, n_ctx=64, n_threads=1, mem_budget=1 << 34)
    assert big.flash_info()["mode"] == "resident"
    assert big.flash_info()["memory_bytes"] == big.memory_plan.ffn_memory == big.flash_layout.ffn_bytes()
    plan = big.memory_plan
    assert plan.minimum < plan.total
    lay = big.flash_layout
    budget = plan.minimum + lay.ffn_bytes() // 4  # below the model size, above the minimum
    assert budget < plan.resident + lay.ffn_bytes()
    e = Engine(flash, n_ctx=64, n_threads=1, mem_budget=budget)
    info = e.flash_info()
    assert info["mode"] == "dense"
    # the FFN executor holds what the plan counts: the bundles the budget leaves room for (read once)
    # plus the staging of the streamed rest, and the whole plan stays within the budget
    p = e.memory_plan
    assert 0 < p.resident_bundles < lay.n_bundles
    assert info["memory_bytes"] == p.ffn_memory and p.total <= budget
    assert p.ffn_memory > p.resident_bundles * sum(lay.bundle_stride)
    # one bundle more per layer would not fit
    assert p.total + sum(lay.bundle_stride) - 2 * max(lay.bundle_stride) > budget
    at_min = Engine(flash, n_ctx=64, n_threads=1, mem_budget=plan.minimum)
    assert at_min.memory_plan.resident_bundles == 0
    assert at_min.flash_info()["memory_bytes"] < lay.ffn_bytes() / 4  # two layers + the gather buffer
    with pytest.raises(ValueError, match=rf"at least {plan.minimum} bytes"):
        Engine(flash, n_ctx=64, n_threads=1, mem_budget=plan.minimum - 1)
    with pytest.raises(ValueError, match="lutllm convert"):
        Engine(src, n_ctx=64, n_threads=1, mem_budget=1 << 20)
    with pytest.raises(ValueError, match="unknown flash mode"):
        Engine(flash, n_ctx=64, n_threads=1, flash_mode="sparse")
    assert Engine(src, n_ctx=64, n_threads=1).flash_info() is None


def test_truncated_flash_file_is_rejected(flash_pair, tmp_path):
    _, flash = flash_pair
    bad = tmp_path / "cut.gguf"
    with open(flash, "rb") as f:
        data = f.read()
    bad.write_bytes(data[: len(data) - 4096])
    with pytest.raises(ValueError, match=r"cut\.gguf"):
        Engine(str(bad), n_ctx=64, n_threads=1, flash_mode="dense")


def test_cli_mem_budget(flash_pair):
    from click.testing import CliRunner

    from lutllm.cli import main

    src, flash = flash_pair
    run = CliRunner().invoke
    args = ["run", "--raw", "-n", "6", "--temp", "0", "-c", "64", "-t", "1", "Once upon a time"]
    want = run(main, args + ["-m", src])
    assert want.exit_code == 0, want.output
    got = run(main, args + ["-m", flash, "--mem-budget", "80M"])  # model is ~94 MiB: FFN streamed
    assert got.exit_code == 0, got.output
    assert got.output == want.output
    r = run(main, args + ["-m", flash, "--mem-budget", "10M"])
    assert r.exit_code == 1 and "at least" in r.output
    r = run(main, args + ["-m", flash, "--mem-budget", "lots"])
    assert r.exit_code == 2 and "not a size" in r.output


def test_untied_token_embedding_is_not_counted_hot(smollm2_path):
    """Budget accounting (memory.estimate_memory, used by plan_memory): a token embedding with its own
    output head is read one row per token, so it is mapped but not hot; a tied one is the head."""
    from types import SimpleNamespace

    from lutllm.arch import model_config
    from lutllm.gguf_file import GGUFFile, TensorInfo
    from lutllm.memory import estimate_memory, repacked_bytes

    g = GGUFFile(smollm2_path)
    cfg = model_config(g.metadata, g.tensors, smollm2_path)
    tied = estimate_memory(g, cfg, 64)
    emb = g.tensors["token_embd.weight"]
    assert "output.weight" not in g.tensors and tied.weights_lookup == 0
    head = TensorInfo("output.weight", emb.ggml_type, emb.type_name, emb.shape, 0, emb.nbytes)
    untied = estimate_memory(SimpleNamespace(tensors=dict(g.tensors, **{"output.weight": head})), cfg, 64)
    assert untied.weights_lookup == emb.nbytes
    # the embedding left the hot bytes; the new head is hot or, if 4-bit, copied to the LUT layout
    packed = repacked_bytes(emb.ggml_type, emb.shape[1], emb.shape[0])
    assert untied.weights_mapped_hot == tied.weights_mapped_hot - emb.nbytes + (emb.nbytes if packed is None else 0)
    assert untied.repack == tied.repack + (packed or 0)
