"""Multi-turn episodes for engines that generate from token ids (``engine=vllm``): one request per active episode
per turn, token in and token out.

The episode rules are those of :mod:`rlvr.core.episodes` and come from the same helpers
(:func:`~rlvr.core.episodes.start_episodes`, :func:`~rlvr.core.episodes.end_turn`, the environment's turn and the
conversion to Rollouts), so both paths build the same trajectory from the same sampled tokens. Only the decoding
differs: instead of a KV cache held here, each turn is one call of ``generate_turn`` over every active episode,
whose requests carry the episode's whole token history

    first prompt tokens | sampled turn 1 | inserted env tokens | ... | sampled turn k-1 | inserted env tokens

and ask for at most ``min(max_new_tokens, env.max_tokens - completion tokens so far)`` new tokens. The engine
returns the sampled token ids (ending with an end-of-turn token unless a limit cut the turn) and their log-probs;
text is never decoded and re-tokenised. An engine with a prefix cache (vLLM's automatic prefix caching) does not
prefill the history again, only the tokens it has not seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlvr.core.episodes import EpisodeStats, _env_turn, _to_rollouts, end_turn, start_episodes
from rlvr.core.policy import Policy
from rlvr.core.rollout import Rollouts


@dataclass
class TurnRequest:
    """One active episode's request for its next assistant turn."""

    episode: int  # index in group order (episode b·G + j is row b's j-th)
    turn: int  # 0-based: the turn this request samples (< env.max_turns)
    token_ids: list[int]  # the first prompt + every completion token so far (sampled and inserted)
    max_tokens: int  # the most tokens this turn may sample (>= 1)


# generate_turn(requests) -> per request, in order: (sampled token ids, their log-probs)
TurnGenerator = Callable[[list[TurnRequest]], Sequence[tuple[Sequence[int], Sequence[float]]]]


def run_token_episodes(
    policy: Policy,
    env: Any,
    rows: Sequence[dict[str, Any]],
    num_generations: int,
    generate_turn: TurnGenerator,
    max_new_tokens: int,
    max_prompt_length: int,
    stats: EpisodeStats | None = None,
) -> Rollouts:
    """``len(rows)`` · G episodes in group order; returns their Rollouts (completion_mask 1 on sampled tokens, 0 on
    inserted env tokens; attention_mask 1 on both; ``sampling_logps`` the engine's, 0 on inserted tokens).

    ``generate_turn`` is called once per turn with every active episode's :class:`TurnRequest` and returns, per
    request, the token ids it sampled and their log-probs (NaN where the engine gave none). Tokens after the first
    end-of-turn token or beyond ``max_tokens`` are dropped (an engine that stops there, as vLLM does with
    ``stop_token_ids``, never returns them). Seeding is the engine's: it gets the episode and turn of each request.
    """
    G = num_generations
    stats = stats if stats is not None else EpisodeStats()
    tok = policy.tokenizer
    st = start_episodes(policy, env, rows, G, max_prompt_length, stats)
    episodes = st.episodes
    eos = set(st.eos)
    prompts = [st.prompt_tokens(b * G, G) for b in range(len(rows))]

    def decode(ids: list[int]) -> str:
        return str(tok.decode(ids, skip_special_tokens=False))

    active = list(range(len(episodes)))
    turn = 0
    while active:
        budgets = [min(max_new_tokens, st.max_tokens - len(episodes[e].tokens)) for e in active]
        requests = [
            TurnRequest(e, turn, prompts[e // G] + episodes[e].tokens, b) for e, b in zip(active, budgets) if b > 0
        ]
        t0 = time.perf_counter()
        outputs = list(generate_turn(requests)) if requests else []
        stats.generation += time.perf_counter() - t0
        if len(outputs) != len(requests):
            raise RuntimeError(f"the engine answered {len(outputs)} of {len(requests)} turn requests")
        sampled = {r.episode: out for r, out in zip(requests, outputs)}
        ended = []
        for e, budget in zip(active, budgets):
            ids, logps = sampled.get(e, ((), ()))
            ids = [int(t) for t in ids][: max(budget, 0)]
            stop = next((k + 1 for k, t in enumerate(ids) if t in eos), len(ids))
            ids, logps = ids[:stop], [float(x) for x in list(logps)[:stop]]
            logps += [float("nan")] * (len(ids) - len(logps))
            ep = episodes[e]
            ep.tokens.extend(ids)
            ep.mask.extend([1] * len(ids))
            ep.logps.extend(logps)
            if end_turn(ep, len(ids), bool(ids) and ids[-1] in eos, budget, max_new_tokens, decode):
                ended.append(e)
        t0 = time.perf_counter()
        _env_turn(episodes, ended, env, tok, st.schemas, st.end_strings, st.fmt, st.max_turns, st.max_tokens)
        stats.env += time.perf_counter() - t0
        active = [e for e in active if not episodes[e].stop]
        turn += 1
    return _to_rollouts(episodes, st.prompt_ids, st.prompt_mask, st.prompts, G, st.pad_id, tok)
