"""A notebook's cells on every GPU: with NUM_GPUS above 1 (Kaggle's T4 x2), the cells after
run_cells_on_all_gpus run in one process per GPU (medical_r1.gpu_worker), each cell as the notebook holds it, sent
to all of them when Jupyter, papermill or Kaggle's "Run all" runs it. The trainers train data-parallel in them as
under torchrun; generate_answers splits its batches across them. The first process's output streams into the cell.

Why this and not accelerate's notebook_launcher or a torchrun line: notebook_launcher forks the kernel, so the code
must sit in a function defined in a cell (hiding the library calls people read) and CUDA must be untouched in the
kernel; torchrun needs the notebook as a script file, which a notebook opened alone on Kaggle or Colab does not have.
Here the cells stay the code that runs, edits included, and the kernel never touches a GPU: it only waits on the
processes, so a process that dies, or Interrupt, ends the cell at once and stops them all.
"""
from __future__ import annotations

import atexit
import json
import os
import pathlib
import secrets
import select
import subprocess
import sys
import time
from multiprocessing.connection import Listener, wait

from medical_r1.params import check_num_gpus

LAUNCH_CALL = "run_cells_on_all_gpus("  # the cell holding it runs in the kernel, also when run again
# Lab only: every process on GPU 0 and the gloo backend (NCCL refuses two processes on one GPU), so one big GPU
# proves the path in T4 mode (lab/gpu/check_t4.py); never set on Kaggle.
SHARE_ONE_GPU = "MEDICAL_R1_SHARE_ONE_GPU"
START_TIMEOUT_S = 300  # for each process to connect (an import of torch on a busy disk)
ERROR_GRACE_S = 10  # after one process fails, how long the others have to fail the same way before all stop
STOP_GRACE_S = 3  # a kernel shut down is killed after 5 s (jupyter_client), its processes with it
TAIL_CHARS = 3000


def visible_gpus() -> int:
    """GPUs torch can see, counted without creating a CUDA context in this process."""
    import torch

    return torch.cuda.device_count()


def resolve_num_gpus(num_gpus, gpus: int, share_one_gpu: bool = False) -> tuple[int, str]:
    """(processes, why): "auto" takes every visible GPU (1 on a machine without one), a number asks for that many.
    More than one without GPUs runs that many CPU processes (gloo), for the tests and the demo."""
    if num_gpus == "auto":
        n = max(gpus, 1)
        return n, f"NUM_GPUS = 'auto': {gpus} GPU{'s' if gpus != 1 else ''} visible"
    check_num_gpus(num_gpus, "NUM_GPUS")
    if gpus and num_gpus > gpus and not share_one_gpu:
        raise ValueError(f"NUM_GPUS = {num_gpus}, but this machine has {gpus} GPU{'s' if gpus != 1 else ''}: set "
                         f"NUM_GPUS = 'auto' or at most {gpus} (on Kaggle, Settings > Accelerator > GPU T4 x2)")
    return num_gpus, f"NUM_GPUS = {num_gpus}" + ("" if gpus else " (no GPU: CPU processes, for tests and the demo)")


def plain_values(namespace: dict) -> dict:
    """The notebook's variables a process can start from: the parameters and other plain values, not modules,
    functions or IPython's own."""
    def plain(value) -> bool:
        if value is None or isinstance(value, (bool, int, float, str)):
            return True
        if isinstance(value, (list, tuple)):
            return all(map(plain, value))
        return isinstance(value, dict) and all(isinstance(k, str) and plain(v) for k, v in value.items())

    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and k not in ("In", "Out", "exit", "quit") and plain(v)}


def newest_checkpoint(work_dir) -> str | None:
    """The most recently written checkpoint-N folder under work_dir (03's or 07's), or None."""
    found = [p for p in pathlib.Path(work_dir).glob("**/checkpoint-*") if p.is_dir()]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


class GpuProcessError(RuntimeError):
    """A cell failed in one of the processes; the message is that process's."""


class GpuProcesses:
    """The running processes, one per GPU, and the connection to each."""

    def __init__(self, count: int, namespace: dict, share_one_gpu: bool = False):
        self.count, self.work_dir = count, namespace.get("WORK_DIR", ".")
        self.listener = Listener(("127.0.0.1", 0), authkey=secrets.token_bytes(32))
        self.logs = [pathlib.Path(self.work_dir) / "logs" / f"gpu_process_{rank}.log" for rank in range(count)]
        self.processes, self.conns = [], {}
        try:
            self._start(namespace, share_one_gpu)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)

    def _start(self, namespace: dict, share_one_gpu: bool) -> None:
        port = self._free_port()
        for rank in range(self.count):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": "0" if share_one_gpu else str(rank),
                   "WORLD_SIZE": str(self.count), "LOCAL_WORLD_SIZE": "1" if share_one_gpu else str(self.count),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONUNBUFFERED": "1",
                   "MEDICAL_R1_WORKER_ADDRESS": "127.0.0.1:%d" % self.listener.address[1],
                   "MEDICAL_R1_WORKER_KEY": self.listener._authkey.hex(),
                   "MEDICAL_R1_WORKER_PATH": json.dumps([p for p in sys.path if p])}
            if share_one_gpu:
                env["MEDICAL_R1_PROCESS_BACKEND"] = "gloo"
            self.logs[rank].parent.mkdir(parents=True, exist_ok=True)
            with open(self.logs[rank], "w") as log:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-c", "import json, os, sys; sys.path[:0] = json.loads(os.environ["
                     "'MEDICAL_R1_WORKER_PATH']); from medical_r1.gpu_worker import main; main()"],
                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + START_TIMEOUT_S
        server = self.listener._listener._socket
        while len(self.conns) < self.count:
            self._raise_if_any_died()
            if time.monotonic() > deadline:
                raise GpuProcessError(f"the GPU processes did not start within {START_TIMEOUT_S} s; their logs: "
                                      f"{self.logs[0].parent}")
            if select.select([server], [], [], 0.5)[0]:
                conn = self.listener.accept()
                conn.send({"cwd": os.getcwd(), "namespace": plain_values(namespace)})
                self.conns[len(self.conns)] = conn
        by_rank = {}
        for conn in self.conns.values():
            kind, rank, backend = self._receive_ready(conn)
            by_rank[rank] = conn
        self.conns, self.backend = by_rank, backend

    def _receive_ready(self, conn):
        try:
            while not conn.poll(0.5):
                self._raise_if_any_died()
            return conn.recv()
        except (EOFError, OSError):  # it went away while starting
            for process in self.processes:
                try:
                    process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            self._raise_if_any_died()
            raise

    @staticmethod
    def _free_port() -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def _tail(self, rank: int) -> str:
        try:
            return self.logs[rank].read_text(errors="replace")[-TAIL_CHARS:]
        except OSError:
            return ""

    def _death(self, rank: int) -> str:
        code = self.processes[rank].returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        hint = " (signal 9: most often the machine ran out of memory)" if code == -9 else ""
        return f"{how}{hint}; the end of its log ({self.logs[rank]}):\n{self._tail(rank)}"

    def _raise_if_any_died(self) -> None:
        for rank, process in enumerate(self.processes):
            if process.poll() is not None:
                raise GpuProcessError(f"GPU process {rank} {self._death(rank)}")

    def run_cell(self, source: str) -> None:
        """Run a cell in every process; print and display what the first one shows; raise where one fails."""
        from IPython.display import display

        for conn in self.conns.values():
            conn.send(("cell", source))
        pending, errors, deadline = set(self.conns), {}, None
        try:
            while pending and (deadline is None or time.monotonic() < deadline):
                for conn in wait([self.conns[r] for r in pending], timeout=0.5):
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):  # it went away: its exit is read below
                        rank = next(r for r, c in self.conns.items() if c is conn)
                        try:
                            self.processes[rank].wait(timeout=STOP_GRACE_S)
                        except subprocess.TimeoutExpired:
                            self.processes[rank].kill()
                            self.processes[rank].wait()
                        continue
                    if message[0] == "stream":
                        (sys.stdout if message[1] == "stdout" else sys.stderr).write(message[2])
                    elif message[0] == "display":
                        display(message[1], raw=True)
                    elif message[0] == "done":
                        pending.discard(message[1])
                        if message[2] is not None:
                            errors[message[1]] = message[2]
                            deadline = deadline or time.monotonic() + ERROR_GRACE_S
                for rank in [r for r in pending if self.processes[r].poll() is not None]:
                    errors[rank] = self._death(rank)
                    pending.discard(rank)
                    deadline = time.monotonic()  # a process is gone: the others cannot finish
        except KeyboardInterrupt:
            self.stop()
            print(f"Interrupted: the {self.count} GPU processes were stopped; run the notebook from the top to "
                  "start them again", file=sys.stderr)
            raise
        if errors:
            same_everywhere = not pending and len(errors) == self.count and len(set(errors.values())) == 1
            if not same_everywhere:  # a process is gone or stuck: stop them all, none may hold a GPU
                self.stop()
            raise GpuProcessError(self._failure(min(errors), errors[min(errors)], stopped=not same_everywhere))

    def _failure(self, rank: int, error: str, stopped: bool) -> str:
        text = f"GPU process {rank} of {self.count} failed: {error.rstrip()}\n"
        if not stopped:
            return text + ("(every process failed the same way and they are still running: fix the cell and run it "
                           "again)")
        checkpoint = newest_checkpoint(self.work_dir)
        resume = (f"The last checkpoint is {checkpoint}: run the notebook again (RESUME = True resumes from it, "
                  "with any NUM_GPUS)." if checkpoint else "No checkpoint was written yet.")
        return text + f"The other processes were stopped. {resume}"

    def stop(self) -> None:
        """End every process: asked first, then terminated, then killed. No process is left holding a GPU."""
        for conn in self.conns.values():
            try:
                conn.send(("stop", None))
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for conn in self.conns.values():
            conn.close()
        self.conns = {}
        self.listener.close()
        ACTIVE.pop(id(self), None)

    @property
    def running(self) -> bool:
        return bool(self.conns) and all(p.poll() is None for p in self.processes)


ACTIVE: dict[int, GpuProcesses] = {}  # the kernel's processes (at most one set)
_USER_CELL = {"now": False}  # whether the kernel is running a cell of the notebook (not a silent request)


def run_in_gpu_processes(source: str) -> None:
    """What each cell after run_cells_on_all_gpus becomes in the kernel (gpu_cells_transformer)."""
    from IPython import get_ipython

    if not _USER_CELL["now"]:  # a front end's silent request (a variable inspector): the kernel answers it
        exec(source, get_ipython().user_ns)
        return
    processes = next(iter(ACTIVE.values()), None)
    if processes is None or not processes.running:
        raise GpuProcessError("The GPU processes were stopped (see the message above): run the notebook from the "
                              "top (Run all) to start them again.")
    processes.run_cell(source)


def gpu_cells_transformer(lines: list[str]) -> list[str]:
    """IPython input transformer: a cell's code becomes a call that sends it to the processes. The launching cell
    and empty cells stay in the kernel."""
    source = "".join(lines)
    if not source.strip() or LAUNCH_CALL in source:
        return lines
    return [f"__import__('medical_r1.gpu_processes').gpu_processes.run_in_gpu_processes({source!r})\n"]


def _install_transformer(shell) -> None:
    if gpu_cells_transformer not in shell.input_transformers_post:
        shell.input_transformers_post.append(gpu_cells_transformer)
        shell.events.register("pre_execute", lambda: _USER_CELL.update(now=False))
        shell.events.register("pre_run_cell", lambda info: _USER_CELL.update(now=True))


def run_cells_on_all_gpus(num_gpus, namespace: dict) -> str:
    """Start one process per GPU for the cells below (NUM_GPUS "auto": every visible GPU), or with one GPU leave
    them to run here as before. Says which, and why."""
    for processes in list(ACTIVE.values()):  # the cell run again: a fresh start
        processes.stop()
    if "WORLD_SIZE" in os.environ:
        return "cells run in this process: it is already one of several (torchrun, accelerate launch)"
    share = os.environ.get(SHARE_ONE_GPU) == "1"
    count, why = resolve_num_gpus(num_gpus, visible_gpus(), share)
    if count == 1:
        return f"{why}: the cells run in this notebook's process, on one GPU at most"
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise ValueError(f"NUM_GPUS = {num_gpus} needs a notebook kernel (Jupyter, papermill, Kaggle); as a script, "
                         "run it under torchrun --nproc_per_node=N instead")
    processes = GpuProcesses(count, namespace, share)
    ACTIVE[id(processes)] = processes
    _install_transformer(shell)
    where = "one GPU, shared (lab check)" if share else ("the CPU" if not visible_gpus() else "one GPU each")
    return (f"{why}: the cells below run in {count} processes ({where}, {processes.backend} between them); the "
            f"first one's output shows here, every process logs to {processes.logs[0].parent}")
