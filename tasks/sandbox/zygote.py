"""The sandbox's fork server: runs INSIDE bubblewrap, started only by tasks/sandbox/__init__.py.

Invoked as `python -I -S -B /datagen/zygote.py '<json config>'` inside a bwrap sandbox that has its
own user, pid, network (loopback only), IPC, UTS and cgroup namespaces and a filesystem holding only
the interpreter, the system libraries, the allowed site-packages (read-only) and an empty /tmp. It
imports nothing from the project and nothing outside the stdlib except the allowed modules it
preloads (sympy, numpy, ...), so a program pays no interpreter start and no import.

Protocol on fd 0 / fd 1: frames of a 4-byte big-endian length and UTF-8 JSON. First the server
sends {"ready": true, ...facts}; then each request {"id", "source", "entry", "limits"} gets one
reply {"id", "status", "value", "text", "repr", "error", "stdout", "wall_s"}, in completion order.

Each program runs in its own child P, forked right after unshare(CLONE_NEWPID) so that it is pid 1 of
a new pid namespace (the server then setns()es back for the next one); P unshares its own mount and
IPC namespaces. What is the same for every program the server sets once, before the first fork, and
each P inherits it: an empty bounding set and no ambient capabilities, no_new_privs, the signal
dispositions (SIGXFSZ ignored, SIGXCPU raising), an empty environment and the import policy (stdlib +
the allowed packages; anything else is ModuleNotFoundError). Before any program text is compiled, P:
  1. mounts its own /proc (its pid namespace only: it cannot see, trace or signal the server or its
     siblings) and its own size-capped /tmp and /dev/shm (made private first if any mount had peers);
  2. points fd 0 at /dev/null and fd 1/2 at a memfd (its prints), keeps the result memfd as fd 3
     and closes every other descriptor (the server's pipes, its siblings' files);
  3. sets rlimits (address space above what the preloaded interpreter already maps, CPU seconds,
     file size, open files, processes, no core files);
  4. drops its effective and permitted capabilities and loads a seccomp filter that refuses (EPERM)
     fork, exec, sockets, ptrace, mounts, namespaces, bpf, keys, module and kexec calls, io_uring and
     other process's memory; threads are allowed.
Then it runs the program, serializes what `entry()` returned and writes one result record to fd 3.
The server reads the record only after P has exited (and requires exactly one); a timeout SIGKILLs
P, which takes its whole pid namespace with it. What a program prints is only ever stdout.

A program that subverts the runner inside its own process (it shares it) can at most report a
value it could also have returned; it never sees the gold answer, which is compared outside.
"""
import sys

import builtins
import ctypes
import decimal
import gc
import json
import math
import numbers
import os
import resource
import select
import signal
import struct
import time

REPR_LIMIT = 200
TEXT_LIMIT = 100
ERROR_LIMIT = 300
RESULT_LIMIT = 4096  # bytes of result record the server reads
FRAME = struct.Struct(">I")
RESULT_FD = 3

# ------------------------------------------------------------------------------------------ kernel
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_THREAD = 0x00010000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_REC, MS_PRIVATE = 16384, 1 << 18
PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP = 4, 22, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
SECCOMP_MODE_FILTER = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Refused with EPERM. Numbers from the kernel headers (asm/unistd_64.h; asm-generic/unistd.h).
DENIED_SYSCALLS = (
    "fork", "vfork", "execve", "execveat", "socket", "socketpair", "ptrace", "process_vm_readv",
    "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "mount_setattr", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "bpf",
    "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "acct", "quotactl",
    "name_to_handle_at", "open_by_handle_at",
)
SYSCALLS = {
    "x86_64": (0xC000003E, {
        "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "execve": 59, "execveat": 322, "socket": 41,
        "socketpair": 53, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165,
        "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
        "mount_setattr": 442, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "keyctl": 250, "add_key": 248, "request_key": 249, "kexec_load": 246, "kexec_file_load": 320,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167,
        "swapoff": 168, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "acct": 163, "quotactl": 179, "name_to_handle_at": 303, "open_by_handle_at": 304,
    }),
    "aarch64": (0xC00000B7, {
        "clone": 220, "clone3": 435, "execve": 221, "execveat": 281, "socket": 198, "socketpair": 199,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40, "umount2": 39,
        "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "mount_setattr": 442,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219,
        "add_key": 217, "request_key": 218, "kexec_load": 104, "kexec_file_load": 294,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "reboot": 142, "swapon": 224,
        "swapoff": 225, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "acct": 89, "quotactl": 60, "name_to_handle_at": 264, "open_by_handle_at": 265,
    }),
}
EPERM, ENOSYS = 1, 38

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
for _name in ("unshare", "setns", "capset"):  # looked up now: a lookup in each program's process costs
    getattr(libc, _name)


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def prctl(option, arg=0, what="prctl"):
    _check(libc.prctl(option, arg, 0, 0, 0), what)


def mount(source, target, fstype, flags, data=None, what=None):
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    _check(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), what or f"mount {target}")


def seccomp_filter():
    """The BPF program (bytes) for this machine, or (None, reason) where it cannot be built."""
    machine = os.uname().machine
    if machine not in SYSCALLS:
        return None, f"no seccomp syscall table for {machine}"
    arch, numbers_ = SYSCALLS[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JGE, JSET, RET|K
    allow, kill = 0x7FFF0000, 0x80000000
    errno = lambda code: 0x00050000 | code  # noqa: E731
    op = lambda code, k, jt=0, jf=0: struct.pack("HBBI", code, jt, jf, k)  # noqa: E731
    prog = [op(ld, 4), op(jeq, arch, 1, 0), op(ret, kill), op(ld, 0)]
    if machine == "x86_64":  # the x32 ABI's numbers
        prog += [op(jge, 0x40000000, 0, 1), op(ret, errno(EPERM))]
    for name in DENIED_SYSCALLS:
        if name in numbers_:
            prog += [op(jeq, numbers_[name], 0, 1), op(ret, errno(EPERM))]
    # clone3 -> ENOSYS (libc falls back to clone); clone only with CLONE_THREAD (threads, not processes)
    prog += [op(jeq, numbers_["clone3"], 0, 1), op(ret, errno(ENOSYS))]
    prog += [op(jeq, numbers_["clone"], 0, 4), op(ld, 16), op(jset, CLONE_THREAD, 0, 1), op(ret, allow),
             op(ret, errno(EPERM))]
    prog += [op(ret, allow)]
    return b"".join(prog), None


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_fprog(program):
    """The filter as the kernel takes it, built once by the server (`program` must outlive it)."""
    return SockFprog(len(program) // 8, program)


def load_seccomp(fprog):
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")


def last_capability():
    with open("/proc/sys/kernel/cap_last_cap") as handle:
        return int(handle.read())


# Read by the server at start: a program's own /proc has no sysctls.
LAST_CAP = None
OWN_PID_NAMESPACE = None  # an fd on the server's pid namespace
MAKE_PRIVATE = True  # whether a program's mount namespace must be made private (some mount has peers)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def mounts_have_peers():
    """Whether any mount of the server's namespace is shared (has a peer group): only then could a
    program's own mounts propagate out of its namespace."""
    with open("/proc/self/mountinfo") as handle:
        return any(" shared:" in line.split(" - ")[0] for line in handle)


def drop_bounding_set(last):
    """Empties the bounding set (what an execve could ever grant). Done once, by the server: it never
    execs, and its children inherit the empty set (and may not exec anyway: seccomp)."""
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap, "drop bounding capability")


def set_what_programs_inherit(allowed):
    """What every program's process would otherwise set up again, set once in the server and inherited
    by each fork: an empty bounding set, no ambient capabilities and no_new_privs (none matters to a
    server that never execs), the signal dispositions, an empty environment and the import policy
    (the server imports nothing outside the stdlib after this)."""
    drop_bounding_set(LAST_CAP)
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    prctl(PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG errors, not death, on an oversized write
    signal.signal(signal.SIGXCPU, on_cpu_limit)  # the server itself has no CPU limit
    for other in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(other, signal.SIG_DFL)
    os.environ.clear()
    sys.meta_path.insert(0, ImportPolicy(allowed))


CAPSET_HEADER = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
CAPSET_NONE = bytes(24)  # two {effective, permitted, inheritable} u32 triples, all zero


def drop_capabilities():
    _check(libc.capset(CAPSET_HEADER, CAPSET_NONE), "capset")


# ------------------------------------------------------------------------------ program side (P)
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
        keep = text.encode("utf-8", "backslashreplace")[: self.room]
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


class ImportPolicy:
    """A meta-path finder that refuses top-level modules outside the stdlib and the allowed set."""

    def __init__(self, allowed):
        self.allowed = frozenset(allowed) | frozenset(sys.stdlib_module_names) | {
            name.partition(".")[0] for name in sys.modules
        }

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in self.allowed:
            raise ModuleNotFoundError(f"sandbox: module {top!r} is not allowed", name=name)
        return None


class CpuTimeLimitExceeded(BaseException):
    """At the soft RLIMIT_CPU; a BaseException so that `except Exception` cannot eat it. The kernel's
    SIGKILL one second later is the real enforcement (pid 1 ignores a default-action SIGXCPU)."""


def on_cpu_limit(signum, frame):
    raise CpuTimeLimitExceeded("CPU time limit exceeded")


def short_error(exc):
    try:
        message = str(exc).strip().splitlines()
    except BaseException:  # an exception class with a broken __str__
        message = []
    name = type(exc).__name__
    if isinstance(exc, SyntaxError):
        where = f" (line {exc.lineno})" if isinstance(exc.lineno, int) else ""
        return f"{name}: {exc.msg or ''}{where}"[:ERROR_LIMIT]
    return f"{name}: {message[0]}"[:ERROR_LIMIT] if message and message[0] else name


def describe(value):
    """The result record's fields for a returned value: a finite number, or text to parse, and a repr."""
    try:
        text_repr = repr(value)
        if not isinstance(text_repr, str):
            raise TypeError("__repr__ returned a non-string")
    except BaseException as exc:  # huge ints refuse repr (int_max_str_digits); odd objects raise
        text_repr = f"<unrepresentable {type(value).__name__}: {short_error(exc)}>"
    number = None
    text = None
    if isinstance(value, bool):
        pass  # True is an int in Python, but never an answer
    elif isinstance(value, (numbers.Real, decimal.Decimal)):  # int, float, Fraction register as Real
        try:
            number = float(value)
        except BaseException:
            number = None
        if not isinstance(number, float) or not math.isfinite(number):
            number = None
    elif isinstance(value, str):
        text = str.__getitem__(value, slice(0, TEXT_LIMIT))
    return {"ok": True, "value": number, "text": text, "repr": text_repr[:REPR_LIMIT]}


def encode_and_write(record, fd=RESULT_FD, _escape=json.encoder.encode_basestring_ascii, _float=float.__repr__,
                     _write=os.write):
    """One result line on fd 3, built from C functions bound when this module loaded (not json.dumps,
    which a program can replace): {"ok": ..., "value": ..., "text": ..., "repr": ..., "error": ...}."""
    parts = []
    for key in ("ok", "setup", "value", "text", "repr", "error"):
        if key not in record:
            continue
        value = record[key]
        if value is None:
            text = "null"
        elif value is True or value is False:
            text = "true" if value else "false"
        elif type(value) is float:
            text = _float(value)
        else:
            text = _escape(str(value))
        parts.append(_escape(key) + ":" + text)
    _write(fd, ("{" + ",".join(parts) + "}\n").encode("ascii"))


def private_mounts(limits, make_private):
    if make_private:  # else no mount here has peers (checked by the server): nothing can propagate
        mount(None, "/", None, MS_REC | MS_PRIVATE, what="make mounts private")
    # only /proc/<pid> and /proc/self: no sysctls, no sysrq-trigger, no host-wide files (Linux >= 5.8)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "subset=pid,hidepid=invisible",
          what="mount /proc with subset=pid (needs Linux 5.8 or later)")
    size = f"size={limits['tmp_mb']}m"
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=1777")
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"{size},mode=1777")


def address_space_now():
    """VmSize in bytes: the first field of /proc/self/statm (pages)."""
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        return int(os.read(fd, 200).split()[0]) * PAGE_SIZE
    finally:
        os.close(fd)


def run_child(request, out_fd, result_fd, fprog):
    """In P (pid 1 of its own namespaces). Never returns."""
    limits = request["limits"]
    # Bound to locals before any program text runs, so rebinding module globals (`__main__.describe
    # = ...`) or json.dumps does not change what is reported.
    describe_, short_error_, emit = describe, short_error, encode_and_write

    report_fd = result_fd  # until the result memfd is moved to RESULT_FD
    try:
        os.setsid()
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare mount and ipc namespaces")
        # (signal dispositions, the bounding set and the environment were set once by the server)
        private_mounts(limits, MAKE_PRIVATE)
        os.mkdir("/tmp/work")
        os.chdir("/tmp/work")
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.dup2(result_fd, RESULT_FD)
        report_fd = RESULT_FD
        os.closerange(RESULT_FD + 1, 1 << 16)
        memory = address_space_now() + limits["memory_mb"] * (1 << 20)
        for name, soft, hard in (
            ("RLIMIT_AS", memory, memory),
            ("RLIMIT_CPU", limits["cpu_s"], limits["cpu_s"] + 1),
            ("RLIMIT_FSIZE", limits["file_bytes"], limits["file_bytes"]),
            ("RLIMIT_NOFILE", limits["open_files"], limits["open_files"]),
            ("RLIMIT_CORE", 0, 0),
            ("RLIMIT_NPROC", limits["processes"], limits["processes"]),
        ):
            resource.setrlimit(getattr(resource, name), (soft, hard))
        drop_capabilities()
        if fprog is not None:
            load_seccomp(fprog)
        sys.stdout = sys.__stdout__ = BoundedWriter(1, limits["max_output_bytes"])
        sys.stderr = sys.__stderr__ = BoundedWriter(2, limits["max_output_bytes"])
        sys.stdin = sys.__stdin__ = None
        sys.argv = ["<program>"]
    except BaseException as exc:
        emit({"ok": False, "setup": True, "error": f"sandbox setup failed: {short_error(exc)}"}, report_fd)
        os._exit(0)
    builtins_, compile_, exec_, callable_ = builtins, compile, exec, callable

    try:
        code = compile_(request["source"], "<program>", "exec")
        namespace = {"__name__": "__sandbox__", "__builtins__": builtins_}
        exec_(code, namespace)
        entry = namespace.get(request["entry"])
        if not callable_(entry):
            raise NameError(f"entry function {request['entry']!r} is not defined")
        value = entry()
    except BaseException as exc:  # the program's own failure (SystemExit included) is a result
        record = {"ok": False, "error": short_error_(exc)}
        del exc  # drop the traceback's frames, e.g. a memory bomb's half-built list
    else:
        try:
            record = describe_(value)
        except BaseException as exc:
            record = {"ok": False, "error": f"unreadable return value: {short_error_(exc)}"}
    try:
        emit(record)
    except BaseException:
        pass
    os._exit(0)  # skip atexit handlers and finalizers the program may have registered


# ------------------------------------------------------------------------------------- the server
def read_frames(buffer):
    frames = []
    while len(buffer) >= 4:
        (size,) = FRAME.unpack_from(buffer)
        if len(buffer) < 4 + size:
            break
        frames.append(json.loads(bytes(buffer[4 : 4 + size])))
        del buffer[: 4 + size]
    return frames


def send(payload):
    data = json.dumps(payload, ensure_ascii=True).encode("ascii")
    frame = FRAME.pack(len(data)) + data
    while frame:
        written = os.write(1, frame)
        frame = frame[written:]


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def valid_record(record):
    """The record if it has exactly the shape the runner writes, else None."""
    if not isinstance(record, dict) or not isinstance(record.get("ok"), bool):
        return None
    if record["ok"]:
        value, text, text_repr = record.get("value"), record.get("text"), record.get("repr")
        if value is not None and (not isinstance(value, float) or not math.isfinite(value)):
            return None
        if text is not None and (not isinstance(text, str) or len(text) > TEXT_LIMIT):
            return None
        if not isinstance(text_repr, str) or len(text_repr) > REPR_LIMIT:
            return None
        return {"ok": True, "value": value, "text": text, "repr": text_repr}
    error = record.get("error")
    if not isinstance(error, str):
        return None
    return {"ok": False, "error": error[:ERROR_LIMIT], "setup": record.get("setup") is True}


class Running:
    def __init__(self, request, pid, out_fd, result_fd, started):
        self.request = request
        self.pid = pid
        self.out_fd = out_fd
        self.result_fd = result_fd
        self.started = started
        self.deadline = started + request["limits"]["timeout_s"]
        self.pidfd = os.pidfd_open(pid)
        self.timed_out = False


def launch(request, fprog):
    """Forks the program's process as pid 1 of a new pid namespace: unshare(CLONE_NEWPID) makes the
    next child the first of a new namespace, and setns() back to our own resets that for the next."""
    out_fd = os.memfd_create("stdout", 0)
    result_fd = os.memfd_create("result", 0)
    started = time.monotonic()
    try:
        _check(libc.unshare(CLONE_NEWPID), "unshare pid namespace")
        try:
            pid = os.fork()
            if pid == 0:
                try:
                    run_child(request, out_fd, result_fd, fprog)
                finally:
                    os._exit(1)
        finally:
            _check(libc.setns(OWN_PID_NAMESPACE, CLONE_NEWPID), "setns back to the server's pid namespace")
    except OSError as exc:
        for fd in (out_fd, result_fd):
            os.close(fd)
        return None, f"sandbox setup failed: {short_error(exc)}"
    return Running(request, pid, out_fd, result_fd, started), None


def finish(run, status_code):
    limits = run.request["limits"]
    wall_s = time.monotonic() - run.started
    printed = os.pread(run.out_fd, limits["max_output_bytes"], 0)
    raw = os.pread(run.result_fd, RESULT_LIMIT + 1, 0)
    for fd in (run.out_fd, run.result_fd, run.pidfd):
        os.close(fd)
    reply = {"id": run.request["id"], "stdout": printed.decode("utf-8", "replace"), "wall_s": wall_s,
             "value": None, "text": None, "repr": None, "error": None}
    if run.timed_out:
        return {**reply, "status": "timeout", "error": f"timeout after {limits['timeout_s']}s"}
    lines = raw.split(b"\n")
    record = None
    if len(raw) <= RESULT_LIMIT and len(lines) == 2 and lines[1] == b"":
        try:
            record = valid_record(json.loads(lines[0]))
        except ValueError:
            record = None
    if os.WIFSIGNALED(status_code):
        number = os.WTERMSIG(status_code)
        return {**reply, "status": "error", "error": f"killed by signal {number} ({signal_name(number)})"}
    code = os.WEXITSTATUS(status_code) if os.WIFEXITED(status_code) else -1
    if record is None or code != 0:
        why = "no result" if not raw else "a malformed result" if record is None else f"exit code {code}"
        return {**reply, "status": "error", "error": f"the program ended with {why}"}
    if not record["ok"]:
        return {**reply, "status": "error", "error": record["error"], "setup": record["setup"]}
    return {**reply, "status": "ok", "value": record["value"], "text": record["text"], "repr": record["repr"]}


def serve(config):
    seccomp_program, seccomp_reason = seccomp_filter() if config["seccomp"] else (None, "turned off")
    preloaded = []
    for module in config["preload"]:
        try:
            __import__(module)
            preloaded.append(module)
        except Exception:
            pass
    prctl(PR_SET_DUMPABLE, 0, "not dumpable")
    fprog = seccomp_fprog(seccomp_program) if seccomp_program is not None else None
    set_what_programs_inherit(config["allowed"])  # after the preloads (numpy read its environment)
    gc.collect()
    gc.freeze()  # the preloaded objects stay out of collections, so children do not copy their pages
    send({"ready": True, "pid": os.getpid(), "uid": os.getuid(), "python": sys.version.split()[0],
          "preloaded": preloaded, "seccomp": seccomp_program is not None, "seccomp_reason": seccomp_reason,
          "root": sorted(os.listdir("/"))})

    max_parallel = config["max_parallel"]
    queue = []
    running = {}  # pidfd -> Running
    buffer = bytearray()
    stdin_open = True
    poller = select.poll()
    poller.register(0, select.POLLIN)
    while stdin_open or queue or running:
        while queue and len(running) < max_parallel:
            request = queue.pop(0)
            run, failure = launch(request, fprog)
            if run is None:
                send({"id": request["id"], "status": "error", "error": failure, "setup": True, "stdout": "",
                      "wall_s": 0.0, "value": None, "text": None, "repr": None})
                continue
            running[run.pidfd] = run
            poller.register(run.pidfd, select.POLLIN)
        now = time.monotonic()
        wait_ms = None
        if running:
            wait_ms = max(0, min(run.deadline for run in running.values()) - now) * 1000
        for fd, _ in poller.poll(wait_ms):
            if fd == 0:
                chunk = os.read(0, 1 << 16)
                if not chunk:
                    stdin_open = False
                    poller.unregister(0)
                    continue
                buffer.extend(chunk)
                queue.extend(read_frames(buffer))
            elif fd in running:
                run = running.pop(fd)
                poller.unregister(fd)
                _, status_code = os.waitpid(run.pid, 0)
                send(finish(run, status_code))
        now = time.monotonic()
        for fd, run in list(running.items()):
            if now >= run.deadline and not run.timed_out:
                run.timed_out = True
                try:
                    os.kill(run.pid, signal.SIGKILL)  # pid 1 of its namespace: every process in it goes
                except ProcessLookupError:
                    pass
                run.deadline = now + 3600  # reaped when its pidfd turns readable


def own_namespaces():
    """Moves the server into a user and pid namespace of its own (it becomes their pid 1), so that it
    holds CAP_SYS_ADMIN over its pid namespace: setns() back to it after each program's unshare needs
    that, and when bwrap runs as an ordinary user its pid namespace is not owned by ours. The same uid
    and gid map through. The first process only waits and passes on the server's exit status."""
    uid, gid = os.geteuid(), os.getegid()
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWPID), "unshare user and pid namespaces")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    server = os.fork()
    if server != 0:
        _, status = os.waitpid(server, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def main():
    global LAST_CAP, OWN_PID_NAMESPACE, MAKE_PRIVATE
    LAST_CAP = last_capability()
    MAKE_PRIVATE = mounts_have_peers()
    OWN_PID_NAMESPACE = os.open("/proc/self/ns/pid", os.O_RDONLY)
    if libc.setns(OWN_PID_NAMESPACE, CLONE_NEWPID) != 0:  # bwrap ran as an ordinary user
        os.close(OWN_PID_NAMESPACE)
        own_namespaces()
        OWN_PID_NAMESPACE = os.open("/proc/self/ns/pid", os.O_RDONLY)
    config = json.loads(sys.argv[1])
    sys.path.extend(config["paths"])
    serve(config)


if __name__ == "__main__":
    main()
