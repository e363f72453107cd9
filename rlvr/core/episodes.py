"""Multi-turn episodes: the rollout phase with an environment (``env=<name>``).

An episode starts from a task row (``env.reset(row)`` → the first messages and the env's state), then
alternates: the model samples one assistant turn (until an end-of-turn token), the environment answers
(``env.step(state, text)`` → new messages, done, info), and the tokens of its answer are *inserted*
after the sampled ones. The trajectory that is trained is exactly

    prompt tokens | sampled turn 1 | inserted env tokens | sampled turn 2 | ... (completion_mask 1 / 0 / 1 ...)

Generated text is never decoded and re-tokenised: sampled tokens stay as they were sampled. The
inserted tokens are what the chat template renders for the env's messages *after* the end-of-turn
token the model sampled (:func:`inserted_text`): the template's separator after that token (ChatML's
``\\n`` after ``<|im_end|>``) is inserted, not dropped. Inserted tokens have ``completion_mask`` 0
(no loss, no gradient) and attention mask 1 (``Rollouts.attention_mask``).

Limits (``env.*``), each with its rule (tests/test_episodes.py):

* ``max_turns``: after that many assistant turns the episode ends; ``truncated`` = the env had not said done.
* ``max_tokens``: completion tokens (sampled + inserted) per episode; a turn may sample at most what is
  left; a turn cut by it, or env tokens that would not fit, end the episode with ``truncated`` = True.
* ``engine.max_new_tokens``: tokens per assistant turn; a turn that hits it without an end-of-turn token
  ends the episode, ``truncated`` = True.
* ``tool_timeout``: seconds per tool call; a timed-out call is a tool error sent back to the model.

``truncated`` feeds ``loss.mask_truncated_completions`` exactly as for single-turn completions.

Decoding (:class:`KVSession`): every active episode decodes together; the B prompts are prefilled
once and repeated G times; after a turn, each continuing episode's KV cache is *extended* with its
inserted tokens (one batched forward over the new tokens only), and finished episodes drop out of the
cache. :class:`ReprefillSession` is the naive alternative (re-prefill the whole history every turn),
kept as the baseline of ``benchmarks/episodes.py`` and for checks; both sample the same tokens.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlvr.core.errors import ConfigError
from rlvr.core.policy import Policy, eos_token_ids
from rlvr.core.prefix import prefill
from rlvr.core.rollout import Rollouts
from rlvr.core.tools import detect_format, rlvr_tool_prompt, tool_schema

SENTINEL = "RLVRSENTINEL0x5f3759df"
STOPS = ("env_done", "max_turns", "max_tokens", "max_new_tokens")

# sample(logits float32 [n, V], generators (one per row), greedy) -> (tokens long [n], log-probs float32 [n])
Sampler = Callable[[torch.Tensor, Sequence[torch.Generator], bool], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Episode:
    """One episode's trajectory and bookkeeping (completion side: after the prompt)."""

    row: dict[str, Any]
    messages: list[dict[str, Any]]
    state: Any
    tokens: list[int] = field(default_factory=list)  # sampled + inserted
    mask: list[int] = field(default_factory=list)  # 1 sampled, 0 inserted
    logps: list[float] = field(default_factory=list)  # sampling log-probs (0 on inserted tokens)
    turns: int = 0
    done: bool = False
    truncated: bool = False
    stop: str = ""  # one of STOPS
    infos: list[dict[str, Any]] = field(default_factory=list)  # env.step's info per turn

    def summary(self) -> dict[str, Any]:
        """What rewards (column ``episode``), completions.jsonl and reports get: JSON-serialisable."""
        calls = sum(int(i.get("tool_calls", 0)) for i in self.infos)
        errors = sum(int(i.get("tool_errors", 0)) for i in self.infos)
        return {
            "messages": self.messages,
            "turns": self.turns,
            "stop": self.stop,
            "truncated": self.truncated,
            "tool_calls": calls,
            "tool_errors": errors,
            "tool_seconds": sum(float(i.get("tool_seconds", 0.0)) for i in self.infos),
            "state": _jsonable(self.state),
            "infos": [_jsonable(i) for i in self.infos],
        }


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


# ---------------------------------------------------------------------------------------------
# chat templates
# ---------------------------------------------------------------------------------------------
def tool_setup(env: Any, tokenizer: Any) -> tuple[str, list[dict[str, Any]] | None]:
    """(tool-call format, tool schemas for the template's ``tools=`` or None when the rlvr format puts them
    in the system prompt)."""
    fmt = str(env.cfg.tool_format)
    if fmt == "auto":
        fmt = detect_format(getattr(tokenizer, "chat_template", None))
    tools = list(getattr(env, "tools", []) or [])
    if not tools or fmt == "rlvr":
        return fmt, None
    return fmt, [tool_schema(t) for t in tools]


def with_tool_prompt(messages: list[dict[str, Any]], env: Any, fmt: str) -> list[dict[str, Any]]:
    """The first messages with the rlvr-format tool description added to (or as) the system message."""
    tools = list(getattr(env, "tools", []) or [])
    if fmt != "rlvr" or not tools:
        return messages
    text = rlvr_tool_prompt(tools)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + text}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


def render(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
) -> str:
    kw = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kw)


def inserted_text(
    tokenizer: Any,
    history: list[dict[str, Any]],
    new: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    end_strings: Sequence[str],
) -> str:
    """The text to insert after a sampled assistant turn: what the template renders for ``new`` (the env's
    messages) and the next generation prompt, *after* the assistant turn's end-of-turn token.

    ``history`` ends with the assistant message. It is rendered with a sentinel in place of that message's
    content, so the earlier turns' rendering (e.g. Qwen 3 dropping old reasoning) does not matter; the text
    after the sentinel starts with the template's end-of-turn string (one of ``end_strings``: the model
    sampled it), which is removed, and the rest — separator included — is returned.
    """
    msgs = history[:-1] + [{**history[-1], "content": SENTINEL}] + new
    full = render(tokenizer, msgs, tools, add_generation_prompt=True)
    at = full.rfind(SENTINEL)
    if at < 0:
        raise ValueError(
            "the chat template does not render the assistant message's content; multi-turn episodes "
            "need a template that renders every message"
        )
    after = full[at + len(SENTINEL) :]
    for end in sorted(end_strings, key=len, reverse=True):
        if end and after.startswith(end):
            return after[len(end) :]
    stripped = after.lstrip(" \t")
    for end in sorted(end_strings, key=len, reverse=True):
        if end and stripped.startswith(end):
            return stripped[len(end) :]
    raise ValueError(
        f"the chat template renders {after[:40]!r} after an assistant message, not one of the "
        f"end-of-turn tokens {list(end_strings)}; rlvr cannot line the template up with the "
        "sampled tokens (set the tokenizer's/model's eos_token_id to the template's end of turn)"
    )


# ---------------------------------------------------------------------------------------------
# decoding sessions
# ---------------------------------------------------------------------------------------------
def _forward(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any, last: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits float32 [n, V] of the token at index ``last`` [n] of each row (default: the last column)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    key = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{key: cache})
    logits = out.logits
    if last is None:
        return logits[:, -1, :].float()
    return logits[torch.arange(ids.shape[0], device=ids.device), last].float()


class KVSession:
    """Batched decoding of many episodes over one transformers ``DynamicCache`` that grows by columns.

    Cache columns are shared by the rows; ``mask`` [n, C] marks each row's real tokens (a row that is not
    sampling in a step, or whose inserted chunk is shorter than the longest, gets 0 in that column), and
    positions count each row's real tokens, so every row sees exactly its own history.
    """

    def __init__(self, model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, repeats: int) -> None:
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache()
        pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        logits = prefill(model, prompt_ids, prompt_mask, pos, self.cache, _forward)  # a shared prefix: once
        self.cache.batch_repeat_interleave(repeats)  # the group's prompt is prefilled once
        self.mask = prompt_mask.repeat_interleave(repeats, dim=0)
        self.logits = logits.repeat_interleave(repeats, dim=0)
        self.rows = list(range(self.mask.shape[0]))  # episode index of each cache row

    def step(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``valid`` bool [n]: rows whose token is real); returns next logits [n, V]."""
        pos = self.mask.sum(1, keepdim=True)
        self.mask = torch.cat([self.mask, valid[:, None].to(self.mask.dtype)], dim=1)
        self.logits = _forward(self.model, tokens[:, None], self.mask, pos, self.cache)
        return self.logits

    def keep(self, episodes: list[int]) -> None:
        """Drop every cache row whose episode is not in ``episodes`` (finished episodes leave the batch)."""
        idx = [self.rows.index(e) for e in episodes]
        if idx == list(range(len(self.rows))):
            return
        t = torch.tensor(idx, device=self.mask.device)
        self.cache.batch_select_indices(t)
        self.mask, self.logits, self.rows = self.mask[t], self.logits[t], list(episodes)

    def extend(self, chunks: list[list[int]], histories: list[list[int]], pad_id: int) -> torch.Tensor:
        """Append each row's tokens (``chunks`` in row order; ``histories`` unused: the cache holds them) in one
        forward over the new tokens only; returns the logits after each row's last token [n, V]."""
        n, K = len(chunks), max(len(c) for c in chunks)
        dev = self.mask.device
        ids = torch.full((n, K), pad_id, dtype=torch.long, device=dev)
        new = torch.zeros((n, K), dtype=self.mask.dtype, device=dev)
        for i, c in enumerate(chunks):
            ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            new[i, : len(c)] = 1
        base = self.mask.sum(1, keepdim=True)
        pos = base + (new.cumsum(1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, new], dim=1)
        last = torch.tensor([len(c) - 1 for c in chunks], device=dev)
        self.logits = _forward(self.model, ids, self.mask, pos, self.cache, last)
        return self.logits


class ReprefillSession(KVSession):
    """The naive multi-turn decoder: after every environment turn the whole history (prompt + completion so far)
    is prefilled again from scratch. Same tokens as :class:`KVSession`; the baseline it is measured against."""

    def extend(self, chunks: list[list[int]], histories: list[list[int]], pad_id: int) -> torch.Tensor:
        from transformers import DynamicCache

        dev = self.mask.device
        L = max(len(h) for h in histories)
        ids = torch.full((len(histories), L), pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros((len(histories), L), dtype=self.mask.dtype, device=dev)
        for i, h in enumerate(histories):  # left-padded: the next token is in the last column for every row
            ids[i, L - len(h) :] = torch.tensor(h, dtype=torch.long)
            mask[i, L - len(h) :] = 1
        self.cache = DynamicCache()
        self.mask = mask
        self.logits = _forward(self.model, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), self.cache)
        return self.logits


# ---------------------------------------------------------------------------------------------
# the episode loop
# ---------------------------------------------------------------------------------------------
@dataclass
class EpisodeStats:
    """Timing of one :func:`run_episodes` call (seconds)."""

    generation: float = 0.0
    env: float = 0.0


@dataclass
class EpisodeStart:
    """What an engine's episode loop starts from (:func:`start_episodes`): the episodes (group order: episode
    b·G + j is row b's j-th), their rendered first prompts and token ids, and the turn rules' inputs."""

    episodes: list[Episode]
    prompts: list[str]  # B rendered first prompts (tool descriptions included)
    prompt_ids: torch.Tensor  # long [B, P], padded as the tokenizer pads
    prompt_mask: torch.Tensor  # long [B, P], 1 on real tokens
    fmt: str  # the tool-call format
    schemas: list[dict[str, Any]] | None  # the template's tools= (None: rlvr format, tools in the system prompt)
    eos: list[int]  # end-of-turn token ids
    end_strings: list[str]  # their text
    pad_id: int
    max_turns: int
    max_tokens: int

    def prompt_tokens(self, e: int, num_generations: int) -> list[int]:
        """Episode ``e``'s first prompt as token ids (without padding)."""
        b = e // num_generations
        return self.prompt_ids[b][self.prompt_mask[b] == 1].tolist()


def start_episodes(
    policy: Policy,
    env: Any,
    rows: Sequence[dict[str, Any]],
    num_generations: int,
    max_prompt_length: int,
    stats: EpisodeStats,
) -> EpisodeStart:
    """Reset the environment for ``len(rows)`` · G episodes and tokenise the first prompts (every engine's first
    step). A first prompt longer than ``max_prompt_length`` is refused: cutting it would drop the tools."""
    tok, G = policy.tokenizer, num_generations
    fmt, schemas = tool_setup(env, tok)
    eos = eos_token_ids(policy)
    end_strings = [tok.decode([e], skip_special_tokens=False) for e in eos]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    t0 = time.perf_counter()
    starts = []
    for row in rows:
        messages, state = env.reset(row)
        starts.append((with_tool_prompt(list(messages), env, fmt), state))
    stats.env += time.perf_counter() - t0
    prompts = [render(tok, m, schemas, add_generation_prompt=True) for m, _ in starts]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    p_ids, p_mask = enc["input_ids"], enc["attention_mask"]
    if p_ids.shape[1] > max_prompt_length:  # cutting it would drop the system prompt (the tools): refuse
        raise ValueError(
            f"an episode's first prompt has {p_ids.shape[1]} tokens (tool descriptions included), more "
            f"than engine.max_prompt_length={max_prompt_length}: raise engine.max_prompt_length"
        )
    episodes: list[Episode] = []
    for b, row in enumerate(rows):
        for j in range(G):
            m, s = starts[b] if j == 0 else (list(starts[b][0]), env.reset(row)[1])
            if isinstance(s, dict) and s.get("tool_format") is None:  # ToolEnv.reset leaves it None
                s["tool_format"] = fmt
            episodes.append(Episode(row=row, messages=[dict(x) for x in m], state=s))
    return EpisodeStart(
        episodes,
        prompts,
        p_ids,
        p_mask,
        fmt,
        schemas,
        eos,
        end_strings,
        pad_id,
        int(env.cfg.max_turns),
        int(env.cfg.max_tokens),
    )


def run_episodes(
    policy: Policy,
    env: Any,
    rows: Sequence[dict[str, Any]],
    num_generations: int,
    seeds: Sequence[int],
    sample: Sampler,
    max_new_tokens: int,
    max_prompt_length: int,
    greedy: bool = False,
    session: str = "kv",
    stats: EpisodeStats | None = None,
) -> Rollouts:
    """``len(rows)`` · G episodes, group order (episode b·G + j is row b's j-th); returns their Rollouts.

    ``seeds[b]`` seeds row b's group: episode j of it draws from ``Generator(seeds[b] * 1000 + j)`` only, so
    an episode does not depend on which other episodes share the batch. ``session``: ``kv`` (extend the
    KV cache) or ``reprefill`` (the naive baseline).
    """
    tok, model, G = policy.tokenizer, policy.model, num_generations
    device = policy.device
    stats = stats if stats is not None else EpisodeStats()
    st = start_episodes(policy, env, rows, G, max_prompt_length, stats)
    episodes, p_ids, p_mask, prompts, pad_id = st.episodes, st.prompt_ids, st.prompt_mask, st.prompts, st.pad_id
    schemas, end_strings, fmt, eos = st.schemas, st.end_strings, st.fmt, st.eos
    max_turns, max_tokens = st.max_turns, st.max_tokens
    gens = [
        torch.Generator(device="cpu").manual_seed(int(seeds[b]) * 1000 + j) for b in range(len(rows)) for j in range(G)
    ]
    eos_t = torch.tensor(eos, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            t1 = time.perf_counter()
            cls = KVSession if session == "kv" else ReprefillSession
            sess = cls(model, p_ids.to(device), p_mask.to(device), G)
            stats.generation += time.perf_counter() - t1
            active = list(range(len(episodes)))
            while active:
                t1 = time.perf_counter()
                ended = _decode_turn(
                    sess,
                    episodes,
                    active,
                    gens,
                    sample,
                    greedy,
                    eos_t,
                    pad_id,
                    max_new_tokens,
                    max_tokens,
                    lambda t: tok.decode(t, skip_special_tokens=False),
                )
                stats.generation += time.perf_counter() - t1
                t1 = time.perf_counter()
                chunks = _env_turn(episodes, ended, env, tok, schemas, end_strings, fmt, max_turns, max_tokens)
                stats.env += time.perf_counter() - t1
                active = [e for e in active if not episodes[e].stop]
                if not active:
                    break
                t1 = time.perf_counter()
                sess.keep(active)
                histories = (
                    [p_ids[e // G][p_mask[e // G] == 1].tolist() + episodes[e].tokens for e in active]
                    if session == "reprefill"
                    else []
                )
                sess.extend([chunks[e] for e in active], histories, pad_id)
                stats.generation += time.perf_counter() - t1
    finally:
        if was_training:
            model.train()
    return _to_rollouts(episodes, p_ids, p_mask, prompts, G, pad_id, tok)


def _decode_turn(
    sess: KVSession,
    episodes: list[Episode],
    active: list[int],
    gens: Sequence[torch.Generator],
    sample: Sampler,
    greedy: bool,
    eos: torch.Tensor,
    pad_id: int,
    max_new_tokens: int,
    max_tokens: int,
    sess_decode: Callable[[list[int]], str],
) -> list[int]:
    """Sample one assistant turn for every active episode (rows of ``sess`` = ``active``, in order). Returns the
    episodes whose turn ended with an end-of-turn token; the others are stopped (truncated) here."""
    n = len(active)
    budget = [min(max_new_tokens, max_tokens - len(episodes[e].tokens)) for e in active]
    running = torch.tensor([b > 0 for b in budget])
    count = [0] * n
    finished = [False] * n
    eos_set = set(eos.tolist())
    logits = sess.logits
    for _t in range(max(budget + [0])):
        rows = running.nonzero().squeeze(-1)
        if rows.numel() == 0:
            break
        picked, logps = sample(logits[rows.to(logits.device)], [gens[active[int(i)]] for i in rows], greedy)
        tokens = torch.full((n,), pad_id, dtype=torch.long)
        tokens[rows] = picked.cpu()
        logps = logps.cpu()
        for k, i in enumerate(rows.tolist()):
            ep = episodes[active[i]]
            ep.tokens.append(int(tokens[i]))
            ep.mask.append(1)
            ep.logps.append(float(logps[k]))
            count[i] += 1
            if int(tokens[i]) in eos_set:
                finished[i], running[i] = True, False
            elif count[i] >= budget[i]:
                running[i] = False
        if not bool(running.any()):
            break
        feed = torch.where(running, tokens, torch.full_like(tokens, pad_id)).to(sess.mask.device)
        logits = sess.step(feed, running.to(sess.mask.device))
    return [
        e
        for i, e in enumerate(active)
        if end_turn(episodes[e], count[i], finished[i], budget[i], max_new_tokens, sess_decode)
    ]


def end_turn(
    ep: Episode, count: int, finished: bool, budget: int, max_new_tokens: int, decode: Callable[[list[int]], str]
) -> bool:
    """Book-keeping after an assistant turn whose ``count`` sampled tokens are already appended to ``ep``
    (``budget``: the most it was allowed). True when the turn ended with an end-of-turn token (the env answers
    next); otherwise the per-turn or the episode token limit cut it and the episode stops, truncated."""
    if count > 0:
        ep.turns += 1
    if finished:
        return True
    ep.stop = "max_new_tokens" if budget >= max_new_tokens else "max_tokens"
    ep.truncated = True
    if count > 0:  # kept for logs and reports; rewards see stop != env_done
        ep.messages.append({"role": "assistant", "content": decode(ep.tokens[-count:]), "truncated": True})
    return False


def _env_turn(
    episodes: list[Episode],
    ended: list[int],
    env: Any,
    tok: Any,
    schemas: list[dict[str, Any]] | None,
    end_strings: Sequence[str],
    fmt: str,
    max_turns: int,
    max_tokens: int,
) -> dict[int, list[int]]:
    """The environment answers every episode whose turn ended; returns the tokens to feed each continuing
    episode: its end-of-turn token (sampled, not yet in the KV cache) followed by the inserted env tokens."""
    chunks: dict[int, list[int]] = {}
    for e in ended:
        ep = episodes[e]
        start = len(ep.tokens) - _turn_length(ep)
        text = tok.decode(ep.tokens[start:-1], skip_special_tokens=False)  # without the end-of-turn token
        ep.messages.append({"role": "assistant", "content": text})
        new, done, info = env.step(ep.state, text)
        ep.infos.append(dict(info or {}))
        if done:
            ep.stop, ep.done = "env_done", True
            continue
        if ep.turns >= max_turns:
            ep.stop, ep.truncated = "max_turns", True
            continue
        ins = tok(inserted_text(tok, ep.messages, list(new), schemas, end_strings), add_special_tokens=False)[
            "input_ids"
        ]
        if len(ep.tokens) + len(ins) >= max_tokens:  # no room for the env's answer and a reply
            ep.stop, ep.truncated = "max_tokens", True
            continue
        ep.messages.extend(dict(m) for m in new)
        chunks[e] = [ep.tokens[-1]] + list(ins)
        ep.tokens.extend(ins)
        ep.mask.extend([0] * len(ins))
        ep.logps.extend([0.0] * len(ins))
    return chunks


def _turn_length(ep: Episode) -> int:
    """Tokens of the last sampled turn (the trailing run of mask-1 tokens)."""
    n = 0
    for m in reversed(ep.mask):
        if m != 1:
            break
        n += 1
    return n


def _to_rollouts(
    episodes: list[Episode],
    p_ids: torch.Tensor,
    p_mask: torch.Tensor,
    prompts: list[str],
    G: int,
    pad_id: int,
    tok: Any,
) -> Rollouts:
    N = len(episodes)
    T = max(1, max(len(ep.tokens) for ep in episodes))
    ids = torch.full((N, T), pad_id, dtype=torch.long)
    mask = torch.zeros((N, T), dtype=torch.long)
    attn = torch.zeros((N, T), dtype=torch.long)
    logps = torch.zeros((N, T), dtype=torch.float32)
    for i, ep in enumerate(episodes):
        k = len(ep.tokens)
        ids[i, :k] = torch.tensor(ep.tokens, dtype=torch.long)
        mask[i, :k] = torch.tensor(ep.mask, dtype=torch.long)
        attn[i, :k] = 1
        logps[i, :k] = torch.tensor(ep.logps, dtype=torch.float32)
    texts = [tok.decode(ep.tokens, skip_special_tokens=False) for ep in episodes]
    B = p_ids.shape[0]
    return Rollouts(
        prompt_ids=p_ids.repeat_interleave(G, dim=0),
        prompt_mask=p_mask.repeat_interleave(G, dim=0),
        completion_ids=ids,
        completion_mask=mask,
        truncated=torch.tensor([ep.truncated for ep in episodes]),
        group=torch.arange(B).repeat_interleave(G),
        sampling_logps=logps,
        prompts=[p for p in prompts for _ in range(G)],
        completions=texts,
        rows=[ep.row for ep in episodes],
        attention_mask=attn,
        episodes=[ep.summary() for ep in episodes],
    )


# ---------------------------------------------------------------------------------------------
# wiring: the trainer's env, held-out evaluation
# ---------------------------------------------------------------------------------------------
def build_env(cfg: Any, engine: Any) -> Any:
    """The ``env`` of a composed config (None when the run has none: single-turn training, unchanged)."""
    from rlvr.core import registry
    from rlvr.core.config import plugin_params

    node = cfg.get("env") if hasattr(cfg, "get") else None
    if not node:
        return None
    name = node.get("name") if hasattr(node, "get") else None
    if not name:
        raise ConfigError("config node 'env' has no 'name'; pick an environment with env=<name> (see `rlvr plugins`)")
    env = registry.create("env", str(name), **plugin_params(node))
    if not callable(getattr(engine, "generate_episodes", None)):
        raise ConfigError(
            f"env={name} needs an engine that runs multi-turn episodes (generate_episodes); "
            f"{type(engine).__name__} does not: use engine=hf"
        )
    return env


def final_answer(episode: dict[str, Any]) -> str | None:
    """The episode's last assistant message when the environment ended it (None when a limit cut it)."""
    if episode.get("stop") != "env_done":
        return None
    said = [m for m in episode.get("messages", []) if m.get("role") == "assistant"]
    return str(said[-1]["content"]) if said else None


def counts(episode: dict[str, Any]) -> dict[str, Any]:
    """The part of an episode summary that :func:`episode_metrics` reads (small: gathered across processes)."""
    if "tool_used" in episode:  # already counts
        return episode
    used = any(i.get("tool_calls", 0) > i.get("tool_errors", 0) for i in episode["infos"])
    keys = ("turns", "tool_calls", "tool_errors", "truncated", "tool_seconds")
    return {**{k: episode[k] for k in keys}, "tool_used": used}


def episode_metrics(
    episodes: Rollouts | Sequence[dict[str, Any]], correct: Sequence[bool] | None = None, prefix: str = ""
) -> dict[str, float]:
    """Per-batch episode statistics: turns, tool calls, tool-error rate, tool-use rate (episodes with at least one
    call that ran without error), truncation, and accuracy when ``correct`` is given. ``episodes``: a Rollouts,
    or episode summaries (or their :func:`counts`)."""
    eps = [counts(e) for e in (episodes.episodes if isinstance(episodes, Rollouts) else episodes)]
    n = max(len(eps), 1)
    calls = sum(e["tool_calls"] for e in eps)
    errors = sum(e["tool_errors"] for e in eps)
    used = sum(e["tool_used"] for e in eps)
    out = {
        f"{prefix}turns/mean": sum(e["turns"] for e in eps) / n,
        f"{prefix}tool_calls/mean": calls / n,
        f"{prefix}tool_error_rate": errors / calls if calls else 0.0,
        f"{prefix}tool_use_rate": used / n,
        f"{prefix}episode_truncated": sum(bool(e["truncated"]) for e in eps) / n,
        f"{prefix}tool_seconds": sum(e["tool_seconds"] for e in eps),
    }
    if correct is not None:
        out[f"{prefix}accuracy"] = sum(bool(c) for c in correct) / n
    return out


def evaluate_env(
    policy: Policy, task: Any, env: Any, engine: Any, limit: int = 0, batch_prompts: int = 16, seed: int = 0
) -> dict[str, float]:
    """Greedy episodes on ``task.eval_rows``: ``eval/accuracy`` (the final answer, checked by the task's
    ``is_correct``; 0 for an episode a limit cut), ``eval/tool_use_rate``, ``eval/tool_error_rate``,
    ``eval/turns/mean`` ... (see :func:`episode_metrics`) and ``eval/greedy_accuracy`` (= accuracy)."""
    rows = task.eval_rows[:limit] if limit else task.eval_rows
    sums: dict[str, float] = {}
    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start : start + batch_prompts]
        seeds = [seed * 1_000_003 + start + i for i in range(len(chunk))]
        ro = engine.generate_episodes(policy, env, chunk, 1, seeds, greedy=True)
        ok = (  # a task without is_correct (env=openenv: the env's reward is the score) reports no accuracy
            None
            if task.is_correct is None
            else [(fa := final_answer(e)) is not None and task.is_correct(fa, r) for e, r in zip(ro.episodes, chunk)]
        )
        for k, v in episode_metrics(ro, ok, "eval/").items():
            sums[k] = sums.get(k, 0.0) + v * (len(chunk) if k != "eval/tool_seconds" else 1)
    out = {k: (v / max(len(rows), 1) if k != "eval/tool_seconds" else v) for k, v in sums.items()}
    if "eval/accuracy" in out:
        out["eval/greedy_accuracy"] = out["eval/accuracy"]
    out["eval/num_prompts"] = float(len(rows))
    return out


class ScriptedSampler:
    """A sampler that writes given assistant turns instead of sampling: for demonstrations (SFT priming on
    exactly the tokens an episode would hold) and tests. Episode e's turns are ``turns[e]``, each followed by the
    end-of-turn token ``end_id``; after its script an episode writes ``end_id``.

    Use with ``seeds = range(B)`` in :func:`run_episodes` (then episode b·G + j draws from seed b·1000 + j).
    Log-probs returned are the model's, so the Rollouts' ``sampling_logps`` are real."""

    def __init__(self, tokenizer: Any, turns: Sequence[Sequence[str]], num_generations: int, end_id: int) -> None:
        self.queues = [
            [t for turn in ep for t in tokenizer(turn, add_special_tokens=False)["input_ids"] + [end_id]]
            for ep in turns
        ]
        self.G, self.end_id = num_generations, end_id

    def __call__(
        self, logits: torch.Tensor, gens: Sequence[torch.Generator], greedy: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for g in gens:
            s = g.initial_seed()
            q = self.queues[(s // 1000) * self.G + s % 1000]
            out.append(q.pop(0) if q else self.end_id)
        tokens = torch.tensor(out, device=logits.device)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)


def demonstrations(
    policy: Policy,
    env: Any,
    rows: Sequence[dict[str, Any]],
    turns: Sequence[Sequence[str]],
    max_new_tokens: int = 256,
    max_prompt_length: int = 4096,
) -> Rollouts:
    """Episodes in which the assistant says ``turns[i]`` for ``rows[i]`` (the env answering for real): the exact
    tokens and masks an episode holds, for SFT priming (loss on ``completion_mask`` tokens)."""
    end = eos_token_ids(policy)
    tok = policy.tokenizer
    end_id = tok.eos_token_id if tok.eos_token_id in end else end[0]
    script = ScriptedSampler(tok, turns, 1, end_id)
    return run_episodes(policy, env, rows, 1, list(range(len(rows))), script, max_new_tokens, max_prompt_length)
