"""code_exec: tests parsing, scoring, and hostile code contained in both sandbox modes.

The ``bwrap`` mode runs where bubblewrap is installed and usable (``apt-get install bubblewrap``);
elsewhere its cases are skipped with the reason and the ``rlimit`` mode is still tested. Cases
whose containment needs bubblewrap or a separate uid (root) say so when they skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

import rlvr
from rlvr.plugins.rewards.code_exec import CodeExecConfig, extract_code, parse_tests, same_output
from rlvr.sandbox import Sandbox, SandboxError, processes_of_uid, uid_block

FAST = {"timeout_s": 0.5, "startup_grace_s": 1.0, "memory_mb": 256, "max_processes": 16, "max_output_bytes": 64_000}


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


def py(code: str) -> str:
    return f"Here is my solution:\n```python\n{code}\n```\n"


def make(mode: str, **kw):
    return rlvr.create("reward", "code_exec", sandbox=mode, **{**FAST, **kw})


def leftovers() -> list[str]:
    """Processes still running sandboxed code (by script name), and any process of a sandbox uid."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if b"solution.py" in cmd or b"rlvr_harness.py" in cmd:
            found.append(f"{entry.name}: {cmd[:120]!r}")
    if os.geteuid() == 0:
        found += [f"uid-owned {p}" for s in range(64) for p in processes_of_uid(uid_block() + s)]
    return found


def assert_no_leftovers() -> None:
    for _ in range(20):
        if not leftovers():
            return
        time.sleep(0.05)
    assert not leftovers(), leftovers()


# --------------------------------------------------------------------------- extraction and test formats


def test_extract_code_takes_the_last_python_block():
    text = "```python\nx = 1\n```\nthen\n```py\nx = 2\n```\n```bash\nrm -rf /\n```"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("print(1)") is None
    assert extract_code("print(1)", allow_unfenced=True) == "print(1)"


def test_parse_tests_formats():
    s = parse_tests("import math\nassert math.sqrt(4) == 2\nassert f(1) == 2\n")
    assert s.kind == "assert" and s.count == 2 and len(s.program.steps) == 3
    assert "import math" in s.program.steps[0] and "assert" not in "".join(s.program.steps)  # asserts rewritten
    assert "2" not in s.program.steps[1].replace("math.sqrt(4)", "")  # the expected value stays outside
    assert parse_tests(["assert f(1) == 2", "assert f(2) == 3"]).count == 2
    io = parse_tests([{"input": "1 2\n", "output": "3\n"}, {"stdin": "2 2", "stdout": "4"}])
    assert io.kind == "io" and io.cases == [("1 2\n", "3\n"), ("2 2", "4")]
    apps = parse_tests('{"inputs": ["1\\n", "2\\n"], "outputs": ["2\\n", "4\\n"]}')
    assert apps.kind == "io" and apps.count == 2
    assert parse_tests({"asserts": ["assert True"]}).count == 1
    assert parse_tests(None) is None and parse_tests("") is None and parse_tests([]) is None
    with pytest.raises(ValueError):
        parse_tests("assert (")
    with pytest.raises(ValueError):
        parse_tests({"inputs": ["1"], "outputs": []})
    with pytest.raises(ValueError):
        parse_tests(42)


def test_same_output_ignores_trailing_whitespace_only():
    assert same_output("3  \n4\n\n", "3\n4")
    assert not same_output("3 4", "3\n4")


# --------------------------------------------------------------------------- scoring

ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(2, 2) == 4\nassert add(0, 5) == 5\n"


@pytest.mark.parametrize("mode", MODES)
def test_scores_are_fraction_of_tests_passed(mode):
    fn = make(mode)
    completions = [
        py("def add(a, b):\n    return a + b"),
        py("def add(a, b):\n    return a + b if a in (1, 2) else 99"),  # passes 2 of 4
        py("def add(a, b):\n    raise RuntimeError"),
        "I would add the numbers.",  # no code
        py("def add(a, b):\n    return a + b"),
    ]
    scores = fn(completions, tests=[ADD_TESTS] * 4 + [None])
    assert scores == [1.0, 0.5, 0.0, 0.0, None]
    assert_no_leftovers()


@pytest.mark.parametrize("mode", MODES)
def test_stdin_stdout_tests(mode):
    fn = make(mode)
    tests = [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "10 -4\n", "output": "6"},
        {"input": "0 0\n", "output": "0\n"},
    ]
    good = py("a, b = map(int, input().split())\nprint(a + b, ' ')")
    wrong = py("a, b = map(int, input().split())\nprint(a - b)")  # right on the third case only
    crash = py("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)")  # right output, bad exit
    assert fn([good, wrong, crash], tests=[tests] * 3) == pytest.approx([1.0, 1 / 3, 0.0])


def test_verifier_and_reward_scores():
    verify = rlvr.create("verifier", "code_exec", **FAST)
    half = py("def add(a, b):\n    return a + b if a in (1, 2) else 99")
    good = py("def add(a, b):\n    return a + b")
    assert verify([good, half, good], tests=[ADD_TESTS, ADD_TESTS, None]) == [True, False, None]
    scaled = rlvr.create("reward", "code_exec", pass_score=2.0, fail_score=-1.0, **FAST)
    assert scaled([good, half], tests=[ADD_TESTS] * 2) == [2.0, 0.5]
    strict = rlvr.create("reward", "code_exec", partial=False, pass_score=2.0, fail_score=-1.0, **FAST)
    assert strict([good, half], tests=[ADD_TESTS] * 2) == [2.0, -1.0]


def test_exit_and_forged_reports_do_not_pass():
    fn = make("rlimit")
    exits = py("import sys\nsys.exit(0)\ndef add(a, b):\n    return 0")
    hard_exit = py("import os\nos._exit(0)")
    forged = py(
        "import os, sys\nfor i in range(4):\n    print('PASS', i)\n    os.write(3, b'x %d 1\\n' % i)\n"
        "def add(a, b):\n    return None"
    )
    main_guard = py("def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    input()")
    assert fn([exits, hard_exit, forged, main_guard], tests=[ADD_TESTS] * 4) == [0.0, 0.0, 0.0, 1.0]


def test_a_slow_test_fails_alone():
    fn = make("rlimit")
    code = py("import time\ndef f(x):\n    if x == 2:\n        while True: pass\n    return x")
    tests = ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"]
    assert fn([code], tests=[tests]) == pytest.approx([2 / 3])


def test_runs_in_parallel_and_bad_tests_name_the_row():
    fn = make("rlimit", max_workers=2)
    good = py("def add(a, b):\n    return a + b")
    assert fn([good] * 4, tests=[ADD_TESTS] * 4) == [1.0] * 4
    with pytest.raises(ValueError, match="row 1"):
        fn([good, good], tests=[ADD_TESTS, "assert ("])
    with pytest.raises(KeyError, match="'tests'"):
        fn([good], answer=["1"])


@pytest.mark.parametrize("mode", MODES)
def test_limits_environment_and_fresh_directory(mode, monkeypatch):
    monkeypatch.setenv("RLVR_TEST_SECRET", "hunter2")
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "rlvr-sandbox-*")))
    sb = Sandbox(CodeExecConfig(sandbox=mode, **FAST))
    code = (
        "import os, resource\n"
        "print(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20,\n"
        "      resource.getrlimit(resource.RLIMIT_FSIZE)[0] >> 20,\n"
        "      resource.getrlimit(resource.RLIMIT_CORE)[0])\n"
        "print('RLVR_TEST_SECRET' in os.environ, sorted(os.listdir('.')))\n"
        "open('scratch.txt', 'w').write('ok')\n"
    )
    res = sb.run("solution.py", [], {"solution.py": code.encode()}, b"", 5.0)
    lines = res.stdout.decode().splitlines()
    assert res.returncode == 0, res.stderr
    assert lines[0] == "256 16 0"
    assert lines[1] == "False ['solution.py', 'tmp']"
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "rlvr-sandbox-*")))
    assert not (after - before), "the sandbox directory was not removed"


def test_bwrap_required_but_missing(monkeypatch):
    import rlvr.sandbox.sandbox as ce

    monkeypatch.setattr(ce.shutil, "which", lambda name: None)
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        Sandbox(CodeExecConfig(sandbox="bwrap"))
    assert Sandbox(CodeExecConfig(sandbox="auto")).mode == "rlimit"


# --------------------------------------------------------------------------- hostile code


def _isolated_without_bwrap() -> bool:
    return Sandbox(CodeExecConfig(sandbox="rlimit")).drop


NEEDS_SEPARATE_UID = (
    "without bubblewrap the code runs as this user (not root): it can touch this user's files and "
    "processes; only rlimits and the supervisor contain it"
)


def _skip_unless_contained(mode: str) -> None:
    if mode == "rlimit" and not _isolated_without_bwrap():
        pytest.skip(NEEDS_SEPARATE_UID)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "name,code",
    [
        ("infinite loop", "while True:\n    pass"),
        ("sleep", "import time\ntime.sleep(60)"),
        ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
        (
            "thread bomb",
            "import threading, time\nfor _ in range(10000):\n"
            "    threading.Thread(target=time.sleep, args=(60,)).start()",
        ),
        (
            "escaping daemon",
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
            "    if os.fork() == 0:\n        time.sleep(60)\n"
            "    os._exit(0)\nprint('3')",
        ),
        ("memory bomb", "x = []\nwhile True:\n    x.append(bytearray(50 * 1024 * 1024))"),
        ("huge output", "while True:\n    print('x' * 100000)"),
        ("disk bomb", "with open('big', 'wb') as f:\n    while True:\n        f.write(b'0' * (1 << 20))"),
    ],
)
def test_hostile_code_is_contained(mode, name, code):
    fn = make(mode)
    start = time.monotonic()
    scores = fn([py(code)], tests=[[{"input": "", "output": "4"}]])
    elapsed = time.monotonic() - start
    assert scores == [0.0], name
    assert elapsed < FAST["timeout_s"] + FAST["startup_grace_s"] + 6.0, f"{name} took {elapsed:.1f} s"
    assert_no_leftovers()


@pytest.mark.parametrize("mode", MODES)
def test_huge_output_is_capped(mode):
    sb = Sandbox(CodeExecConfig(sandbox=mode, **FAST))
    flood = b"import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n"
    res = sb.run("solution.py", [], {"solution.py": flood}, b"", 5.0)
    assert res.output_capped and len(res.stdout) <= FAST["max_output_bytes"]
    assert_no_leftovers()


@pytest.fixture
def outside(tmp_path_factory):
    """A directory outside the sandbox that others may traverse, holding files the code must not touch."""
    d = Path(tempfile.mkdtemp(prefix="rlvr-outside-"))
    os.chmod(d, 0o755)
    (d / "victim.txt").write_text("keep me")
    os.chmod(d / "victim.txt", 0o644)
    (d / "private.txt").write_text("PRIVATE-TOKEN")
    os.chmod(d / "private.txt", 0o600)
    (d / "public.txt").write_text("PUBLIC-TOKEN")
    os.chmod(d / "public.txt", 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("mode", MODES)
def test_cannot_delete_or_write_outside(mode, outside):
    _skip_unless_contained(mode)
    repo = Path(__file__).resolve().parents[1]
    code = (
        f"import os, shutil\n"
        f"for action in (lambda: os.remove({str(outside / 'victim.txt')!r}),\n"
        f"               lambda: open({str(outside / 'victim.txt')!r}, 'w').write('pwned'),\n"
        f"               lambda: open({str(outside / 'new.txt')!r}, 'w').write('pwned'),\n"
        f"               lambda: open({str(repo / 'pwned.txt')!r}, 'w').write('pwned'),\n"
        f"               lambda: shutil.rmtree({str(outside)!r})):\n"
        f"    try:\n        action()\n    except OSError:\n        pass\n"
        f"print('4')\n"
    )
    assert make(mode)([py(code)], tests=[[{"input": "", "output": "4"}]]) == [1.0]
    assert (outside / "victim.txt").read_text() == "keep me"
    assert not (outside / "new.txt").exists() and not (repo / "pwned.txt").exists()


@pytest.mark.parametrize("mode", MODES)
def test_cannot_read_private_files_outside(mode, outside):
    _skip_unless_contained(mode)
    code = f"try:\n    print(open({str(outside / 'private.txt')!r}).read())\nexcept OSError as e:\n    print('denied')"
    assert make(mode)([py(code)], tests=[[{"input": "", "output": "PRIVATE-TOKEN"}]]) == [0.0]


def test_bwrap_hides_the_filesystem(outside):
    if BWRAP_MISSING:
        pytest.skip(f"bubblewrap sandbox unavailable: {BWRAP_MISSING}")
    repo = Path(__file__).resolve().parents[1]
    code = (
        f"import os\nseen = [os.path.exists(p) for p in ({str(outside / 'public.txt')!r}, {str(repo)!r}, '/root', "
        f"'/home', '/work')]\nprint(sum(seen))"
    )
    assert make("bwrap")([py(code)], tests=[[{"input": "", "output": "0"}]]) == [1.0]


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    hits = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                hits.append(1)
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], hits
    stop.set()
    t.join(timeout=2)
    srv.close()


def test_bwrap_blocks_the_network(listener):
    if BWRAP_MISSING:
        pytest.skip(f"bubblewrap sandbox unavailable: {BWRAP_MISSING}")
    port, hits = listener
    code = (
        f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        f"    print('connected')\n"
        f"except OSError:\n    print('blocked')"
    )
    assert make("bwrap")([py(code)], tests=[[{"input": "", "output": "blocked"}]]) == [1.0]
    time.sleep(0.3)
    assert hits == []


def test_rlimit_mode_has_network_documented(listener):
    """Without bubblewrap there is no network isolation (the README says so): the loopback is reachable."""
    port, hits = listener
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
    assert make("rlimit")([py(code)], tests=[[{"input": "", "output": "connected"}]]) == [1.0]


@pytest.mark.parametrize("mode", MODES)
def test_cannot_kill_the_trainer(mode):
    _skip_unless_contained(mode)
    me = os.getpid()
    code = (
        f"import os, signal\nkilled = 0\n"
        f"for target in (os.getppid(), {me}):\n"
        f"    try:\n        os.kill(target, signal.SIGKILL)\n        killed += 1\n"
        f"    except OSError:\n        pass\n"
        f"try:\n    os.killpg({os.getpgid(me)}, signal.SIGKILL)\n    killed += 1\nexcept OSError:\n    pass\n"
        f"try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
        f"print(killed)"
    )
    scores = make(mode)([py(code)], tests=[[{"input": "", "output": "0"}]])
    assert os.getpid() == me  # still here
    assert scores in ([1.0], [0.0])  # kill(-1) may take the code down with it; the trainer survives either way
    assert_no_leftovers()
