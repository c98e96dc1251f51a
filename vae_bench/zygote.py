"""A sweep's zygote: one process that imports torch and vae_bench once and forks a child per job.

A job started as a fresh interpreter imports torch, Hydra and vae_bench anew: seconds per job,
far more than a tiny job's training. A fork of a process that holds them all starts in
milliseconds. The zygote is not the launcher's worker itself, because a fork copies only the
thread that calls it: a library whose thread pool has run (OpenMP's, after any parallel torch
op) would wait forever in the child for threads that are not there. So the zygote only imports,
never runs a torch op, and before every fork checks that it is still one thread; it refuses the
fork otherwise, and the job then starts as a fresh interpreter.

Each job is still a process of its own: killed, its signal is reported (the sweep records it
`killed` and goes on); its memory goes back to the system when it exits; it works in the
requester's folder, with the requester's environment and stdin/stdout/stderr; it gets SIGTERM
(checkpoint, `interrupted`) if its requester or the zygote goes away.

One connection per job on a Unix socket: the requester sends {"argv", "cwd", "env"} with its
stdin/stdout/stderr; the zygote answers {"pid"} once forked (or {"refused": why}), then
{"returncode"} when the child has ended (negative: the signal that ended it, as in subprocess).
Standard library only, up to the imports the zygote is asked to preload.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

# Read by native libraries when they load, i.e. in the zygote, before any fork: a requester
# whose values differ would get another behaviour from a fork than from a fresh interpreter.
LOAD_TIME_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "MALLOC_", "LD_", "PYTHON")
READY = b"listening\n"
HEADER = struct.Struct("!I")  # the length of the JSON message that follows
SEND_TIMEOUT = 10  # s, to connect and exchange a request
FORK_TIMEOUT = 300  # s: a sweep's first request waits for the zygote's imports (loaded: ~15 s)
START_TIMEOUT = 60  # s, for the zygote to listen (it does before its imports)
REPORT_GRACE = 10  # s after the child ended, for the zygote's report of how
STOP_TIMEOUT = 10  # s, for the zygote to exit once told to


class ZygoteUnavailable(Exception):
    """No fork from the zygote for this job; the message says why."""


class Channel:
    """Length-prefixed JSON messages over a stream socket, with file descriptors alongside."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.fds: list[int] = []

    def send(self, message: dict, fds: list[int] = ()) -> None:
        data = json.dumps(message).encode()
        frame = HEADER.pack(len(data)) + data
        sent = socket.send_fds(self.sock, [frame], list(fds)) if fds else 0
        self.sock.sendall(frame[sent:])

    def receive(self, with_fds: bool = False) -> dict | None:
        """The next message; None when the other end has closed the connection."""
        while True:
            if len(self.buffer) >= HEADER.size:
                (size,) = HEADER.unpack_from(self.buffer)
                end = HEADER.size + size
                if len(self.buffer) >= end:
                    message, self.buffer = self.buffer[HEADER.size:end], self.buffer[end:]
                    return json.loads(message)
            if with_fds and not self.fds:
                chunk, self.fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 3)
            else:
                chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffer += chunk


# ---- the zygote -------------------------------------------------------------------------------


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def load_time_environment(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith(LOAD_TIME_PREFIXES)}


def fork_refusal(env: dict[str, str], own_env: dict[str, str]) -> str | None:
    """Why this process must not fork a job for a requester with environment `env`, or None."""
    threads = thread_count()
    if threads != 1:
        return (f"the zygote runs {threads} threads: a thread pool has started, and a fork "
                "would copy only one of its threads")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "the zygote has initialised CUDA, which a forked child cannot use"
    env, own_env = load_time_environment(env), load_time_environment(own_env)
    differing = sorted(key for key in {*env, *own_env} if env.get(key) != own_env.get(key))
    if differing:
        return (f"the job's environment differs from the zygote's in {', '.join(differing)}, "
                "which libraries read when they load")
    return None


def set_parent_death_signal(parent_pid: int) -> None:
    """SIGTERM this process when its parent ends (Linux); at once if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's OpenBLAS starts its thread pool as it loads, unless told to use one thread.
    Training runs on torch's own BLAS (MKL, oneDNN); numpy's serves figures, where one thread
    is plenty. The jobs still see the requester's own OPENBLAS_NUM_THREADS, if any."""
    before = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = before


def serve(path: str, target: str, preload: list[str]) -> None:
    """Listen at `path`, import `preload`, then fork `target` ("module:function", called with a
    request's argv) for each request, until stdin closes (the sweep has ended)."""
    set_parent_death_signal(os.getppid())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the jobs; this one reports
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # its children get SIGTERM in turn
    try:
        listen_and_fork(path, target, preload)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(os.path.dirname(path))


def listen_and_fork(path: str, target: str, preload: list[str]) -> None:
    own_env = dict(os.environ)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    os.dup2(2, 1)  # its own output goes to stderr; the starter stops reading the pipe
    with one_blas_thread():
        for name in preload:
            importlib.import_module(name)
        module_name, function_name = target.split(":")
        run = getattr(importlib.import_module(module_name), function_name)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below via wake_write
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_read, selectors.EVENT_READ, "child ended")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "lifeline")
    children: dict[int, socket.socket | None] = {}  # pid -> its requester's connection
    inherited = [listener, selector, wake_read, wake_write, sys.stdin.fileno()]
    while True:
        for key, _ in selector.select(timeout=5):
            if key.data == "accept":
                fork_job(listener, run, own_env, children, selector, inherited)
            elif key.data == "child ended":
                os.read(wake_read, 4096)
            elif key.data == "lifeline":
                if not os.read(sys.stdin.fileno(), 4096):
                    return  # its owner stopped it or ended; running children get SIGTERM
            else:  # a requester's connection: it went away while its job runs
                requester_gone(key.data, children, selector)
        reap(children, selector)


def fork_job(listener, run: Callable, own_env: dict, children: dict, selector,
             inherited: list) -> None:
    conn, _ = listener.accept()
    conn.settimeout(SEND_TIMEOUT)
    channel = Channel(conn)
    try:
        request = channel.receive(with_fds=True)
        if request is None or len(channel.fds) != 3:
            raise ValueError("an incomplete request")
        refusal = fork_refusal(request["env"], own_env)
        if refusal:
            channel.send({"refused": refusal})
            raise ValueError(refusal)
    except (OSError, ValueError) as error:
        print(f"vae-bench zygote: no fork: {error}", file=sys.stderr, flush=True)
        for fd in channel.fds:
            os.close(fd)
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        connections = [c for c in children.values() if c is not None]
        os._exit(run_child(run, request, channel.fds, [*inherited, *connections, conn],
                           zygote_pid))
    for fd in channel.fds:
        os.close(fd)
    children[pid] = conn
    try:
        channel.send({"pid": pid})
    except OSError:  # the requester is gone already
        requester_gone(pid, children, selector)
        return
    selector.register(conn, selectors.EVENT_READ, pid)


def run_child(run: Callable, request: dict, fds: list[int], inherited: list,
              zygote_pid: int) -> int:
    """In the forked child: become the requester's job, run it, and return its exit code."""
    set_parent_death_signal(zygote_pid)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for thing in inherited:  # the zygote's sockets and pipes; sockets of other jobs
        if isinstance(thing, int):
            os.close(thing)
        else:
            thing.close()
    for standard_fd, fd in enumerate(fds):
        os.dup2(fd, standard_fd)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    code = 1
    try:
        run(request["argv"])
        code = 0
    except SystemExit as exit_:  # as the interpreter reads sys.exit's argument
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:  # as an interpreter would end: by the signal itself
        logging.shutdown()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
    logging.shutdown()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def requester_gone(pid: int, children: dict, selector) -> None:
    """As a child of a dead parent would: the job gets SIGTERM, checkpoints and ends."""
    conn = children.get(pid)
    if conn is not None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        conn.close()
        children[pid] = None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def reap(children: dict, selector) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.settimeout(SEND_TIMEOUT)
            Channel(conn).send({"returncode": os.waitstatus_to_exitcode(status)})
        conn.close()


# ---- the requester ------------------------------------------------------------------------------


def open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):  # gone already, or no pidfd here (Linux < 5.3)
        return None


def standard_fds() -> list[int]:
    """This process's stdin/stdout/stderr; /dev/null for any that is closed."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


class ZygoteChild:
    """A job the zygote forked, seen from its requester: the part of Popen that jobs.py uses."""

    def __init__(self, channel: Channel, pid: int):
        self.channel = channel
        self.pid = pid
        self.pidfd = open_pidfd(pid)

    def send_signal(self, signum: int) -> None:
        if self.pidfd is not None:
            signal.pidfd_send_signal(self.pidfd, signum)
        else:
            os.kill(self.pid, signum)

    def wait(self) -> int | None:
        """The child's exit code as Popen gives it; None when the zygote ended before reporting
        it (the child got SIGTERM then, and this waits until it has ended)."""
        try:
            return self._wait()
        finally:
            self.channel.sock.close()
            if self.pidfd is not None:
                os.close(self.pidfd)

    def _wait(self) -> int | None:
        selector = selectors.DefaultSelector()
        selector.register(self.channel.sock, selectors.EVENT_READ, "report")
        if self.pidfd is not None:
            selector.register(self.pidfd, selectors.EVENT_READ, "ended")
        ended_at = None
        while True:
            timeout = 1.0 if ended_at is None else ended_at + REPORT_GRACE - time.monotonic()
            if timeout <= 0:
                log.error("the zygote did not report how job %d ended", self.pid)
                return None
            for key, _ in selector.select(timeout):
                if key.data == "ended":
                    selector.unregister(self.pidfd)
                    ended_at = time.monotonic()
                    continue
                report = self.channel.receive()
                if report is not None:
                    return report["returncode"]
                self._wait_until_gone()
                return None

    def _wait_until_gone(self) -> None:
        if self.pidfd is not None:
            with selectors.DefaultSelector() as selector:
                selector.register(self.pidfd, selectors.EVENT_READ)
                selector.select()
            return
        while True:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


class Zygote:
    """A zygote this process started and owns: it forks `target` ("module:function", called with
    a job's argv) in the environment `env`, after importing `preload`. It ends when `stop` is
    called or this process ends (its lifeline, a pipe from this process, closes)."""

    def __init__(self, target: str, preload: list[str], env: dict[str, str]):
        self.env = env
        self.forks = 0
        self.folder = tempfile.mkdtemp(prefix="vae-bench-zygote-")
        self.path = os.path.join(self.folder, "socket")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vae_bench.zygote", self.path, target, *preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = bool(selector.select(START_TIMEOUT)) and self.process.stdout.readline() == READY
        self.process.stdout.close()
        if not ready:
            self.stop()
            raise ZygoteUnavailable(f"the zygote did not start (exit code {self.process.poll()})")

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def fork(self, argv: list[str], env: dict[str, str]) -> ZygoteChild:
        """A child running the target with `argv` and environment `env`, in this process's
        folder, with its stdin/stdout/stderr."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(SEND_TIMEOUT)
        channel = Channel(sock)
        try:
            sock.connect(self.path)
            channel.send({"argv": argv, "cwd": os.getcwd(), "env": env},
                         fds=standard_fds())
            sock.settimeout(FORK_TIMEOUT)  # the first answer waits for the zygote's imports
            answer = channel.receive()
        except TimeoutError:
            sock.close()
            raise ZygoteUnavailable(f"the zygote did not answer in {FORK_TIMEOUT} s") from None
        except OSError as error:
            sock.close()
            raise ZygoteUnavailable(f"the zygote cannot be reached ({error})") from None
        if answer is None or "pid" not in answer:
            sock.close()
            why = answer["refused"] if answer else "it has ended"
            raise ZygoteUnavailable(f"the zygote did not fork: {why}")
        sock.settimeout(None)
        self.forks += 1
        return ZygoteChild(channel, answer["pid"])

    def stop(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()  # its lifeline: it exits
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3:])
    # Nothing is left to flush or close but stdio: skip the interpreter's teardown of torch and
    # the rest (seconds on a loaded machine, which the sweep's last line would wait for).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
