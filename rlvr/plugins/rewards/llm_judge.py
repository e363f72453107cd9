"""``reward=llm_judge``: a judge model scores each completion against a rubric prompt.

The judge is asked for an integer score from ``min_score`` to ``max_score`` (0–10 by default)
with a rubric such as "start at 10; subtract 3 if it sounds robotic". Two backends:

- ``local`` — a transformers model loaded through the model plugins
  (``rlvr.create("model", model, **model_params)``: ``hf``, ``smollm2``, ``tiny`` or any third-party
  model plugin). Nothing is generated: the score is read from the model's probabilities of the
  score tokens after the judge prompt (multi-token scores such as ``10`` are scored token by
  token), and the reward is the expected score under those probabilities, renormalised over
  the valid scores. Deterministic, and smooth in the judge's confidence.
- ``openai`` — any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp's
  server, OpenAI). It asks for ``logprobs`` and uses the same expected score when the server
  returns them (at the first position of the reply where the judge wrote a number), else parses
  the first integer of the reply. Requests run concurrently, up to ``max_concurrency`` at a time
  on the judge's own thread pool (not asyncio's default pool, which is capped at min(32, CPUs+4)),
  time out after ``timeout_s``, are retried with exponential backoff (capped at 10 s, with jitter)
  on connection errors, timeouts, 429 and 5xx for up to ``retry_window_s`` seconds (60 by default,
  enough for a judge server that is still starting) or ``max_retries`` retries, and are cached by
  judge prompt (rubric + prompt + completion), so a completion repeated across a group is judged
  once. Retries are reported once per call (one training step) in one aggregated warning. A
  completion longer than the judge's context (HTTP 400 "context length exceeded") scores None for
  that row only (``on_context_overflow=truncate``: retried with the completion cut to half, a
  quarter, ... of its length; ``raise``: the call fails). The API key is read from the
  environment variable named by ``api_key_env``.

No score made of noise: when the valid scores carry less than ``min_score_mass`` of the judge's
probability (the judge did not really answer with a score), the row is None and counted. A ``1``
that may be the start of ``10`` is split by the next token's probabilities when the judge wrote it;
when it is only an alternative in the top-k, its continuation is unknown and its mass is left out.
A reply without a usable score gives ``None`` (not applicable) unless ``unparseable_score`` is set.
After each call the reward function's ``last_metrics`` dict holds counters (``requests``,
``retries``, ``gave_up``, ``context_too_long``, ``low_score_mass``, ``unparseable``), which the
trainer's monitor logs as ``audit/llm_judge/<counter>``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ColumnError, ConfigError
from rlvr.core.rewards import RewardConfig

DEFAULT_SYSTEM = "You are a strict, fair grader. You reply with a single integer score and nothing else."
DEFAULT_RUBRIC = (
    "Score the assistant's reply. Start at {max_score}. Subtract 5 if it is wrong or does not answer "
    "the request. Subtract 3 if it sounds robotic. Subtract 2 if it is rude. Never go below {min_score}."
)
DEFAULT_TEMPLATE = (
    "{rubric}\n\nRequest:\n{prompt}\n\nReply to grade:\n{completion}\n\n"
    "Answer with only the score, an integer from {min_score} to {max_score}."
)
BACKENDS = ("local", "openai")
OVERFLOW_CHOICES = ("none", "truncate", "raise")
BACKOFF_CAP_S = 10.0  # the longest wait between two retries
TRUNCATION_MARK = " [...truncated for the judge]"
_CONTEXT_ERROR = re.compile(
    r"context_length_exceeded|context length|context size|context window|maximum context|"
    r"prompt is too long|too many tokens",
    re.IGNORECASE,
)


@dataclass
class LLMJudgeConfig(RewardConfig):
    backend: str = "local"  # local | openai
    rubric: str = DEFAULT_RUBRIC  # may use {min_score}, {max_score}
    template: str = DEFAULT_TEMPLATE  # {rubric} {prompt} {completion} {min_score} {max_score} and any task column
    system_prompt: str = DEFAULT_SYSTEM
    min_score: int = 0
    max_score: int = 10
    normalize: bool = False  # map scores to [0, 1]
    unparseable_score: Optional[float] = None  # score of a reply without a usable score (None: not applicable)
    min_score_mass: float = 0.5  # below this probability on the valid scores the row is None (no score from noise)
    # local backend
    model: str = "smollm2"  # a model plugin name
    model_params: Dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    response_prefix: str = ""  # text put after the chat template's assistant header, e.g. "Score: "
    # openai backend
    base_url: str = "http://127.0.0.1:8000/v1"
    api_model: str = "default"  # the model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key ("" = none)
    timeout_s: float = 60.0
    max_retries: int = 20  # retries of one request at most ...
    retry_window_s: float = 60.0  # ... and no new retry this long after its first attempt (judge downtime tolerated)
    backoff_s: float = 1.0  # first retry delay; doubles each retry (with jitter), capped at 10 s
    max_concurrency: int = 8  # requests in flight at once (the judge's own thread pool of this size)
    on_context_overflow: str = "none"  # HTTP 400 context length exceeded: none (row None) | truncate | raise
    use_logprobs: bool = True
    top_logprobs: int = 20
    max_tokens: int = 8
    temperature: float = 0.0
    cache_size: int = 4096


class _Fields(dict):  # str.format_map helper with a clear error for unknown fields
    def __missing__(self, key: str) -> Any:
        raise ColumnError(
            f"llm_judge template uses {{{key}}}, which is neither a built-in field (rubric, prompt, "
            f"completion, min_score, max_score) nor a task column; columns given: "
            f"{sorted(k for k in self if k not in ('rubric', 'prompt', 'completion'))}"
        )


def judge_messages(cfg: LLMJudgeConfig, prompt: str, completion: str, row: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages asking the judge to score ``completion`` (an answer to ``prompt``)."""
    bounds = {"min_score": cfg.min_score, "max_score": cfg.max_score}
    fields = _Fields({k: "" if v is None else v for k, v in row.items()})
    fields.update(bounds, rubric=cfg.rubric.format(**bounds), prompt=prompt, completion=completion)
    messages = [{"role": "user", "content": cfg.template.format_map(fields)}]
    if cfg.system_prompt:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return messages


def render_chat(tokenizer: Any, messages: list[dict[str, str]], response_prefix: str = "") -> str:
    """The judge prompt as text: the tokenizer's chat template when it has one, else plain text."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n\nScore: "
    return text + response_prefix


def _rows(n: int, columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def expected_score(probs: dict[int, float], min_mass: float = 0.0) -> Optional[float]:
    """Σ p·s / Σ p over the valid scores, or None when they carry no probability or less than ``min_mass``
    in total (the judge did not answer with a score; renormalising the crumbs would be noise)."""
    total = sum(probs.values())
    if not probs or total <= 0 or not math.isfinite(total) or total < min_mass:
        return None
    return sum(s * p for s, p in probs.items()) / total


# ----------------------------------------------------------------------------- local backend

_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def load_judge_model(name: str, params: dict[str, Any]) -> Any:
    """The judge model (an object with ``.model`` and ``.tokenizer``) through the model plugins, loaded once."""
    key = name + json.dumps(params, sort_keys=True, default=str)
    with _MODELS_LOCK:
        if key not in _MODELS:
            import rlvr

            policy = rlvr.create("model", name, **params)
            policy.model.eval()
            _MODELS[key] = policy
        return _MODELS[key]


class LocalJudge:
    """Reads scores from a local causal LM's next-token probabilities."""

    def __init__(self, cfg: LLMJudgeConfig, policy: Any):
        self.cfg, self.model, self.tok = cfg, policy.model, policy.tokenizer
        self.scores = list(range(cfg.min_score, cfg.max_score + 1))
        self.ids = {s: tuple(self.tok.encode(str(s), add_special_tokens=False)) for s in self.scores}
        empty = [s for s, ids in self.ids.items() if not ids]
        if empty:
            raise ConfigError(f"llm_judge: the judge tokenizer encodes the scores {empty} as nothing")
        # every proper prefix of a score's tokens needs the next-token distribution after it
        self.prefixes = sorted({ids[:k] for ids in self.ids.values() for k in range(len(ids))}, key=len)

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = render_chat(self.tok, messages, self.cfg.response_prefix)
        add_special = not getattr(self.tok, "chat_template", None)
        return list(self.tok.encode(text, add_special_tokens=add_special))

    def score_probs(self, prompt_ids: list[list[int]]) -> list[dict[int, float]]:
        """For each prompt, the probability of each score (unnormalised) from teacher-forced prefixes."""
        import torch

        device = next(self.model.parameters()).device
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        seqs = [(i, p, ids + list(p)) for i, ids in enumerate(prompt_ids) for p in self.prefixes]
        dists: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        step = max(1, self.cfg.batch_size)
        for start in range(0, len(seqs), step):
            chunk = seqs[start : start + step]
            width = max(len(s) for _, _, s in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, _, s) in enumerate(chunk):  # left padding: the last position is the next-token one
                input_ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
                mask[r, width - len(s) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                out = self.model(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    use_cache=False,
                )
            logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()
            for r, (i, p, _) in enumerate(chunk):
                dists[(i, p)] = logprobs[r]
        results = []
        for i in range(len(prompt_ids)):
            probs: dict[int, float] = {}
            for s, ids in self.ids.items():
                logp = sum(float(dists[(i, ids[:k])][ids[k]]) for k in range(len(ids)))
                # a score that is a prefix of another ("1" of "10") must also stop here
                cont = {
                    other[len(ids)]
                    for other in self.ids.values()
                    if len(other) > len(ids) and other[: len(ids)] == ids
                }
                if cont:
                    p_cont = float(sum(math.exp(float(dists[(i, ids)][t])) for t in cont))
                    logp += math.log(max(1e-12, 1.0 - p_cont))
                probs[s] = math.exp(logp)
            results.append(probs)
        return results

    def __call__(self, messages: list[list[dict[str, str]]]) -> list[Optional[float]]:
        self.stats: collections.Counter[str] = collections.Counter()
        out = []
        for probs in self.score_probs([self._prompt_ids(m) for m in messages]):
            value = expected_score(probs, self.cfg.min_score_mass)
            self.stats["low_score_mass"] += value is None
            out.append(value)
        return out


# ----------------------------------------------------------------------------- openai backend


class JudgeRequestError(RuntimeError):
    """The judge endpoint failed (after retries when the failure was transient)."""


def _top(entry: dict[str, Any]) -> dict[str, float]:
    """token (stripped) -> probability among one position's top_logprobs (tokens equal after strip are summed)."""
    out: dict[str, float] = collections.defaultdict(float)
    for alt in entry.get("top_logprobs") or []:
        out[str(alt.get("token", "")).strip()] += math.exp(float(alt.get("logprob", -math.inf)))
    return out


def reply_score(
    choice: dict[str, Any], scores: list[int], use_logprobs: bool = True, min_mass: float = 0.0
) -> tuple[Optional[float], str]:
    """The score of one chat-completion choice and how it was read: ``logprobs`` (expected score at the
    first position where the judge wrote a number), ``text`` (first integer of the reply, clamped),
    ``low_score_mass`` (the valid scores carry less than ``min_mass`` there: None) or ``unparseable`` (None).

    A score that is a prefix of another (``1`` of ``10``) is split by the next position's probabilities when
    it is the sampled token; when it is only a top-k alternative its continuation is unknown, so its mass is
    left out (it counts toward neither ``1`` nor ``10``, nor toward the mass).
    """
    valid = {str(s): s for s in scores}
    content = ((choice.get("logprobs") or {}).get("content") or []) if use_logprobs else []
    pos = next((i for i, e in enumerate(content) if re.match(r"-?\d", str(e.get("token", "")).strip())), None)
    if pos is not None:
        first, chosen = _top(content[pos]), str(content[pos].get("token", "")).strip()
        second = _top(content[pos + 1]) if pos + 1 < len(content) else None  # what followed the sampled token
        probs: dict[int, float] = {}
        for text, s in valid.items():
            p = first.get(text, 0.0)
            longer = [t for t in valid if t != text and t.startswith(text)]
            if p and longer and chosen == text and second is not None:  # "1" then maybe "0": split by the next token
                p *= max(0.0, 1.0 - sum(second.get(t[len(text) :], 0.0) for t in longer))
            elif p and longer and chosen != text:  # an alternative "1": "1" or "10"? unknown, so left out
                p = 0.0
            for head in [h for h in first if h and h != text and text.startswith(h) and chosen == h and second]:
                p += first[head] * second.get(text[len(head) :], 0.0)
            if p > 0:
                probs[s] = p
        value = expected_score(probs, min_mass)
        return (value, "logprobs") if value is not None else (None, "low_score_mass")
    text = str((choice.get("message") or {}).get("content") or "")
    m = re.search(r"-?\d+", text)
    if m is None:
        return None, "unparseable"
    return float(min(max(int(m.group()), scores[0]), scores[-1])), "text"


def score_from_reply(
    choice: dict[str, Any], scores: list[int], use_logprobs: bool = True, min_mass: float = 0.0
) -> Optional[float]:
    """The score of one chat-completion choice (see :func:`reply_score`), or None."""
    return reply_score(choice, scores, use_logprobs, min_mass)[0]


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: Optional[float] = None, kind: str = "error"):
        super().__init__(message)
        self.retry_after = retry_after
        self.kind = kind  # e.g. "HTTP 503", "URLError": how retries are summarised


class _ContextTooLong(Exception):
    """HTTP 400 saying the judge request does not fit the judge's context."""


Shrink = Callable[[float], list[dict[str, str]]]
"""``shrink(fraction)``: the judge messages with the completion cut to that fraction of its length."""


class OpenAIJudge:
    """Asks an OpenAI-compatible chat endpoint, concurrently, with retries and a cache."""

    def __init__(self, cfg: LLMJudgeConfig):
        if cfg.max_concurrency < 1 or cfg.timeout_s <= 0 or cfg.max_retries < 0 or cfg.retry_window_s < 0:
            raise ConfigError(
                "llm_judge: max_concurrency >= 1, timeout_s > 0, max_retries >= 0 and retry_window_s >= 0 are required"
            )
        if cfg.on_context_overflow not in OVERFLOW_CHOICES:
            raise ConfigError(
                f"llm_judge: on_context_overflow={cfg.on_context_overflow!r}; choose one of {OVERFLOW_CHOICES}"
            )
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.scores = list(range(cfg.min_score, cfg.max_score + 1))
        self.cache: collections.OrderedDict[str, Optional[float]] = collections.OrderedDict()
        self.requests = 0  # HTTP requests sent (tests and metrics)
        self.stats: collections.Counter[str] = collections.Counter()  # this call's counters
        self.retry_kinds: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def _key(self, messages: list[dict[str, str]]) -> str:
        blob = json.dumps([self.url, self.cfg.api_model, messages], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _payload(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.cfg.api_model,
            "messages": messages,
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
        }
        if self.cfg.use_logprobs:
            body.update(logprobs=True, top_logprobs=self.cfg.top_logprobs)
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with self._lock:
            self.requests += 1
            self.stats["requests"] += 1
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:2000].decode(errors="replace")
            if exc.code == 429 or exc.code >= 500:
                after = exc.headers.get("Retry-After") if exc.headers else None
                wait = float(after) if after and after.isdigit() else None
                raise _Retryable(f"HTTP {exc.code}: {detail[:300]}", wait, f"HTTP {exc.code}") from None
            if exc.code in (400, 413) and _CONTEXT_ERROR.search(detail):
                raise _ContextTooLong(f"HTTP {exc.code}: {detail[:300]}") from None
            raise JudgeRequestError(f"llm_judge: {self.url} answered HTTP {exc.code}: {detail[:300]}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", kind=type(exc).__name__) from None
        except json.JSONDecodeError as exc:
            raise _Retryable(f"the reply is not JSON ({exc})", kind="bad JSON") from None

    async def _request(
        self, messages: list[dict[str, str]], sem: asyncio.Semaphore, pool: ThreadPoolExecutor
    ) -> Optional[float]:
        """One judge request with retries on transient failures (at most ``max_retries`` retries, and none
        started ``retry_window_s`` after the first attempt). Raises _ContextTooLong / JudgeRequestError."""
        loop = asyncio.get_running_loop()
        start, attempt = time.monotonic(), 0
        while True:
            try:
                async with sem:
                    reply = await loop.run_in_executor(pool, self._post, self._payload(messages))
                choices = reply.get("choices") or []
                if not choices:
                    raise _Retryable(f"the reply has no choices: {str(reply)[:200]}", kind="no choices")
                value, how = reply_score(choices[0], self.scores, self.cfg.use_logprobs, self.cfg.min_score_mass)
                if value is None:
                    self.stats[how] += 1
                return value
            except _Retryable as exc:
                elapsed = time.monotonic() - start
                if attempt >= self.cfg.max_retries or elapsed >= self.cfg.retry_window_s:
                    self.stats["gave_up"] += 1
                    raise JudgeRequestError(
                        f"llm_judge: {self.url} failed {attempt + 1} times over {elapsed:.0f} s; last error: {exc}. "
                        f"Is the judge server up? (retries: max_retries={self.cfg.max_retries}, "
                        f"retry_window_s={self.cfg.retry_window_s:g})"
                    ) from None
                self.stats["retries"] += 1
                self.retry_kinds[exc.kind] += 1
                delay = min(BACKOFF_CAP_S, self.cfg.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
                attempt += 1
                await asyncio.sleep(max(delay, exc.retry_after or 0.0))

    async def _ask(
        self,
        messages: list[dict[str, str]],
        sem: asyncio.Semaphore,
        pool: ThreadPoolExecutor,
        shrink: Optional[Shrink] = None,
    ) -> Optional[float]:
        key = self._key(messages)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        try:
            value = await self._request(messages, sem, pool)
        except _ContextTooLong as exc:
            value = await self._overflow(exc, shrink, sem, pool)
        self.cache[key] = value
        while len(self.cache) > self.cfg.cache_size:
            self.cache.popitem(last=False)
        return value

    async def _overflow(
        self, exc: _ContextTooLong, shrink: Optional[Shrink], sem: asyncio.Semaphore, pool: ThreadPoolExecutor
    ) -> Optional[float]:
        """A request over the judge's context: None for this row, or (truncate) the completion cut shorter."""
        if self.cfg.on_context_overflow == "raise":
            raise JudgeRequestError(
                f"llm_judge: {self.url}: the judge request is longer than the judge's context "
                f"({exc}); set on_context_overflow=none or truncate to score such rows"
            ) from None
        if self.cfg.on_context_overflow == "truncate" and shrink is not None:
            for fraction in (0.5, 0.25, 0.125, 0.0625):
                try:
                    value = await self._request(shrink(fraction), sem, pool)
                    self.stats["truncated"] += 1
                    return value
                except _ContextTooLong:
                    continue
        self.stats["context_too_long"] += 1
        return None

    def _report(self) -> None:
        """One warning per call (= per training step) summarising retries and rows scored None for length."""
        parts = []
        if self.stats["retries"]:
            kinds = ", ".join(f"{k} ×{n}" for k, n in self.retry_kinds.most_common())
            parts.append(f"{self.stats['retries']} retries ({kinds}), {self.stats['gave_up']} requests gave up")
        if self.stats["context_too_long"]:
            parts.append(f"{self.stats['context_too_long']} completions longer than the judge's context scored None")
        if parts:
            warnings.warn(f"llm_judge ({self.url}): " + "; ".join(parts), RuntimeWarning, stacklevel=2)

    async def __call__(
        self, messages: list[list[dict[str, str]]], shrinks: Optional[list[Shrink]] = None
    ) -> list[Optional[float]]:
        self.stats, self.retry_kinds = collections.Counter(), collections.Counter()
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        keys = [self._key(m) for m in messages]
        unique: dict[str, tuple[list[dict[str, str]], Optional[Shrink]]] = {}
        for i, (k, m) in enumerate(zip(keys, messages)):  # identical prompts (a repeated completion) are asked once
            unique.setdefault(k, (m, shrinks[i] if shrinks else None))
        # the judge's own pool: asyncio's default one holds only min(32, CPUs + 4) threads
        pool = ThreadPoolExecutor(max_workers=self.cfg.max_concurrency, thread_name_prefix="llm_judge")
        try:
            values = await asyncio.gather(*(self._ask(m, sem, pool, sh) for m, sh in unique.values()))
        finally:
            pool.shutdown(wait=False)
            self._report()
        by_key = dict(zip(unique, values))
        return [by_key[k] for k in keys]


# ----------------------------------------------------------------------------- plugin

COUNTERS = ("requests", "retries", "gave_up", "context_too_long", "truncated", "low_score_mass", "unparseable")


def _counters(stats: collections.Counter[str]) -> dict[str, float]:
    """The judge's counters of the last call, as the monitor forwards them (``audit/<reward>/<counter>``)."""
    return {k: float(stats.get(k, 0)) for k in COUNTERS}


def make_llm_judge(cfg: LLMJudgeConfig) -> Callable[..., Any]:
    """Build the judge reward; async for the openai backend (the loop awaits it with the other rewards)."""
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"llm_judge: backend={cfg.backend!r}; choose one of {BACKENDS}")
    if cfg.max_score <= cfg.min_score:
        raise ConfigError(f"llm_judge: max_score ({cfg.max_score}) must be above min_score ({cfg.min_score})")
    if not 0.0 <= cfg.min_score_mass <= 1.0:
        raise ConfigError(f"llm_judge: min_score_mass={cfg.min_score_mass} must be in [0, 1] (0 = accept any mass)")

    def finish(values: list[Optional[float]]) -> list[Optional[float]]:
        out = []
        for v in values:
            if v is None:
                v = cfg.unparseable_score
            elif cfg.normalize:
                v = (v - cfg.min_score) / (cfg.max_score - cfg.min_score)
            out.append(v)
        return out

    def all_messages(completions: list[str], prompts: Optional[list[str]], columns: dict[str, list[Any]]) -> list[Any]:
        rows = _rows(len(completions), columns)
        prompts = list(prompts) if prompts is not None else [""] * len(completions)
        return [judge_messages(cfg, p, c, r) for p, c, r in zip(prompts, completions, rows)]

    if cfg.backend == "openai":
        judge = OpenAIJudge(cfg)

        def shrinker(prompt: str, completion: str, row: dict[str, Any]) -> Shrink:
            return lambda fraction: judge_messages(
                cfg, prompt, completion[: int(len(completion) * fraction)] + TRUNCATION_MARK, row
            )

        async def llm_judge_async(
            completions: list[str], prompts: Optional[list[str]] = None, **columns: Any
        ) -> list[Optional[float]]:
            prompts = list(prompts) if prompts is not None else [""] * len(completions)
            shrinks = [shrinker(p, c, r) for p, c, r in zip(prompts, completions, _rows(len(completions), columns))]
            try:
                return finish(await judge(all_messages(completions, prompts, columns), shrinks))
            finally:
                llm_judge_async.last_metrics = _counters(judge.stats)  # type: ignore[attr-defined]

        llm_judge_async.judge = judge  # type: ignore[attr-defined]
        return llm_judge_async

    local = LocalJudge(cfg, load_judge_model(cfg.model, dict(cfg.model_params)))

    def llm_judge(
        completions: list[str], prompts: Optional[list[str]] = None, **columns: Any
    ) -> list[Optional[float]]:
        values = finish(local(all_messages(completions, prompts, columns)))
        llm_judge.last_metrics = _counters(local.stats)  # type: ignore[attr-defined]
        return values

    llm_judge.judge = local  # type: ignore[attr-defined]
    return llm_judge


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "llm_judge",
            make_llm_judge,
            LLMJudgeConfig,
            "a judge model scores the completion against a rubric (local transformers model or "
            "an OpenAI-compatible endpoint)",
        )
    ]
