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

from medical_r1 import cell_namespace
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
    assert "sum 15.0 ['a', 'b'] True" in out  # 7 + 8 from two processes; the module went by its name
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


def test_interrupt_stops_every_process(two, monkeypatch):
    # Python's own handler, whatever this process inherited (a `cmd &` in a script starts it with SIGINT ignored)
    monkeypatch.setattr(signal, "getsignal", signal.getsignal)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        try:
            two.run_cell("import time\ntime.sleep(120)")
        finally:
            signal.signal(signal.SIGINT, previous)
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
    assert not gp.CURRENT
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "already one of several" in gp.run_cells_on_all_gpus(2, {})


def test_cells_after_the_launch_go_to_the_processes_and_the_launch_cell_stays(monkeypatch):
    class Stopped:
        running, names, namespace = False, {"model", "NUM_GPUS"}, {"NUM_GPUS": 2}

    class Running(Stopped):
        running = True

    launch = ["from medical_r1.gpu_processes import run_cells_on_all_gpus\n",
              "print(run_cells_on_all_gpus(NUM_GPUS, globals()))\n"]
    cell = ["x = 'it''s'\n", "print(x)\n"]
    assert gp.gpu_cells_transformer(cell) == cell  # no processes started: the kernel runs it
    monkeypatch.setitem(gp.CURRENT, "processes", Running())
    assert gp.gpu_cells_transformer(launch) == launch
    assert gp.gpu_cells_transformer(["\n"]) == ["\n"]
    (sent,) = gp.gpu_cells_transformer(cell)
    calls = []
    monkeypatch.setattr(gp, "run_in_gpu_processes", calls.append)
    exec(sent, {})
    assert calls == ["".join(cell)]
    # stopped: the parameters and other cells that need nothing of the processes run here; one that does is refused
    monkeypatch.setitem(gp.CURRENT, "processes", Stopped())
    assert gp.gpu_cells_transformer(["NUM_GPUS = 1\n"]) == ["NUM_GPUS = 1\n"]
    assert gp.gpu_cells_transformer(["!nvidia-smi\n", "print(NUM_GPUS)\n"]) == ["!nvidia-smi\n", "print(NUM_GPUS)\n"]
    (refusal,) = gp.gpu_cells_transformer(["%%time\n", "model.train()\n"])
    with pytest.raises(gp.GpuProcessError, match=r"uses model, made in them\. Run all"):
        exec(refusal, {})


def test_functions_classes_and_imports_made_before_the_launch_go_to_the_processes():
    import json

    def double(x):
        return 2 * x

    namespace = {"json": json, "dumps": json.dumps, "N": 2, "handle": open(os.devnull), "_hidden": 1,
                 "In": ["", "class Box:\n    size = 3\n"], "double": double}
    namespace["__name__"] = "__main__"
    exec("class Box:\n    size = 3\n", namespace)
    double.__module__ = "__main__"
    start = cell_namespace.launch_namespace(namespace)
    assert start["values"] == {"N": 2}
    assert ("json", "json", "") in start["imports"] and ("dumps", "json", "dumps") in start["imports"]
    assert any("class Box" in s for s in start["sources"]) and any("def double" in s for s in start["sources"])
    assert start["left_out"] == ["handle"]
    namespace["handle"].close()


def test_only_plain_values_are_sent():
    values = cell_namespace.plain_values({"WORK_DIR": "w", "N": 2, "L": [1, "a"], "D": {"k": (1, 2.0)}, "_x": 1,
                                          "In": [], "sys": sys, "f": print, "obj": object(), "nested": [object()]})
    assert values == {"WORK_DIR": "w", "N": 2, "L": [1, "a"], "D": {"k": (1, 2.0)}}


def test_processes_that_see_different_free_memory_agree_on_one_batch(two, capsys):
    """GEN_BATCH_SIZE = 0 decided from each GPU's free memory: faked as 20 GiB in one process and 4 in the other,
    both take the smaller choice, so the batches each writes are those of one process."""
    two.run_cell(
        "import os, torch, types, torch.distributed as dist\n"
        "from medical_r1 import generation, runtime\n"
        "torch.cuda.is_available = lambda: True\n"
        "runtime.free_gpu_bytes = lambda: (20 if os.environ['RANK'] == '0' else 4) * 2**30\n"
        "config = types.SimpleNamespace(hidden_size=4096, num_attention_heads=32, num_hidden_layers=32,\n"
        "                               num_key_value_heads=8, vocab_size=128256)\n"
        "batch, why = generation.auto_batch_size(types.SimpleNamespace(config=config), 114, 1024)\n"
        "everyone = [None, None]\n"
        "dist.all_gather_object(everyone, batch)\n"
        "print('batches', everyone, why)")
    out = capsys.readouterr().out
    assert "batches [32, 32]" in out and "this one's GPU alone: 64" in out, out


def test_a_launch_whose_processes_cannot_reach_each_other_fails_fast_with_what_to_do(tmp_path, monkeypatch,
                                                                                   capsys):
    """A first sum that never comes back (planted: the second process's all_reduce hangs, as on a T4 pair whose
    direct path hangs) ends the launch within the check's seconds, with the fallback tried and named."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1' and os.environ.get('NCCL_P2P_DISABLE') != os.environ.get('HEALS_WITH'):\n"
        "    import time, torch.distributed as dist\n"
        "    dist.all_reduce = lambda *a, **k: time.sleep(3600)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(gp, "LAUNCH_CHECK_S", 5)
    monkeypatch.setenv("HEALS_WITH", "never")
    start = time.monotonic()
    with pytest.raises(gp.GpuProcessError, match="cannot reach each other; set NUM_GPUS = 1") as err:
        gp.start_checked(2, {"WORK_DIR": str(tmp_path)}, share=False)
    assert "within 5 s" in str(err.value) and time.monotonic() - start < 60
    # with GPUs, NCCL's path through the host is tried once more: here it heals the pair
    monkeypatch.setattr(gp, "visible_gpus", lambda: 2)
    monkeypatch.setenv("HEALS_WITH", "1")
    capsys.readouterr()
    processes = gp.start_checked(2, {"WORK_DIR": str(tmp_path)}, share=False)
    try:
        assert processes.running
        assert "trying again with NCCL_P2P_DISABLE=1" in capsys.readouterr().err
    finally:
        processes.stop()
    monkeypatch.setenv("HEALS_WITH", "never")
    with pytest.raises(gp.GpuProcessError, match="also with NCCL_P2P_DISABLE=1"):
        gp.start_checked(2, {"WORK_DIR": str(tmp_path)}, share=False)


def test_a_collective_that_waits_too_long_ends_the_cell(tmp_path, monkeypatch):
    """Nobody presses Interrupt in "Save & Run All": a process left waiting in a collective fails after
    MEDICAL_R1_COLLECTIVE_TIMEOUT_S, and its message ends the cell (and stops the others)."""
    monkeypatch.setenv("MEDICAL_R1_COLLECTIVE_TIMEOUT_S", "5")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    processes = gp.GpuProcesses(2, {"WORK_DIR": str(tmp_path)})
    start = time.monotonic()
    try:
        with pytest.raises(gp.GpuProcessError, match="GPU process 1 of 2 failed"):
            processes.run_cell("import os, torch, torch.distributed as dist\n"
                               "if os.environ['RANK'] == '1':\n    dist.all_reduce(torch.ones(1))")
    finally:
        processes.stop()
    assert time.monotonic() - start < 60
    assert_all_gone(processes)


@pytest.mark.parametrize("processes", [2, 3, 4])
def test_the_values_offered_when_a_batch_does_not_split_are_ones_params_accepts(processes):
    """The fix a message offers must be accepted where it is checked, and say what it does to the batch."""
    import re

    from medical_r1 import training

    for grad_accum in range(1, 13):
        if grad_accum % processes == 0:
            continue
        with pytest.raises(ValueError) as err:
            training.per_process_grad_accum(grad_accum, processes, batch_size=2)
        offered = [int(v) for v in re.findall(r"GRAD_ACCUM = (\d+)", str(err.value))]
        assert offered and all(v % processes == 0 and v > 0 for v in offered), str(err.value)
        assert f"NUM_GPUS = 1 to keep updates of {2 * grad_accum} rows" in str(err.value)
        for value in offered:
            params_mod.Params(grad_accum=value)
            assert training.per_process_grad_accum(value, processes) == value // processes
    for generations in (2, 3, 4):
        for batch in range(generations, 25, generations):
            if batch % processes == 0:
                continue
            with pytest.raises(ValueError) as err:
                training.per_process_batch(batch, processes, num_generations=generations)
            offered = [int(v) for v in re.findall(r"GRPO_BATCH_SIZE = (\d+)", str(err.value))]
            assert offered, str(err.value)
            for value in offered:
                params_mod.Params(grpo_batch_size=value, num_generations=generations)
                assert training.per_process_batch(value, processes, generations) * processes == value
