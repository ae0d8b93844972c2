"""Kaggle's T4 x2 as a person uses it, through a real ipykernel driven by jupyter_client (as Jupyter and Kaggle
drive it), with two CPU processes (gloo) standing in for the two GPUs: an edited parameter and Run all again,
NUM_GPUS = 1, Run all after an error and after Interrupt, Interrupt while idle, magics and shell lines, a
subprocess's output and fileno() in the first process, matplotlib, display ids, input(), and what was defined
before the launch cell."""
import os
import pathlib
import queue
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


class Notebook:
    """A kernel and the cells a person runs in it; run() returns what the cell showed."""

    def __init__(self, work: pathlib.Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
        self.km = jupyter_client.KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(work), env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.work = work
        self.inputs: list[str] = []  # answers to input() prompts, in order

    def start(self, code: str) -> str:
        return self.kc.execute(code, allow_stdin=True)

    def collect(self, msg_id: str, timeout: float = 180) -> dict:
        """Everything the cell published until the kernel went idle."""
        shown = {"text": "", "stderr": "", "displays": [], "updates": [], "error": None, "order": []}
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.kc.get_stdin_msg(timeout=0.01)  # input() or getpass asked: answer with the next planted reply
                self.kc.input(self.inputs.pop(0))
                shown["asked"] = shown.get("asked", 0) + 1
            except queue.Empty:
                pass
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                assert time.monotonic() < deadline, f"the cell did not finish: {shown}"
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                shown["text" if content["name"] == "stdout" else "stderr"] += content["text"]
                shown["order"].append(content["text"])
            elif kind in ("display_data", "execute_result"):
                shown["displays"].append(content)
                shown["order"].append("<display>")
            elif kind == "update_display_data":
                shown["updates"].append(content)
            elif kind == "error":
                shown["error"] = content["ename"] + ": " + content["evalue"]
            elif kind == "status" and content["execution_state"] == "idle":
                return shown

    def run(self, code: str, timeout: float = 180) -> dict:
        return self.collect(self.start(code), timeout)

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def parameters(num_gpus=2, max_steps=60) -> str:
    return f"NUM_GPUS = {num_gpus!r}\nMAX_STEPS = {max_steps}\nWORK_DIR = '.'\n"


LAUNCH = (f"import sys\nsys.path[:0] = [{str(REPO_ROOT)!r}]\n"
          "from medical_r1.gpu_processes import run_cells_on_all_gpus\n"
          "print(run_cells_on_all_gpus(NUM_GPUS, globals()))")
WHERE = "import os\nprint('steps', MAX_STEPS, 'rank', os.environ.get('RANK'), 'pid', os.getpid())"


def run_all(notebook: Notebook, cells: list[str]) -> list[dict]:
    """Jupyter's Run all: each cell in turn, stopping at the first error."""
    shown = []
    for cell in cells:
        shown.append(notebook.run(cell))
        if shown[-1]["error"]:
            break
    return shown


@pytest.fixture
def notebook(tmp_path):
    nb = Notebook(tmp_path)
    yield nb
    nb.close()


def first_process_pid(notebook: Notebook) -> int:
    return int(notebook.run("import os\nprint(os.getpid())")["text"])


def test_an_edited_parameter_and_num_gpus_1_take_effect_on_run_all(notebook):
    kernel_pid = int(notebook.run("import os\nprint(os.getpid())")["text"])
    first = run_all(notebook, [parameters(2, 60), LAUNCH, WHERE])
    assert "2 processes" in first[1]["text"], first
    assert "steps 60 rank 0" in first[2]["text"] and str(kernel_pid) not in first[2]["text"]
    second = run_all(notebook, [parameters(2, 100), LAUNCH, WHERE])  # edited, Run all again, no restart
    assert "steps 100 rank 0" in second[2]["text"], second
    third = run_all(notebook, [parameters(1, 100), LAUNCH, WHERE])
    assert "run in this notebook's process" in third[1]["text"], third
    assert f"steps 100 rank None pid {kernel_pid}" in third[2]["text"], third
    assert not notebook.run("print(__import__('medical_r1.gpu_processes').gpu_processes.CURRENT)")["text"].strip(
        ).strip("{}"), "no processes are left"


def test_run_all_after_an_error_and_after_interrupt_starts_from_the_top(notebook):
    cells = [parameters(), LAUNCH, "made_in_processes = object()\n" + WHERE]
    run_all(notebook, cells)
    failed = notebook.run("import os\nif os.environ['RANK'] == '1':\n    raise ValueError('rank 1 broke')\n"
                          "import time\ntime.sleep(60)")
    assert "GPU process 1 of 2 failed: ValueError: rank 1 broke" in failed["error"]
    # a cell that needs what the processes made says what to do instead of a NameError
    refused = notebook.run("print(made_in_processes)")
    assert "made_in_processes" in refused["error"] and "Run all" in refused["error"], refused
    again = run_all(notebook, cells)
    assert not any(c["error"] for c in again) and "rank 0" in again[2]["text"], again

    msg_id = notebook.start("import time\ntime.sleep(60)")
    time.sleep(3)
    notebook.km.interrupt_kernel()
    interrupted = notebook.collect(msg_id, timeout=60)
    assert "KeyboardInterrupt" in interrupted["error"] and "were stopped" in interrupted["stderr"], interrupted
    after = run_all(notebook, cells)
    assert not any(c["error"] for c in after) and "rank 0" in after[2]["text"], after


def test_interrupt_while_idle_does_no_harm(notebook):
    run_all(notebook, [parameters(), LAUNCH, "kept = 41"])
    pid = first_process_pid(notebook)
    notebook.km.interrupt_kernel()  # Jupyter signals the kernel's whole process group
    time.sleep(2)
    shown = notebook.run("import torch, torch.distributed as dist\nones = torch.ones(1)\ndist.all_reduce(ones)\n"
                         "print(kept + 1, ones.item())")  # both processes still there, with their variables
    assert shown["text"].strip() == "42 2.0" and not shown["error"], shown
    assert first_process_pid(notebook) == pid


def test_magics_shell_lines_subprocesses_and_displays_behave_as_in_one_process(notebook):
    notebook.inputs.append("yes")
    before = ("import json as js\nfrom os.path import join as pjoin\n\ndef double(x):\n    return 2 * x\n\n"
              "class Box:\n    size = 3\n")
    run_all(notebook, [parameters(), before, LAUNCH])
    defined = notebook.run("print(double(21), js.dumps([1]), pjoin('a', 'b'), Box.size)")
    assert defined["text"].strip() == "42 [1] a/b 3", defined
    shell = notebook.run("!echo shell-line-$RANK")
    assert shell["text"].strip() == "shell-line-0", shell  # the first process's output only
    notebook.run("%env MEDICAL_R1_TRIED=7")
    assert notebook.run("import os\nprint(os.environ['MEDICAL_R1_TRIED'])")["text"].strip() == "7"
    timed = notebook.run("%%time\ntotal = sum(range(1000))")
    assert "Wall time" in timed["text"], timed
    fds = notebook.run("import faulthandler, subprocess, sys\nfaulthandler.enable()\n"
                       "subprocess.run(['echo', 'from-subprocess'], stdout=sys.stdout, check=True)\n"
                       "os.system('echo from-os-system')\nprint('fileno', sys.stdout.fileno(), sys.stderr.fileno())\n"
                       "print('to stderr', file=sys.stderr)")
    assert not fds["error"], fds
    for line in ("from-subprocess", "from-os-system", "fileno 1 2"):
        assert fds["text"].count(line) == 1, fds
    assert "to stderr" in fds["stderr"]
    figure = notebook.run("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    assert [d for d in figure["displays"] if "image/png" in d["data"]], figure
    assert "Figure size" not in figure["text"]
    handle = notebook.run("from IPython.display import display\nh = display('first', display_id=True)\n"
                          "h.update('second')\nh.display_id is not None")
    ids = [d["transient"]["display_id"] for d in handle["displays"] if d.get("transient")]
    assert ids and handle["updates"] and handle["updates"][0]["transient"]["display_id"] == ids[0], handle
    assert handle["updates"][0]["data"]["text/plain"] == "'second'"
    # what was printed before a display is shown before it, in whole lines (Jupyter draws each message as it comes)
    ordered = notebook.run("print('starting from step 0')\ndisplay('TABLE')\nprint('trained')")
    assert ordered["order"] == ["starting from step 0\n", "<display>", "trained\n"], ordered
    assert any(d["data"].get("text/plain") == "True" for d in handle["displays"])  # the last expression's value
    asked = notebook.run("answer = input('continue? ')\nprint('got', answer)")
    assert asked["text"].strip() == "got yes" and asked["asked"] == 1, asked  # asked once for both processes
    assert notebook.run("import os\nprint(os.environ['RANK'], answer)")["text"].strip() == "0 yes"
