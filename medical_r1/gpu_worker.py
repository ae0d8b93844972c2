"""One of the processes a notebook's cells run in, one per GPU (medical_r1.gpu_processes starts them): it makes its
GPU current before anything touches CUDA, joins the others in a torch.distributed group, then runs each cell the
notebook sends, in one namespace that lives as long as the process. The first process sends back what the cell
prints and displays; the others keep quiet, as the processes of torchrun do here (runtime.setup_script_run).
"""
from __future__ import annotations

import ast
import base64
import ctypes
import io
import os
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Client

PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def die_with_parent() -> None:
    """SIGKILL when the notebook's kernel dies (killed, restarted): no orphan keeps holding a GPU. Linux only, as
    Kaggle and Colab are; elsewhere the worker still ends at the next message, when the connection closes."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class ForwardedStream(io.TextIOBase):
    """sys.stdout or sys.stderr of the first process: each write goes to the notebook's cell as it happens."""

    def __init__(self, send, name: str):
        self._send, self.name = send, name

    @property
    def encoding(self):
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            self._send(("stream", self.name, text))
        return len(text)

    def isatty(self) -> bool:
        return False


def mime_bundle(obj) -> dict:
    """What Jupyter would show for obj (HTML, PNG, Markdown, text), as IPython's own formatter writes it."""
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(obj)
    for mime, value in data.items():
        if isinstance(value, bytes):
            data[mime] = base64.b64encode(value).decode("ascii")
    return data


def forward_displays(send) -> None:
    """IPython's display() (which the helpers and pandas call) sends its bundles to the notebook instead."""
    try:
        import IPython.core.display_functions as functions
        import IPython.display
    except ImportError:
        return

    def display(*objs, **kwargs):
        for obj in objs:
            send(("display", obj if kwargs.get("raw") else mime_bundle(obj)))

    functions.display = IPython.display.display = display


def run_cell(source: str, namespace: dict) -> None:
    """Run a cell's code as Jupyter does: its last line, if an expression with a value, is displayed."""
    tree = ast.parse(source, "<cell>")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
        if value is not None:
            from IPython.display import display

            display(value)


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
    from medical_r1.runtime import bind_process_gpu, join_process_group

    bind_process_gpu()  # this process's GPU before any CUDA call, so GPU 0 holds no context of the others
    start = conn.recv()
    os.chdir(start["cwd"])
    namespace = {"__name__": "__main__", **start["namespace"]}
    if rank == 0:
        sys.stdout, sys.stderr = ForwardedStream(send, "stdout"), ForwardedStream(send, "stderr")
    else:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    forward_displays(send if rank == 0 else (lambda message: None))
    send(("ready", rank, join_process_group()))
    while True:
        try:
            kind, source = conn.recv()
        except EOFError:  # the notebook's kernel went away
            return
        if kind == "stop":
            return
        try:
            run_cell(source, namespace)
            error = None
        except BaseException as err:  # noqa: BLE001 (every failure goes back to the notebook, then we stop)
            frames = err.__traceback__
            while frames is not None and frames.tb_frame.f_code.co_filename == __file__:  # the cell's own frames
                frames = frames.tb_next
            # what failed first (a sweep's row, the first line people read), then where
            error = f"{type(err).__name__}: {err}\n\n" + "".join(traceback.format_exception(type(err), err, frames))
        sys.stdout.flush()
        send(("done", rank, error))
