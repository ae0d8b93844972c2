"""One of the processes a notebook's cells run in, one per GPU (medical_r1.gpu_processes starts them): it makes its
GPU current before anything touches CUDA, joins the others in a torch.distributed group, checks once that a tensor
goes round them, then runs each cell the notebook sends in a real IPython shell, so magics, shell lines (`!`),
`%%time`, displays with display ids, matplotlib's inline figures and the last expression's value behave as in the
notebook's own kernel. The first process sends back what it shows: its standard output and error are captured at
the file-descriptor level, as ipykernel captures them, so `fileno()`, faulthandler and a subprocess's output work
and reach the cell. The other processes log to their file and keep quiet, as the processes of torchrun do here.
After each cell the first process sends back its plain variables, so the kernel's own stay those of the notebook
(an edited parameter, then Run all, starts the next processes from the new value).
"""
from __future__ import annotations

import builtins
import codecs
import ctypes
import getpass
import os
import signal
import sys
import threading
from multiprocessing.connection import Client

from medical_r1.cell_namespace import INSTALL_PREFIXES, changed_plain_values, start_namespace, user_names

PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies
SYNC_MARK = b"\x00medical_r1:sync\x00"  # written after a cell: what was before it has reached the notebook


def die_with_parent() -> None:
    """SIGKILL when the notebook's kernel dies (killed, restarted): no orphan keeps holding a GPU. Linux only, as
    Kaggle and Colab are; elsewhere the worker still ends at the next message, when the connection closes."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class CapturedFd:
    """File descriptor 1 or 2 of the first process, redirected into a pipe whose reader thread sends what arrives
    to the notebook (and appends it to the process's log). Python's print, C libraries and subprocesses all write
    there, as in ipykernel."""

    def __init__(self, fd: int, name: str, send, log):
        self.fd, self.name, self._send, self._log = fd, name, send, log
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self._read_end, self._synced = read_end, threading.Event()
        threading.Thread(target=self._forward, daemon=True).start()

    def _forward(self) -> None:
        decoder, pending = codecs.getincrementaldecoder("utf-8")("replace"), b""
        while chunk := os.read(self._read_end, 65536):
            pending += chunk
            while True:
                mark = pending.find(SYNC_MARK)
                # hold back only a tail that begins a mark split across two reads: text goes on whole, at once
                cut = mark if mark >= 0 else len(pending) - mark_prefix_length(pending)
                text = decoder.decode(pending[:cut])
                if text:
                    self._send(("stream", self.name, text))
                    self._log.write(text)
                    self._log.flush()
                if mark < 0:
                    pending = pending[cut:]
                    break
                pending = pending[mark + len(SYNC_MARK):]
                self._synced.set()

    def sync(self, timeout: float = 10.0) -> None:
        """Return once everything written to the descriptor so far has been sent."""
        self._synced.clear()
        os.write(self.fd, SYNC_MARK)
        self._synced.wait(timeout)


def mark_prefix_length(pending: bytes) -> int:
    """How many bytes at the end of `pending` could be the beginning of SYNC_MARK (0 for ordinary text)."""
    for n in range(min(len(pending), len(SYNC_MARK) - 1), 0, -1):
        if SYNC_MARK.startswith(pending[-n:]):
            return n
    return 0


def flush_output(captured: list) -> None:
    """Everything printed so far (Python's buffers, then the descriptors' pipes) sent to the notebook: before a
    display, so that a line printed before it is not shown after it, and after a cell."""
    sys.stdout.flush()
    sys.stderr.flush()
    for each in captured:
        each.sync()


def make_shell(rank: int, namespace: dict, send, captured: list):
    """A real IPython shell for the cells: its displays and its last expression's value go to the notebook (first
    process) or nowhere (the others); its tracebacks come back as the cell's error, without colours."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class ForwardingPublisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            if rank == 0:
                flush_output(captured)
                send(("display", data, metadata or {}, transient or {}, update))

        def clear_output(self, wait=False):
            if rank == 0:
                flush_output(captured)
                send(("clear", wait))

    class ForwardingDisplayHook(DisplayHook):
        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            if rank == 0:
                flush_output(captured)
                send(("display", format_dict, md_dict or {}, {}, False))

    class CellShell(InteractiveShell):
        display_pub_class = ForwardingPublisher
        displayhook_class = ForwardingDisplayHook
        last_error = None

        def _showtraceback(self, etype, evalue, stb):
            self.last_error = f"{etype.__name__}: {evalue}\n\n" + self.InteractiveTB.stb2text(stb)

    # tqdm.auto decides at import between widgets and text; widgets need the kernel's comms, which this process
    # has not, so it takes text bars (carriage returns, which Jupyter draws in place) before the shell says below
    # that it is a kernel's.
    import tqdm.autonotebook  # noqa: F401

    shell = CellShell.instance(user_ns=namespace, colors="nocolor")
    # transformers (is_in_notebook) shows its trainer's progress as one table updated in place when the shell is a
    # kernel's; the notebook shows it so with one GPU.
    shell.config.IPKernelApp = Config()
    if rank:
        shell.input_transformers_post.append(skip_installs)
    return shell


def skip_installs(lines: list[str]) -> list[str]:
    """In the processes after the first: install lines become `pass` (the first process runs them for all)."""
    return [line[:len(line) - len(line.lstrip())] + "pass\n" if line.lstrip().startswith(INSTALL_PREFIXES) else line
            for line in lines]


def asked_input(send, receive):
    """input() and getpass() that ask the notebook (the kernel asks the person once for all the processes)."""
    def ask(prompt: str = "", password: bool = False) -> str:
        send(("input", str(prompt), password))
        reply = receive()
        if not isinstance(reply, str):  # stopped while asking
            raise SystemExit(0)
        return reply

    return ask, lambda prompt="Password: ", stream=None: ask(prompt, True)


def main() -> None:
    die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # ends as an exit: atexit hooks run
    host, port = os.environ["MEDICAL_R1_WORKER_ADDRESS"].rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ["MEDICAL_R1_WORKER_KEY"]))
    lock = threading.Lock()

    def send(message) -> None:
        with lock:
            conn.send(message)

    rank = int(os.environ["RANK"])
    from medical_r1.runtime import bind_process_gpu, check_processes_reach_each_other, join_process_group

    bind_process_gpu()  # this process's GPU before any CUDA call, so GPU 0 holds no context of the others
    send(("joining", rank))
    start = conn.recv()
    os.chdir(start["cwd"])
    namespace = start_namespace(start)
    captured = []
    if rank == 0:
        log = open(os.environ["MEDICAL_R1_WORKER_LOG"], "a", encoding="utf-8")  # noqa: SIM115 (life of the process)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            captured.append(CapturedFd(fd, name, send, log))
        sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    builtins.input, getpass.getpass = asked_input(send, conn.recv)
    backend = join_process_group()
    check_processes_reach_each_other()
    shell = make_shell(rank, namespace, send, captured)
    sent_values: dict[str, int] = {}
    changed_plain_values(namespace, sent_values)  # the kernel has these already
    send(("ready", rank, backend))
    while True:
        try:
            kind, source = conn.recv()
        except EOFError:  # the notebook's kernel went away
            return
        if kind == "stop":
            return
        shell.last_error = None
        result = shell.run_cell(source, store_history=True)
        error = None if result.success else (shell.last_error or f"{type(result.error_in_exec).__name__}: "
                                                                   f"{result.error_in_exec}")
        flush_output(captured)
        if rank == 0:
            send(("namespace", *changed_plain_values(namespace, sent_values), user_names(namespace)))
        send(("done", rank, error))
