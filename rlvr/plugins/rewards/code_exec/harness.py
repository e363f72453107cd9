"""code_exec's harness: runs inside the sandbox, next to the untrusted solution.

Started as ``python -I -B harness.py FD`` in the run directory, with the plan on stdin (``marshal``:
``{"timeout": seconds per step and per assert, "steps": [source, ...], "slots": [n, ...],
"max_bytes": n}``) and ``FD`` a Unix stream socket whose other end the trainer holds with
``SO_PASSCRED``: the kernel stamps every chunk with the real pid of the process that wrote it.

This file never decides a verdict. It only evaluates the operands of the rewritten asserts
(see ``transform.py``) and sends them as strict, tagged JSON of built-in values:

    ["h"]                                  hello, sent before the solution is imported
    ["l", "ExcName"]                       the solution failed to load (nothing else follows)
    ["a", check, [["v", value] | ["e", "ExcName"] | ["u", "why"], ...]]   one assert execution
    ["s", step, "" | "ExcName"]            a top-level test step finished
    ["x", "why"]                           the harness saw tampering (tracing, replaced hooks)
    ["d"]                                  done

Values: null, true, false, int, float, str, lists as JSON arrays, ``{"t": [...]}`` tuple,
``{"d": [[k, v], ...]}`` dict, ``{"s": [...]}`` set, ``{"fs": [...]}`` frozenset, ``{"b": "hex"}``
bytes, ``{"f": "nan" | "inf" | "-inf"}``. Only exact built-in types are written (``type(v) is int``,
not ``isinstance``): subclasses, custom classes and anything else are "u" (that assert fails).

Everything this file relies on (the socket's ``sendall``, ``os.getpid``, ``type``, the string
encoder, ``exec``/``compile``, the signal functions) is bound to local names before the solution is
imported, and the hello it sends then tells the trainer which pid the harness has; the trainer
acknowledges it (after pinning the process with a pidfd) before the harness goes on. What the
solution can still do from inside this process is described in docs/sandbox.md ("residual risks").
"""

import _signal as signal  # the C modules: no enum / re imports on every run
import _socket
import builtins
import marshal
import os
import sys


def _main() -> None:  # noqa: C901 - one closure on purpose: the references it captures are its locals
    from _json import encode_basestring_ascii

    fd = int(sys.argv[1])
    plan = marshal.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    os.set_inheritable(fd, False)  # programs the solution execs do not get the channel
    chan = _socket.socket(fileno=fd)  # the C socket type: no Python-level methods to patch
    timeout = float(plan["timeout"])
    steps = list(plan["steps"])
    slot_counts = list(plan["slots"])
    max_bytes = int(plan["max_bytes"])

    # -- references taken before any untrusted code runs --------------------------------------
    _send, _recv = chan.sendall, chan.recv
    _to_bytes = int.to_bytes
    _getpid, _exit = os.getpid, os._exit
    _gettrace, _getprofile = sys.gettrace, sys.getprofile
    _setitimer, _getitimer, _REAL = signal.setitimer, signal.getitimer, signal.ITIMER_REAL
    _exec, _compile = builtins.exec, builtins.compile
    _type, _len, _repr_int, _repr_float = builtins.type, builtins.len, int.__repr__, float.__repr__
    _join, _str_encode, _hex = str.join, str.encode, bytes.hex
    _items, _append, _pop = dict.items, list.append, list.pop
    _tname = type.__dict__["__name__"].__get__
    _is_list, _is_tuple, _is_dict, _is_set, _is_fset = (
        builtins.list,
        builtins.tuple,
        builtins.dict,
        builtins.set,
        builtins.frozenset,
    )
    _int, _float, _str, _bool, _bytes = builtins.int, builtins.float, builtins.str, builtins.bool, builtins.bytes
    _base_exc = builtins.BaseException
    _inf = float("inf")
    pid = _getpid()
    timers: list = []
    state = {"tampered": False}

    def send(text: str) -> None:
        data = _str_encode(text, "ascii")
        try:
            _send(_to_bytes(_len(data), 4, "big") + data)
        except OSError:
            _exit(3)

    class Unplain(Exception):
        pass

    def enc(v: object, depth: int, budget: list) -> str:
        """Strict JSON of exact built-in types (see the module docstring)."""
        t = _type(v)
        if v is None:
            out = "null"
        elif t is _bool:
            out = "true" if v is True else "false"
        elif t is _int:
            try:
                out = _repr_int(v)
            except ValueError:  # more digits than str() allows
                raise Unplain("int too large") from None
        elif t is _float:
            out = (
                '{"f":"nan"}'
                if v != v
                else '{"f":"inf"}'
                if v == _inf
                else '{"f":"-inf"}'
                if v == -_inf
                else _repr_float(v)
            )
        elif t is _str:
            out = encode_basestring_ascii(v)
        elif t is _bytes:
            out = '{"b":"' + _hex(v) + '"}'
        else:
            if depth > 100:
                raise Unplain("nested too deeply")
            if t is _is_list or t is _is_tuple or t is _is_set or t is _is_fset:
                parts = []
                for x in v:  # exact built-in containers: their own iterators
                    _append(parts, enc(x, depth + 1, budget))
                body = "[" + _join(",", parts) + "]"
                out = (
                    body
                    if t is _is_list
                    else ('{"t":' if t is _is_tuple else '{"s":' if t is _is_set else '{"fs":') + body + "}"
                )
            elif t is _is_dict:
                parts = []
                for k, x in _items(v):
                    _append(parts, "[" + enc(k, depth + 1, budget) + "," + enc(x, depth + 1, budget) + "]")
                out = '{"d":[' + _join(",", parts) + "]}"
            else:
                raise Unplain("a " + _tname(t) + ", not a plain built-in value")
        budget[0] -= _len(out)
        if budget[0] < 0:
            raise Unplain("value too large")
        return out

    def exc_name(e: object) -> str:
        name = _tname(_type(e))
        return encode_basestring_ascii(name if _type(name) is _str else "?")

    class Failure:
        __slots__ = ("name",)

        def __init__(self, name: str) -> None:
            self.name = name

    missing = Failure('"skipped"')

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError("code_exec: time limit of one test step")

    def rlvr_begin(index: int, n: int) -> list:
        _append(timers, _getitimer(_REAL)[0])
        _setitimer(_REAL, timeout)
        return [missing] * n

    def rlvr_fail(e: object) -> Failure:
        if timers:
            _setitimer(_REAL, timeout)  # the next operand of this assert gets its own time limit
        return Failure(exc_name(e))

    def rlvr_end(index: int, values: list) -> None:
        _setitimer(_REAL, 0)
        outer = _pop(timers) if timers else 0.0
        if _getpid() != pid:  # a forked child that came back into the tests: it has nothing to say
            _exit(0)
        why = ""
        if _gettrace() is not None or _getprofile() is not None:
            why = "a trace or profile function is set"
        elif scope.get("_rlvr_end") is not rlvr_end or scope.get("_rlvr_begin") is not rlvr_begin:
            why = "the harness functions were replaced"
        elif (
            _type(values) is not _is_list
            or _type(index) is not _int
            or not 0 <= index < _len(slot_counts)
            or _len(values) != slot_counts[index]
        ):
            why = "malformed check values"
        if why:
            if not state["tampered"]:
                state["tampered"] = True
                send('["x",' + encode_basestring_ascii(why) + "]")
            return
        parts = []
        budget = [max_bytes]
        for v in values:
            if _type(v) is Failure:
                _append(parts, '["e",' + v.name + "]")
                continue
            try:
                _append(parts, '["v",' + enc(v, 0, budget) + "]")
            except Unplain as exc:
                _append(parts, '["u",' + encode_basestring_ascii(_str(exc.args[0])) + "]")
            except _base_exc as exc:  # noqa: BLE001 - e.g. RecursionError, MemoryError
                _append(parts, '["u",' + exc_name(exc) + "]")
        send('["a",' + _repr_int(index) + ",[" + _join(",", parts) + "]]")
        if outer > 0:
            _setitimer(_REAL, outer)

    signal.signal(signal.SIGALRM, on_alarm)
    send('["h"]')
    if _recv(1) != b"k":  # the trainer has pinned this process: only now may untrusted code run
        _exit(4)

    # -- the solution, as module "solution" ----------------------------------------------------
    with open("solution.py", encoding="utf-8", errors="replace") as f:
        source = f.read()
    solution = {"__name__": "solution", "__builtins__": builtins}
    _setitimer(_REAL, timeout)
    try:
        _exec(_compile(source, "solution.py", "exec"), solution)
    except _base_exc as exc:  # noqa: BLE001 - any failure to load, SystemExit included
        _setitimer(_REAL, 0)
        if _getpid() == pid:
            send('["l",' + exc_name(exc) + "]")
        _exit(0)
    _setitimer(_REAL, 0)
    if _getpid() != pid:
        _exit(0)

    # -- the tests: their own namespace, seeded with the solution's names ---------------------
    scope = dict(solution)
    scope.update(
        {"__name__": "__rlvr_tests__", "_rlvr_begin": rlvr_begin, "_rlvr_end": rlvr_end, "_rlvr_fail": rlvr_fail}
    )
    for k, step in enumerate(steps):
        status = '""'
        _setitimer(_REAL, timeout)
        try:
            _exec(_compile(step, "test_%d" % k, "exec"), scope)
        except _base_exc as exc:  # noqa: BLE001 - a failing set-up step fails the asserts it would have run
            status = exc_name(exc)
        finally:
            _setitimer(_REAL, 0)
            del timers[:]
        if _getpid() != pid:
            _exit(0)
        send('["s",' + _repr_int(k) + "," + status + "]")
    send('["d"]')
    _exit(0)


_main()
