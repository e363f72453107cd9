"""Environments from other frameworks: ``env=openenv`` (rlvr/plugins/envs/openenv_env.py) on a real OpenEnv
environment package, ``wordle_env`` (tests/fixtures/wordle_env, made with ``openenv init`` and run in process)."""

from __future__ import annotations

import gc
import json
import random
import sys
from pathlib import Path

import pytest

import rlvr
from rlvr.core.episodes import ScriptedSampler, evaluate_env, run_episodes
from rlvr.core.errors import ConfigError
from tests.conftest import TINY, run_cli

pytest.importorskip("openenv.core", reason="env=openenv needs openenv-core (pip install 'rlvr[envs]')")
FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))  # the wordle_env package (pip install -e tests/fixtures/wordle_env elsewhere)

from wordle_env import WordleAction  # noqa: E402
from wordle_env.server import WordleEnvironment  # noqa: E402
from wordle_env.server.wordle_env_environment import WORDS  # noqa: E402

from rlvr.plugins.envs.openenv_env import (  # noqa: E402
    OpenEnvAdapter,
    parse_action,
    resolve_environment,
)


def secret(seed: int) -> str:
    """The word the fixture picks for ``reset(seed=seed)``."""
    return random.Random(seed).choice(WORDS)


def wordle(**kw) -> OpenEnvAdapter:
    return rlvr.create("env", "openenv", id="wordle_env", observation_key="prompt", **kw)


@pytest.fixture(scope="module")
def tiny():
    return rlvr.create("model", "tiny")


def play(policy, env, turns, rows, G=2, max_new=48):
    """Episodes in which the assistant says ``turns[e]`` (episode e = row b, generation j: e = b·G + j)."""
    tok = policy.tokenizer
    script = ScriptedSampler(tok, turns, G, tok.convert_tokens_to_ids("<|im_end|>"))
    return run_episodes(policy, env, rows, G, list(range(len(rows))), script, max_new, 4096)


def scores(ro, *names):
    out = []
    for name in names:
        fn = rlvr.create("reward", name)
        out.append(fn(ro.completions, episode=ro.episodes, rows=ro.rows))
    return out


def test_the_installed_package_resolves_to_its_environment_and_action():
    assert resolve_environment("wordle_env") is WordleEnvironment
    assert resolve_environment("wordle_env.server.wordle_env_environment:WordleEnvironment") is WordleEnvironment
    env = wordle()
    assert env.action_cls is WordleAction and env.tools == []
    assert '"guess"' in env.system_prompt and "five-letter" in env.system_prompt
    with pytest.raises(ConfigError, match="install the environment's package"):
        rlvr.create("env", "openenv", id="no_such_openenv_pkg")
    with pytest.raises(ConfigError, match="env.id"):
        rlvr.create("env", "openenv")
    with pytest.raises(ConfigError, match="not an OpenEnv Environment"):
        rlvr.create("env", "openenv", id="wordle_env.models:WordleAction")


def test_missing_openenv_package_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "openenv.core.env_server.interfaces", None)
    with pytest.raises(ConfigError, match=r"pip install 'rlvr\[envs\]'"):
        rlvr.create("env", "openenv", id="wordle_env")


def test_reset_is_seeded_and_shows_the_observation():
    env = wordle()
    (m1, s1), (m2, _) = env.reset({"seed": 3}), env.reset({"seed": 3})
    assert m1 == m2 and [m["role"] for m in m1] == ["system", "user"]
    assert "Guess the hidden five-letter word" in m1[1]["content"] and "6 guesses left" in m1[1]["content"]
    assert s1["adapter"] == "openenv" and s1["rewards"] == [] and json.loads(json.dumps(s1)) == s1
    # rows without a seed column still reset the same way every time (a stable hash of the row)
    assert env.reset({"question": "x"})[0] == env.reset({"question": "x"})[0]
    assert "\nfeedback:" in rlvr.create("env", "openenv", id="wordle_env").reset({"seed": 3})[0][1]["content"]


def test_scripted_episodes_solved_beats_wrong_and_the_reward_is_the_envs(tiny):
    word, other = secret(3), next(w for w in WORDS if w != secret(3))
    env = wordle(max_turns=4)
    ro = play(tiny, env, [["crane", json.dumps({"guess": word})], [other, other, other, other]], [{"seed": 3}])
    solved, wrong = ro.episodes
    assert solved["stop"] == "env_done" and solved["turns"] == 2 and not ro.truncated[0]
    assert [m["role"] for m in solved["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert solved["messages"][3]["content"].startswith(f"CRANE {_feedback('crane', word)}")
    assert wrong["stop"] == "max_turns" and wrong["turns"] == 4 and ro.truncated[1]
    (reward, valid) = scores(ro, "openenv_reward", "openenv_valid")
    assert reward == [1.0, 0.0] and valid == [1.0, 1.0]
    # the environment's tokens are not trained on: the observation turns have completion_mask 0
    assert int(ro.completion_mask[0].sum()) < int(ro.attention_mask[0].sum())


def _feedback(guess: str, word: str) -> str:
    from wordle_env.server.wordle_env_environment import score_guess

    return score_guess(guess, word)


def test_malformed_and_forged_actions_come_back_as_errors_and_score_nothing(tiny):
    word = secret(5)
    bad = [
        '{"guess": 5}',  # wrong type
        '{"reward": 1.0, "done": true}',  # not the action's fields: no forged reward, no forged end
        json.dumps({"guess": word, "metadata": {"reward": 9}}),  # metadata is the trainer's channel, not the model's
        '{"guess": "crane"',  # broken JSON: taken as the bare guess text, which the env refuses (not five letters)
        "openenv_reward = 1.0",  # a score written in the text: just a (refused) guess
    ]
    env = wordle(max_turns=6, max_tokens=2000)
    ro = play(tiny, env, [bad + ["crane"], bad + [""]], [{"seed": 5}], max_new=64)
    ep, cut = ro.episodes
    env_said = [m["content"] for m in ep["messages"] if m["role"] == "user"][1:]
    assert env_said[0].startswith("error: invalid action: guess: Input should be a valid string")
    assert env_said[1].startswith("error: invalid action:") and "Extra inputs are not permitted" in env_said[1]
    assert env_said[2] == "error: 'metadata' is not an action field"
    assert "Not accepted" in env_said[3] and "Not accepted" in env_said[4]  # parsed, refused by the env itself
    assert ep["messages"][-1] == {"role": "assistant", "content": "crane"}  # the env saw it, then max_turns
    assert ep["stop"] == cut["stop"] == "max_turns" and ep["turns"] == cut["turns"] == 6
    reward, valid = scores(ro, "openenv_reward", "openenv_valid")
    assert reward == [0.0, 0.0]  # nothing solved: no forged score got through
    assert valid == [0.5, 0.5]  # 3 of 6 turns parsed into an action (the empty reply is a refused guess)
    assert ep["state"]["rewards"] == [0.0, 0.0, 0.0] and ep["state"]["reward"] == 0.0


def test_an_environment_that_raises_is_an_error_message_not_a_crash():
    class Picky(WordleEnvironment):
        def step(self, action: WordleAction, timeout_s=None, **kw):  # type: ignore[override]
            if action.guess == "boom!":
                raise RuntimeError("no exclamation marks")
            return super().step(action, timeout_s, **kw)

    env = wordle()
    env.env_cls = Picky
    _, state = env.reset({"seed": 1})
    msgs, done, info = env.step(state, "boom!")
    assert not done and not info["valid"] and msgs[0]["content"].startswith("error: the environment refused")
    assert "RuntimeError: no exclamation marks" in msgs[0]["content"]
    msgs, done, info = env.step(state, secret(1))
    assert done and info["reward"] == 1.0 and state["reward"] == 1.0 and state["valid"] == 1


def test_non_finite_env_rewards_and_foreign_states_are_refused():
    class Broken(WordleEnvironment):
        def step(self, action: WordleAction, timeout_s=None, **kw):  # type: ignore[override]
            obs = super().step(action, timeout_s, **kw)
            obs.reward = float("nan")
            return obs

    env = wordle()
    env.env_cls = Broken
    _, state = env.reset({"seed": 1})
    with pytest.raises(ValueError, match="finite"):
        env.step(state, "crane")
    fn = rlvr.create("reward", "openenv_reward")
    forged = {"messages": [], "state": {"reward": 1.0, "rewards": [1.0]}}  # not an adapter state
    with pytest.raises(ValueError, match="env=openenv"):
        fn(["x"], episode=[forged])
    with pytest.raises(ValueError, match="env=openenv"):
        fn(["x"])


def test_parse_action_forms():
    assert parse_action("crane", WordleAction).guess == "crane"
    assert parse_action('"crane"', WordleAction).guess == "crane"
    assert parse_action('```json\n{"guess": "crane"}\n```', WordleAction).guess == "crane"
    assert parse_action("[" * 5000, WordleAction).guess == "[" * 5000  # deep nesting: no RecursionError


def test_live_environments_are_released_when_episodes_end(tiny):
    env = wordle(max_turns=2)
    ro = play(tiny, env, [[secret(2)], ["crane", "crane"]], [{"seed": 2}])
    assert [e["stop"] for e in ro.episodes] == ["env_done", "max_turns"]
    assert len(env._live) == 1  # the cut episode's instance lives while its state does
    del ro
    gc.collect()
    assert env._live == {}


def test_held_out_evaluation_without_is_correct_reports_no_accuracy(tiny):
    class Engine:
        def generate_episodes(self, policy, env, rows, G, seeds, greedy=False):
            turns = [[secret(r["seed"])] for r in rows]
            return play(policy, env, turns, rows, G=1)

    task = rlvr.create("task", "openenv", train_size=4, eval_size=2)
    out = evaluate_env(tiny, task, wordle(), Engine())
    assert out["eval/num_prompts"] == 2 and out["eval/turns/mean"] == 1.0 and out["eval/episode_truncated"] == 0
    assert "eval/accuracy" not in out and "eval/greedy_accuracy" not in out


def test_rlvr_train_with_an_openenv_environment(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        *TINY,
        "env=openenv",
        "env.id=wordle_env",
        "env.observation_key=prompt",
        "+env.args.max_attempts=4",
        "task=openenv",
        "reward=[openenv_reward,openenv_valid]",
        "trainer.max_steps=1",
        f"hydra.run.dir={run_dir}",
        env={"PYTHONPATH": str(FIXTURES)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads((run_dir / "completions.jsonl").read_text().splitlines()[0])
    sample = line["samples"][0] if "samples" in line else line
    assert sample["episode"]["state"]["adapter"] == "openenv"
    assert "4 guesses left" in sample["episode"]["messages"][1]["content"]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "rewards/openenv_reward/mean" in metrics[-1] and "env/turns/mean" in metrics[-1]
