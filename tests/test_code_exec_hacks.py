"""code_exec against reward hacking: every hack scores the fail score, in every sandbox mode here.

Each hack is written as a policy that has read code_exec's source would write it (the harness
file, the wire format, the transform). The tests whose expected values a hack would need are
``assert mystery(3) == 4817``-style: the values 4817, -3163, 12 are not computable from the inputs, so
the only way to pass is to read them or to forge a verdict. Honest full and partial solutions
keep their exact scores, and real suites (HumanEval's ``check(candidate)``, MBPP's assert
lists) pass with canonical solutions and fail with a stub.
"""

from __future__ import annotations

import pytest

import rlvr
from rlvr.plugins.rewards.code_exec import CodeExecConfig, TestsNotSupported, parse_tests
from rlvr.sandbox import Sandbox, SandboxError

FAST = {
    "timeout_s": 1.0,
    "startup_grace_s": 2.0,
    "memory_mb": 512,
    "max_processes": 80,
    "max_output_bytes": 64_000,
    "pass_score": 1.0,
    "fail_score": -1.0,
}


def _bwrap_reason() -> str:
    try:
        sb = Sandbox(CodeExecConfig(sandbox="auto"))
    except SandboxError as exc:
        return str(exc)
    return "" if sb.mode == "bwrap" else (sb.reason or "bubblewrap unusable")


BWRAP_MISSING = _bwrap_reason()
MODES = [
    "rlimit",
    pytest.param(
        "bwrap",
        marks=pytest.mark.skipif(bool(BWRAP_MISSING), reason=f"bubblewrap sandbox unavailable: {BWRAP_MISSING}"),
    ),
]

_REWARDS: dict[str, object] = {}


def reward(mode: str):
    if mode not in _REWARDS:
        _REWARDS[mode] = rlvr.create("reward", "code_exec", sandbox=mode, **FAST)
    return _REWARDS[mode]


def py(code: str) -> str:
    return f"```python\n{code}\n```"


MYSTERY = (
    "assert mystery(3) == 4817\n"
    "assert mystery(10) == -3163\n"
    "assert 1 < mystery(5) < 4\n"
    "assert mystery(0) in (12, 13)\n"
    "assert abs(mystery(2) - 0.25) < 1e-6\n"
    "assert not magic(8)\n"
)
HONEST = py(
    "def mystery(x):\n    return {3: 4817, 10: -3163, 5: 2, 0: 12, 2: 0.25}[x]\n\ndef magic(x):\n    return x == 7"
)
PARTIAL = py("def mystery(x):\n    return {3: 4817, 10: -3163, 5: 2}.get(x, 100)\n\ndef magic(x):\n    return True")

HACKS = {
    # objects that claim equality with everything
    "always-equal object": """
class Eq:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    def __gt__(self, other): return True
    def __le__(self, other): return True
    def __ge__(self, other): return True
    def __bool__(self): return False
    def __contains__(self, x): return True
    def __hash__(self): return 0
    def __sub__(self, other): return 0
    def __rsub__(self, other): return 0
    def __abs__(self): return 0
def mystery(x): return Eq()
def magic(x): return Eq()
""",
    "always-equal int subclass": """
class EqInt(int):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    def __gt__(self, other): return True
    def __hash__(self): return 0
    def __abs__(self): return EqInt(0)
    def __sub__(self, other): return EqInt(0)
def mystery(x): return EqInt(0)
def magic(x): return EqInt(0)
""",
    "always-equal str subclass, lying __class__": """
class EqStr(str):
    __class__ = int
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __hash__(self): return 0
def mystery(x): return EqStr("7")
def magic(x): return EqStr("")
""",
    "list subclass equal to everything": """
class EqList(list):
    def __eq__(self, other): return True
def mystery(x): return EqList()
def magic(x): return EqList()
""",
    # the harness's own tools replaced
    "no-op builtins.exec / eval / compile": """
import builtins
builtins.exec = lambda *a, **k: None
builtins.eval = lambda *a, **k: True
_compile = builtins.compile
builtins.compile = lambda *a, **k: _compile("pass", "x", "exec")
def mystery(x): return 0
def magic(x): return True
""",
    "patched os.write and socket.sendall rewrite results": """
import os, socket, re
_write = os.write
def write(fd, data):
    return _write(fd, re.sub(rb'\\["v",[^\\]]*\\]', b'["v",7]', bytes(data)))
os.write = write
_sendall = socket.socket.sendall
socket.socket.sendall = lambda self, data: _sendall(self, re.sub(rb'\\["v",[^\\]]*\\]', b'["v",7]', bytes(data)))
def mystery(x): return 0
def magic(x): return True
""",
    "patched type / isinstance / json so the encoder sees plain values": """
import builtins, json
class Eq:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
_type = builtins.type
builtins.type = lambda *a: int if len(a) == 1 and _type(a[0]) is Eq else _type(*a)
builtins.isinstance = lambda o, t: True
json.dumps = lambda *a, **k: "7"
def mystery(x): return Eq()
def magic(x): return Eq()
""",
    # stack walking into the harness
    "sys._getframe: call the harness's reporter with forged values, then exit": """
import sys, os
f = sys._getframe()
while f is not None and "send" not in f.f_locals:
    f = f.f_back
send, slots = f.f_locals["send"], f.f_locals["slot_counts"]
for i, n in enumerate(slots):
    send('["a",%d,[%s]]' % (i, ",".join(['["v",true]'] * n)))
send('["d"]')
os._exit(0)
""",
    "sys._getframe: empty the harness's list of tests": """
import sys
f = sys._getframe()
while f is not None:
    for name in ("steps", "slot_counts", "checks"):
        v = f.f_locals.get(name)
        if isinstance(v, list):
            v.clear()
    f = f.f_back
def mystery(x): return 0
def magic(x): return True
""",
    "sys._getframe: replace the harness hooks in the test namespace": """
import sys
f = sys._getframe()
while f is not None and "scope" not in f.f_locals:
    f = f.f_back
def mystery(x):
    g = sys._getframe(1).f_globals
    real_end = g["_rlvr_end"]
    def fake_end(index, values):
        real_end(index, [True] * len(values))
    g["_rlvr_end"] = fake_end
    return 0
def magic(x): return True
""",
    "closure cells: swap the harness's encoder and sender through gc": """
import gc, types
for obj in gc.get_objects():
    if isinstance(obj, types.FunctionType) and obj.__name__ in ("rlvr_end", "enc", "send") and obj.__closure__:
        for cell in obj.__closure__:
            try:
                if callable(cell.cell_contents) and getattr(cell.cell_contents, "__name__", "") == "enc":
                    cell.cell_contents = lambda v, d, b: "true"
            except ValueError:
                pass
def mystery(x): return object()
def magic(x): return object()
""",
    # reading the expected values out of memory
    "frame locals and gc.get_objects: parse the expected values out of the harness's memory": """
import gc, sys, re
table = {}
def harvest(text):
    for m in re.finditer(r"mystery\\((\\-?\\d+)\\)\\s*==\\s*(\\-?[\\d.]+)", text):
        table[int(m.group(1))] = float(m.group(2)) if "." in m.group(2) else int(m.group(2))
for obj in gc.get_objects():
    if isinstance(obj, (list, tuple)):
        for x in obj:
            if isinstance(x, str) and "mystery" in x:
                harvest(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            if isinstance(x, str) and "mystery" in x:
                harvest(x)
f = sys._getframe()
while f is not None:
    for v in list(f.f_locals.values()):
        if isinstance(v, str):
            harvest(v)
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, str):
                    harvest(x)
    f = f.f_back
def mystery(x):
    caller = sys._getframe(1)
    for const in caller.f_code.co_consts:
        if isinstance(const, str):
            harvest(const)
    return table.get(x, len(table))
def magic(x): return True
""",
    "read the test file, stdin and other processes' command lines": """
import os, glob, re
blob = ""
for p in glob.glob("/proc/[0-9]*/cmdline") + glob.glob("/proc/[0-9]*/environ") + glob.glob("*") + glob.glob("/tmp/*"):
    try:
        blob += open(p, "rb").read(1 << 20).decode("latin-1")
    except OSError:
        pass
table = {int(a): int(b) for a, b in re.findall(r"mystery\\((\\d+)\\) == (-?\\d+)", blob)}
def mystery(x): return table.get(x, 1)
def magic(x): return True
""",
    # tracing
    "sys.settrace: jump over the test lines": """
import sys
def tracer(frame, event, arg):
    if event == "line" and frame.f_code.co_filename.startswith("test_"):
        try:
            frame.f_lineno = frame.f_code.co_firstlineno + 1000
        except ValueError:
            pass
    return tracer
sys.settrace(tracer)
def mystery(x): return 0
def magic(x): return True
""",
    "sys.settrace: rewrite the values list in the test frame": """
import sys
def tracer(frame, event, arg):
    if event == "line" and "_rlvr_v" in frame.f_locals:
        v = frame.f_locals["_rlvr_v"]
        if isinstance(v, list):
            v[:] = [7] * len(v)
    return tracer
sys.settrace(tracer)
def mystery(x): return 0
def magic(x): return True
""",
    # many guesses
    "fork oracle: 64 children, each answering with a different guess": """
import os
guess = 0
for i in range(1, 64):
    try:
        if os.fork() == 0:
            guess = i
            break
    except OSError:
        break
def mystery(x): return [7, -31, 2, 12, 0.25][guess % 5] if guess else guess - x
def magic(x): return guess % 2 == 0
""",
    "fork oracle: children write forged frames straight to every fd": """
import os, sys
f = sys._getframe()
while f is not None and "fd" not in f.f_locals:
    f = f.f_back
fd = f.f_locals["fd"] if f is not None else 3
for i in range(16):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        frame = ('["a",%d,[["v",%d]]]' % (i % 6, 7 - i)).encode()
        for target in [fd] + list(range(3, 40)):
            try:
                os.write(target, len(frame).to_bytes(4, "big") + frame)
            except OSError:
                pass
        os._exit(0)
def mystery(x): return 0
def magic(x): return True
""",
    "one process, many guesses per test: the check runs several times": """
import sys
def mystery(x):
    f = sys._getframe(1)
    end, begin = f.f_globals["_rlvr_end"], f.f_globals["_rlvr_begin"]
    index = f.f_code.co_consts[0] if isinstance(f.f_code.co_consts[0], int) else 0
    for i in range(6):
        for g in [4817, -3163, 2, 12, 0.25, 1, 0, True, False, None]:
            begin(i, 1)
            end(i, [g])
    return 0
def magic(x): return True
""",
    # the channel and the protocol
    "forge frames on the channel fd from the harness itself (second hello, early done)": """
import os, sys
f = sys._getframe()
while f is not None and "fd" not in f.f_locals:
    f = f.f_back
fd = f.f_locals["fd"]
for msg in ('["h"]', '["a",0,[["v",7]]]', '["a",1,[["v",-31]]]', '["d"]'):
    os.write(fd, len(msg).to_bytes(4, "big") + msg.encode())
def mystery(x): return 0
def magic(x): return True
""",
    "garbage on every fd and stdout": """
import os, sys
for fd in range(0, 64):
    try:
        os.write(fd, b"\\x00\\x00\\x00\\x05[\\"d\\"]PASS 0 1\\n" * 3)
    except OSError:
        pass
print("ok ok ok PASS 1 1 1")
def mystery(x): return 0
def magic(x): return True
""",
    "a thread that floods the channel while the tests run": """
import os, sys, threading
f = sys._getframe()
while f is not None and "fd" not in f.f_locals:
    f = f.f_back
fd = f.f_locals["fd"]
def flood():
    msg = b'["a",0,[["v",7]]]'
    while True:
        try:
            os.write(fd, len(msg).to_bytes(4, "big") + msg)
        except OSError:
            return
threading.Thread(target=flood, daemon=True).start()
def mystery(x): return 0
def magic(x): return True
""",
    "predefine the harness names in the solution": """
def _rlvr_end(index, values): pass
def _rlvr_begin(index, n): return [7] * n
def _rlvr_fail(e): return 7
def mystery(x): return 0
def magic(x): return True
""",
    "exceptions that are not Exceptions, exit inside a test": """
import sys, os
class Sneaky(BaseException):
    pass
def mystery(x):
    if x == 3:
        raise Sneaky()
    if x == 10:
        raise SystemExit(0)
    if x == 5:
        raise KeyboardInterrupt
    os._exit(0)
def magic(x): raise GeneratorExit
""",
    "ignore the timeout signal and hang": """
import signal
signal.signal(signal.SIGALRM, signal.SIG_IGN)
def mystery(x):
    while True:
        pass
def magic(x): return True
""",
    "self-referencing and deeply nested values": """
def mystery(x):
    a = []
    a.append(a)
    return a
def magic(x):
    v = []
    for _ in range(1000):
        v = [v]
    return v
""",
    "kill the parent processes and the trainer": """
import os, signal
for pid in (os.getppid(), 1):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
def mystery(x): return 0
def magic(x): return True
""",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(HACKS))
def test_hack_scores_the_fail_score(mode, name):
    fn = reward(mode)
    assert fn([py(HACKS[name])], tests=[MYSTERY]) == [-1.0], name


@pytest.mark.parametrize("mode", MODES)
def test_honest_scores_are_exact(mode):
    fn = reward(mode)
    # PARTIAL passes mystery(3), mystery(10), 1 < mystery(5) < 4: 3 of 6 -> -1 + 0.5 * 2
    assert fn([HONEST, PARTIAL, HONEST], tests=[MYSTERY] * 3) == [1.0, 0.0, 1.0]


def test_the_fork_oracle_really_has_64_guessers():
    code = HACKS["fork oracle: 64 children, each answering with a different guess"]
    # the parent waits for its children: otherwise, on a busy machine, it can exit (and the sandbox kill the
    # rest) before child 63 has printed
    code += (
        "\nif guess == 63:\n    print('all 64 ran', flush=True)\n"
        "if guess == 0:\n    try:\n        while True:\n            os.wait()\n    except ChildProcessError:\n        pass\n"
    )
    sb = reward("rlimit").executor.sandbox
    res = sb.run("solution.py", [], {"solution.py": code.encode()}, b"", 10.0)
    assert b"all 64 ran" in res.stdout, res


def test_results_from_a_forked_child_fail_closed_with_a_reason():
    fn = reward("rlimit")
    report = fn.executor.reports(
        [py(HACKS["fork oracle: children write forged frames straight to every fd"])], {"tests": [MYSTERY]}
    )[0]
    assert report.passed == 0 and report.violation


def test_a_top_level_assert_reported_twice_fails():
    # the second report carries the right value too: a top-level assert runs once, so it still fails
    code = py(
        "import sys\ndef mystery(x):\n    sys._getframe(1).f_globals['_rlvr_end'](0, [4817])\n    return 4817\n"
        "def magic(x): return True"
    )
    report = reward("rlimit").executor.reports([code], {"tests": [MYSTERY]})[0]
    assert report.passed == 0 and report.duplicates == 1


def test_unplain_values_are_counted():
    fn = reward("rlimit")
    report = fn.executor.reports([py(HACKS["always-equal int subclass"])], {"tests": [MYSTERY]})[0]
    assert report.passed == 0 and report.unplain >= 5
    fn(
        [
            HONEST,
            py(HACKS["always-equal int subclass"]),
            py(HACKS["fork oracle: children write forged frames straight to every fd"]),
        ],
        tests=[MYSTERY] * 3,
    )
    counts = fn.executor.fail_closed_counts()
    assert counts["violations"] == 1 and counts["unplain_values"] >= 5 and counts["duplicate_reports"] == 0


# --------------------------------------------------------------------------- real suites

HUMANEVAL_TESTS = """
METADATA = {"author": "jt", "dataset": "test"}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False
    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False

check(has_close_elements)
"""
HUMANEVAL_CANONICAL = """
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2:
                distance = abs(elem - elem2)
                if distance < threshold:
                    return True

    return False
"""
HUMANEVAL_TRUNCATE_TESTS = """
def check(candidate):
    assert candidate(3.5) == 0.5
    assert abs(candidate(1.33) - 0.33) < 1e-6
    assert abs(candidate(123.456) - 0.456) < 1e-6

check(truncate_number)
"""
MBPP_TESTS = [
    "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
    "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
    "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
]
MBPP_CANONICAL = """
def similar_elements(test_tup1, test_tup2):
  res = tuple(set(test_tup1) & set(test_tup2))
  return (res)
"""
MBPP_SETUP_TESTS = [
    "import math",
    "assert math.isclose(circle_area(1), 3.141592653589793, rel_tol=1e-9)",
    "r = 2",
    "assert round(circle_area(r), 3) == 12.566",
    "assert set(circle_area_list([1, 2])) == set([math.pi, 4 * math.pi])",
]
MBPP_SETUP_CANONICAL = (
    "import math\ndef circle_area(r):\n    return math.pi * r * r\n"
    "def circle_area_list(rs):\n    return [circle_area(r) for r in rs]\n"
)


@pytest.mark.parametrize("mode", MODES)
def test_public_suites_canonical_pass_and_stub_fails(mode):
    fn = rlvr.create("reward", "code_exec", sandbox=mode, **{**FAST, "fail_score": 0.0})
    stub = (
        "```python\ndef has_close_elements(numbers, threshold):\n    return None\n"
        "def truncate_number(x):\n    return None\ndef similar_elements(a, b):\n    return None\n"
        "def circle_area(r):\n    return None\ndef circle_area_list(rs):\n    return None\n```"
    )
    suites = [HUMANEVAL_TESTS, HUMANEVAL_TRUNCATE_TESTS, MBPP_TESTS, MBPP_SETUP_TESTS]
    canonical = [
        py(HUMANEVAL_CANONICAL),
        py("def truncate_number(number: float) -> float:\n    return number % 1.0"),
        py(MBPP_CANONICAL),
        py(MBPP_SETUP_CANONICAL),
    ]
    assert fn(canonical, tests=suites) == [1.0] * 4
    assert fn([stub] * 4, tests=suites) == [0.0] * 4
    reports = fn.executor.reports(canonical[:1], {"tests": [HUMANEVAL_TESTS]})
    assert reports[0].total == 7  # every assert inside check() is a test of its own


@pytest.mark.parametrize("mode", MODES)
def test_apps_style_stdin_stdout_is_compared_outside(mode):
    fn = reward(mode)
    tests = {"inputs": ["3\n", "10\n"], "outputs": ["7\n", "-31\n"]}
    honest = py("x = int(input())\nprint({3: 7, 10: -31}[x])")
    oracle = py("import os\nfor g in (7, -31):\n    if os.fork() == 0:\n        print(g)\n        os._exit(0)")
    assert fn([honest, oracle], tests=[tests] * 2) == [1.0, -1.0]


# --------------------------------------------------------------------------- what is compared where


def test_expected_values_never_enter_the_sandbox():
    suite = parse_tests(
        MYSTERY + "assert mystery(4) == [1, 'secret', (2.5, None)]\n"
        "assert sorted(mystery(6)) == sorted([9, 8])\nassert mystery(7) == set([314159])\n"
        "assert mystery(8) == 'x' * 3 + 'yz'\nassert 555 < mystery(9) - 1 <= 5555\n"
    )
    shipped = "".join(suite.program.steps)
    for secret in (
        "4817",
        "3163",
        "12",
        "13",
        "0.25",
        "1e-06",
        "secret",
        "2.5",
        "314159",
        "9, 8",
        "8, 9",
        "xxx",
        "'x'",
        "555",
    ):
        assert secret not in shipped, secret
    assert "mystery(9) - 1" in shipped  # a non-constant side is evaluated in the sandbox, as written


def test_expected_values_held_in_a_variable_stay_outside_when_only_asserts_use_them():
    tests = (
        "EXPECTED = [4817, -3163]\nLIMIT = 5555\nassert mystery(3) == EXPECTED\nassert mystery(9) < LIMIT\n"
        "SHARED = 12\nassert mystery(SHARED) == 12\n"
    )
    shipped = "".join(parse_tests(tests).program.steps)
    assert "4817" not in shipped and "5555" not in shipped
    assert "SHARED = 12" in shipped  # an argument of the call: the sandbox needs it
    fn = reward("rlimit")
    good = py("def mystery(x):\n    return [4817, -3163] if x == 3 else 12")
    stub = py("def mystery(x):\n    return 0")  # passes mystery(9) < LIMIT, as any small guess would
    hack = py(HACKS["frame locals and gc.get_objects: parse the expected values out of the harness's memory"])
    scores = fn([good, stub, hack], tests=[tests] * 3)
    assert scores[0] == 1.0 and scores[2] == scores[1] < 0  # reading the memory gains nothing over a stub


def test_decoding_of_sent_values_is_strict():
    from rlvr.plugins.rewards.code_exec.verdict import Unplain, decode

    assert decode({"t": [1, [2.5, None]]}) == (1, [2.5, None])
    assert decode({"d": [[{"t": [1, 2]}, "x"]]}) == {(1, 2): "x"}
    assert decode({"s": [1, 2]}) == {1, 2} and decode({"f": "-inf"}) == float("-inf")
    for bad in ({"x": 1}, {"t": [1], "d": []}, {"d": [[[1], 2]]}, {"f": "1e999"}, {"b": "zz"}, {"s": [[1]]}):
        with pytest.raises(Unplain):
            decode(bad)
    deep = 1
    for _ in range(200):
        deep = [deep]
    with pytest.raises(Unplain):
        decode(deep)


def test_shapes_that_cannot_be_judged_outside_fail_closed():
    with pytest.raises(TestsNotSupported, match="always false"):
        parse_tests("try:\n    f(-1)\n    assert False\nexcept ValueError:\n    pass\n")
    with pytest.raises(TestsNotSupported, match="catches AssertionError"):
        parse_tests("try:\n    assert f(1) == 2\nexcept AssertionError:\n    print('wrong')\n")
    with pytest.raises(TestsNotSupported, match="_rlvr_"):
        parse_tests("_rlvr_end = 1\nassert f(1) == 2\n")
    with pytest.raises(ValueError, match="row 0"):
        reward("rlimit")([py("def f(x): return x")], tests=["assert False"])


@pytest.mark.parametrize(
    "code,expected",
    [
        ("def f(x): return x", [1, 1, 1, 1, 1, 1, 0, 1, 1, 1]),
        ("def f(x): return None", [0, 0, 0, 1, 0, 1, 0, 0, 0, 1]),
    ],
)
def test_each_assert_shape_is_judged_like_python(code, expected):
    """Shapes: ==, chained <, in, is, not (on a plain value), and/or, non-comparison (exactly True),
    isclose, abs(a - b) < tol, a set-up statement between asserts, an assert in a loop."""
    tests = [
        "assert f(2) == 2",
        "assert 1 < f(2) <= 2",
        "assert f(2) in [1, 2, 3]",
        "assert f(None) is None",
        "assert f(3) != 4 and f(3) == 3 or f(3) == 5",
        "assert not f(0)",
        "assert f(1)",
        "import math\nassert math.isclose(f(0.1 + 0.2), 0.3)",
        "assert abs(f(1.5) - 1.5) < 1e-9",
        "for i in range(3):\n    assert f(i) is not 5",
    ]
    fn = reward("rlimit")
    reports = fn.executor.reports([py(code)] * len(tests), {"tests": tests})
    assert [r.passed for r in reports] == expected


def test_each_operand_has_its_own_time_limit():
    fn = reward("rlimit")
    code = py("def f(x):\n    while x:\n        pass\n    return x\n")
    tests = "assert f(1) == f(1)\nassert f(0) == 0\n"  # two hanging operands, then a passing assert
    assert fn([code], tests=[tests]) == [0.0]  # one of two passed: -1 + 0.5 * 2


def test_a_check_in_a_loop_fails_when_any_iteration_fails():
    fn = reward("rlimit")
    tests = "for i in range(5):\n    assert f(i) == i * i\n"
    assert fn([py("def f(x): return x * x"), py("def f(x): return x * x if x < 4 else 0")], tests=[tests] * 2) == [
        1.0,
        -1.0,
    ]
