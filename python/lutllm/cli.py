"""The `lutllm` command line (click): run, chat, serve, info, perplexity, bench, quantize, pull, list, convert.

Presentation only: loading, generation and scoring live in engine.py; options are validated here
and turned into clear messages (exit code 2 for bad usage, 1 for failures).
"""
from __future__ import annotations

import sys
import time

import click

DEFAULT_MODEL = "smollm2-135m-instruct"


def _model_option(f):
    return click.option(
        "-m", "--model", default=DEFAULT_MODEL, show_default=True, help="GGUF file path or registry name."
    )(f)


class _Size(click.ParamType):
    """A byte count with an optional K/M/G/T suffix (powers of 1024)."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        v = str(value).strip().upper().removesuffix("B").removesuffix("I")
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(v[-1:], 1)
        try:
            n = float(v[:-1] if mult > 1 else v)
        except ValueError:
            self.fail(f"{value!r} is not a size (examples: 800M, 1.5G, 123456)", param, ctx)
        if n <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return int(n * mult)


_SIZE = _Size()


def _common_options(f):
    opts = [
        click.option("-t", "--threads", type=click.IntRange(min=1), default=None, help="Threads (default: physical cores)."),
        click.option("-c", "--ctx-size", type=click.IntRange(min=0), default=0, help="Context size (0 = min(model, 4096))."),
        click.option("-b", "--batch-size", type=click.IntRange(min=1), default=512, show_default=True, help="Prompt batch size."),
        click.option("--verbose", is_flag=True, help="Print prompt and generation speed."),
        click.option("--mem-budget", "mem_budget", type=_SIZE, default=None,
                     help="DRAM budget (e.g. 512M, 2G); a flash file streams its FFN weights to stay within it."),
        click.option("--swa-full", "swa_full", is_flag=True,
                     help="Keep every position in sliding-window layers' KV cache (default: only their window)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return _model_option(f)


def _sampling_options(f):
    opts = [
        click.option("-n", "--n-predict", type=int, default=256, show_default=True, help="Tokens to generate (-1 = until the context is full)."),
        click.option("--seed", type=int, default=None, help="Sampling seed (default: random)."),
        click.option("--temp", type=click.FloatRange(min=0.0), default=0.8, show_default=True, help="Temperature (0 = greedy)."),
        click.option("--top-k", type=click.IntRange(min=0), default=40, show_default=True, help="Top-k (0 = off)."),
        click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0), default=0.95, show_default=True, help="Top-p (1 = off)."),
        click.option("--min-p", type=click.FloatRange(min=0.0, max=1.0), default=0.05, show_default=True, help="Min-p (0 = off)."),
        click.option("--typical-p", type=click.FloatRange(min=0.0, max=1.0), default=1.0, show_default=True, help="Typical-p (1 = off)."),
        click.option("--repeat-penalty", type=click.FloatRange(min=0.0), default=1.0, show_default=True, help="Repetition penalty (1 = off)."),
        click.option("--repeat-last-n", type=click.IntRange(min=-1), default=64, show_default=True, help="Tokens the penalties look back over."),
        click.option("--frequency-penalty", type=float, default=0.0, show_default=True),
        click.option("--presence-penalty", type=float, default=0.0, show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _sampler_params(kw):
    from .sampler import SamplerParams

    return SamplerParams(
        temperature=kw["temp"],
        top_k=kw["top_k"],
        top_p=kw["top_p"],
        min_p=kw["min_p"],
        typical_p=kw["typical_p"],
        repeat_penalty=kw["repeat_penalty"],
        repeat_last_n=kw["repeat_last_n"],
        frequency_penalty=kw["frequency_penalty"],
        presence_penalty=kw["presence_penalty"],
        seed=kw["seed"],
    )


def _memory_warning(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _load_progress(verbose: bool):
    """Progress bar of layers bound while loading: on a terminal, or with --verbose."""
    from .progress import LoadProgress

    return LoadProgress("loading", force=bool(verbose))


def _load(kw, **extra):
    from .engine import Engine

    try:
        with _load_progress(kw.get("verbose")) as bar:
            return Engine(kw["model"], n_ctx=kw["ctx_size"], n_threads=kw["threads"], n_batch=kw["batch_size"],
                          progress=bar, memory_warning=_memory_warning, mem_budget=kw.get("mem_budget"),
                          full_window_kv=bool(kw.get("swa_full")), **extra)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None


def _stream(engine, prompt_tokens, params, n_predict, out=None):
    """Generate and print tokens as they come; returns the GenerationResult."""
    from .engine import GenerationResult

    out = out or sys.stdout
    dec = engine.tokenizer.incremental_decoder()
    result = GenerationResult()
    for tok in engine.generate(prompt_tokens, params, max_tokens=n_predict, result=result):
        text = dec.feed(tok)
        if text:
            out.write(text)
            out.flush()
    out.write(dec.flush())
    out.flush()
    return result


def _report_speed(engine):
    t = engine.timings
    click.echo(
        f"\n[prompt: {t.prompt_tokens} tokens, {t.prompt_tps():.1f} tok/s; reused {t.reused_tokens}] "
        f"[generation: {t.generated_tokens} tokens, {t.generate_tps():.1f} tok/s] [threads: {engine.n_threads}]",
        err=True,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lutllm")
def main():
    """lutllm: run quantized GGUF language models fast on CPUs."""


@main.command()
@click.argument("prompt", required=False)
@_common_options
@_sampling_options
@click.option("--raw", is_flag=True, help="Feed the prompt as is, without the chat template.")
def run(prompt, raw, **kw):
    """Answer PROMPT (or standard input) and stream the reply."""
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a PROMPT argument or pipe text on standard input")
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.UsageError("the prompt is empty")
    params = _sampler_params(kw)
    engine = _load(kw)
    try:
        if raw or not engine.has_chat_template:
            tokens = engine.tokenizer.encode(prompt, add_special=True, parse_special=False)
        else:
            tokens = engine.chat_tokens([{"role": "user", "content": prompt}])
        _stream(engine, tokens, params, kw["n_predict"])
        click.echo()
    except KeyboardInterrupt:
        click.echo("\n[interrupted]", err=True)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if kw["verbose"]:
        _report_speed(engine)


CHAT_HELP = """Commands:
  /set parameter NAME VALUE   temperature, top_k, top_p, min_p, typical_p, repeat_penalty, seed,
                              frequency_penalty, presence_penalty, num_predict ("/set NAME VALUE" too)
  /set system TEXT   set the system prompt (clears the conversation)
  /show              show the model, the parameters and the system prompt
  /clear             forget the conversation
  /save FILE         save the conversation (JSON messages)
  /load FILE         load a conversation saved with /save
  \"\"\"                start or end a multi-line message
  /bye               leave (Ctrl-D too); Ctrl-C stops a reply but not the session"""


def _enable_history() -> None:
    """Arrow-key editing and a history file for `chat` when readline is available."""
    try:
        import atexit
        import os
        import readline
    except ImportError:
        return
    path = os.path.join(os.path.expanduser("~"), ".lutllm_history")
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save():
        try:
            readline.write_history_file(path)
        except OSError:
            pass

    atexit.register(save)


def _read_message() -> str:
    """One chat input: a line, or the lines between two \"\"\" markers."""
    line = input(">>> ")
    if not line.lstrip().startswith('"""'):
        return line
    first = line.lstrip()[3:]
    if first.rstrip().endswith('"""') and first.strip():
        return first.rstrip()[:-3]
    lines = [first] if first else []
    while True:
        nxt = input("... ")
        if nxt.rstrip().endswith('"""'):
            lines.append(nxt.rstrip()[:-3])
            return "\n".join(lines)
        lines.append(nxt)


def _save_conversation(path: str, messages: list) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        json.dump({"messages": messages}, f, ensure_ascii=False, indent=1)


def _load_conversation(path: str) -> list:
    import json

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    msgs = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(msgs, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
    ):
        raise ValueError(f"{path} does not hold a saved conversation ({{'messages': [{{role, content}}, ...]}})")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


@main.command()
@_common_options
@_sampling_options
@click.option("--system", default=None, help="System prompt.")
def chat(system, **kw):
    """Talk with the model in the terminal (multi-turn; earlier turns stay in the KV cache)."""
    import dataclasses

    params = _sampler_params(kw)
    engine = _load(kw)
    messages = [{"role": "system", "content": system}] if system else []
    click.echo(f"lutllm chat with {engine.path.name} ({engine.n_threads} threads). /? for help, /bye to leave.", err=True)
    setters = {"temperature": float, "top_k": int, "top_p": float, "min_p": float, "typical_p": float,
               "repeat_penalty": float, "seed": int, "frequency_penalty": float, "presence_penalty": float}
    _enable_history()
    while True:
        try:
            line = _read_message()
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:
            click.echo()
            continue
        cmd = line.strip()
        if not cmd:
            continue
        if cmd.startswith("/"):
            parts = cmd.split(maxsplit=2)
            if parts[0] == "/set" and len(parts) == 3 and parts[1] == "parameter":
                parts = ["/set"] + parts[2].split(maxsplit=1)
            if parts[0] in ("/bye", "/exit", "/quit"):
                return
            if parts[0] == "/set" and len(parts) == 3 and parts[1] in ("num_predict", "n_predict"):
                try:
                    kw["n_predict"] = int(parts[2])
                    click.echo(f"Set num_predict to {kw['n_predict']}.")
                except ValueError:
                    click.echo(f"error: num_predict must be an integer, got {parts[2]!r}")
                continue
            if parts[0] in ("/?", "/help"):
                click.echo(CHAT_HELP)
            elif parts[0] == "/show":
                system_msgs = [m["content"] for m in messages if m["role"] == "system"]
                click.echo(f"model: {engine.path} (n_ctx {engine.n_ctx}, {engine.n_threads} threads)")
                for f in dataclasses.fields(params):
                    click.echo(f"  {f.name} {getattr(params, f.name)}")
                click.echo(f"  num_predict {kw['n_predict']}")
                click.echo(f"system: {system_msgs[0] if system_msgs else '(none)'}")
                click.echo(f"messages: {len(messages)}")
            elif parts[0] == "/save" and len(parts) >= 2:
                try:
                    _save_conversation(" ".join(parts[1:]), messages)
                    click.echo(f"Saved {len(messages)} messages to {' '.join(parts[1:])}.")
                except OSError as e:
                    click.echo(f"error: cannot save: {e}")
            elif parts[0] == "/load" and len(parts) >= 2:
                try:
                    messages = _load_conversation(" ".join(parts[1:]))
                    engine.reset()
                    click.echo(f"Loaded {len(messages)} messages.")
                except (OSError, ValueError) as e:
                    click.echo(f"error: cannot load: {e}")
            elif parts[0] == "/clear":
                messages = [m for m in messages if m["role"] == "system"]
                engine.reset()
                click.echo("Cleared the conversation.")
            elif parts[0] == "/set" and len(parts) == 3 and parts[1] == "system":
                messages = [{"role": "system", "content": parts[2]}]
                engine.reset()
                click.echo("Set the system prompt.")
            elif parts[0] == "/set" and len(parts) == 3 and parts[1] in setters:
                try:
                    params = dataclasses.replace(params, **{parts[1]: setters[parts[1]](parts[2])})
                    click.echo(f"Set {parts[1]} to {parts[2]}.")
                except ValueError as e:
                    click.echo(f"error: {e}")
            else:
                click.echo(f"unknown command '{cmd}'. /? for help.")
            continue
        messages.append({"role": "user", "content": line})
        try:
            tokens = engine.chat_tokens(messages)
            out_ids = []
            dec = engine.tokenizer.incremental_decoder()
            for tok in engine.generate(tokens, params, max_tokens=kw["n_predict"]):
                out_ids.append(tok)
                sys.stdout.write(dec.feed(tok))
                sys.stdout.flush()
            sys.stdout.write(dec.flush() + "\n")
        except KeyboardInterrupt:
            click.echo("\n[stopped]")
        except ValueError as e:
            click.echo(f"error: {e}")
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": engine.tokenizer.decode(out_ids)})
        if kw["verbose"]:
            _report_speed(engine)


@main.command()
@_common_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8080, show_default=True)
@click.option("--api-key", default=None, envvar="LUTLLM_API_KEY", help="Require 'Authorization: Bearer KEY'.")
def serve(host, port, api_key, **kw):
    """Serve the model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)."""
    from .api import Llama
    from .server import make_server

    try:
        with _load_progress(kw["verbose"]) as bar:
            llm = Llama(kw["model"], n_ctx=kw["ctx_size"], n_threads=kw["threads"], n_batch=kw["batch_size"],
                        progress=bar, memory_warning=_memory_warning, mem_budget=kw.get("mem_budget"),
                        swa_full=kw["swa_full"])
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    try:
        srv = make_server(llm, host, port, api_key=api_key, quiet=not kw["verbose"])
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e}") from None
    click.echo(f"lutllm serving {srv.model_id} on http://{host}:{srv.server_address[1]}/v1 "
               f"(n_ctx {llm.n_ctx()}, {llm.n_threads} threads); Ctrl-C stops.", err=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


@main.command()
@click.argument("model_arg", metavar="[MODEL]", required=False)
@_model_option
@click.option("-c", "--ctx-size", type=click.IntRange(min=0), default=0, help="Context size for the memory estimate (0 = min(model, 4096)).")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=512, show_default=True, help="Batch size for the memory estimate.")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None, help="Threads for the memory estimate.")
def info(model_arg, model, ctx_size, batch_size, threads):
    """Show a model's metadata, tensor types and the memory it will need (MODEL or -m)."""
    from .arch import model_config
    from .engine import DEFAULT_N_CTX, default_threads
    from .gguf_file import GGUFFile, describe
    from .memory import available_memory, describe_estimate, estimate_memory
    from .models import resolve_model

    model = model_arg or model
    try:
        path = resolve_model(model)
        g = GGUFFile(path)
        click.echo(describe(g))
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    try:
        cfg = model_config(g.metadata, g.tensors, str(path))
    except ValueError as e:  # described above, but not a model this runtime can run
        click.echo(f"memory estimate: not available ({e})")
        return
    n_ctx = ctx_size or min(cfg.n_ctx_train, DEFAULT_N_CTX)
    est = estimate_memory(g, cfg, n_ctx, batch_size, lut=True, n_threads=threads or default_threads())
    click.echo(describe_estimate(est, available_memory()))


@main.command()
@_common_options
@click.option("-f", "--file", "text_file", type=click.Path(exists=True, dir_okay=False), required=True, help="Text to score.")
def perplexity(text_file, **kw):
    """Perplexity of a text, computed exactly as llama.cpp's llama-perplexity does."""
    with open(text_file, encoding="utf-8", errors="replace") as f:
        text = f.read()
    n = kw["ctx_size"] or 512
    kw = dict(kw, ctx_size=n)
    engine = _load(kw)
    t0 = time.perf_counter()

    def progress(i, total, ppl):
        click.echo(f"[{i}/{total}] {ppl:.4f}", err=True)

    try:
        ppl, n_chunks, _ = engine.perplexity(text, n, progress=progress)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"chunks = {n_chunks}, ctx = {n}")
    click.echo(f"PPL = {ppl:.4f}")
    if kw["verbose"]:
        click.echo(f"[{time.perf_counter() - t0:.1f} s, {engine.n_threads} threads]", err=True)


@main.command()
@_model_option
@click.option("-p", "--n-prompt", type=click.IntRange(min=1), default=256, show_default=True, help="Prompt tokens of the pp test.")
@click.option("-n", "--n-gen", type=click.IntRange(min=1), default=64, show_default=True, help="Generated tokens of the tg test.")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None, help="Threads (default: physical cores).")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=512, show_default=True, help="Prompt batch size.")
@click.option("-r", "--repetitions", "reps", type=click.IntRange(min=1), default=3, show_default=True, help="Timed runs per test.")
@click.option("--no-warmup", is_flag=True, help="Skip the untimed warm-up run of each test.")
@click.option("--int8", is_flag=True, help="Run <= 4-bit weights through the int8 kernels instead of table lookup.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per test on standard output instead of a table.")
def bench(model, n_prompt, n_gen, threads, batch_size, reps, no_warmup, int8, as_json):
    """Prompt (pp) and generation (tg) speed in tokens/s, like llama-bench.

    pp: N_PROMPT fixed token ids evaluated into an empty context; tg: N_GEN tokens evaluated one
    at a time from an empty context. Mean ± standard deviation over the repetitions. The token ids
    are the ones bench/e2e.py feeds to both runtimes.
    """
    import json

    from .bench import TABLE_HEADER, json_record, model_facts, run_tests, table_row

    kw = {"model": model, "ctx_size": max(n_prompt, n_gen), "threads": threads, "batch_size": batch_size,
          "verbose": False}
    engine = _load(kw, lut=not int8)
    facts = model_facts(engine)
    if not as_json:
        click.echo(TABLE_HEADER)
    try:
        for r in run_tests(engine, n_prompt, n_gen, reps, warmup=not no_warmup):
            click.echo(json.dumps(json_record(facts, r, reps)) if as_json else table_row(facts, r))
    except KeyboardInterrupt:
        raise click.ClickException("interrupted") from None


@main.command()
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT")
@click.option("--bits", type=click.Choice(["1", "2", "3", "4", "ternary"]), required=True, help="Bits per weight.")
@click.option("--group", type=click.Choice(["32", "64", "128"]), default=None,
              help="Weights per fp16 scale [default: 32]. With --scales kq it follows from --bits (leave it out).")
@click.option("--scales", type=click.Choice(["fp16", "kq"]), default="fp16", show_default=True,
              help="fp16: one fp16 scale and offset per group; kq: k-quant sub-scales (fp16 d, dmin per 256 "
                   "weights, small integer ones per group of 16 for 2-3 bits, 32 for 4), bits 2-4 only.")
@click.option("--method", type=click.Choice(["rtn", "mse"]), default="mse", show_default=True,
              help="rtn: round to nearest (min/max per group); mse: least squared error search.")
@click.option("--output-head", is_flag=True, help="Also quantize a separate output.weight (kept as is by default).")
@click.option("--mix", is_flag=True, help="1-3 bits: attn_v +2 bits, ffn_down, attn_output and an --output-head "
              "head +1 (much better quality).")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None, help="Threads (default: physical cores).")
def quantize(src, dst, bits, group, scales, method, output_head, mix, threads):
    """Requantize the linear layers of model IN (path or registry name) into OUT (packed LUT GGUF)."""
    import signal

    from .quantize import KQ_GROUPS, quantize_model

    if scales == "kq":  # option conflicts are usage errors (exit code 2), like bad option values
        if bits not in ("2", "3", "4"):
            raise click.UsageError(f"--scales kq takes --bits 2, 3 or 4 (k-quant sub-scales), got --bits {bits}")
        if group is not None and int(group) != KQ_GROUPS[int(bits)]:
            raise click.UsageError(f"--group does not apply with --scales kq (the group is {KQ_GROUPS[int(bits)]} "
                                   f"for {bits} bits); leave it out")

    def _terminated(signum, frame):  # SIGTERM cleans up like Ctrl-C (no OUT, no temporary file)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminated)
    try:
        report = quantize_model(src, dst, bits, None if group is None else int(group), method=method,
                                output_head=output_head, threads=threads, mix=mix, scales=scales)
    except KeyboardInterrupt:
        click.echo("[interrupted; nothing written]", err=True)
        sys.exit(130)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(report.summary())


@main.command()
@click.argument("name")
def pull(name):
    """Download a registry model into the cache (like `ollama pull`)."""
    from .models import pull as do_pull

    try:
        path = do_pull(name)
    except (ValueError, OSError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(str(path))


@main.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--flash", is_flag=True, help="Write the flash layout (FFN weights as 4096-aligned neuron bundles).")
@click.option("--bundle-neurons", type=click.IntRange(min=1), default=None,
              help="Neurons per bundle (default: smallest with bundles >= 32 KiB and little padding).")
@click.option("--order-text", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text file: order neurons by how often they are active on it (hot bundles first).")
@click.option("--predictor-rank", type=click.IntRange(min=0), default=None,
              help="Rank of the low-rank gate predictor windowed mode uses (multiple of 32; 0: none; "
                   "default d_model/12). Fitted to the --order-text inputs when given.")
def convert(src, out, flash, bundle_neurons, order_text, predictor_rank):
    """Convert the GGUF SRC into OUT (written atomically). Only --flash exists so far."""
    from .convert import convert_flash

    if not flash:
        raise click.UsageError("choose the output layout: --flash")
    try:
        text = None if order_text is None else open(order_text, encoding="utf-8").read()
        lay = convert_flash(src, out, bundle_neurons=bundle_neurons, log=lambda m: click.echo(m, err=True),
                            order_text=text, predictor_rank=predictor_rank)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{out}: {lay.n_layer} layers x {lay.n_bundles} bundles of {lay.bundle_neurons} neurons "
               f"({lay.bundle_stride[0]} bytes each), {lay.ffn_bytes() / 2**20:.1f} MiB streamed")


@main.command(name="list")
def list_cmd():
    """Known registry models and which are pulled."""
    from .models import is_pulled, list_models

    for e in list_models():
        size = f"{e.size / 1e6:8.1f} MB" if getattr(e, "size", None) else "        ?"
        click.echo(f"{e.name:32s} {size}  {'pulled' if is_pulled(e.name) else '-'}")


if __name__ == "__main__":
    main()
