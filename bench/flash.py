"""Flash-backed weights benchmark: decode speed, bytes read per token and peak memory measured from
outside (a memory cgroup per run) for lutllm resident / dense-stream / windowed-sparse (k in a list)
and llama-cpp-python with mmap under the same memory limit. Prints JSON lines + a table.

    python bench/flash.py -m qwen2.5-coder-1.5b-instruct [--budget-frac 0.5] [-n 32] [--windows 1,2,4,8]
    python bench/flash.py -m smollm2-135m-instruct --quality [--densities 0.9,0.7,0.5]
    python bench/flash.py -m qwen2.5-coder-0.5b-instruct --recall --flash-file F [--ranks 32,64,128]

--quality instead measures what windowed-sparse thresholds cost: perplexity, mean KL divergence and
top-1 agreement against the dense model, one token at a time (n_batch 1, so each token's own
active set is used), thresholds calibrated on tests/data/tokenizer_corpus.txt and evaluated on
tests/data/ppl_text.txt (different texts). The flash file's neurons are ordered by activation
frequency on the calibration text (convert_flash(order_text=...)) unless --no-order. With a gate
predictor in the file (the default), --quality also reports its recall: of the (token, bundle) pairs
the exact gate puts in the top `density` fraction, the share the predictor's top fraction finds.

--recall compares gate predictors without converting: on a flash file (any), it records the FFN
inputs and exact bundle scores on the calibration text and on the evaluation text, fits the plain
truncated SVD of each layer's dequantized gate and the activation-aware one (whitened by the
calibration inputs' covariance, several ridges) at several ranks, and prints each one's recall on the
evaluation text, in float32 and after a Q8_0 round trip.

The llama.cpp arm loads with use_extra_bufts = false (llama_model_params): otherwise llama.cpp
repacks Q4_K / Q4_0 weights into anonymous memory on AVX2 CPUs (its CPU_REPACK buffer type), which
cannot page back to the file and is killed under the limit; without it the weights stay in the mmap.
--llama-repack keeps llama.cpp's default.

Each arm runs in its own process inside a fresh memory cgroup (v2: memory.max / memory.peak; v1: a
child of this process's group, memory.limit_in_bytes / memory.max_usage_in_bytes) whose limit is the
budget plus --allowance for code, KV cache and Python; page cache is charged there too, so the mmap
baseline gets the same memory. Every run starts cold: the model files are fsync'ed and dropped from
the page cache with POSIX_FADV_DONTNEED first. Without a usable cgroup the runs go ahead unlimited
and report peak RSS only (marked "cgroup": null). The flash file is made with `lutllm convert --flash`
next to the cache (or --flash-file). Not a test: nothing here asserts speed.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
LLAMA_PY = os.environ.get("LUTLLM_LLAMA_VENV", str(pathlib.Path.home() / ".cache/lutllm-bench/llama-venv")) + "/bin/python"
CALIB_FILE = HERE.parent / "tests" / "data" / "tokenizer_corpus.txt"  # neuron order and thresholds
PROMPT_TEXT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
# decode feeds these tokens one at a time (the same work as sampling, and the same for both engines)
DECODE_TEXT = (" The keeper climbed the stairs at dusk, lit the lamp and watched the ships pass, until one"
               " morning a green bottle rolled onto the rocks below the tower with a letter inside it.") * 8


# ---- memory cgroups ------------------------------------------------------------------------------
class Cgroup:
    """A throw-away memory cgroup with a limit; `pid` joins it; peak() reads the high-water mark."""

    def __init__(self, name: str, limit: int):
        self.v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        rel = _own_cgroup(self.v2)
        root = "/sys/fs/cgroup" if self.v2 else "/sys/fs/cgroup/memory"
        self.path = pathlib.Path(root + rel) / name
        self.path.mkdir()
        if self.v2:
            (self.path / "memory.max").write_text(str(limit))
            try:
                (self.path / "memory.swap.max").write_text("0")
            except OSError:
                pass
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))

    def join(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def peak(self) -> int:
        return int((self.path / ("memory.peak" if self.v2 else "memory.max_usage_in_bytes")).read_text())

    def events(self) -> dict:
        if self.v2:
            return dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
        return {"failcnt": (self.path / "memory.failcnt").read_text().strip()}

    def stat(self) -> dict:
        keys = ("anon", "file", "file_mapped") if self.v2 else ("rss", "cache", "mapped_file")
        out = {}
        for line in (self.path / "memory.stat").read_text().splitlines():
            k, v = line.split()
            if k in keys:
                out[k] = int(v)
        return out

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def _own_cgroup(v2: bool) -> str:
    for line in open("/proc/self/cgroup"):
        hid, ctrl, path = line.rstrip("\n").split(":", 2)
        if (v2 and hid == "0") or (not v2 and "memory" in ctrl.split(",")):
            return path.rstrip("/")
    raise OSError("no memory cgroup for this process")


def cgroup_usable() -> str | None:
    """None if a child memory cgroup can be made and joined here, else why not."""
    try:
        cg = Cgroup(f"lutllm_probe_{os.getpid()}", 1 << 30)
    except OSError as e:
        return str(e)
    try:
        p = subprocess.Popen([sys.executable, "-c", "pass"], preexec_fn=lambda: cg.join(os.getpid()))
        p.wait()
        return None if p.returncode == 0 else f"probe exited {p.returncode}"
    except OSError as e:
        return str(e)
    finally:
        cg.remove()


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---- workers (run in the child process) ----------------------------------------------------------
def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def _own_memory() -> dict:
    """This process's peak resident set and its anonymous part now (MiB), from /proc/self/status:
    what the process itself holds, next to the cgroup peak that also counts clean page cache."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) / 1024
    return out


def lutllm_worker(job: dict) -> dict:
    sys.path.insert(0, str(HERE.parent / "python"))
    from lutllm.convert import calibrate_thresholds
    from lutllm.engine import Engine

    t0 = time.perf_counter()
    eng = Engine(job["model"], n_ctx=job["n_ctx"], n_threads=job["threads"], n_batch=64,
                 mem_budget=job.get("budget"), flash_mode=job.get("mode"), flash_window=job.get("window", 4))
    if job.get("density") is not None:
        calib = eng.tokenizer.encode(CALIB_FILE.read_text(), add_special=True, parse_special=False)[: job["n_ctx"] // 2]
        eng.flash_set_thresholds(calibrate_thresholds(eng, calib, job["density"]))
    load_s = time.perf_counter() - t0
    prompt = eng.tokenizer.encode(PROMPT_TEXT, add_special=True, parse_special=False)
    decode = eng.tokenizer.encode(DECODE_TEXT, add_special=False, parse_special=False)[: job["n_gen"]]
    if len(decode) < job["n_gen"]:
        raise SystemExit(f"n_gen {job['n_gen']} exceeds the {len(decode)} decode tokens available")
    hist = list(prompt)
    eng.eval(hist)
    if eng.flash_info():
        eng.flash_reset_stats()
    r0 = _read_bytes()
    t1 = time.perf_counter()
    for tok in decode:
        hist.append(tok)
        eng.eval(hist)
    dt = time.perf_counter() - t1
    n = job["n_gen"]
    out = {"load_s": load_s, "tok_s": n / dt, "ms_per_token": 1e3 * dt / n,
           "read_bytes_per_token": (_read_bytes() - r0) / n, "proc_mib": _own_memory()}
    info = eng.flash_info()
    if info:
        out.update({"flash_mode": info["mode"], "io": info["io"], "flash_memory": info["memory_bytes"],
                    "resident_bundles": eng.memory_plan.resident_bundles, "bundles": info["bundles_per_layer"],
                    "ms_gather": 1e3 * info["gather_s"] / n,
                    "ms_io": 1e3 * info["io_wait_s"] / n, "ms_cache": 1e3 * info["cache_s"] / n,
                    "ms_ffn_compute": 1e3 * info["compute_s"] / n,
                    "issued_bytes_per_token": info["bytes_read"] / n,
                    "active_frac": (info["bundles_active"] / max(1, info["layers_run"] * info["bundles_per_layer"]))
                    if info["mode"] == "windowed" else 1.0})
    return out


def llama_worker(job: dict) -> dict:
    import llama_cpp.llama_cpp as lc
    from llama_cpp import Llama

    if not job.get("repack", False):
        default = lc.llama_model_default_params

        def no_repack():
            p = default()
            p.use_extra_bufts = False  # keep the weights in the mmap (no CPU_REPACK anonymous copy)
            return p

        lc.llama_model_default_params = no_repack
    t0 = time.perf_counter()
    llm = Llama(model_path=job["model"], n_ctx=job["n_ctx"], n_threads=job["threads"], n_threads_batch=job["threads"],
                n_batch=64, use_mmap=True, verbose=False)
    load_s = time.perf_counter() - t0
    prompt = llm.tokenize(PROMPT_TEXT.encode(), add_bos=True)
    decode = llm.tokenize(DECODE_TEXT.encode(), add_bos=False)[: job["n_gen"]]
    llm.eval(prompt)
    r0 = _read_bytes()
    t1 = time.perf_counter()
    for tok in decode:
        llm.eval([tok])
    dt = time.perf_counter() - t1
    n = job["n_gen"]
    return {"load_s": load_s, "tok_s": n / dt, "ms_per_token": 1e3 * dt / n,
            "read_bytes_per_token": (_read_bytes() - r0) / n, "use_extra_bufts": bool(llm.model_params.use_extra_bufts),
            "proc_mib": _own_memory()}


def _record(e, toks, inputs: bool = False):
    """Per layer (tokens x bundles) scores the bundles are chosen by, exact gate scores, and with
    `inputs` the (tokens x d_model) FFN inputs, with every bundle active."""
    import numpy as np

    from lutllm import _core

    m = e._model
    _core.model_flash_set_thresholds(m, [])
    _core.model_flash_record_scores(m, True, inputs)
    try:
        e.reset()
        e.eval(list(toks))
        n = len(toks)
        used = [np.asarray(v).reshape(n, -1) for v in _core.model_flash_take_scores(m)]
        exact = [np.asarray(v).reshape(n, -1) for v in _core.model_flash_take_scores(m, exact=True)]
        xs = [np.asarray(v).reshape(n, -1) for v in _core.model_flash_take_inputs(m)] if inputs else None
    finally:
        _core.model_flash_record_scores(m, False)
        e.reset()
    return used, exact, xs


def recall(src: str, flash: str, ranks: list[int], threads: int, n_calib: int, n_eval: int) -> None:
    import gguf
    import numpy as np

    from lutllm.convert import _dequant, predictor_factors, predictor_recall
    from lutllm.engine import Engine
    from lutllm.gguf_file import GGUFFile

    data = HERE.parent / "tests" / "data"
    e = Engine(flash, n_ctx=max(n_calib, n_eval) + 8, n_threads=threads, n_batch=64, flash_mode="windowed")
    enc = lambda f, n: e.tokenizer.encode((data / f).read_text(), add_special=True, parse_special=False)[:n]
    _, _, xc = _record(e, enc("tokenizer_corpus.txt", n_calib), inputs=True)
    _, exact, xe = _record(e, enc("ppl_text.txt", n_eval), inputs=True)
    lay, g = e.flash_layout, GGUFFile(src)
    gn, rmax, q8 = lay.bundle_neurons, max(ranks), gguf.GGMLQuantizationType.Q8_0
    if lay.unit_order:
        raise SystemExit("--recall needs a flash file in the source neuron order (--no-order)")

    def scores(gh):
        return np.abs(gh / (1 + np.exp(-gh))).reshape(len(gh), -1, gn).max(2)

    def q8_trip(m):
        return gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(m), q8), q8).reshape(m.shape)

    pred: dict = {}
    methods = {"svd": None, "aware-ridge0.01": 0.01, "aware-ridge1": 1.0, "aware-ridge10": 10.0}
    for layer in range(lay.n_layer):
        w = _dequant(g, g.tensors[f"blk.{layer}.ffn_gate.weight"])
        for name, ridge in methods.items():
            a, b = predictor_factors(w, rmax, None if ridge is None else xc[layer], ridge=ridge or 0.0)
            for r in ranks:
                pred.setdefault((name, r, "f32"), []).append(scores(xe[layer] @ b[:r].T @ a[:, :r].T))
                pred.setdefault((name, r, "q8_0"), []).append(
                    scores(xe[layer] @ q8_trip(b[:r]).T @ q8_trip(np.ascontiguousarray(a[:, :r])).T))
    for (name, r, dt), v in sorted(pred.items()):
        row = {"method": name, "rank": r, "dtype": dt, "bytes_q8_0": lay.n_layer * r * (lay.d_ff + lay.d_model) * 34 // 32}
        row.update({f"recall@{d}": round(predictor_recall(exact, v, d), 4) for d in (0.5, 0.3, 0.2)})
        print(json.dumps(row), flush=True)


def quality(flash: str, densities: list[float], window: int, threads: int, n_ctx: int, chunks: int) -> None:
    import numpy as np

    from lutllm.convert import calibrate_thresholds, predictor_recall
    from lutllm.engine import Engine

    data = HERE.parent / "tests" / "data"
    e = Engine(flash, n_ctx=n_ctx, n_threads=threads, n_batch=1, flash_mode="windowed", flash_window=window)
    calib = e.tokenizer.encode((data / "tokenizer_corpus.txt").read_text(), add_special=True, parse_special=False)
    toks = e.tokenizer.encode((data / "ppl_text.txt").read_text(), add_special=True, parse_special=False)
    if len(toks) < chunks * n_ctx:
        raise SystemExit(f"evaluation text has {len(toks)} tokens, fewer than {chunks} x {n_ctx}")
    pred_recall = None
    if e.flash_info()["predictor"]:  # on the evaluation text's first chunk, every bundle active
        used, exact, _ = _record(e, toks[:n_ctx])
        pred_recall = lambda d: predictor_recall(exact, used, d)
    ref = None
    for density in [1.0] + densities:
        e.flash_set_thresholds(calibrate_thresholds(e, calib[:n_ctx], density) if density < 1 else [])
        e.flash_reset_stats()
        rows, targets = [], []
        for c in range(chunks):
            chunk = toks[c * n_ctx:(c + 1) * n_ctx]
            e.reset()
            rows.append(e.eval(chunk, all_logits=True)[:-1].astype(np.float64))
            targets.append(np.asarray(chunk[1:]))
        r, t = np.concatenate(rows), np.concatenate(targets)
        logp = r - (r.max(1) + np.log(np.exp(r - r.max(1)[:, None]).sum(1)))[:, None]
        ppl = float(np.exp(-logp[np.arange(len(t)), t].mean()))
        if ref is None:
            ref = (logp, ppl)
        kl = float((np.exp(ref[0]) * (ref[0] - logp)).sum(1).mean())
        info = e.flash_info()
        slots = info["layers_run"] * info["bundles_per_layer"]
        print(json.dumps({"density": density, "window": window, "ppl": ppl, "dppl_pct": 100 * (ppl / ref[1] - 1),
                          "mean_kl": kl, "top1_agree": float((ref[0].argmax(1) == logp.argmax(1)).mean()),
                          "active_frac": info["bundles_active"] / slots,
                          "loaded_frac": info["bundles_loaded"] / slots, "predictor": info["predictor"],
                          "recall": pred_recall(density) if pred_recall and density < 1 else None}), flush=True)


# ---- driver --------------------------------------------------------------------------------------
def _stale_layout(src: str, flash: str) -> bool:
    """True when the cached flash file's per-layer bundle formats differ from what convert would
    write for `src` today (e.g. fp32-scale gate/up from before k-quant gate/up bundles)."""
    from lutllm.convert import FlashLayout, _plan_layers
    from lutllm.gguf_file import GGUFFile

    lay = FlashLayout.from_gguf(GGUFFile(flash))
    plan = _plan_layers(GGUFFile(src), lay.n_layer, lay.d_model, lay.d_ff)
    return [(p.gu_fmt, p.dn_fmt) for p in plan] != list(zip(lay.gu_format, lay.down_format))


def run_arm(name: str, job: dict, limit: int | None, files: list[str], use_cgroup: bool) -> dict:
    for f in files:
        drop_cache(f)
    cmd = [LLAMA_PY if job["engine"] == "llama" else sys.executable, __file__, "--worker", json.dumps(job)]
    cg = Cgroup(f"lutllm_bench_{os.getpid()}_{name}", limit) if use_cgroup and limit else None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True,
                           preexec_fn=(lambda: cg.join(os.getpid())) if cg else None)
        res = {"arm": name, "limit": limit, "rc": p.returncode}
        if p.returncode == 0:
            res.update(json.loads(p.stdout.strip().splitlines()[-1]))
        else:
            res["error"] = p.stderr[-1500:]
        if cg:
            res["cgroup"] = {"peak": cg.peak(), "events": cg.events(), "stat": cg.stat()}
        else:
            res["cgroup"] = None
        return res
    finally:
        if cg:
            cg.remove()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("-m", "--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--flash-file", default=None, help="flash layout of the model (made if missing)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-c", "--n-ctx", type=int, default=512)
    ap.add_argument("--budget-frac", type=float, default=0.5, help="budget as a fraction of the GGUF size")
    ap.add_argument("--allowance", type=int, default=160 << 20, help="cgroup limit = budget + this (code, Python)")
    ap.add_argument("--windows", default="1,2,4,8")
    ap.add_argument("--density", type=float, default=0.5, help="fraction of bundles active (calibrated)")
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--quality", action="store_true", help="measure sparsity cost instead of speed")
    ap.add_argument("--densities", default="0.9,0.7,0.5")
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--recall", action="store_true", help="compare gate predictors (plain / activation-aware SVD)")
    ap.add_argument("--ranks", default="32,64,128")
    ap.add_argument("--no-order", action="store_true", help="flash file in the source neuron order")
    ap.add_argument("--llama-repack", action="store_true", help="let llama.cpp repack weights (its default)")
    ap.add_argument("--arms", default=None, help="comma-separated subset of arm names to run")
    a = ap.parse_args()
    if a.worker:
        job = json.loads(a.worker)
        print(json.dumps(llama_worker(job) if job["engine"] == "llama" else lutllm_worker(job)))
        return

    sys.path.insert(0, str(HERE.parent / "python"))
    from lutllm.convert import convert_flash
    from lutllm.models import resolve_model

    src = str(resolve_model(a.model))
    flash = a.flash_file or str(pathlib.Path(src).with_suffix(".flash.gguf" if a.no_order else ".flash-ordered.gguf"))
    if os.path.exists(flash) and not a.flash_file and _stale_layout(src, flash):
        print(f"# {flash}: made by an older convert (other bundle formats than it plans now); converting again",
              file=sys.stderr)
        os.unlink(flash)
    if not os.path.exists(flash):
        convert_flash(src, flash, order_text=None if a.no_order else CALIB_FILE.read_text())
    if a.recall:
        recall(src, flash, [int(x) for x in a.ranks.split(",")], a.threads, 512, min(a.n_ctx, 256))
        return
    if a.quality:
        quality(flash, [float(x) for x in a.densities.split(",") if x], int(a.windows.split(",")[-1]), a.threads,
                min(a.n_ctx, 256), a.chunks)
        return
    size = os.path.getsize(src)
    budget = int(size * a.budget_frac)
    why = cgroup_usable()
    if why:
        print(f"# no memory cgroup ({why}): limits not enforced, peak from RSS only", file=sys.stderr)
    base = {"threads": a.threads, "n_ctx": a.n_ctx, "n_gen": a.n_gen}
    arms = [("lutllm-resident", dict(base, engine="lutllm", model=flash, mode="resident"), None, [flash])]
    arms.append(("lutllm-dense", dict(base, engine="lutllm", model=flash, mode="dense", budget=budget),
                 budget + a.allowance, [flash]))
    # the same streaming with nothing kept resident (no budget given to the engine; same cgroup limit)
    arms.append(("lutllm-dense-all-streamed", dict(base, engine="lutllm", model=flash, mode="dense"),
                 budget + a.allowance, [flash]))
    for k in (int(x) for x in a.windows.split(",") if x):
        arms.append((f"lutllm-windowed-k{k}", dict(base, engine="lutllm", model=flash, mode="windowed", window=k,
                                                   budget=budget, density=a.density), budget + a.allowance, [flash]))
    if not a.no_llama:
        arms.append(("llama-mmap", dict(base, engine="llama", model=src, repack=a.llama_repack), budget + a.allowance,
                     [src]))
    if a.arms:
        by_name = {x[0]: x for x in arms}
        unknown = [n for n in a.arms.split(",") if n not in by_name]
        if unknown:
            raise SystemExit(f"unknown arms {unknown}; known: {', '.join(by_name)}")
        arms = [by_name[n] for n in a.arms.split(",")]  # in the order given, repeats allowed
    rows = []
    for name, job, limit, files in arms:
        r = run_arm(name, job, limit, files, why is None)
        print(json.dumps(r), flush=True)
        rows.append(r)
    print(f"\nmodel {a.model}: {size / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB "
          f"(+{a.allowance / 2**20:.0f} MiB allowance)")
    print(f"{'arm':24} {'tok/s':>7} {'ms/tok':>8} {'io':>7} {'cache':>7} {'ffn':>7} {'MiB/tok':>8} {'peak MiB':>9} "
          f"{'anon MiB':>9}")
    for r in rows:
        peak = r["cgroup"]["peak"] / 2**20 if r.get("cgroup") else float("nan")
        if r["rc"]:
            print(f"{r['arm']:24} failed (rc {r['rc']})")
            continue
        print(f"{r['arm']:24} {r['tok_s']:7.2f} {r['ms_per_token']:8.1f} {r.get('ms_io', float('nan')):7.1f} "
              f"{r.get('ms_cache', float('nan')):7.1f} {r.get('ms_ffn_compute', float('nan')):7.1f} "
              f"{r['read_bytes_per_token'] / 2**20:8.1f} {peak:9.0f} {r.get('proc_mib', {}).get('RssAnon', float('nan')):9.0f}")


if __name__ == "__main__":
    main()
