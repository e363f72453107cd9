"""Built-in rewards on real text: GSM8K reference solutions, hand-written completions for every
format rule and proximity band, Math-Verify answers, and rubric criteria one by one."""

from __future__ import annotations

import json
import re

import pytest

import rlvr
from rlvr.core.answers import extract_final_answer, parse_number
from tests.conftest import GSM8K_DIR

# --------------------------------------------------------------------------- registration


def test_builtins_are_registered():
    rewards, verifiers = set(rlvr.names("reward")), set(rlvr.names("verifier"))
    assert {
        "gsm8k_correct",
        "gsm8k_int",
        "gsm8k_strict_format",
        "gsm8k_soft_format",
        "gsm8k_xmlcount",
        "format_exact",
        "format_approx",
        "proximity",
        "math_answer",
        "rubric",
        "rubric_email",
        "llm_judge",
        "code_exec",
    } <= rewards
    assert {"math_answer", "code_exec"} <= verifiers


def test_configs_compose_with_hydra():
    from rlvr.core.config import plugin_params

    cfg = rlvr.compose(["reward=[proximity,gsm8k_correct,rubric_email,math_answer]", "reward.proximity.exact=6.0"])
    assert cfg.reward.proximity.exact == 6.0 and cfg.reward.gsm8k_correct.score == 2.0
    assert cfg.reward.math_answer.rel_tol == 0.0
    fn = rlvr.create("reward", "proximity", **plugin_params(cfg.reward.proximity))
    assert fn(["<answer>7</answer>"], answer=["7"]) == [6.0]
    email = rlvr.create("reward", "rubric_email", **plugin_params(cfg.reward.rubric_email))
    assert len(email([EMAIL_REPLY], sender_name=["Dana Smith"])) == 1


def test_bad_parameter_names_the_plugin():
    with pytest.raises(TypeError, match="proximity.*'exactt'.*did you mean 'exact'"):
        rlvr.create("reward", "proximity", exactt=1.0)


# --------------------------------------------------------------------------- GSM8K suite


def gsm(reasoning: str, answer: str) -> str:
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


def score1(name: str, completion: str, **columns) -> float:
    fn = rlvr.create("reward", name)
    return fn([completion], prompts=["q"], **{k: [v] for k, v in columns.items()})[0]


@pytest.mark.parametrize(
    "completion,expected",
    [
        (gsm("2 + 2 = 4", "4"), 2.0),
        (gsm("step one\nstep two\nstep three", "4"), 2.0),  # multi-line reasoning
        ("<answer>4</answer>", 2.0),  # format is not this reward's business
        (gsm("2 + 2", "5"), 0.0),
        (gsm("2 + 2", "four"), 0.0),
        ("The answer is 4", 0.0),  # no <answer> tag
    ],
)
def test_gsm8k_correct(completion, expected):
    assert score1("gsm8k_correct", completion, answer="4") == expected


def test_gsm8k_correct_accepts_full_solution_and_final_number():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"
    assert score1("gsm8k_correct", gsm("...", "72"), answer=solution) == 2.0
    assert score1("gsm8k_correct", gsm("...", "72"), answer="72") == 2.0
    assert score1("gsm8k_correct", gsm("...", "1,000"), answer="1000") == 2.0  # normalize (default)
    strict = rlvr.create("reward", "gsm8k_correct", normalize=False)
    assert strict([gsm("...", "1,000")], answer=["1000"]) == [0.0]
    assert rlvr.create("reward", "gsm8k_correct")(["x"], answer=[None]) == [None]  # no reference: not applicable


@pytest.mark.parametrize("inner,expected", [("42", 0.5), ("-3", 0.5), ("3.5", 0.0), ("forty", 0.0), ("$42", 0.0)])
def test_gsm8k_int(inner, expected):
    assert score1("gsm8k_int", gsm("r", inner)) == expected
    assert score1("gsm8k_int", "no tags 42") == 0.0


@pytest.mark.parametrize(
    "completion,expected",
    [
        (gsm("one line", "4"), 0.5),
        (gsm("line one\nline two\n\nline four", "4"), 0.5),  # multi-line reasoning matches (the copied regex does not)
        (gsm("r", "4").rstrip("\n"), 0.5),  # no final newline
        ("<reasoning>r</reasoning>\n<answer>\n4\n</answer>\n", 0.0),  # newlines inside the tags missing
        ("<reasoning>\nr\n</reasoning>\n\n<answer>\n4\n</answer>\n", 0.0),  # blank line between blocks
        ("Sure!\n" + gsm("r", "4"), 0.0),  # text before
        (gsm("r", "4") + "extra", 0.0),  # text after
        ("<reasoning>\nr\n</reasoning>\n<answer>\n4\n</answer>\n<answer>\n5\n</answer>\n", 0.0),  # a second answer
    ],
)
def test_gsm8k_strict_format(completion, expected):
    assert score1("gsm8k_strict_format", completion) == expected


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("<reasoning>r</reasoning><answer>4</answer>", 0.5),
        ("<reasoning>a\nb\nc</reasoning>\n\n  <answer>\n4\n</answer>", 0.5),  # multi-line, any whitespace
        ("  <reasoning>r</reasoning> <answer>4</answer> trailing text", 0.5),
        ("<answer>4</answer><reasoning>r</reasoning>", 0.0),  # wrong order
        ("<reasoning>r</reasoning> text between <answer>4</answer>", 0.0),
        ("<reasoning>r<answer>4</answer>", 0.0),  # reasoning never closed
        ("just 4", 0.0),
    ],
)
def test_gsm8k_soft_format(completion, expected):
    assert score1("gsm8k_soft_format", completion) == expected


@pytest.mark.parametrize(
    "completion,expected",
    [
        (gsm("r", "4"), 0.5),
        ("<reasoning>\nr\n</reasoning>\n<answer>\n4\n</answer>\nPS: hi", 0.5 - 0.001 * len("PS: hi")),
        ("<reasoning>\nr\n</reasoning>\n<answer>\n4", 0.375),  # answer never closed
        ("<reasoning><reasoning>\nr\n</reasoning>\n<answer>\n4\n</answer>", 0.375),  # a tag twice
        ("<answer>4</answer>", 0.25),
        ("nothing", 0.0),
    ],
)
def test_gsm8k_xmlcount(completion, expected):
    assert score1("gsm8k_xmlcount", completion) == pytest.approx(expected)


# --------------------------------------------------------------------------- GSM8K reference solutions


def _gsm8k_rows() -> list[dict]:
    if not GSM8K_DIR.is_dir():
        pytest.skip(f"GSM8K data not found at {GSM8K_DIR} (expected ../shared/data/gsm8k beside the repository)")
    rows = []
    for split in ("train", "test"):
        path = GSM8K_DIR / f"{split}.jsonl"
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        pytest.skip(f"no GSM8K jsonl files in {GSM8K_DIR}")
    return rows


def _final(solution: str) -> str:
    return solution.rsplit("####", 1)[1].strip()


def _perturb(final: str, how: int) -> str:
    n = parse_number(final)
    assert n is not None, final
    return str([n + 1, n - 1, n * 10 + 7][how])


def test_gsm8k_references_verify_against_themselves():
    rows = _gsm8k_rows()
    solutions = [r["answer"] for r in rows]
    finals = [_final(s) for s in solutions]
    verify = rlvr.create("verifier", "math_answer")
    assert all(verify(solutions, answer=solutions)), "a #### answer failed against its own solution"
    assert all(verify(solutions, answer=finals)), "a #### answer failed against its final number"
    correct = rlvr.create("reward", "gsm8k_correct")
    formatted = [gsm(s.rsplit("####", 1)[0].strip(), f) for s, f in zip(solutions, finals)]
    assert set(correct(formatted, answer=solutions)) == {2.0}
    assert set(correct(formatted, answer=finals)) == {2.0}
    # the reference reasoning is multi-line: both format rewards must still match it
    assert set(rlvr.create("reward", "gsm8k_strict_format")(formatted)) == {0.5}
    assert set(rlvr.create("reward", "gsm8k_soft_format")(formatted)) == {0.5}
    assert set(rlvr.create("reward", "gsm8k_xmlcount")(formatted)) == {0.5}
    proximity = rlvr.create("reward", "proximity")
    assert set(proximity(formatted, answer=solutions)) == {5.0}


@pytest.mark.parametrize("how", [0, 1, 2])
def test_gsm8k_perturbed_answers_all_fail(how):
    rows = _gsm8k_rows()
    solutions = [r["answer"] for r in rows]
    wrong = [_perturb(_final(s), how) for s in solutions]
    completions = [s.rsplit("####", 1)[0] + "#### " + w for s, w in zip(solutions, wrong)]
    verify = rlvr.create("verifier", "math_answer")
    verdicts = verify(completions, answer=solutions)
    assert not any(verdicts), [c for c, v in zip(completions, verdicts) if v][:3]
    correct = rlvr.create("reward", "gsm8k_correct")
    formatted = [gsm("r", w) for w in wrong]
    assert set(correct(formatted, answer=solutions)) == {0.0}


def test_gsm8k_near_misses_score_proximity_bands():
    rows = [r for r in _gsm8k_rows() if abs(parse_number(_final(r["answer"]))) >= 100][:300]
    proximity = rlvr.create("reward", "proximity")
    close = [gsm("r", str(round(parse_number(_final(r["answer"])) * 105 / 100, 2))) for r in rows]
    near = [gsm("r", str(round(parse_number(_final(r["answer"])) * 115 / 100, 2))) for r in rows]
    answers = [r["answer"] for r in rows]
    assert set(proximity(close, answer=answers)) == {2.0}
    assert set(proximity(near, answer=answers)) == {1.5}


# --------------------------------------------------------------------------- math_answer


@pytest.mark.parametrize(
    "completion",
    [
        "So the total is \\boxed{18}.",
        "<answer>18</answer>",
        "<SOLUTION>18</SOLUTION>",
        "She makes 9 * 2 = 18 dollars.\n#### 18",
        "Therefore, the answer is $18.",
        "The final answer is: 18 dollars",
        "Q: how much?\nA: 18",
        "9 eggs at $2 make 18",  # last number
        "\\boxed{18.0}",
        "<answer>$18.00</answer>",
        "<answer>18 dollars</answer>",
        "#### 1.8e1",
    ],
)
def test_math_answer_extraction_formats(completion):
    assert rlvr.create("verifier", "math_answer")([completion], answer=["18"]) == [True]


@pytest.mark.parametrize(
    "completion,reference,expected",
    [
        ("\\boxed{1,234}", "1234", True),
        ("\\boxed{\\frac{3}{4}}", "0.75", True),
        ("<answer>3/4</answer>", "\\frac{3}{4}", True),
        ("\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", True),  # Math-Verify
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{3}}{2}", False),
        ("\\boxed{(x+1)^2}", "x^2+2x+1", True),
        ("\\boxed{\\pi}", "3.14159", False),
        ("The answer is 25%", "25", True),
        ("#### -7", "-7", True),
        ("#### 7", "-7", False),
        ("\\boxed{x = 5}", "5", True),
        ("no numbers here", "5", False),
    ],
)
def test_math_answer_normalises_and_compares(completion, reference, expected):
    assert rlvr.create("verifier", "math_answer")([completion], answer=[reference]) == [expected]


def test_math_answer_tolerance_and_reward_scores():
    assert rlvr.create("verifier", "math_answer")(["#### 3.1416"], answer=["3.14159"]) == [False]
    assert rlvr.create("verifier", "math_answer", abs_tol=1e-3)(["#### 3.1416"], answer=["3.14159"]) == [True]
    assert rlvr.create("verifier", "math_answer", rel_tol=0.01)(["#### 101"], answer=["100"]) == [True]
    reward = rlvr.create("reward", "math_answer", pass_score=2.0, fail_score=-1.0)
    assert reward(["#### 4", "#### 5", "#### 4"], answer=["4", "4", None]) == [2.0, -1.0, None]


def test_math_answer_without_last_number_fallback():
    verify = rlvr.create("verifier", "math_answer", last_number=False)
    assert verify(["I computed 18"], answer=["18"]) == [False]


def test_math_answer_names_missing_column():
    with pytest.raises(KeyError, match="'answer'"):
        rlvr.create("verifier", "math_answer")(["1"], solution=["1"])


def test_extract_final_answer_priorities():
    assert extract_final_answer("<answer>\\boxed{7}</answer> and 9") == "7"
    assert extract_final_answer("\\boxed{\\frac{1}{\\sqrt{2}}}") == "\\frac{1}{\\sqrt{2}}"
    assert extract_final_answer("first <answer>1</answer> then <answer>2</answer>") == "2"
    assert extract_final_answer("words only", last_number=False) is None


# --------------------------------------------------------------------------- format (custom template)


def tmpl(reasoning: str = "think", solution: str = "42") -> str:
    return f"<start_working_out>{reasoning}<end_working_out><SOLUTION>{solution}</SOLUTION>"


@pytest.mark.parametrize(
    "completion,expected",
    [
        (tmpl(), 3.0),
        ("\n  " + tmpl("line 1\nline 2") + "\n\n", 3.0),  # surrounding whitespace, multi-line reasoning
        (tmpl().replace("<end_working_out>", "<end_working_out>\nso:\n"), 3.0),  # text between reasoning and solution
        ("Hi! " + tmpl(), 0.0),  # text before
        (tmpl() + " bye", 0.0),  # text after
        (tmpl(solution="  "), 0.0),  # empty solution
        (tmpl().replace("<start_working_out>", ""), 0.0),
        (tmpl().replace("</SOLUTION>", ""), 0.0),
    ],
)
def test_format_exact(completion, expected):
    assert score1("format_exact", completion) == expected


def test_format_exact_reasoning_start_in_prompt_and_custom_tags():
    fn = rlvr.create("reward", "format_exact", reasoning_start_in_prompt=True)
    assert fn([tmpl().replace("<start_working_out>", ""), tmpl()]) == [3.0, 3.0]
    custom = rlvr.create(
        "reward",
        "format_exact",
        reasoning_start="<think>",
        reasoning_end="</think>",
        solution_start="<answer>",
        solution_end="</answer>",
        score=1.0,
    )
    assert custom(["<think>hm</think><answer>1</answer>", tmpl()]) == [1.0, 0.0]


@pytest.mark.parametrize(
    "completion,expected",
    [
        (tmpl(), 2.0),  # 4 x +0.5
        (tmpl().replace("<start_working_out>", ""), 0.5),  # 3 x +0.5, 1 x -1.0
        (tmpl() + "<SOLUTION>", 0.5),  # <SOLUTION> twice: 3 x +0.5, 1 x -1.0
        ("no tags", -4.0),
        (tmpl() + tmpl(), -4.0),  # every tag twice
    ],
)
def test_format_approx(completion, expected):
    assert score1("format_approx", completion) == pytest.approx(expected)


def test_format_approx_skips_reasoning_start_when_in_prompt():
    fn = rlvr.create("reward", "format_approx", reasoning_start_in_prompt=True)
    assert fn([tmpl().replace("<start_working_out>", "")]) == [1.5]


# --------------------------------------------------------------------------- proximity


@pytest.mark.parametrize(
    "completion,band",
    [
        ("<SOLUTION>100</SOLUTION>", 5.0),  # exact
        ("<SOLUTION> 100 </SOLUTION>", 3.5),  # equal after stripping spaces
        ("<SOLUTION>$100.00</SOLUTION>", 3.5),  # ... currency and trailing zeros
        ("<SOLUTION>1e2</SOLUTION>", 3.5),
        ("<SOLUTION>109</SOLUTION>", 2.0),  # within 10 %
        ("<SOLUTION>91</SOLUTION>", 2.0),
        ("<SOLUTION>110</SOLUTION>", 2.0),  # on the edge
        ("<SOLUTION>115</SOLUTION>", 1.5),  # within 20 %
        ("<SOLUTION>80</SOLUTION>", 1.5),
        ("<SOLUTION>121</SOLUTION>", -2.5),  # any other number
        ("<SOLUTION>-100</SOLUTION>", -2.5),
        ("<SOLUTION>one hundred</SOLUTION>", -4.5),  # not a number
        ("I think it is about 100", -2.0),  # no answer in the tags
    ],
)
def test_proximity_bands_tag_mode(completion, band):
    fn = rlvr.create("reward", "proximity", answer_start="<SOLUTION>", answer_end="</SOLUTION>")
    assert fn([completion], answer=["100"]) == [band]


@pytest.mark.parametrize(
    "completion,band",
    [
        ("\\boxed{100}", 5.0),
        ("<answer>100.0</answer>", 3.5),
        ("#### 105", 2.0),
        ("The answer is 85", 1.5),
        ("<answer>7</answer>", -2.5),
        ("<answer>n/a</answer>", -4.5),
        ("no answer given", -2.0),
        ("I got 100", -2.0),
    ],
)
def test_proximity_bands_generic_extraction(completion, band):
    assert rlvr.create("reward", "proximity")([completion], answer=["100"]) == [band]


def test_proximity_all_configurable_and_zero_reference():
    fn = rlvr.create(
        "reward",
        "proximity",
        exact=1.0,
        stripped=0.9,
        within_close=0.5,
        within_near=0.25,
        wrong=-1.0,
        unparseable=-3.0,
        no_answer=-2.0,
        close_ratio=0.05,
        near_ratio=0.5,
    )
    outs = fn(["#### 100", "#### 100.0", "#### 104", "#### 140", "#### 200", "#### x", "none"], answer=["100"] * 7)
    assert outs == [1.0, 0.9, 0.5, 0.25, -1.0, -3.0, -2.0]
    assert rlvr.create("reward", "proximity")(["#### 1", "#### 0"], answer=["0", "0"]) == [-2.5, 5.0]
    assert rlvr.create("reward", "proximity", last_number=True)(["I got 100"], answer=["100"]) == [5.0]


# --------------------------------------------------------------------------- rubric

EMAIL_REPLY = """Hi Dana,

Thanks so much for getting in touch about the delayed order. I have checked with the warehouse and it ships tomorrow.

Best regards,
Sam Lee
Acme Support
+1 (555) 123-4567
sam.lee@acme.example
12 Market Street, Springfield
"""

ROBOT_REPLY = "As an AI language model, I am unable to help with orders. " + "Please wait. " * 80


def rubric(*criteria, **kw):
    return rlvr.create("reward", "rubric", criteria=[dict(c) for c in criteria], **kw)


def test_rubric_contains_any_all_negate_case():
    assert rubric({"kind": "contains", "keywords": ["thanks", "grateful"], "weight": 2.0})(["Thanks!", "nope"]) == [
        2.0,
        0.0,
    ]
    assert rubric({"kind": "contains", "keywords": ["thanks", "order"], "mode": "all"})(
        ["thanks for the order", "thanks"]
    ) == [1.0, 0.0]
    assert rubric({"kind": "contains", "keywords": ["as an ai"], "negate": True, "weight": 0.0, "fail": -3.0})(
        ["Sure thing", "As an AI, no"]
    ) == [0.0, -3.0]
    assert rubric({"kind": "contains", "keywords": ["Thanks"], "case_sensitive": True})(["thanks", "Thanks"]) == [
        0.0,
        1.0,
    ]


def test_rubric_exact_match_with_reference_column():
    fn = rubric({"kind": "exact", "column": "expected", "weight": 1.5})
    assert fn(["  Paris\n", "paris", "Lyon", "x"], expected=["Paris", "Paris", "Paris", None]) == [1.5, 1.5, 0.0, None]
    with pytest.raises(KeyError, match="'expected'"):
        fn(["Paris"], answer=["Paris"])


def test_rubric_length_limits_and_penalty():
    fn = rubric({"kind": "length", "max_words": 5, "weight": 1.0, "fail": -1.0, "penalty_per_unit": 0.1})
    assert fn(["one two three", "a b c d e f g"]) == pytest.approx([1.0, -1.2])
    chars = rubric({"kind": "length", "max_chars": 10, "min_chars": 3})
    assert chars(["hello", "hi", "hello world!"]) == [1.0, 0.0, 0.0]


def test_rubric_name_present():
    fn = rubric({"kind": "name_present", "column": "sender_name"})
    assert fn(["Hi Dana, thanks", "Hello there", "Dear Danaher", "hi dana"], sender_name=["Dana Smith"] * 4) == [
        1.0,
        0.0,
        0.0,
        1.0,
    ]
    full = rubric({"kind": "name_present", "column": "sender_name", "full_name": True})
    assert full(["Hi Dana", "Hi Dana Smith"], sender_name=["Dana Smith"] * 2) == [0.0, 1.0]
    assert fn(["Hi"], sender_name=[""]) == [None]  # no name in the row: not applicable


@pytest.mark.parametrize(
    "signature,require,mode,expected",
    [
        ("Best,\nSam\n+44 20 7946 0958", ["phone"], "any", 1.0),
        ("Best,\nSam\nsam@example.com", ["email"], "any", 1.0),
        ("Best,\nSam\n221B Baker Street, London NW1 6XE", ["address"], "any", 1.0),
        ("Best,\nSam\nSpringfield, IL 62704", ["address"], "any", 1.0),
        ("Best,\nSam", ["phone", "email", "address"], "any", 0.0),
        ("Best,\nSam\nsam@example.com", ["phone", "email"], "all", 0.0),
        ("Best,\nSam\nsam@example.com\n(555) 123-4567", ["phone", "email"], "all", 1.0),
    ],
)
def test_rubric_signature_block(signature, require, mode, expected):
    fn = rubric({"kind": "signature", "require": require, "mode": mode})
    assert fn(["Hello,\nthe parcel ships today.\n\n" + signature]) == [expected]


def test_rubric_signature_must_be_at_the_end():
    fn = rubric({"kind": "signature", "require": ["email"], "signature_lines": 3})
    early = "Write to sam@example.com.\n" + "\n".join(f"line {i}" for i in range(10))
    assert fn([early]) == [0.0]


def test_rubric_weighted_sum_and_normalize():
    crit = [
        {"kind": "contains", "keywords": ["thanks"], "weight": 2.0},
        {"kind": "length", "max_words": 3, "weight": 1.0, "fail": -1.0},
    ]
    assert rubric(*crit)(["thanks a lot", "thanks a lot friend"]) == [3.0, 1.0]
    assert rubric(*crit, normalize=True)(["thanks a lot", "thanks a lot friend"]) == pytest.approx([1.0, 1 / 3])


@pytest.mark.parametrize(
    "criterion,match",
    [
        ({"kind": "sentiment"}, "unknown kind"),
        ({"kind": "contains"}, "needs keywords"),
        ({"kind": "exact"}, "needs column"),
        ({"kind": "length"}, "needs max_chars"),
        ({"kind": "signature", "require": ["fax"]}, "require must list"),
        ({"kind": "contains", "keywords": ["a"], "mode": "most"}, "mode"),
    ],
)
def test_rubric_bad_criteria_fail_at_build(criterion, match):
    with pytest.raises(ValueError, match=match):
        rubric(criterion)


def test_rubric_without_criteria_is_an_error():
    with pytest.raises(ValueError, match="no criteria"):
        rlvr.create("reward", "rubric")


def test_rubric_email_example():
    fn = rlvr.create("reward", "rubric_email")
    good, robot = fn([EMAIL_REPLY, ROBOT_REPLY], sender_name=["Dana Smith", "Dana Smith"])
    # name +1, thanks +0.5, human 0, short +0.5, signature +1
    assert good == pytest.approx(3.0)
    words = len(ROBOT_REPLY.split())
    assert robot == pytest.approx(0 + 0 - 3.0 - 0.5 - 0.01 * (words - 120) + 0)
    assert re.search(r"sam\.lee@acme\.example", EMAIL_REPLY)
