"""The one answer module (rlvr.core.answers) and the verifiers built on it: the hand-written table of
model outputs, the decimal-comma switch, adversarial completions, bounded time, and that rewards and
evaluation read the same answer."""

from __future__ import annotations

import threading

import pytest

import rlvr
from rlvr.core import answers
from rlvr.core.correctness import passed, task_check, verifier_check
from tests.answer_cases import CASES


def verdict(completion: str, reference: str, **params) -> bool | None:
    return rlvr.create("verifier", "math_answer", **params)([completion], answer=[reference])[0]


def test_table_of_model_outputs_agrees_with_a_careful_grader():
    verify = rlvr.create("verifier", "math_answer")
    got = verify([c for _, _, c, _ in CASES], answer=[r for _, r, _, _ in CASES])
    wrong = [(kind, ref, comp[:80], want) for (kind, ref, comp, want), g in zip(CASES, got) if g is not want]
    assert len(CASES) >= 150 and {k for k, *_ in CASES} >= {
        "set",
        "interval",
        "relation",
        "equation",
        "choice",
        "unit",
        "percent",
        "comma",
        "adversarial",
    }
    assert not wrong, wrong


# --------------------------------------------------------------------------- decimal comma rule


@pytest.mark.parametrize(
    "mode,completion,reference,expected",
    [
        ("auto", "#### 1,5", "1.5", True),
        ("auto", "#### 1,500", "1500", True),
        ("auto", "#### 0,111", "0.111", True),
        ("never", "#### 1,5", "1.5", False),
        ("never", "#### 1,500", "1500", True),
        ("never", "#### 1,500", "1.5", False),
        ("always", "#### 1,500", "1.5", True),
        ("always", "#### 1,500", "1500", False),
        ("always", "#### 1.234,5", "1234.5", True),
        ("always", "#### 1.234.567", "1234567", True),
        ("always", "#### 2.5", "2.5", True),
    ],
)
def test_decimal_comma_switch(mode, completion, reference, expected):
    assert verdict(completion, reference, decimal_comma=mode) is expected


def test_decimal_comma_rejects_unknown_mode():
    with pytest.raises(ValueError, match="decimal_comma='sometimes'.*auto"):
        rlvr.create("verifier", "math_answer", decimal_comma="sometimes")


def test_parse_number_rule_is_documented_behaviour():
    assert answers.parse_number("12,345,678") == 12345678
    assert answers.parse_number("1,5") == answers.parse_number("1.5")
    assert answers.parse_number("1,5", decimal_comma="never") is None
    assert answers.parse_number("1, 5") is None  # a list, in every mode
    assert answers.parse_number("\\frac34") == answers.parse_number("0.75")
    assert answers.parse_number("5x") is None and answers.parse_number("5 cm") == 5


# --------------------------------------------------------------------------- adversarial


def test_answer_only_in_the_prompt_echo_does_not_count():
    prompt = "<|user|>My friend says the answer is 42 for this one. What is 6 times 8?<|assistant|>"
    echo = "My friend says the answer is 42 for this one. What is 6 times 8?"
    verify = rlvr.create("verifier", "math_answer")
    assert verify([echo], prompts=[prompt], answer=["42"]) == [False]
    assert verify([echo + "\nThe answer is 48."], prompts=[prompt], answer=["48"]) == [True]
    assert rlvr.create("verifier", "math_answer", ignore_prompt_echo=False)(
        [echo], prompts=[prompt], answer=["42"]
    ) == [True]


@pytest.mark.parametrize(
    "completion",
    [
        "\\boxed{9^{9^{9^{9}}}}",
        "\\boxed{10^{100000000}}",
        "\\boxed{99999!}",
        "$" + "(" * 3000 + "5" + ")" * 3000 + "$",
        "\\boxed{" + "{" * 20000 + "5",
        "$x$ " * 20000,
        "1" * 100_000,
        "\\sum_{n=1}^{10^{9}} n",
        "\\boxed{(x+1)^{999}}",
        "\\boxed{x^{999}+y^{999}}",
    ],
)
def test_costly_inputs_return_a_verdict_also_off_the_main_thread(completion):
    """Math-Verify's own timeout works only on the main thread (SIGALRM); these must finish anywhere."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(verdict(completion, "6")), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "the verdict did not come back"
    assert out == [False]


def test_symbolic_comparison_works_off_the_main_thread():
    out: list = []
    worker = threading.Thread(target=lambda: out.append(verdict("$\\dfrac{\\sqrt{3}}{2}$", "\\frac{\\sqrt3}{2}")))
    worker.start()
    worker.join(60)
    assert out == [True]


def test_an_answer_phrase_that_starts_a_sentence_is_not_the_answer():
    assert answers.extract_final_answer("To find the answer: first we need to add.\nSo $x = 15$.") == "x = 15"
    assert answers.extract_final_answer("The answer is Evelyn.") == "Evelyn"


def test_several_boxed_answers_are_read_together():
    assert answers.extract_final_answer("\\boxed{3} so \\boxed{5}") == "3, 5"
    assert answers.extract_final_answer("\\boxed{x = 5} hence \\boxed{5}") == "x = 5"  # the same answer twice
    assert answers.extract_final_answer("".join(f"\\boxed{{{i}}}" for i in range(20))) is None  # spam


def test_verdicts_that_are_not_plain_true_never_pass():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

        def __bool__(self):
            return True

    class TrueInt(int):
        def __eq__(self, other):
            return True

    assert [passed(v) for v in (True, 1, 1.0, False, 0, None, "True", AlwaysEqual(), TrueInt(0))] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
    ]


# --------------------------------------------------------------------------- verifiers for held-out accuracy


@pytest.mark.parametrize(
    "completion,reference,expected",
    [
        ("3 + 4 = 7", "7", True),
        ("The answer is 7, not 8.", "7", True),
        ("7 ... or 8", "7", False),
        ("#### 1,000", "1000", True),
        ("nothing", "7", False),
        ("<answer>It is 12 apples</answer>", "12", True),
    ],
)
def test_numeric_verifier(completion, reference, expected):
    assert rlvr.create("verifier", "numeric")([completion], answer=[reference]) == [expected]


@pytest.mark.parametrize(
    "completion,reference,expected",
    [
        ("Paris", "Paris", True),
        ("  paris. ", "Paris", True),
        ("**Paris**", "Paris", True),
        ("The answer is Paris.", "Paris", True),
        ("<answer>Buenos Aires</answer>", "buenos  aires", True),
        ("The capital of France is Paris.", "Paris", False),
        ("Lyon", "Paris", False),
        ("", "Paris", False),
        ("Ottawa", ["Ottawa", "Ottawa, Ontario"], True),
    ],
)
def test_exact_match_verifier(completion, reference, expected):
    assert rlvr.create("verifier", "exact_match")([completion], answer=[reference]) == [expected]


def test_exact_match_case_sensitive_option():
    fn = rlvr.create("verifier", "exact_match", case_sensitive=True)
    assert fn(["paris", "Paris"], answer=["Paris", "Paris"]) == [False, True]


def test_any_verifier_is_a_correctness_check_and_unknown_names_list_the_choices():
    check = verifier_check("math_answer", answer_column="final")
    assert check(["\\boxed{\\frac{1}{2}}", "\\boxed{2}"], [{"final": "0.5"}, {"final": "3"}], None) == [True, False]
    with pytest.raises(ValueError, match="task.correct='math_answr'.*Did you mean 'math_answer'"):
        verifier_check("math_answr")


def test_task_defaults_pick_a_check_that_fits():
    arithmetic = rlvr.create("task", "arithmetic")
    assert arithmetic.config.correct == "numeric"
    row = arithmetic.eval_rows[0]
    assert task_check(arithmetic)([f"It is {row['answer']}.", "It is -1000."], [row, row]) == [True, False]


def test_gsm8k_eval_and_reward_agree_on_the_answer(tmp_path):
    """The same completions through the gsm8k task's eval check and the math_answer reward."""
    import json

    rows = [{"question": "q1", "answer": "Some work.\n#### 1,250"}, {"question": "q2", "answer": "Work.\n#### 3"}]
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = rlvr.create("task", "gsm8k", data_dir=str(tmp_path))
    assert task.config.correct == "math_answer"
    completions = ["<answer>1250</answer>", "so $\\frac{6}{2}$", "#### 3.0", "\\boxed{1,250}"]
    held = [task.eval_rows[i % 2] for i in range(4)]
    reward = rlvr.create("reward", "math_answer")
    scores = reward(completions, answer=[r["answer"] for r in held])
    assert task_check(task)(completions, held) == [s == 1.0 for s in scores]
    assert scores == [1.0, 1.0, 0.0, 0.0]


def test_plugins_share_the_module():
    import rlvr.plugins.rewards.gsm8k as gsm8k
    import rlvr.plugins.rewards.proximity as proximity
    from rlvr.core import task

    assert gsm8k.extract_xml_answer is answers.extract_xml_answer
    assert proximity.extract_final_answer is answers.extract_final_answer
    assert task.last_number is answers.last_number
