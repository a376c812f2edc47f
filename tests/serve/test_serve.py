"""`yoco serve` on 127.0.0.1 with a tiny model, talked to with the official `openai` client and
with raw HTTP: outputs equal the library's, concurrent clients equal their solo runs, a client
that leaves frees its row, the budget and the queue hold, bad requests are named and refused."""

import http.client
import json
import re
import socket
import threading
import time
from types import SimpleNamespace

import openai
import pytest

import yoco
from tests.helpers import tiny_model
from yoco.serve.command import build_server, parse
from yoco.tokenizer import byte_tokenizer

EOS = 257


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder, *flags) -> SimpleNamespace:
    port = free_port()
    server, state = build_server(
        parse(["--model", str(folder), "--port", str(port), "--dtype", "float32", *flags])
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if request(port, "GET", "/health")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    else:
        raise RuntimeError("the server did not come up")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    return SimpleNamespace(port=port, server=server, thread=thread, state=state, client=client)


def stop(served) -> None:
    served.server.should_exit = True
    served.thread.join(10)


def request(port: int, method: str, path: str, body=None, headers=None) -> tuple[int, dict | str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    connection.request(
        method, path, body=data, headers={"content-type": "application/json", **(headers or {})}
    )
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    try:
        return response.status, json.loads(text)
    except json.JSONDecodeError:
        return response.status, text


def metric(port: int, name: str) -> float:
    _, text = request(port, "GET", "/metrics")
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tiny_model("yoco-gret", vocab_size=258).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def served(folder):
    served = start(folder, "--max-batch", "8", "--prefill-chunk", "16")
    yield served
    stop(served)


def solo(folder, prompt: str, max_tokens: int, kind: str = "yoco-gret") -> str:
    """What the library generates for the prompt: greedy, stopping at the EOS."""
    model = tiny_model(kind, vocab_size=258)
    ids = list(prompt.encode())
    tokens = yoco.generate(model, [ids], max_tokens, stop_token_ids=[EOS])[0]
    return byte_tokenizer().decode(tokens, skip_special_tokens=True)


def test_a_greedy_completion_equals_the_librarys_and_streams_the_same_text(served, folder):
    prompt = "def main():\n    "
    expected = solo(folder, prompt, 24)
    reply = served.client.completions.create(model="m", prompt=prompt, max_tokens=24, temperature=0)
    assert reply.choices[0].text == expected
    assert reply.usage.prompt_tokens == len(prompt) and reply.usage.completion_tokens >= 1
    pieces = list(
        served.client.completions.create(model="m", prompt=prompt, max_tokens=24, temperature=0, stream=True)
    )
    assert len(pieces) > 1 and "".join(p.choices[0].text for p in pieces) == expected
    assert pieces[-1].choices[0].finish_reason in ("stop", "length")
    # Token ids are a prompt too.
    by_ids = served.client.completions.create(
        model="m", prompt=list(prompt.encode()), max_tokens=24, temperature=0
    )
    assert by_ids.choices[0].text == expected


def test_concurrent_clients_with_mixed_prompt_lengths_each_get_their_solo_output(served, folder):
    prompts = [("import os\n" * (1 + i % 7))[: 3 + 11 * i] for i in range(32)]
    expected = [solo(folder, p, 8) for p in prompts]
    results = [None] * len(prompts)

    def ask(i):
        reply = served.client.completions.create(model="m", prompt=prompts[i], max_tokens=8, temperature=0)
        results[i] = reply.choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == expected


def test_a_client_that_leaves_mid_stream_frees_its_row_and_cache(served):
    engine = served.state["engine"]
    before = metric(served.port, "yoco_requests_running"), metric(served.port, "yoco_cache_bytes_used")
    generated = engine.generated_tokens
    step = engine._step
    engine._step = lambda: (time.sleep(0.01), step())  # slow enough that the stream is still running
    try:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        body = json.dumps({"prompt": "abc", "max_tokens": 400, "temperature": 0, "stream": True})
        connection.request("POST", "/v1/completions", body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")
        assert metric(served.port, "yoco_requests_running") == before[0] + 1
        connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()
        deadline = time.time() + 10
        while time.time() < deadline and engine.stats()["running"] != before[0]:
            time.sleep(0.02)
        assert (
            metric(served.port, "yoco_requests_running"),
            metric(served.port, "yoco_cache_bytes_used"),
        ) == before
        assert engine.generated_tokens - generated < 400  # it left long before its 400 tokens
    finally:
        engine._step = step


@pytest.mark.parametrize(
    "body, param",
    [
        (b"{not json", None),
        ({"prompt": 5}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [1, 999]}, "prompt"),
        ({"prompt": "x", "max_tokens": 10_000}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "n": 2}, "n"),
    ],
)
def test_a_bad_request_gets_a_400_naming_the_field_and_the_server_still_answers(served, body, param):
    status, reply = request(served.port, "POST", "/v1/completions", body)
    assert status == 400 and reply["error"]["type"] == "invalid_request_error", reply
    assert reply["error"]["param"] == param and reply["error"]["message"]
    assert request(served.port, "POST", "/v1/completions", {"prompt": "ok", "max_tokens": 2})[0] == 200


def test_models_health_metrics_and_chat_without_a_template(served, folder):
    assert [m.id for m in served.client.models.list().data] == [folder.name]
    assert request(served.port, "GET", "/health") == (200, {"status": "ok"})
    _, text = request(served.port, "GET", "/metrics")
    for name in (
        "yoco_requests_running",
        "yoco_requests_waiting",
        "yoco_cache_bytes_used",
        "yoco_cache_bytes_budget",
        "yoco_prompt_tokens_total",
        "yoco_generated_tokens_total",
        "yoco_time_to_first_token_seconds_bucket",
    ):
        assert name in text, name
    status, reply = request(
        served.port, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
    )
    assert (
        status == 400
        and reply["error"]["param"] == "messages"
        and "chat template" in reply["error"]["message"]
    )


def test_a_chat_completion_renders_the_tokenizers_template(tmp_path, folder):
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    tiny_model("yoco-gret", vocab_size=258).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    served = start(tmp_path)
    try:
        messages = [{"role": "user", "content": "hello"}]
        reply = served.client.chat.completions.create(
            model="m", messages=messages, max_tokens=12, temperature=0
        )
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].message.content == solo(folder, "<user>hello\n<assistant>", 12)
        pieces = served.client.chat.completions.create(
            model="m", messages=messages, max_tokens=12, temperature=0, stream=True
        )
        assert "".join(p.choices[0].delta.content or "" for p in pieces) == reply.choices[0].message.content
    finally:
        stop(served)


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa", "transformer"])
def test_a_shared_prefix_is_reused_and_changes_no_output(kind, tmp_path):
    tiny_model(kind, vocab_size=258).save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    shared = "The special magic Osaka number is 4455. " * 2  # 80 bytes: snapshots at 16, 32, .. 80
    prompts = [shared + "What", shared + "Who is", shared[:50]]
    expected = [solo(tmp_path, p, 10, kind) for p in prompts]
    for reuse in ("1", "0"):
        served = start(tmp_path, "--prefill-chunk", "16", "--prefix-cache-gib", reuse)
        try:
            got = [
                served.client.completions.create(model="m", prompt=p, max_tokens=10, temperature=0)
                .choices[0]
                .text
                for p in prompts
            ]
            assert got == expected
            hits, reused = (
                metric(served.port, "yoco_prefix_hits_total"),
                metric(served.port, "yoco_prefix_reused_tokens_total"),
            )
            # The second prompt starts from the first's 80-token snapshot, the third from its
            # 48-token one (a snapshot must leave at least one token to prefill).
            assert (hits, reused) == ((2, 80 + 48) if reuse == "1" else (0, 0))
        finally:
            stop(served)


def test_a_request_that_does_not_fit_waits_then_runs_and_a_full_queue_answers_429(folder):
    probe = start(folder)
    engine = probe.state["engine"]
    one = engine.cache_bytes(3 + 60)  # a 3-byte prompt and 60 new tokens
    stop(probe)
    served = start(folder, "--kv-budget-gib", str(1.5 * one / 2**30), "--max-queue", "1")
    engine = served.state["engine"]
    step = engine._step
    engine._step = lambda: (time.sleep(0.005), step())
    try:
        results = {}

        def ask(name):
            results[name] = request(
                served.port, "POST", "/v1/completions", {"prompt": "abc", "max_tokens": 60, "temperature": 0}
            )

        first = threading.Thread(target=ask, args=("first",))
        first.start()
        while engine.stats()["running"] == 0:
            time.sleep(0.005)
        second = threading.Thread(target=ask, args=("second",))
        second.start()
        while engine.stats()["waiting"] == 0:  # only one cache fits: the second waits
            time.sleep(0.005)
        status, reply = request(served.port, "POST", "/v1/completions", {"prompt": "abc", "max_tokens": 60})
        assert status == 429 and "queue is full" in reply["error"]["message"]
        first.join(60)
        second.join(60)
        assert results["first"][0] == results["second"][0] == 200
        assert results["first"][1]["choices"][0]["text"] == results["second"][1]["choices"][0]["text"]
    finally:
        engine._step = step
        stop(served)


def test_an_api_key_guards_everything_but_health_and_big_bodies_get_413(folder):
    served = start(folder, "--api-key", "sesame", "--max-body-kib", "1")
    try:
        assert request(served.port, "GET", "/health")[0] == 200
        status, reply = request(served.port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 401 and reply["error"]["type"] == "authentication_error"
        keyed = {"authorization": "Bearer sesame"}
        assert (
            request(served.port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2}, keyed)[0] == 200
        )
        assert request(served.port, "GET", "/v1/models", headers={"authorization": "Bearer wrong"})[0] == 401
        status, reply = request(served.port, "POST", "/v1/completions", {"prompt": "x" * 5000}, keyed)
        assert status == 413 and "over the limit" in reply["error"]["message"]
    finally:
        stop(served)


def test_a_client_whose_body_stalls_gets_a_408_and_others_are_served(folder):
    served = start(folder, "--body-timeout-s", "0.3")
    try:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as stalled:
            head = "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
            stalled.sendall(head.encode() + b'{"prompt": "a')  # and then nothing more
            assert (
                request(served.port, "POST", "/v1/completions", {"prompt": "ok", "max_tokens": 2})[0] == 200
            )
            response = http.client.HTTPResponse(stalled)  # read the reply whole, however it is split
            response.begin()
            status, body = response.status, json.loads(response.read())
        assert status == 408 and "stalled" in body["error"]["message"]
    finally:
        stop(served)


def test_serving_other_machines_needs_an_api_key(folder):
    with pytest.raises(ValueError, match="--host 0.0.0.0 serves other machines: give --api-key"):
        parse(["--model", str(folder), "--host", "0.0.0.0"])
    assert parse(["--model", str(folder), "--host", "0.0.0.0", "--api-key", "k"]).api_key == "k"
    with pytest.raises(ValueError, match="--model /nonexistent does not exist"):
        parse(["--model", "/nonexistent"])


def test_a_config_field_set_on_the_command_line_reaches_the_served_model(folder):
    with pytest.raises(ValueError, match="--set takes FIELD=VALUE, got 'cross_decoder_logn_base'"):
        parse(["--model", str(folder), "--set", "cross_decoder_logn_base"])
    served = start(folder, "--set", "cross_decoder_logn_base=64")
    try:
        assert served.state["engine"].model.config.cross_decoder_logn_base == 64
    finally:
        stop(served)
