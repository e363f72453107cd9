"""llm_judge on both backends with a real (tiny, trained in the test) transformers judge model.

The judge is the ``tiny`` model plugin fine-tuned for a second to answer "9" for a warm reply,
"2" for a robotic one and "10" for a great one. The local backend loads it through the model
plugins; the openai backend talks to a real HTTP server (stdlib ``http.server``, started in a
thread) that implements ``/v1/chat/completions`` by generating with the same model.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import rlvr
from rlvr import PluginSpec
from rlvr.core.registry import registry
from rlvr.core.rewards import RewardError, RewardFn, score
from rlvr.plugins.rewards.llm_judge import LLMJudgeConfig, judge_messages, render_chat, reply_score, score_from_reply

MODEL_PLUGIN = "judge_test_tiny"
JUDGE = {
    "system_prompt": "",
    "rubric": "Rate 0-10; -3 if robotic.",
    "template": "{rubric}\nUser: {prompt}\nReply: {completion}",
}
PROMPT = "Where is my order?"
WARM, ROBOT, GREAT = (
    "So sorry! A new parcel ships today.",
    "As an AI language model, I cannot help.",
    "Thanks for asking! It arrives tomorrow.",
)
EXPECTED = {WARM: 9, ROBOT: 2, GREAT: 10}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; several threads on a shared 2-core machine can be 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def judge_policy(one_thread):
    """The tiny model plugin, trained to judge the three replies, registered as a model plugin."""
    torch.manual_seed(0)
    policy = rlvr.create("model", "tiny", seed=0)
    tok, model = policy.tokenizer, policy.model
    cfg = LLMJudgeConfig(**JUDGE)
    rows = []
    for completion, value in EXPECTED.items():
        prompt = tok.encode(render_chat(tok, judge_messages(cfg, PROMPT, completion, {})), add_special_tokens=False)
        target = tok.encode(f"{value}{tok.eos_token}", add_special_tokens=False)
        rows.append((prompt, target))
    width = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (p, t) in enumerate(rows):
        ids[r, : len(p) + len(t)] = torch.tensor(p + t)
        mask[r, : len(p) + len(t)] = 1
        labels[r, len(p) : len(p) + len(t)] = torch.tensor(t)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    if loss.item() >= 0.01:  # the score checks below rely on a judge that learnt its three answers
        pytest.fail(f"the tiny judge did not learn its three answers (loss {loss.item():.3f} after 300 steps)")
    model.eval()
    rlvr.add_plugin("model", PluginSpec(MODEL_PLUGIN, lambda cfg: policy, description="test judge"))
    yield policy
    reg = registry()
    reg.manager.unregister(name=f"runtime:model:{MODEL_PLUGIN}")
    reg.invalidate()


# --------------------------------------------------------------------------- a real OpenAI-compatible server


class _Handler(BaseHTTPRequestHandler):
    server: "JudgeServer"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        srv = self.server
        with srv.lock:
            srv.requests += 1
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            srv.auth.append(self.headers.get("Authorization"))
            fail = srv.fail_next > 0
            srv.fail_next -= fail
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if self.path != "/v1/chat/completions":
                code, reply = 404, {"error": {"message": f"no route {self.path}"}}
            elif fail:
                code, reply = srv.fail_code, {"error": {"message": "injected failure"}}
            else:
                code, reply = 0, None
            if not code:
                time.sleep(srv.delay)
                with srv.model_lock:
                    code, reply = 200, srv.complete(body)
        finally:  # out of flight before the reply leaves: the client's next request may arrive right after it
            with srv.lock:
                srv.in_flight -= 1
        self._send(code, reply)

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass


class JudgeServer(ThreadingHTTPServer):
    """``/v1/chat/completions`` backed by a transformers model: greedy generation with logprobs."""

    daemon_threads = True

    def __init__(self, policy):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.policy = policy
        self.lock, self.model_lock = threading.Lock(), threading.Lock()
        self.requests = self.in_flight = self.max_in_flight = self.fail_next = 0
        self.fail_code, self.delay, self.auth = 503, 0.0, []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def complete(self, body: dict) -> dict:
        tok, model = self.policy.tokenizer, self.policy.model
        text = tok.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        ids = tok.encode(text, add_special_tokens=False)
        want_lp, k = bool(body.get("logprobs")), int(body.get("top_logprobs") or 0)
        out_ids, content, finish = [], [], "length"
        for _ in range(int(body.get("max_tokens") or 16)):
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([ids + out_ids])).logits[0, -1].float()
            lp = torch.log_softmax(logits, -1)
            nxt = int(lp.argmax())
            if nxt == tok.eos_token_id:
                finish = "stop"
                break
            out_ids.append(nxt)
            top = torch.topk(lp, k) if k else None
            content.append(
                {
                    "token": tok.decode([nxt]),
                    "logprob": float(lp[nxt]),
                    "top_logprobs": []
                    if top is None
                    else [
                        {"token": tok.decode([int(i)]), "logprob": float(v)} for v, i in zip(top.values, top.indices)
                    ],
                }
            )
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish,
                    "message": {"role": "assistant", "content": tok.decode(out_ids)},
                    "logprobs": {"content": content} if want_lp else None,
                }
            ],
        }


@pytest.fixture(scope="module")
def server(judge_policy):
    srv = JudgeServer(judge_policy)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def fresh(server):
    server.fail_next, server.fail_code, server.delay = 0, 503, 0.0
    deadline = time.monotonic() + 10
    while server.in_flight and time.monotonic() < deadline:  # requests an earlier test gave up on
        time.sleep(0.05)
    server.max_in_flight = 0
    server.auth.clear()
    return server


def openai_judge(server, **kw):
    params = {
        **JUDGE,
        "backend": "openai",
        "base_url": server.base_url,
        "api_model": "judge",
        "backoff_s": 0.01,
        "timeout_s": 20.0,
        **kw,
    }
    return rlvr.create("reward", "llm_judge", **params)


REPLIES = [WARM, ROBOT, GREAT]


# --------------------------------------------------------------------------- local backend


def test_local_backend_reads_score_probabilities(judge_policy):
    fn = rlvr.create("reward", "llm_judge", model=MODEL_PLUGIN, **JUDGE)
    assert not inspect.iscoroutinefunction(fn)
    warm, robot, great = fn(REPLIES, prompts=[PROMPT] * 3)
    assert warm == pytest.approx(9, abs=0.6) and robot == pytest.approx(2, abs=0.6)
    assert great > 9.3  # "10" is two tokens: scored by teacher forcing "1" then "0"
    probs = fn.judge.score_probs([fn.judge._prompt_ids(judge_messages(LLMJudgeConfig(**JUDGE), PROMPT, ROBOT, {}))])[0]
    assert max(probs, key=probs.get) == 2 and set(probs) == set(range(11))


def test_local_backend_normalize_and_model_cached(judge_policy):
    fn = rlvr.create("reward", "llm_judge", model=MODEL_PLUGIN, normalize=True, **JUDGE)
    again = rlvr.create("reward", "llm_judge", model=MODEL_PLUGIN, **JUDGE)
    assert fn.judge.model is again.judge.model  # loaded once
    warm, robot = fn([WARM, ROBOT], prompts=[PROMPT] * 2)
    assert warm == pytest.approx(0.9, abs=0.06) and robot == pytest.approx(0.2, abs=0.06)


def test_local_backend_in_the_scoring_loop(judge_policy):
    fn = rlvr.create("reward", "llm_judge", model=MODEL_PLUGIN, **JUDGE)
    table = score([RewardFn("llm_judge", fn)], [WARM, ROBOT], [PROMPT] * 2, {"answer": ["", ""]})
    assert table[0, 0] > table[1, 0]


# --------------------------------------------------------------------------- openai backend


def test_openai_backend_against_real_server(fresh):
    fn = openai_judge(fresh)
    assert inspect.iscoroutinefunction(fn)  # the loop awaits it alongside other async rewards
    table = score([RewardFn("llm_judge", fn)], REPLIES, [PROMPT] * 3, {"answer": [""] * 3})
    warm, robot, great = table[:, 0].tolist()
    assert warm == pytest.approx(9, abs=0.6) and robot == pytest.approx(2, abs=0.6) and great > 9.3
    assert fresh.requests >= 3


def test_openai_backend_text_parsing_without_logprobs(fresh):
    fn = openai_judge(fresh, use_logprobs=False)
    table = score([RewardFn("llm_judge", fn)], REPLIES, [PROMPT] * 3, {})
    assert table[:, 0].tolist() == [9.0, 2.0, 10.0]


def test_openai_backend_cache_and_duplicates(fresh):
    fn = openai_judge(fresh)
    before = fresh.requests
    first = score([RewardFn("j", fn)], [WARM, WARM, ROBOT, WARM], [PROMPT] * 4, {})
    assert fresh.requests - before == 2  # the repeated completion is asked once
    again = score([RewardFn("j", fn)], [ROBOT, WARM], [PROMPT] * 2, {})
    assert fresh.requests - before == 2  # cached
    assert again[0, 0] == first[2, 0] and again[1, 0] == first[0, 0]
    other_prompt = score([RewardFn("j", fn)], [WARM], ["Is my parcel lost?"], {})
    assert fresh.requests - before == 3 and not math.isnan(other_prompt[0, 0])


def test_openai_backend_retries_with_backoff(fresh):
    """A retried request gives exactly the score of an unretried one; retries are counted and reported once."""
    plain = score([RewardFn("j", openai_judge(fresh))], [ROBOT], ["retry please"], {})
    fresh.fail_next = 2
    fn = openai_judge(fresh, max_retries=3)  # a new judge: its cache is empty
    before = fresh.requests
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = score([RewardFn("j", fn)], [ROBOT], ["retry please"], {})
    assert table[0, 0] == plain[0, 0] and not math.isnan(table[0, 0])
    assert fresh.requests - before == 3
    assert fn.last_metrics["retries"] == 2 and fn.last_metrics["gave_up"] == 0 and fn.last_metrics["requests"] == 3
    retry_lines = [str(w.message) for w in caught if "retries" in str(w.message)]
    assert len(retry_lines) == 1 and "2 retries (HTTP 503 ×2), 0 requests gave up" in retry_lines[0]


def test_openai_backend_gives_up_and_on_error(fresh):
    fresh.fail_next = 100
    fn = openai_judge(fresh, max_retries=2)
    with pytest.raises(RewardError, match="'j'.*failed 3 times.*503"):
        score([RewardFn("j", fn)], [WARM], ["give up 1"], {})
    table = score([RewardFn("j", openai_judge(fresh, max_retries=0), on_error="none")], [WARM], ["give up 2"], {})
    assert math.isnan(table[0, 0])
    fresh.fail_next = 0


def test_openai_backend_client_error_is_not_retried(fresh):
    fresh.fail_next, fresh.fail_code = 1, 400
    fn = openai_judge(fresh, max_retries=3)
    before = fresh.requests
    with pytest.raises(RewardError, match="HTTP 400"):
        score([RewardFn("j", fn)], [WARM], ["bad request"], {})
    assert fresh.requests - before == 1


def test_openai_backend_timeout(fresh):
    fresh.delay = 1.5
    fn = openai_judge(fresh, timeout_s=0.2, max_retries=1)
    start = time.monotonic()
    with pytest.raises(RewardError, match="timed out|Timeout"):
        score([RewardFn("j", fn)], [WARM], ["slow"], {})
    assert time.monotonic() - start < 1.5


def test_openai_backend_concurrency_limit(fresh):
    fresh.delay = 0.3
    fn = openai_judge(fresh, max_concurrency=2)
    completions = [f"{WARM} ({i})" for i in range(6)]
    score([RewardFn("j", fn)], completions, [PROMPT] * 6, {})
    assert 1 <= fresh.max_in_flight <= 2  # never more than the limit
    assert fn.last_metrics["requests"] == 6


def test_openai_backend_sends_api_key(fresh, monkeypatch):
    monkeypatch.setenv("RLVR_TEST_JUDGE_KEY", "sk-test")
    fn = openai_judge(fresh, api_key_env="RLVR_TEST_JUDGE_KEY")
    score([RewardFn("j", fn)], [WARM], ["key please"], {})
    assert fresh.auth[-1] == "Bearer sk-test"


def test_unreachable_endpoint_names_url():
    fn = rlvr.create(
        "reward",
        "llm_judge",
        backend="openai",
        base_url="http://127.0.0.1:9/v1",
        max_retries=1,
        backoff_s=0.01,
        timeout_s=1.0,
    )
    with pytest.raises(RewardError, match=r"127\.0\.0\.1:9/v1/chat/completions failed 2 times"):
        score([RewardFn("llm_judge", fn)], ["x"], ["y"], {})


# --------------------------------------------------------------------------- pure parts


def _lp(token, p):
    return {"token": token, "logprob": math.log(p)}


def test_score_from_reply_logprobs_text_and_none():
    scores = list(range(11))
    choice = {
        "message": {"content": "7"},
        "logprobs": {"content": [{**_lp("7", 0.6), "top_logprobs": [_lp("7", 0.6), _lp("8", 0.3), _lp(" the", 0.1)]}]},
    }
    assert score_from_reply(choice, scores) == pytest.approx((7 * 0.6 + 8 * 0.3) / 0.9)
    assert score_from_reply(choice, scores, use_logprobs=False) == 7.0
    ten = {
        "message": {"content": "10"},
        "logprobs": {
            "content": [
                {**_lp("1", 0.8), "top_logprobs": [_lp("1", 0.8), _lp("9", 0.2)]},
                {**_lp("0", 0.75), "top_logprobs": [_lp("0", 0.75), _lp("<|im_end|>", 0.25)]},
            ]
        },
    }
    assert score_from_reply(ten, scores) == pytest.approx(10 * 0.6 + 1 * 0.2 + 9 * 0.2)
    assert score_from_reply({"message": {"content": "Score: 42"}}, scores) == 10.0  # clamped
    assert score_from_reply({"message": {"content": "great reply"}}, scores) is None


def test_unparseable_score_and_bad_config():
    assert LLMJudgeConfig().unparseable_score is None
    with pytest.raises(ValueError, match="backend"):
        rlvr.create("reward", "llm_judge", backend="anthropic")
    with pytest.raises(ValueError, match="max_score"):
        rlvr.create("reward", "llm_judge", backend="openai", min_score=5, max_score=5)


def test_template_fields_and_columns():
    cfg = LLMJudgeConfig(template="{rubric}|{prompt}|{completion}|{answer}|{max_score}", system_prompt="S")
    msgs = judge_messages(cfg, "P", "C", {"answer": "42"})
    assert msgs[0] == {"role": "system", "content": "S"}
    assert msgs[1]["content"].endswith("|P|C|42|10") and "Start at 10" in msgs[1]["content"]
    with pytest.raises(KeyError, match="reference"):
        judge_messages(LLMJudgeConfig(template="{reference}"), "P", "C", {"answer": "1"})


# --------------------------------------------------------------------------- protocol stub (no model)


class _StubHandler(BaseHTTPRequestHandler):
    server: "StubServer"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        code, obj = self.server.respond(body)
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


class StubServer(ThreadingHTTPServer):
    """``/v1/chat/completions`` answering with ``respond(body) -> (status, json)``."""

    daemon_threads = True

    def __init__(self, respond):
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.respond = respond
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _reply(content, text=None):
    """A chat completion whose logprobs content is ``[(token, p, [(alt, p), ...]), ...]``."""
    lp = [{**_lp(tok, p), "top_logprobs": [_lp(a, q) for a, q in alts]} for tok, p, alts in content]
    message = {"role": "assistant", "content": text or "".join(t for t, _, _ in content)}
    return {"choices": [{"index": 0, "message": message, "logprobs": {"content": lp}}]}


def stub_judge(srv, **kw):
    return rlvr.create(
        "reward",
        "llm_judge",
        **{"backend": "openai", "base_url": srv.base_url, "backoff_s": 0.01, "timeout_s": 20.0, **kw},
    )


def _completion_of(body):
    return body["messages"][-1]["content"].split("Reply to grade:\n", 1)[1].split("\n\nAnswer with only", 1)[0]


def test_min_score_mass_no_score_made_of_noise():
    # the judge did not answer with a number: digits hold 6 % of the first token, none was written
    words = _reply([("I", 0.9, [("I", 0.9), ("1", 0.04), ("2", 0.02)]), (" cannot", 0.9, [(" cannot", 0.9)])])
    assert reply_score(words["choices"][0], list(range(11)), min_mass=0.5) == (None, "unparseable")
    # a number was written but the valid scores hold 30 % of that position: below min_score_mass
    unsure = _reply([("7", 0.3, [("7", 0.3), ("The", 0.7)])])["choices"][0]
    assert reply_score(unsure, list(range(11)), min_mass=0.5) == (None, "low_score_mass")
    value, how = reply_score(unsure, list(range(11)), min_mass=0.2)
    assert value == pytest.approx(7.0) and how == "logprobs"
    # "Score: 7": the score is read where the number is, not at the first token
    later = _reply(
        [("Score", 0.9, [("Score", 0.9)]), (":", 1.0, [(":", 1.0)]), (" 7", 0.8, [(" 7", 0.8), ("8", 0.2)])]
    )
    assert reply_score(later["choices"][0], list(range(11)), min_mass=0.5)[0] == pytest.approx(7.2)
    replies = {
        "noise": words,
        "unsure": _reply([("7", 0.3, [("7", 0.3), ("The", 0.7)])]),
        "sure": _reply([("9", 0.9, [("9", 0.9), ("8", 0.1)])]),
    }
    with StubServer(lambda body: (200, replies[_completion_of(body)])) as srv:
        fn = stub_judge(srv)
        table = score([RewardFn("llm_judge", fn)], ["noise", "unsure", "sure"], ["q"] * 3, {})
        assert math.isnan(table[0, 0]) and math.isnan(table[1, 0]) and table[2, 0] == pytest.approx(8.9)
        assert fn.last_metrics["low_score_mass"] == 1 and fn.last_metrics["unparseable"] == 1
    with pytest.raises(ValueError, match="min_score_mass"):
        rlvr.create("reward", "llm_judge", backend="openai", min_score_mass=1.5)


def test_leading_one_that_may_start_ten():
    scores = list(range(11))
    # "1" sampled, then "0" with 0.75: 10 gets 0.6, 1 gets 0.2 (stopped), 9 gets 0.2
    ten = _reply([("1", 0.8, [("1", 0.8), ("9", 0.2)]), ("0", 0.75, [("0", 0.75), ("<|im_end|>", 0.25)])])
    assert score_from_reply(ten["choices"][0], scores) == pytest.approx(10 * 0.6 + 1 * 0.2 + 9 * 0.2)
    # "9" sampled and "1" only an alternative: it may be 1 or 10, so it is left out instead of counted as 1
    nine = _reply([("9", 0.6, [("9", 0.6), ("1", 0.3), ("8", 0.1)]), ("<|im_end|>", 1.0, [("<|im_end|>", 1.0)])])
    assert score_from_reply(nine["choices"][0], scores) == pytest.approx((9 * 0.6 + 8 * 0.1) / 0.7)
    # the same reply with scores 0-9 has no ambiguity: "1" is 1
    assert score_from_reply(nine["choices"][0], list(range(10))) == pytest.approx(9 * 0.6 + 1 * 0.3 + 8 * 0.1)
    # "1" sampled as the whole reply (no next position): it is 1
    one = _reply([("1", 0.9, [("1", 0.9), ("2", 0.1)])])
    assert score_from_reply(one["choices"][0], scores) == pytest.approx(0.9 + 0.2)
    # a tokenizer with a single "10" token
    single = _reply([("10", 0.5, [("10", 0.5), ("1", 0.1), ("9", 0.4)])])
    assert score_from_reply(single["choices"][0], scores) == pytest.approx((10 * 0.5 + 9 * 0.4) / 0.9)


def test_max_concurrency_beyond_asyncio_default_pool():
    """All requests must be in flight at once: the stub answers only when every one of them has arrived."""
    n = min(32, (os.cpu_count() or 1) + 4) + 2  # asyncio's default pool holds n - 2 threads
    barrier = threading.Barrier(n, timeout=20)

    def respond(body):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return 500, {"error": {"message": "not all requests arrived together"}}
        return 200, _reply([("5", 1.0, [("5", 1.0)])])

    with StubServer(respond) as srv:
        fn = stub_judge(srv, max_concurrency=n, max_retries=0)
        table = score([RewardFn("j", fn)], [f"c{i}" for i in range(n)], ["q"] * n, {})
    assert table[:, 0].tolist() == [5.0] * n and fn.last_metrics["requests"] == n


def test_retry_window_and_aggregated_report():
    calls = []

    def respond(body):
        calls.append(1)
        return 503, {"error": {"message": "loading model"}}

    with StubServer(respond) as srv:
        fn = stub_judge(srv, max_retries=10_000, retry_window_s=0.3, backoff_s=0.02)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(RewardError, match=r"failed \d+ times over .*retry_window_s=0\.3"):
                score([RewardFn("j", fn)], ["a"], ["q"], {})
    assert 2 < len(calls) < 10_000  # gave up by the window, not by max_retries
    reports = [str(w.message) for w in caught if str(w.message).startswith("llm_judge (")]
    assert len(reports) == 1 and "HTTP 503" in reports[0] and "gave up" in reports[0]
    assert fn.last_metrics["gave_up"] >= 1 and fn.last_metrics["retries"] == len(calls) - 1
    assert LLMJudgeConfig().retry_window_s == 60.0


def test_context_length_exceeded_scores_that_row_none():
    limit = 40

    def respond(body):
        completion = _completion_of(body)
        if len(completion) > limit:
            return 400, {
                "error": {
                    "message": "This model's maximum context length is 64 tokens.",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            }
        return 200, _reply([("6", 1.0, [("6", 1.0)])])

    long = "x" * 100
    with StubServer(respond) as srv:
        fn = stub_judge(srv)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = score([RewardFn("j", fn)], ["short", long, "ok"], ["q"] * 3, {})
        assert table[0, 0] == 6.0 and math.isnan(table[1, 0]) and table[2, 0] == 6.0
        assert fn.last_metrics["context_too_long"] == 1
        assert any("longer than the judge's context" in str(w.message) for w in caught)
        cut = stub_judge(srv, on_context_overflow="truncate")
        table = score([RewardFn("j", cut)], ["short", long], ["q"] * 2, {})
        assert table[:, 0].tolist() == [6.0, 6.0] and cut.last_metrics["truncated"] == 1
        strict = stub_judge(srv, on_context_overflow="raise")
        with pytest.raises(RewardError, match="longer than the judge's context"):
            score([RewardFn("j", strict)], ["short", long], ["q"] * 2, {})
    with StubServer(lambda body: (400, {"error": {"message": "unknown model"}})) as srv2:  # other 400s still fail
        with pytest.raises(RewardError, match="HTTP 400.*unknown model"):
            score([RewardFn("j", stub_judge(srv2))], ["a"], ["q"], {})


def test_local_backend_min_score_mass(judge_policy):
    """The local judge's score mass is the probability of the score tokens; above 1 nothing passes."""
    fn = rlvr.create("reward", "llm_judge", model=MODEL_PLUGIN, min_score_mass=0.0, **JUDGE)
    probs = fn.judge.score_probs([fn.judge._prompt_ids(judge_messages(LLMJudgeConfig(**JUDGE), PROMPT, WARM, {}))])[0]
    mass = sum(probs.values())
    strict = rlvr.create("reward", "llm_judge", model=MODEL_PLUGIN, min_score_mass=min(1.0, mass + 1e-6), **JUDGE)
    assert strict([WARM], prompts=[PROMPT]) == [None] and strict.last_metrics["low_score_mass"] == 1
    assert fn([WARM], prompts=[PROMPT])[0] is not None and fn.last_metrics["low_score_mass"] == 0
