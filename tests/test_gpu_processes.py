"""A notebook's cells in one process per GPU (medical_r1.gpu_processes), with two CPU processes (gloo): the cells
run in both and the first one's output comes back; generation split across them gives one process's answers; a
failure or a death in either ends the cell with that process's message and leaves no process running; Interrupt
stops them all; NUM_GPUS is checked; the launching cell stays in the kernel and other cells go to the processes."""
import os
import pathlib
import signal
import sys
import threading
import time

import pytest

from medical_r1 import gpu_processes as gp
from medical_r1 import params as params_mod

TINY = str(pathlib.Path(__file__).parent / "fixtures" / "tokenizer")


@pytest.fixture
def two(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    processes = gp.GpuProcesses(2, {"WORK_DIR": str(tmp_path), "SEED": 7, "NAMES": ["a", "b"], "module": os})
    yield processes
    processes.stop()


def assert_all_gone(processes):
    assert all(p.poll() is not None for p in processes.processes)
    assert not processes.running


def test_cells_run_in_both_processes_and_the_first_ones_output_comes_back(two, capsys):
    assert two.backend == "gloo"
    two.run_cell("import os, torch, torch.distributed as dist\n"
                 "rank = int(os.environ['RANK'])\n"
                 "total = torch.tensor([float(rank + SEED)])\n"
                 "dist.all_reduce(total)\n"
                 "print('sum', total.item(), NAMES, 'module' in globals())")
    two.run_cell("print('rank', rank)")  # the namespace lives on from cell to cell
    out = capsys.readouterr().out
    assert "sum 15.0 ['a', 'b'] False" in out  # 7 + 8 from two processes; plain values only were sent
    assert out.count("rank 0") == 1 and "rank 1" not in out


def test_an_error_in_one_process_ends_the_cell_with_its_message_and_stops_all(two, tmp_path):
    (tmp_path / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(gp.GpuProcessError) as err:
        two.run_cell("import os, time\nif os.environ['RANK'] == '1':\n    raise ValueError('loss is nan on rank 1')\n"
                     "time.sleep(120)")  # the other process would wait for ever in a collective
    message = str(err.value)
    assert message.startswith("GPU process 1 of 2 failed: ValueError: loss is nan on rank 1\n")
    assert "checkpoint-4" in message and "any NUM_GPUS" in message
    assert_all_gone(two)
    with pytest.raises(gp.GpuProcessError, match="run the notebook from the top"):
        gp.ACTIVE[id(two)] = two
        gp._USER_CELL["now"] = True
        gp.run_in_gpu_processes("print(1)")
    gp.ACTIVE.clear()


def test_the_same_error_everywhere_leaves_the_processes_running_for_the_fixed_cell(two, capsys):
    with pytest.raises(gp.GpuProcessError, match="NameError"):
        two.run_cell("print(undefined_name)")
    assert two.running
    two.run_cell("print('fixed')")
    assert "fixed" in capsys.readouterr().out


def test_a_process_that_dies_ends_the_cell_with_how_it_died(two):
    start = time.monotonic()
    with pytest.raises(gp.GpuProcessError) as err:
        two.run_cell("import os, signal, time\nif os.environ['RANK'] == '1':\n"
                     "    print('about to die', file=__import__('sys').stderr, flush=True)\n"
                     "    os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(120)")
    assert time.monotonic() - start < 60
    assert "GPU process 1 of 2 failed" in str(err.value) and "signal 9" in str(err.value)
    assert "about to die" in str(err.value)  # the end of its log
    assert_all_gone(two)


def test_interrupt_stops_every_process(two):
    timer = threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        two.run_cell("import time\ntime.sleep(120)")
    timer.cancel()
    assert_all_gone(two)


def test_generation_split_across_processes_gives_one_processs_answers(tmp_path, monkeypatch, capsys):
    """generate_answers in two processes (every other batch each, then gathered) against one process, sampled."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from medical_r1.generation import QUESTIONS, GenerationSettings, generate_answers

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    settings = dict(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=1.0, batch_size=2, seed=11)
    model = LlamaForCausalLM.from_pretrained(tmp_path / "model")
    one = generate_answers(model, tokenizer, QUESTIONS, "r1_chat", GenerationSettings(**settings), "cpu")

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    processes = gp.GpuProcesses(2, {"WORK_DIR": str(tmp_path), "MODEL": str(tmp_path / "model"), "SETTINGS": settings})
    try:
        processes.run_cell(
            "import json\nfrom transformers import AutoTokenizer, LlamaForCausalLM\n"
            "from medical_r1.generation import QUESTIONS, GenerationSettings, generate_answers\n"
            "model = LlamaForCausalLM.from_pretrained(MODEL)\ntokenizer = AutoTokenizer.from_pretrained(MODEL)\n"
            "answers = generate_answers(model, tokenizer, QUESTIONS, 'r1_chat', GenerationSettings(**SETTINGS),\n"
            "                           'cpu')\n"
            "print('ANSWERS' + json.dumps([a['output'] for a in answers]))")
    finally:
        processes.stop()
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ANSWERS"))
    import json

    two = json.loads(line[len("ANSWERS"):])
    assert len({a["output"] for a in one}) > 1  # sampled answers that differ, in 3 batches of 2
    assert two == [a["output"] for a in one]


def test_num_gpus_is_checked_with_a_message_naming_the_fix():
    assert gp.resolve_num_gpus("auto", 2)[0] == 2 and gp.resolve_num_gpus("auto", 0)[0] == 1
    assert gp.resolve_num_gpus(2, 0)[0] == 2  # CPU processes: tests and the demo
    with pytest.raises(ValueError, match="at most 1"):
        gp.resolve_num_gpus(2, 1)
    assert gp.resolve_num_gpus(2, 1, share_one_gpu=True)[0] == 2
    for bad in (0, "2", True, 1.5):
        with pytest.raises(ValueError, match="NUM_GPUS must be 'auto'"):
            gp.resolve_num_gpus(bad, 2)
        with pytest.raises(ValueError, match="num_gpus"):
            params_mod.Params(num_gpus=bad)


def test_one_gpu_leaves_the_cells_in_the_kernel(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(gp, "visible_gpus", lambda: 1)
    assert "run in this notebook's process" in gp.run_cells_on_all_gpus("auto", {})
    assert not gp.ACTIVE
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "already one of several" in gp.run_cells_on_all_gpus(2, {})


def test_cells_after_the_launch_go_to_the_processes_and_the_launch_cell_stays():
    launch = ["from medical_r1.gpu_processes import run_cells_on_all_gpus\n",
              "print(run_cells_on_all_gpus(NUM_GPUS, globals()))\n"]
    assert gp.gpu_cells_transformer(launch) == launch
    assert gp.gpu_cells_transformer(["\n"]) == ["\n"]
    cell = ["x = 'it''s'\n", "print(x)\n"]
    (sent,) = gp.gpu_cells_transformer(cell)
    assert "run_in_gpu_processes(" in sent
    namespace = {}
    calls = []
    original = gp.run_in_gpu_processes
    try:
        gp.run_in_gpu_processes = calls.append
        exec(sent, namespace)
    finally:
        gp.run_in_gpu_processes = original
    assert calls == ["".join(cell)]


def test_only_plain_values_are_sent():
    values = gp.plain_values({"WORK_DIR": "w", "N": 2, "L": [1, "a"], "D": {"k": (1, 2.0)}, "_x": 1, "In": [],
                              "sys": sys, "f": print, "obj": object(), "nested": [object()]})
    assert values == {"WORK_DIR": "w", "N": 2, "L": [1, "a"], "D": {"k": (1, 2.0)}}
