"""A notebook's cells on every GPU: with NUM_GPUS above 1 (Kaggle's T4 x2), the cells after
run_cells_on_all_gpus run in one process per GPU (medical_r1.gpu_worker), each cell as the notebook holds it, sent
to all of them when Jupyter, papermill or Kaggle's "Run all" runs it. The trainers train data-parallel in them as
under torchrun; generate_answers splits its batches across them. The first process's output streams into the cell.

Why this and not accelerate's notebook_launcher or a torchrun line: notebook_launcher forks the kernel, so the code
must sit in a function defined in a cell (hiding the library calls people read) and CUDA must be untouched in the
kernel; torchrun needs the notebook as a script file, which a notebook opened alone on Kaggle or Colab does not have.
And why the kernel is not itself the first process (docs/two-gpus.md weighs both): a kernel blocked in a collective
cannot notice that another process failed, nor be interrupted, until the collective times out. Here the kernel
never touches a GPU: it only waits on the processes, so a process that dies, or Interrupt, ends the cell at once and
stops them all, and it keeps the notebook's own variables (the first process sends its plain values back after
each cell), so an edited parameter and Run all start the next processes from what the notebook says.
"""
from __future__ import annotations

import atexit
import getpass
import os
import pathlib
import queue
import secrets
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Listener, wait

from medical_r1.cell_namespace import INSTALL_PREFIXES, launch_namespace, names_loaded
from medical_r1.params import check_num_gpus

LAUNCH_CALL = "run_cells_on_all_gpus("  # the cell holding it runs in the kernel, also when run again
# Lab only: every process on GPU 0 and the gloo backend (NCCL refuses two processes on one GPU), so one big GPU
# proves the path in T4 mode (lab/gpu/check_t4.py); never set on Kaggle.
SHARE_ONE_GPU = "MEDICAL_R1_SHARE_ONE_GPU"
START_TIMEOUT_S = 300  # for each process to connect and import torch (a cold disk on Kaggle)
# For the launch check: a sum across the processes right after they join, seconds when the GPUs can talk
LAUNCH_CHECK_S = int(os.environ.get("MEDICAL_R1_LAUNCH_CHECK_S", 90))
ERROR_GRACE_S = 10  # after one process fails, how long the others have to fail the same way before all stop
STOP_GRACE_S = 3  # a kernel shut down is killed after 5 s (jupyter_client), its processes with it
TAIL_CHARS = 3000
# The processes' allocator: memory reserved in segments that grow, so the reserve stays close to what is
# allocated (lab/gpu/RESULTS.md: the reserve, not the tensors, passed 14.7 GiB in two processes)
WORKER_ENV_DEFAULTS = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


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


def newest_checkpoint(work_dir) -> str | None:
    """The most recently written checkpoint-N folder under work_dir (03's or 07's), or None."""
    found = [p for p in pathlib.Path(work_dir).glob("**/checkpoint-*") if p.is_dir()]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


class GpuProcessError(RuntimeError):
    """A cell failed in one of the processes; the message is that process's."""


class GpuProcesses:
    """The running processes, one per GPU, and the connection to each."""

    def __init__(self, count: int, namespace: dict, share_one_gpu: bool = False, env: dict | None = None):
        self.count, self.work_dir = count, namespace.get("WORK_DIR", ".")
        self.namespace = namespace  # the kernel's: plain values come back into it after each cell
        self.names: set[str] = set()  # the first process's variables, as of its last cell
        self.key = secrets.token_bytes(32)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.key)
        self.logs = [pathlib.Path(self.work_dir) / "logs" / f"gpu_process_{rank}.log" for rank in range(count)]
        self.processes, self.conns = [], {}
        try:
            self._start(namespace, share_one_gpu, env or {})
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)

    def _start(self, namespace: dict, share_one_gpu: bool, extra_env: dict) -> None:
        port = self._free_port()
        start = launch_namespace(namespace)
        self.left_out = start.pop("left_out")
        for rank in range(self.count):
            env = {**WORKER_ENV_DEFAULTS, **os.environ, **extra_env,
                   "RANK": str(rank), "LOCAL_RANK": "0" if share_one_gpu else str(rank),
                   "WORLD_SIZE": str(self.count), "LOCAL_WORLD_SIZE": "1" if share_one_gpu else str(self.count),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONUNBUFFERED": "1",
                   "MEDICAL_R1_WORKER_ADDRESS": "127.0.0.1:%d" % self.listener.address[1],
                   "MEDICAL_R1_WORKER_KEY": self.key.hex(), "MEDICAL_R1_WORKER_LOG": str(self.logs[rank]),
                   "MEDICAL_R1_WORKER_PATH": repr([p for p in sys.path if p])}
            if share_one_gpu:
                env["MEDICAL_R1_PROCESS_BACKEND"] = "gloo"
            self.logs[rank].parent.mkdir(parents=True, exist_ok=True)
            with open(self.logs[rank], "w") as log:
                # a session of its own: Jupyter's Interrupt goes to the kernel's process group, and an idle
                # notebook's Interrupt must not reach the processes (a busy one stops them through the kernel)
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-c", "import ast, os, sys; sys.path[:0] = ast.literal_eval(os.environ["
                     "'MEDICAL_R1_WORKER_PATH']); from medical_r1.gpu_worker import main; main()"],
                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        arrivals: queue.Queue = queue.Queue()
        threading.Thread(target=self._accept, args=(arrivals,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        not_started = GpuProcessError(f"the GPU processes did not start within {START_TIMEOUT_S} s; their logs: "
                                      f"{self.logs[0].parent}")
        while len(self.conns) < self.count:
            self._raise_if_any_died()
            if time.monotonic() > deadline:
                raise not_started
            try:
                conn = arrivals.get(timeout=0.5)
            except queue.Empty:
                continue
            kind, rank = self._receive(conn, deadline, not_started)
            self.conns[rank] = conn
            conn.send({"cwd": os.getcwd(), **start})
        deadline = time.monotonic() + LAUNCH_CHECK_S
        late = LaunchCheckFailed(f"the {self.count} GPU processes did not exchange a first tensor within "
                                 f"{LAUNCH_CHECK_S} s")
        backends = {self._receive(conn, deadline, late)[2] for conn in self.conns.values()}
        self.backend = backends.pop()

    def _accept(self, arrivals: queue.Queue) -> None:
        """Connections as the processes make them (a thread: accept has no timeout); ends when the listener closes."""
        try:
            for _ in range(self.count):
                arrivals.put(self.listener.accept())
        except OSError:
            pass

    def _receive(self, conn, deadline: float, late: Exception):
        """The next message of a starting process, or why it never came (`late` past the deadline)."""
        try:
            while not conn.poll(0.5):
                self._raise_if_any_died()
                if time.monotonic() > deadline:
                    raise late
            return conn.recv()
        except (EOFError, OSError):  # it went away while starting
            self._wait_or_kill(self.processes, kill=False)
            self._raise_if_any_died()
            raise

    @staticmethod
    def _wait_or_kill(processes, kill: bool = True) -> None:
        """Give each process STOP_GRACE_S to end by itself, then kill it (or, with kill=False, leave it)."""
        for process in processes:
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                if kill:
                    process.kill()
                    process.wait()

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
        hint = {-9: " (signal 9: most often the machine ran out of memory)",
                -6: " (signal 6: an abort; NCCL aborts a process whose collective waited longer than "
                    "MEDICAL_R1_COLLECTIVE_TIMEOUT_S for another process)"}.get(code, "")
        return f"{how}{hint}; the end of its log ({self.logs[rank]}):\n{self._tail(rank)}"

    def _raise_if_any_died(self) -> None:
        for rank, process in enumerate(self.processes):
            if process.poll() is not None:
                raise GpuProcessError(f"GPU process {rank} {self._death(rank)}")

    def run_cell(self, source: str) -> None:
        """Run a cell in every process; show what the first one shows (streams, displays and their updates,
        clear_output, input prompts); keep the kernel's variables in step; raise where a process fails."""
        from IPython.display import clear_output, publish_display_data

        for conn in self.conns.values():
            conn.send(("cell", source))
        rank_of = {conn: rank for rank, conn in self.conns.items()}
        pending, errors, deadline = set(self.conns), {}, None
        answers, asked = [], dict.fromkeys(self.conns, 0)  # input(): asked once, the same answer for every process
        try:
            while pending and (deadline is None or time.monotonic() < deadline):
                for conn in wait([self.conns[r] for r in pending], timeout=0.5):
                    rank = rank_of[conn]
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):  # it went away: its exit is read below
                        self._wait_or_kill([self.processes[rank]])
                        continue
                    kind = message[0]
                    if kind == "stream":
                        stream = sys.stdout if message[1] == "stdout" else sys.stderr
                        stream.write(message[2])
                        stream.flush()
                    elif kind == "display":
                        _, data, metadata, transient, update = message
                        publish_display_data(data, metadata, transient=transient or None, update=update)
                    elif kind == "clear":
                        clear_output(wait=message[1])
                    elif kind == "input":
                        if asked[rank] == len(answers):
                            answers.append((getpass.getpass if message[2] else input)(message[1]))
                        conn.send(answers[asked[rank]])
                        asked[rank] += 1
                    elif kind == "namespace":
                        self.namespace.update(message[1])
                        for name in message[2]:
                            self.namespace.pop(name, None)
                        self.names = set(message[3])
                    elif kind == "done":
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
            print(f"Interrupted: the {self.count} GPU processes were stopped. Run all (or run from the top) starts "
                  "them again.", file=sys.stderr)
            raise
        if errors:
            same_everywhere = not pending and len(errors) == self.count and len(set(errors.values())) == 1
            if not same_everywhere:  # a process is gone or stuck: stop them all, none may hold a GPU
                self.stop()
            raise GpuProcessError(self._failure(min(errors), errors[min(errors)], stopped=not same_everywhere))

    def _failure(self, rank: int, error: str, stopped: bool) -> str:
        text = f"GPU process {rank} of {self.count} failed: {error.rstrip()}\n"
        if not stopped:
            return text + ("(every process failed the same way and they are still running, their variables kept: "
                           "do what the message says and run the cell again)")
        checkpoint = newest_checkpoint(self.work_dir)
        resume = (f"The last checkpoint is {checkpoint}: Run all again (RESUME = True resumes from it, with any "
                  "NUM_GPUS)." if checkpoint else "No checkpoint was written yet. Run all starts them again.")
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
        self._wait_or_kill(self.processes)
        for conn in self.conns.values():
            conn.close()
        self.conns = {}
        self.listener.close()

    @property
    def running(self) -> bool:
        return bool(self.conns) and all(p.poll() is None for p in self.processes)


class LaunchCheckFailed(GpuProcessError):
    """The processes started but a first sum across them did not come back: the GPUs cannot talk."""


CURRENT: dict[str, GpuProcesses] = {}  # the kernel's processes, under "processes" (at most one set)
_USER_CELL = {"now": False}  # whether the kernel is running a cell of the notebook (not a silent request)


def run_in_gpu_processes(source: str) -> None:
    """What each cell after run_cells_on_all_gpus becomes in the kernel while the processes run."""
    from IPython import get_ipython
    from IPython.core.inputtransformer2 import TransformerManager

    if not _USER_CELL["now"]:  # a front end's silent request (a variable inspector): the kernel answers it
        exec(TransformerManager().transform_cell(source), get_ipython().user_ns)
        return
    CURRENT["processes"].run_cell(source)
    if any(line.lstrip().startswith(INSTALL_PREFIXES) for line in source.splitlines()):
        print("(the install ran in the first GPU process only: the processes share this machine's packages)")


def refuse_stopped(names: list[str]) -> None:
    raise GpuProcessError(
        f"The GPU processes were stopped (the message above says why), and this cell uses {', '.join(names)}, made "
        "in them. Run all (or run from the top): the cells before 'One process per GPU' run here, and that cell "
        "starts the processes again.")


def gpu_cells_transformer(lines: list[str]) -> list[str]:
    """IPython input transformer (the first stage, so magics travel as typed): while the processes run, a cell
    becomes a call that sends it to them. Once they are stopped, a cell runs here as before the launch (the
    parameters, the installs: Run all starts cleanly from the top), unless it uses what only the processes made,
    which it refuses with what to do. The launching cell and empty cells always stay in the kernel."""
    source = "".join(lines)
    processes = CURRENT.get("processes")
    if processes is None or not source.strip() or LAUNCH_CALL in source:
        return lines
    if processes.running:
        return [f"__import__('medical_r1.gpu_processes').gpu_processes.run_in_gpu_processes({source!r})\n"]
    kernel_lacks = sorted((names_loaded(source) & processes.names) - set(processes.namespace))
    if kernel_lacks:
        return [f"__import__('medical_r1.gpu_processes').gpu_processes.refuse_stopped({kernel_lacks!r})\n"]
    return lines


def _install_transformer(shell) -> None:
    if gpu_cells_transformer not in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.append(gpu_cells_transformer)
        shell.events.register("pre_execute", lambda: _USER_CELL.update(now=False))
        shell.events.register("pre_run_cell", lambda info: _USER_CELL.update(now=True))


def run_cells_on_all_gpus(num_gpus, namespace: dict) -> str:
    """Start one process per GPU for the cells below (NUM_GPUS "auto": every visible GPU), or with one GPU leave
    them to run here as before. Says which, and why. Run again (Run all), it starts afresh from the kernel's
    variables, which the processes kept up to date."""
    old = CURRENT.pop("processes", None)
    if old is not None:  # the cell run again: a fresh start
        old.stop()
    if "WORLD_SIZE" in os.environ:
        return "cells run in this process: it is already one of several (torchrun, accelerate launch)"
    share, gpus = os.environ.get(SHARE_ONE_GPU) == "1", visible_gpus()
    count, why = resolve_num_gpus(num_gpus, gpus, share)
    if count == 1:
        return f"{why}: the cells run in this notebook's process, on one GPU at most"
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise ValueError(f"NUM_GPUS = {num_gpus} needs a notebook kernel (Jupyter, papermill, Kaggle); as a script, "
                         "run it under torchrun --nproc_per_node=N instead")
    processes = start_checked(count, namespace, share)
    CURRENT["processes"] = processes
    _install_transformer(shell)
    where = "one GPU, shared (lab check)" if share else ("the CPU" if not gpus else "one GPU each")
    left_out = (f"; not sent to them, as made before this cell: {', '.join(processes.left_out)} (make them below "
                "it)" if processes.left_out else "")
    return (f"{why}: the cells below run in {count} processes ({where}, {processes.backend} between them, checked "
            f"with a first sum); the first one's output shows here, every process logs to "
            f"{processes.logs[0].parent}{left_out}")


def start_checked(count: int, namespace: dict, share: bool) -> GpuProcesses:
    """The processes, once a first sum across them came back. Two GPUs whose direct path hangs (some cloud T4
    pairs) get one more try with NCCL_P2P_DISABLE=1, through the host; a second failure says what to do."""
    try:
        return GpuProcesses(count, namespace, share)
    except LaunchCheckFailed as first:
        if share or not visible_gpus() or os.environ.get("NCCL_P2P_DISABLE") == "1":
            raise GpuProcessError(f"{first}: the processes cannot reach each other; set NUM_GPUS = 1 to run on one "
                                  "GPU") from None
        print(f"{first}: trying again with NCCL_P2P_DISABLE=1 (GPU to GPU through the host)", file=sys.stderr)
    try:
        return GpuProcesses(count, namespace, share, env={"NCCL_P2P_DISABLE": "1"})
    except LaunchCheckFailed as second:
        raise GpuProcessError(f"{second}, also with NCCL_P2P_DISABLE=1: the GPUs cannot reach each other here; set "
                              "NUM_GPUS = 1 to run on one GPU") from None
