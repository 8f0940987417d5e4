"""Neuron order in the flash layout (convert_flash(order_text=...)): units of neurons are moved as
bytes (the reordered bundles are the source-order bundles permuted), the runtime puts them back in
the down product so every mode gives exactly the logits of the source model, and the order does what
it is for: on a different text the first bundles are active far more often than the last ones (on
SmolLM2 about 0.74 vs 0.38 of tokens at density 0.5; no bundle becomes idle: SwiGLU is not that
sparse, and a bundle is active when any of its neurons is)."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from lutllm import _core
from lutllm.convert import calibrate_thresholds, convert_flash, lut_group_block_bytes
from lutllm.engine import Engine
from lutllm.gguf_file import GGUFFile

DATA = pathlib.Path(__file__).parent / "data"
EVAL = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside green leaves."


@pytest.fixture(scope="module")
def ordered(smollm2_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("flashorder")
    text = (DATA / "tokenizer_corpus.txt").read_text()
    plain = convert_flash(smollm2_path, d / "plain.gguf", progress=False)
    lay = convert_flash(smollm2_path, d / "ordered.gguf", progress=False, order_text=text)
    return smollm2_path, str(d / "plain.gguf"), plain, str(d / "ordered.gguf"), lay


def _units(path, lay, layer, unit):
    """(gate, up, down) of one layer as arrays indexed by file unit, from the bundle bytes."""
    blob = np.asarray(GGUFFile(path).tensor_data(f"blk.{layer}.ffn_bundles")).view(np.uint8)
    f = lay.down_format[layer]
    gb, gbb = lay.gate_bytes(layer, unit), lut_group_block_bytes(f)
    per = lay.bundle_neurons // unit
    gate, up, down = [], [], []
    for j in range(lay.n_bundles):
        b = blob[j * lay.bundle_stride[layer]:]
        n = lay.bundle_size(j)
        g_all, dn = b[: lay.gate_bytes(layer, n)], b[2 * lay.gate_bytes(layer, n): lay.bundle_bytes(layer, n)]
        u_all = b[lay.gate_bytes(layer, n): 2 * lay.gate_bytes(layer, n)]
        dn = dn.reshape(lay.d_model // 16, n // f[1], gbb)
        for u in range(n // unit):
            gate.append(g_all[u * gb:(u + 1) * gb])
            up.append(u_all[u * gb:(u + 1) * gb])
            down.append(dn[:, u * unit // f[1]:(u + 1) * unit // f[1]])
        assert n // unit == per or j == lay.n_bundles - 1
    return gate, up, down


def test_order_is_a_byte_permutation_of_the_source_order(ordered):
    _, plain_path, plain, path, lay = ordered
    assert lay.unit_neurons and lay.unit_neurons % 16 == 0 and lay.bundle_neurons % lay.unit_neurons == 0
    assert plain.unit_order == () and len(lay.unit_order) == lay.n_layer
    assert lay.bundle_stride == plain.bundle_stride and lay.bundle_neurons == plain.bundle_neurons
    n_units = lay.d_ff // lay.unit_neurons
    moved = 0
    for layer in (0, lay.n_layer // 2, lay.n_layer - 1):
        order = np.asarray(lay.unit_order[layer])
        assert sorted(order) == list(range(n_units))
        moved += int((order != np.arange(n_units)).sum())
        g0, u0, d0 = _units(plain_path, plain, layer, lay.unit_neurons)
        g1, u1, d1 = _units(path, lay, layer, lay.unit_neurons)
        for fu, src in enumerate(order):
            np.testing.assert_array_equal(g1[fu], g0[src])
            np.testing.assert_array_equal(u1[fu], u0[src])
            np.testing.assert_array_equal(d1[fu], d0[src])
    assert moved > n_units  # it really reorders


@pytest.mark.parametrize("mode", ["resident", "dense", "dense-partial", "windowed"])
def test_ordered_file_gives_the_source_logits_exactly(ordered, mode):
    src, _, _, path, lay = ordered
    ref = Engine(src, n_ctx=128, n_threads=2, n_batch=8)
    toks = ref.tokenizer.encode(EVAL, add_special=True, parse_special=False)[:12]
    want = ref.eval(toks, all_logits=True)
    kw = {}
    if mode == "dense-partial":
        probe = Engine(path, n_ctx=128, n_threads=1, flash_mode="dense")
        kw = dict(mem_budget=probe.memory_plan.minimum + lay.ffn_bytes() // 3)
    e = Engine(path, n_ctx=128, n_threads=2, n_batch=8, flash_mode=mode.split("-")[0], **kw)
    if mode == "dense-partial":
        assert 0 < e.memory_plan.resident_bundles < lay.n_bundles
    np.testing.assert_array_equal(e.eval(toks, all_logits=True), want)  # batched
    ref.reset()
    e.reset()
    for i in range(4, len(toks) + 1):  # one token at a time
        np.testing.assert_array_equal(e.eval(toks[:i])[-1], ref.eval(toks[:i])[-1])


def _bundle_activity(path, thresholds, toks):
    """Per layer: the fraction of tokens on which each bundle is active under `thresholds`."""
    e = Engine(path, n_ctx=256, n_threads=2, n_batch=1, flash_mode="windowed")
    _core.model_flash_record_scores(e._model, True)
    e.eval(list(toks))
    scores = _core.model_flash_take_scores(e._model)
    return [(np.asarray(s).reshape(len(toks), -1) > t).mean(0) for s, t in zip(scores, thresholds)]


def test_hot_bundles_come_first_on_another_text(ordered):
    _, plain_path, _, path, lay = ordered
    calib_text = (DATA / "tokenizer_corpus.txt").read_text()
    e = Engine(path, n_ctx=512, n_threads=2, flash_mode="windowed")
    calib = e.tokenizer.encode(calib_text, add_special=True, parse_special=False)[:256]
    toks = e.tokenizer.encode((DATA / "ppl_text.txt").read_text(), add_special=True, parse_special=False)[:96]
    thr = calibrate_thresholds(e, calib, 0.5)
    act = np.stack(_bundle_activity(path, thr, toks))  # layers x bundles
    q = max(1, lay.n_bundles // 4)
    first, last = act[:, :q].mean(), act[:, -q:].mean()
    assert first > 1.5 * last, (first, last)
    # the source order has no such gradient
    pe = Engine(plain_path, n_ctx=512, n_threads=2, flash_mode="windowed")
    pact = np.stack(_bundle_activity(plain_path, calibrate_thresholds(pe, calib, 0.5), toks))
    assert abs(pact[:, :q].mean() - pact[:, -q:].mean()) < (first - last) / 4


def test_cli_order_text_and_bad_order_metadata(ordered, tmp_path):
    from click.testing import CliRunner

    from lutllm.cli import main
    from lutllm.convert import ConvertError, FlashLayout

    src, _, _, path, lay = ordered
    out = tmp_path / "cli.gguf"
    r = CliRunner().invoke(main, ["convert", src, str(out), "--flash", "--order-text",
                                  str(DATA / "tokenizer_corpus.txt")])
    assert r.exit_code == 0, r.output
    got = FlashLayout.from_gguf(GGUFFile(out))
    assert got.unit_order == lay.unit_order  # same text, same order
    # an order that is not a permutation is refused with the file named
    data = bytearray(open(path, "rb").read())
    g = GGUFFile(path)
    import struct

    key = b"lutllm.flash.unit_order"
    at = data.index(key) + len(key) + 4 + 4 + 8  # value type, item type, count
    struct.pack_into("<i", data, at, struct.unpack_from("<i", data, at + 4)[0])  # duplicate an entry
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    assert g.metadata["lutllm.flash.unit_order"][0] != GGUFFile(bad).metadata["lutllm.flash.unit_order"][0]
    with pytest.raises(ConvertError, match=r"bad\.gguf.*not a permutation"):
        FlashLayout.from_gguf(GGUFFile(bad))
