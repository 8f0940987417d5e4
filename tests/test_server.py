"""`lutllm serve` (server.py) on a loopback port: the official openai client (plain and streaming),
raw HTTP for error bodies and auth, 16 concurrent clients, and client disconnects.
"""
import http.client
import json
import socket
import threading
import time

import pytest

from lutllm import Llama
from lutllm.server import FairLock, make_server

openai = pytest.importorskip("openai")

KEY = "test-key-123"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return Llama(smollm2_path, n_ctx=256, seed=3)


@pytest.fixture(scope="module")
def server(llm):
    srv = make_server(llm, "127.0.0.1", 0, api_key=KEY, model_id="smollm2")
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    port = server.server_address[1]
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, timeout=60, max_retries=0)


def _raw(server, method, path, body=None, key=KEY, raw_body=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, payload


def _assert_error(status, payload, want_status, param=None):
    assert status == want_status, payload
    err = json.loads(payload)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    assert _raw(server, "GET", "/health", key=None) == (200, b'{"status": "ok"}')


def test_chat_plain_and_stream(client, llm):
    r = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=40)
    text = r.choices[0].message.content
    assert "Paris" in text and r.choices[0].finish_reason == "stop"
    assert r.object == "chat.completion" and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # same answer as the Python API directly
    direct = llm.create_chat_completion(QUESTION, temperature=0, max_tokens=40)
    assert text == direct["choices"][0]["message"]["content"]
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=40,
                                            stream=True)
    pieces, reasons = [], []
    for ch in stream:
        pieces.append(ch.choices[0].delta.content or "")
        reasons.append(ch.choices[0].finish_reason)
    assert "".join(pieces) == text and reasons[-1] == "stop"
    # stream_options.include_usage adds a last chunk with usage and no choices
    chunks = list(client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=40,
                                                  stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens


def test_completions_plain_and_stream(client):
    r = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 8
    assert r.choices[0].finish_reason == "length"
    s = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text
    stop = r.choices[0].text[3:5]
    cut = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].text == r.choices[0].text[: r.choices[0].text.find(stop)]


def test_sse_wire_format(server):
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": "smollm2", "messages": QUESTION, "max_tokens": 4, "temperature": 0, "stream": True}),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    events = [e for e in r.read().decode().split("\n\n") if e]
    conn.close()
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_auth(server):
    _assert_error(*_raw(server, "GET", "/v1/models", key=None), 401)
    _assert_error(*_raw(server, "POST", "/v1/completions", {"prompt": "x"}, key="wrong"), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="nope",
                      max_retries=0).models.list()


def test_errors(server, llm):
    _assert_error(*_raw(server, "POST", "/v1/chat/completions", raw_body=b"{not json"), 400)
    _assert_error(*_raw(server, "POST", "/v1/chat/completions", raw_body=b"[1, 2]"), 400)
    _assert_error(*_raw(server, "POST", "/v1/chat/completions", {"model": "gpt-9", "messages": QUESTION}), 404, "model")
    _assert_error(*_raw(server, "POST", "/v1/chat/completions", {"messages": []}), 400, "messages")
    long = [{"role": "user", "content": "word " * 400}]
    status, payload = _raw(server, "POST", "/v1/chat/completions", {"messages": long})
    _assert_error(status, payload, 400)
    assert json.loads(payload)["error"]["code"] == "context_length_exceeded"
    for name, bad in [("temperature", 5), ("top_p", 0), ("max_tokens", 0), ("max_tokens", "ten"),
                      ("presence_penalty", 3), ("n", 2), ("top_k", -1), ("stop", 7)]:
        _assert_error(*_raw(server, "POST", "/v1/chat/completions", {"messages": QUESTION, name: bad}), 400, name)
    _assert_error(*_raw(server, "POST", "/v1/completions", {"prompt": [1, llm.n_vocab()]}), 400, "prompt")
    _assert_error(*_raw(server, "POST", "/v1/nothing", {}), 404)
    _assert_error(*_raw(server, "GET", "/nothing"), 404)
    _assert_error(*_raw(server, "POST", "/detokenize", {"tokens": [-1]}), 400, "tokens")


def test_tokenize_roundtrip(server, llm):
    status, payload = _raw(server, "POST", "/tokenize", {"content": "Hello world"})
    assert status == 200
    toks = json.loads(payload)["tokens"]
    assert toks == llm.tokenize(b"Hello world", add_bos=False, special=True)
    status, payload = _raw(server, "POST", "/detokenize", {"tokens": toks})
    assert status == 200 and json.loads(payload)["content"] == "Hello world"


def test_sixteen_concurrent_clients(server, llm):
    questions = [QUESTION, [{"role": "user", "content": "Name one color of the rainbow."}]]
    expected = [llm.create_chat_completion(q, temperature=0, max_tokens=6)["choices"][0]["message"]["content"]
                for q in questions]
    assert expected[0] != expected[1]
    results: dict[int, object] = {}

    def worker(i):
        try:
            status, payload = _raw(server, "POST", "/v1/chat/completions",
                                   {"messages": questions[i % 2], "temperature": 0, "max_tokens": 6}, timeout=120)
            results[i] = (status, json.loads(payload))
        except Exception as e:  # recorded, asserted below
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(results) == 16
    for i in range(16):
        status, body = results[i]
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == expected[i % 2]


def test_disconnect_cancels(server, llm):
    eos = llm.token_eos()
    body = json.dumps({"model": "smollm2", "prompt": "A very long story:", "max_tokens": 200, "temperature": 0,
                       "stream": True, "logit_bias": {str(eos): -100}}).encode()
    s = socket.create_connection(server.server_address, timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()
    # wait until the server lets go of the model, then see how far the abandoned generation got
    lock, deadline = server.gen_lock, time.monotonic() + 60
    while lock._serving != lock._next and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lock._serving == lock._next, "the generation did not finish"
    n_prompt = len(llm.tokenize(b"A very long story:", special=True))
    assert len(llm._engine._cached) < n_prompt + 40, "the generation went on after the client left"
    status, _ = _raw(server, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1}, timeout=60)
    assert status == 200


def test_cli_serve_subprocess(smollm2_path, tmp_path):
    """`lutllm serve` as a process: announces its port, answers, and stops on SIGINT."""
    import os
    import signal
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from lutllm.cli import main; main()", "serve", "-m", smollm2_path, "-c", "128",
         "--host", "127.0.0.1", "--port", "0", "--api-key", "k"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True,
        # a shell without job control starts background jobs with SIGINT ignored, and the child
        # would inherit that; give it the default so Python turns SIGINT into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stderr.readline()  # the banner, printed once the socket is bound
        assert "http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "Hi", "max_tokens": 2}),
                     headers={"Authorization": "Bearer k", "Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["usage"]["completion_tokens"] >= 1
        conn.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stderr.close()


def test_fair_lock_serves_in_arrival_order():
    lock, order, started = FairLock(), [], []
    gate = threading.Event()

    def holder():
        with lock:
            gate.wait(10)

    def waiter(i):
        started.append(i)
        with lock:
            order.append(i)

    h = threading.Thread(target=holder)
    h.start()
    time.sleep(0.05)
    threads = []
    for i in range(8):  # each queues (takes its ticket) before the next starts
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while lock._next < i + 2 and time.monotonic() < deadline:
            time.sleep(0.001)
    gate.set()
    for t in [h, *threads]:
        t.join(timeout=10)
    assert order == list(range(8))
