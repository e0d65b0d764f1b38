"""Runs ONE untrusted program inside the sandbox process; started only by tasks/sandbox/__init__.py.

Invoked as `python -I -S -B runner.py '<json config>'` (inside `unshare` where available).
It imports nothing from the project and nothing outside the stdlib (with -S there is no site-packages).
Steps, in order, before any untrusted code runs:
  1. apply the kernel rlimits (address space, CPU, file size, open files, no core files);
  2. read the program source and preload the stdlib modules a math program may import;
  3. when started as root, drop to the unprivileged uid/gid and then cap RLIMIT_NPROC
     (the kernel does not enforce NPROC for root);
  4. clear os.environ (CPython's C-locale coercion puts LC_CTYPE back even with env={});
  5. send the program's prints (sys.stdout/sys.stderr) to a bounded writer on fd 1 / fd 2;
  6. optionally install an audit hook that blocks sockets, subprocesses, exec, fork, ctypes.
Then it execs the source in a fresh dict, calls the entry function and writes the result as one
JSON line, prefixed by RESULT_MARKER, on a private duplicate of the real stdout.

Example result line: `\\n\\x1e{"ok": true, "value": 72.0, "text": null, "repr": "72"}`
"""
import sys

# Everything the runner needs is imported up front: after the privilege drop the interpreter's own
# stdlib may be unreadable (e.g. a Python installed under /root), so late imports would fail.
import builtins
import decimal
import json
import math
import numbers
import os
import resource
import signal

RESULT_MARKER = "\x1e"  # ASCII record separator: cannot come from an ordinary print of text
REPR_LIMIT = 200
TEXT_LIMIT = 100

# Audit events refused when the audit hook is on. This is the second layer only: the kernel
# layers (netns, pidns, rlimits, uid) must contain the program without it.
BLOCKED_AUDIT_PREFIXES = (
    "socket.",
    "subprocess.",
    "os.system",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "ctypes.",
    "pty.spawn",
)


class BoundedWriter:
    """A text stream that writes at most `limit` bytes to `fd` and silently drops the rest."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, fd, limit):
        self.fd = fd
        self.room = limit

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        data = text.encode("utf-8", "backslashreplace")
        keep = data[: self.room]
        if keep:
            self.room -= len(keep)
            try:
                os.write(self.fd, keep)
            except OSError:
                self.room = 0
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass

    def isatty(self):
        return False

    def fileno(self):
        return self.fd

    def readable(self):
        return False

    def writable(self):
        return True

    @property
    def closed(self):
        return False


class CpuTimeLimitExceeded(BaseException):
    """Raised at the soft RLIMIT_CPU; a BaseException so `except Exception` in the program cannot eat it.

    The kernel's SIGKILL at the hard limit (one second later) is the real enforcement; the handler
    exists because the runner is pid 1 of its namespace, where a default-action SIGXCPU is ignored.
    """


def on_cpu_limit(signum, frame):
    raise CpuTimeLimitExceeded("CPU time limit exceeded")


def apply_rlimits(limits):
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))


def drop_privileges(uid, gid):
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError("privilege drop did not take effect")


def make_audit_hook():
    def hook(event, args):
        if event.startswith(BLOCKED_AUDIT_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")

    return hook


def short_error(exc):
    try:
        message = str(exc).strip().splitlines()
    except Exception:  # an exception class with a broken __str__
        message = []
    name = type(exc).__name__
    if isinstance(exc, SyntaxError):
        detail = exc.msg or ""
        where = f" (line {exc.lineno})" if exc.lineno else ""
        return f"{name}: {detail}{where}"[:300]
    return f"{name}: {message[0]}"[:300] if message and message[0] else name


def describe(value):
    """(numeric value or None, text to parse or None, truncated repr) of a return value."""
    try:
        text_repr = repr(value)
    except Exception as exc:  # huge ints refuse repr (int_max_str_digits); odd objects raise
        text_repr = f"<unrepresentable {type(value).__name__}: {short_error(exc)}>"
    text_repr = text_repr[:REPR_LIMIT]
    number = None
    text = None
    if isinstance(value, bool):
        pass  # True is an int in Python, but never an answer
    elif isinstance(value, (numbers.Real, decimal.Decimal)):  # int, float, Fraction register as Real
        try:
            number = float(value)
        except (OverflowError, ValueError, TypeError, ArithmeticError):
            number = None
        if number is not None and not math.isfinite(number):
            number = None
    elif isinstance(value, str):
        text = value[:TEXT_LIMIT]
    return number, text, text_repr


def main():
    config = json.loads(sys.argv[1])
    main_pid = os.getpid()
    result_fd = os.dup(1)  # the result line goes here; the program's prints go through fd 1

    # Kernel-generated SIGXFSZ would kill us on an oversized write; EFBIG errors are friendlier.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGXCPU, on_cpu_limit)
    apply_rlimits(config["rlimits"])
    with open(config["program"], encoding="utf-8", errors="replace") as handle:
        source = handle.read()
    for module in config["preload"]:
        try:
            __import__(module)
        except ImportError:
            pass
    if config["uid"] is not None:
        drop_privileges(config["uid"], config["gid"])
    resource.setrlimit(resource.RLIMIT_NPROC, (config["max_processes"], config["max_processes"]))
    os.environ.clear()  # also calls unsetenv, so C code and children see an empty environment

    stdout = BoundedWriter(1, config["max_output_bytes"])
    stderr = BoundedWriter(2, config["max_output_bytes"])
    sys.stdout = sys.__stdout__ = stdout
    sys.stderr = sys.__stderr__ = stderr
    sys.stdin = None

    def emit(payload):
        if os.getpid() != main_pid:
            os._exit(0)  # a forked copy of the runner must never report a result
        # Always on a line of its own: the parent strips exactly this leading newline.
        line = "\n" + RESULT_MARKER + json.dumps(payload) + "\n"
        os.write(result_fd, line.encode("utf-8", "backslashreplace"))

    if config["audit_hook"]:
        sys.addaudithook(make_audit_hook())

    try:
        code = compile(source, "<program>", "exec")
        namespace = {"__name__": "__sandbox__", "__builtins__": builtins}
        exec(code, namespace)
        entry = namespace.get(config["entry"])
        if not callable(entry):
            raise NameError(f"entry function {config['entry']!r} is not defined")
        value = entry()
    except BaseException as exc:  # the program's own failure (incl. SystemExit) is a result
        error = short_error(exc)
        del exc  # drop the traceback's frames, e.g. a memory bomb's half-built list
        emit({"ok": False, "error": error})
    else:
        number, text, text_repr = describe(value)
        emit({"ok": True, "value": number, "text": text, "repr": text_repr})
    os._exit(0)  # skip atexit handlers and finalizers the program may have registered


if __name__ == "__main__":
    main()
