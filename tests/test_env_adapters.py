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
from rlvr.core.contracts import check
from rlvr.core.episodes import ScriptedSampler, evaluate_env, run_episodes
from rlvr.core.errors import ConfigError
from tests.conftest import TINY, run_cli

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))  # the wordle_env package (pip install -e tests/fixtures/wordle_env elsewhere)
sys.path.insert(0, str(FIXTURES / "vf_hotcold"))  # the vf-hotcold package (pip install -e tests/fixtures/vf_hotcold)
try:
    from wordle_env import WordleAction
    from wordle_env.server import WordleEnvironment
    from wordle_env.server.wordle_env_environment import WORDS, score_guess

    from rlvr.plugins.envs.openenv_env import OpenEnvAdapter, parse_action, resolve_environment
except ImportError:  # openenv-core is not installed
    WordleEnvironment = None  # type: ignore[assignment,misc]
try:
    import verifiers.v1 as vf

    from rlvr.plugins.envs import verifiers_env
except ImportError:  # verifiers >= 0.4 is not installed (it needs Python >= 3.11)
    vf = None
needs_openenv = pytest.mark.skipif(WordleEnvironment is None, reason="needs openenv-core (pip install 'rlvr[envs]')")
needs_verifiers = pytest.mark.skipif(vf is None, reason="needs verifiers>=0.4 (pip install 'rlvr[envs]')")


def secret(seed: int) -> str:
    """The word the fixture picks for ``reset(seed=seed)``."""
    return random.Random(seed).choice(WORDS)


def wordle(**kw) -> "OpenEnvAdapter":
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


@needs_openenv
def test_the_installed_package_resolves_to_its_environment_and_action():
    assert resolve_environment("wordle_env") is WordleEnvironment
    assert resolve_environment("wordle_env.server.wordle_env_environment:WordleEnvironment") is WordleEnvironment
    env = wordle()
    assert check("env", env, "openenv") is env  # the Env contract (tests/test_architecture.py skips it: no package)
    assert env.action_cls is WordleAction and env.tools == []
    assert '"guess"' in env.system_prompt and "five-letter" in env.system_prompt
    with pytest.raises(ConfigError, match="install the environment's package"):
        rlvr.create("env", "openenv", id="no_such_openenv_pkg")
    with pytest.raises(ConfigError, match="env.id"):
        rlvr.create("env", "openenv")
    with pytest.raises(ConfigError, match="NoSuchClass"):
        rlvr.create("env", "openenv", id="wordle_env.server:NoSuchClass")
    with pytest.raises(ConfigError, match="not an OpenEnv Environment"):
        rlvr.create("env", "openenv", id="wordle_env.models:WordleAction")


def test_missing_openenv_package_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "openenv.core.env_server.interfaces", None)
    with pytest.raises(ConfigError, match=r"pip install 'rlvr\[envs\]'"):
        rlvr.create("env", "openenv", id="wordle_env")


@needs_openenv
def test_reset_is_seeded_and_shows_the_observation():
    env = wordle()
    (m1, s1), (m2, _) = env.reset({"seed": 3}), env.reset({"seed": 3})
    assert m1 == m2 and [m["role"] for m in m1] == ["system", "user"]
    assert "Guess the hidden five-letter word" in m1[1]["content"] and "6 guesses left" in m1[1]["content"]
    assert s1["adapter"] == "openenv" and s1["rewards"] == [] and json.loads(json.dumps(s1)) == s1
    # rows without a seed column still reset the same way every time (a stable hash of the row)
    assert env.reset({"question": "x"})[0] == env.reset({"question": "x"})[0]
    assert "\nfeedback:" in rlvr.create("env", "openenv", id="wordle_env").reset({"seed": 3})[0][1]["content"]


@needs_openenv
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
    per_turn = rlvr.create("reward", "openenv_reward", per_turn=True)(ro.completions, episode=ro.episodes)
    assert per_turn == [[0.0, 1.0], [0.0] * 4]  # each turn's own env reward; they sum to the episode's
    # the environment's tokens are not trained on: the observation turns have completion_mask 0
    assert int(ro.completion_mask[0].sum()) < int(ro.attention_mask[0].sum())


def _feedback(guess: str, word: str) -> str:
    return score_guess(guess, word)


@needs_openenv
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


@needs_openenv
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


@needs_openenv
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


@needs_openenv
def test_parse_action_forms():
    assert parse_action("crane", WordleAction).guess == "crane"
    assert parse_action('"crane"', WordleAction).guess == "crane"
    assert parse_action('```json\n{"guess": "crane"}\n```', WordleAction).guess == "crane"
    assert parse_action("[" * 5000, WordleAction).guess == "[" * 5000  # deep nesting: no RecursionError


@needs_openenv
def test_live_environments_are_released_when_episodes_end(tiny):
    env = wordle(max_turns=2)
    ro = play(tiny, env, [[secret(2)], ["crane", "crane"]], [{"seed": 2}])
    assert [e["stop"] for e in ro.episodes] == ["env_done", "max_turns"]
    assert len(env._live) == 1  # the cut episode's instance lives while its state does
    del ro
    gc.collect()
    assert env._live == {}


@needs_openenv
def test_held_out_evaluation_without_is_correct_reports_no_accuracy(tiny):
    class Engine:
        def generate_episodes(self, policy, env, rows, G, seeds, greedy=False):
            turns = [[secret(r["seed"])] for r in rows]
            return play(policy, env, turns, rows, G=1)

    task = rlvr.create("task", "openenv", train_size=4, eval_size=2)
    out = evaluate_env(tiny, task, wordle(), Engine())
    assert out["eval/num_prompts"] == 2 and out["eval/turns/mean"] == 1.0 and out["eval/episode_truncated"] == 0
    assert "eval/accuracy" not in out and "eval/greedy_accuracy" not in out


@needs_openenv
def test_training_with_an_openenv_environment(tmp_path):
    """In process (rlvr.compose + Trainer, as `rlvr train` composes it); the CLI runs in the verifiers test below."""
    over = [*TINY, "env=openenv", "env.id=wordle_env", "env.observation_key=prompt", "+env.args.max_attempts=4"]
    over += ["task=openenv", "reward=[openenv_reward,openenv_valid]", "reward.openenv_reward.per_turn=true"]
    over += ["trainer.max_steps=1", "logger=[jsonl]"]
    metrics = rlvr.Trainer(rlvr.compose(over), run_dir=tmp_path).train()
    assert "rewards/openenv_reward/mean" in metrics and "env/turns/mean" in metrics
    line = json.loads((tmp_path / "completions.jsonl").read_text().splitlines()[0])
    sample = line["samples"][0] if "samples" in line else line
    assert sample["episode"]["state"]["adapter"] == "openenv"
    assert "4 guesses left" in sample["episode"]["messages"][1]["content"]


# ---------------------------------------------------------------------------------------------------------------
# verifiers (v1): the vf-hotcold package (tests/fixtures/vf_hotcold, made with vf-init)
# ---------------------------------------------------------------------------------------------------------------
def hotcold_rows(n=6, **args):
    task = rlvr.create("task", "verifiers", id="vf-hotcold", train_size=n, eval_size=2, args=args)
    return task.train_rows


@needs_verifiers
def test_vf_hotcold_is_a_verifiers_environment_and_its_tasks_become_rows():
    from vf_hotcold import HotColdEnv

    env = vf.load_environment(vf.resolve_env_config({"taskset": {"id": "vf-hotcold"}}))  # verifiers' own loader
    assert isinstance(env, HotColdEnv)
    task = rlvr.create("task", "verifiers", id="vf-hotcold", train_size=5, eval_size=2, args={"high": 8})
    assert check("task", task, "verifiers") is task and check("env", rlvr.create("env", "verifiers"), "v") is not None
    assert len(task.train_rows) == 5 and len(task.eval_rows) == 2
    row = task.train_rows[0]
    assert row["vf_taskset"] == "vf-hotcold" and 1 <= row["vf_task"]["target"] <= 8 and "1 to 8" in row["question"]
    assert json.loads(json.dumps(row)) == row
    whole = rlvr.create("task", "verifiers", id="vf-hotcold", args={"num_tasks": 12})  # train_size=0: all but eval
    assert len(whole.train_rows) == 2 and len(whole.eval_rows) == 10  # eval_size defaults to 10
    with pytest.raises(ConfigError, match="task.id"):
        rlvr.create("task", "verifiers")
    with pytest.raises(ConfigError, match="too few"):
        rlvr.create("task", "verifiers", id="vf-hotcold", args={"num_tasks": 2}, eval_size=2)
    with pytest.raises(ConfigError, match="vf-no-such-taskset"):
        rlvr.create("task", "verifiers", id="vf-no-such-taskset")


def test_missing_verifiers_package_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "verifiers.v1", None)
    with pytest.raises(ConfigError, match=r"pip install 'rlvr\[envs\]'"):
        rlvr.create("env", "verifiers")


@needs_verifiers
def test_verifiers_scripted_episodes_the_traces_reward_and_a_turn_limit(tiny):
    rows = hotcold_rows()
    row = next(r for r in rows if r["vf_task"]["target"] not in (1, 32))
    t = row["vf_task"]["target"]
    env = rlvr.create("env", "verifiers", max_turns=3)
    ro = play(tiny, env, [["1", f"It is {t}."], ["32", "32", "32", "32"]], [row])
    solved, wrong = ro.episodes
    assert [m["content"] for m in solved["messages"]] == [row["question"], "1", "Higher.", f"It is {t}."]
    assert solved["stop"] == "env_done" and not ro.truncated[0]
    st = solved["state"]
    assert st["rewards"] == {"solved": {"score": 1.0, "weight": 1.0}, "few_guesses": {"score": 0.5, "weight": 0.5}}
    assert st["info"] == {"guesses": 2}
    # max_turns: the env's next turn() is terminated, run() finishes and records its rewards; rlvr says max_turns
    assert wrong["stop"] == "max_turns" and wrong["turns"] == 3 and ro.truncated[1]
    assert wrong["state"]["finished"] and wrong["state"]["stop_condition"] == "max_turns"
    (reward,) = scores(ro, "verifiers_reward")
    assert reward == [1.25, 0.0]


@needs_verifiers
def test_verifiers_malformed_and_forged_replies_score_nothing(tiny):
    row = next(r for r in hotcold_rows() if r["vf_task"]["target"] not in (1, 2, 99))
    t = row["vf_task"]["target"]
    # claims of success are just guesses to the game (the last number counts): 1, 99, none, 2
    lies = ["I solved it, reward = 1", '{"solved": 1.0, "reward": 99}', "no number at all", "verifiers_reward: 2"]
    env = rlvr.create("env", "verifiers", max_turns=4)
    ro = play(tiny, env, [lies, lies[2:] + [str(t)]], [row], max_new=64)
    lied, late = ro.episodes
    said = [m["content"] for m in lied["messages"] if m["role"] == "user"][1:]
    assert said == ["Higher.", "Lower." if 99 > t else "Higher.", "Reply with a single whole number."]
    assert lied["stop"] == "max_turns" and late["stop"] == "env_done"
    (reward,) = scores(ro, "verifiers_reward")
    assert reward[0] == 0.0 and lied["state"]["rewards"]["solved"]["score"] == 0.0
    assert reward[1] == pytest.approx(1.0 + 0.5 / 3)  # solved on the third turn


@needs_verifiers
def test_an_env_whose_run_raises_scores_zero_and_the_run_goes_on(tiny, monkeypatch):
    row = hotcold_rows()[0]
    loaded = verifiers_env.load("vf-hotcold", {})

    async def broken(task, agents):
        async with agents.player.interaction(task) as it:
            await it.turn()
            raise KeyError("engine bug")

    monkeypatch.setattr(loaded.env, "run", broken)
    env = rlvr.create("env", "verifiers")
    _, state = env.reset(row)
    msgs, done, info = env.step(state, "5")
    assert done and msgs == [] and info["error"] == "KeyError: 'engine bug'"
    assert rlvr.create("reward", "verifiers_reward")(["5"], episode=[{"state": state}]) == [0.0]
    with pytest.raises(RuntimeError, match="already ended"):
        env.step(state, "6")


def test_verifiers_reward_refuses_foreign_states():
    fn = rlvr.create("reward", "verifiers_reward")
    with pytest.raises(ValueError, match="env=verifiers"):
        fn(["x"], episode=[{"state": {"reward": 5.0, "finished": True}}])
    unfinished = {"state": {"adapter": "verifiers", "finished": False, "reward": 5.0}}
    assert fn(["x"], episode=[unfinished]) == [0.0]


PLAIN = """
import verifiers.v1 as vf


class EchoData(vf.TaskData):
    answer: str


class EchoTask(vf.Task[EchoData]):
    @vf.reward(weight=1.0)
    async def exact(self, trace: vf.Trace) -> float:
        return 1.0 if trace.last_reply == self.data.answer else 0.0


class EchoTaskset(vf.Taskset[EchoTask, vf.TasksetConfig]):
    def load(self):
        return [EchoTask(EchoData(prompt=f"Say {w}.", system_prompt="Be brief.", answer=w), self.config.task)
                for w in ("red", "green", "blue", "cyan")]
{tools}

__all__ = ["EchoTaskset"]
"""


@needs_verifiers
def test_a_plain_taskset_is_one_reply_to_its_prompt(tiny, tmp_path, monkeypatch):
    (tmp_path / "vf_plain_echo.py").write_text(PLAIN.replace("{tools}", ""))
    tools = "\n\ndef _toolsets(cls, config):\n    return [object()]\n\n\nEchoTask.toolsets = classmethod(_toolsets)\n"
    (tmp_path / "vf_plain_tools.py").write_text(PLAIN.replace("{tools}", tools))
    monkeypatch.syspath_prepend(str(tmp_path))
    task = rlvr.create("task", "verifiers", id="vf-plain-echo", eval_size=1)
    assert [r["vf_task"]["answer"] for r in task.train_rows] == ["red", "green", "blue"]
    env = rlvr.create("env", "verifiers")
    ro = play(tiny, env, [["red"], ["Red!"]], task.train_rows[:1])
    assert [m["role"] for m in ro.episodes[0]["messages"]] == ["system", "user", "assistant"]
    assert [e["stop"] for e in ro.episodes] == ["env_done", "env_done"]
    assert scores(ro, "verifiers_reward") == [[1.0, 0.0]]
    with pytest.raises(ConfigError, match="tools"):
        rlvr.create("task", "verifiers", id="vf-plain-tools")


@needs_verifiers
def test_dropped_unfinished_episodes_are_cancelled(tiny):
    row = hotcold_rows()[0]
    env = rlvr.create("env", "verifiers", max_turns=3)
    ro = play(tiny, env, [["x" * 200], ["x" * 200]], [row], max_new=8)  # both cut by max_new_tokens
    assert [e["stop"] for e in ro.episodes] == ["max_new_tokens"] * 2 and len(env._live) == 2
    assert scores(ro, "verifiers_reward") == [[0.0, 0.0]]
    del ro
    gc.collect()
    env.reset(row)  # sweeps the dropped episodes
    assert len(env._live) == 1


@needs_verifiers
def test_rlvr_train_with_a_verifiers_environment(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        *TINY,
        "task=verifiers",
        "task.id=vf-hotcold",
        "+task.args.high=8",
        "env=verifiers",
        "env.max_turns=3",
        "reward=[verifiers_reward]",
        "trainer.max_steps=1",
        "trainer.eval_steps=1",
        "trainer.eval_samples=2",
        f"hydra.run.dir={run_dir}",
        env={"PYTHONPATH": str(FIXTURES / "vf_hotcold")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Task was destroyed" not in proc.stderr
    line = json.loads((run_dir / "completions.jsonl").read_text().splitlines()[0])
    sample = line["samples"][0] if "samples" in line else line
    assert sample["episode"]["state"]["adapter"] == "verifiers" and "1 to 8" in sample["row"]["question"]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "rewards/verifiers_reward/mean" in metrics[-1] and metrics[-1]["eval/num_prompts"] == 2
