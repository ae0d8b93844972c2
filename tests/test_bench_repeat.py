"""The repeated, alternated benchmark runs (lab/bench/repeat.py) on the CPU: the order the runs happen in, which
steps are timed, the medians, ranges and verdicts. The GPU figures are only as right as these."""
import json
import os
import pathlib
import sys
import threading
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lab" / "bench"))
import repeat  # noqa: E402


class FakeHooks:
    """Records what the schedule asks for; the clock advances one second per step."""

    def __init__(self):
        self.now, self.events, self.windows = 0.0, [], []

    def gate(self, phase):
        self.events.append(("gate", phase))

    def sync(self):
        pass

    def clock(self):
        return self.now

    def free_memory(self):
        self.events.append(("free",))

    def window_start(self, k):
        self.events.append(("start", k))

    def window_end(self, k, first, end, seconds):
        self.windows.append((k, first, end, seconds))


def run_steps(schedule, hooks, step_seconds):
    for i in range(schedule.total_steps):
        schedule.before_step(i)
        hooks.now += step_seconds(i)
        schedule.after_step(i)


def test_alternated_runs_every_configuration_once_per_round():
    assert repeat.alternated(["on", "auto"], 3) == [(0, "on"), (0, "auto"), (1, "on"), (1, "auto"), (2, "on"),
                                                     (2, "auto")]
    with pytest.raises(ValueError, match="--repeat"):
        repeat.alternated(["on"], 0)


def test_the_schedule_times_each_window_without_its_warm_up_or_first_step():
    """Warm-up 2, 3 windows of 4 timed steps, tail 2: the first step of each window (after the idle wait, slow
    here: 10 s) and the warm-up (slow: 20 s) are never inside a timed window; each window is exactly its 4 steps."""
    hooks = FakeHooks()
    schedule = repeat.WindowSchedule(warmup=2, measure=4, windows=3, tail=2, hooks=hooks)
    slow = {0: 20, 1: 20, 2: 10, 7: 10, 12: 10}
    run_steps(schedule, hooks, lambda i: slow.get(i, 1.0))
    assert schedule.total_steps == 2 + 3 * 5 + 2 and schedule.phases == 5
    assert hooks.windows == [(0, 3, 7, 4.0), (1, 8, 12, 4.0), (2, 13, 17, 4.0)]
    gates = [e[1] for e in hooks.events if e[0] == "gate"]
    assert gates == [0, 1, 2, 3, 4]
    # the cache is given back before every gate but the first (nothing to give back before loading is done)
    assert hooks.events[:2] == [("gate", 0), ("free",)] and hooks.events.count(("free",)) == 4


def test_the_schedule_without_a_tail_has_no_last_gate():
    hooks = FakeHooks()
    schedule = repeat.WindowSchedule(warmup=1, measure=2, windows=2, tail=0, hooks=hooks)
    run_steps(schedule, hooks, lambda i: 1.0)
    assert schedule.phases == 3 and [e[1] for e in hooks.events if e[0] == "gate"] == [0, 1, 2]
    assert [w[3] for w in hooks.windows] == [2.0, 2.0]


def test_the_parent_opens_one_worker_at_a_time_in_the_alternated_order(tmp_path):
    """Two fake workers (threads) with the real gate files: each phase of one runs only while the other waits,
    and the phases run A0 B0 A1 B1 A2 B2."""
    lock, busy, order, overlaps = threading.Lock(), [], [], []

    def worker(name):
        gate = repeat.worker_gate(tmp_path, name)
        time.sleep(0.05 if name == "a" else 0.01)  # "loading", of different lengths
        for phase in range(3):
            gate(phase)
            with lock:
                if busy:
                    overlaps.append((name, phase, list(busy)))
                busy.append(name)
                order.append((name, phase))
            time.sleep(0.03)  # the phase's work
            with lock:
                busy.remove(name)

    threads = {name: threading.Thread(target=worker, args=(name,)) for name in ("a", "b")}
    for t in threads.values():
        t.start()
    log = repeat.drive(tmp_path, ["a", "b"], 3, {n: t.is_alive for n, t in threads.items()},
                       snapshot=lambda: {"load_1min": 0.5}, timeout_s=20)
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert overlaps == []
    assert log["a"] == {"host_before_phase": [{"load_1min": 0.5}] * 3, "failed_at_phase": None}


def test_a_worker_that_dies_is_skipped_and_the_others_go_on(tmp_path):
    done = []

    def dying():
        repeat.worker_gate(tmp_path, "dies")(0)  # passes its warm-up, then dies in phase 0

    def healthy():
        gate = repeat.worker_gate(tmp_path, "ok")
        for phase in range(2):
            gate(phase)
            done.append(phase)

    threads = {"dies": threading.Thread(target=dying), "ok": threading.Thread(target=healthy)}
    for t in threads.values():
        t.start()
    log = repeat.drive(tmp_path, ["dies", "ok"], 2, {n: t.is_alive for n, t in threads.items()}, timeout_s=20)
    assert log["dies"]["failed_at_phase"] == 0 and log["ok"]["failed_at_phase"] is None and done == [0, 1]


def fake_timed_runs(rates: dict, repeats: int, noise: list) -> dict:
    """A fake timed function: configuration c in round r runs at rates[c] x noise[r] (the machine's drift in that
    round, the same for the configurations run next to each other)."""
    runs = {name: [] for name in rates}
    for r, name in repeat.alternated(list(rates), repeats):
        runs[name].append({"round": r, "real_tokens_per_s": rates[name] * noise[r]})
    return runs


def test_medians_ranges_and_paired_ratios_of_fake_runs():
    runs = fake_timed_runs({"on": 7000.0, "auto": 9100.0}, 3, noise=[1.0, 0.8, 1.25])
    on = repeat.summarise(runs["on"], ["real_tokens_per_s", "absent"])
    assert on["real_tokens_per_s"] == {"median": 7000.0, "min": 5600.0, "max": 8750.0, "n": 3}
    assert on["absent"]["median"] is None and on["absent"]["n"] == 0
    ratio = repeat.paired_ratios(runs["auto"], runs["on"], "real_tokens_per_s")
    # the drift is common to a round's runs, so every paired ratio is 1.3 although the rates spread by 45%
    assert ratio["median"] == pytest.approx(1.3) and ratio["max"] - ratio["min"] == pytest.approx(0, abs=1e-12)
    assert repeat.fmt(on["real_tokens_per_s"]) == "7,000 (5,600-8,750)"
    assert repeat.fmt({"median": 0.42, "min": 0.4, "max": 0.45}, percent=True) == "42.0% (40.0%-45.0%)"


@pytest.mark.parametrize(("ratios", "met", "straddles"), [([1.58, 1.21, 1.29], False, True),
                                                          ([1.52, 1.55, 1.61], True, False),
                                                          ([1.2, 1.3, 1.25], False, False)])
def test_a_ratio_is_met_only_when_its_median_meets_the_target(ratios, met, straddles):
    """The issue's case first: one run of 1.58x over a target of 1.5, the next two 1.21x and 1.29x: not met."""
    v = repeat.verdict(repeat.spread(ratios), 1.5)
    assert v["met"] is met and v["runs_straddle_target"] is straddles and v["n"] == 3


def test_an_upper_bound_verdict_and_a_missing_figure():
    assert repeat.verdict(repeat.spread([7.8, 7.9, 8.2]), 8.0, at_most=True)["met"] is True
    assert repeat.verdict(repeat.spread([]), 1.5) == {"median": None, "min": None, "max": None, "n": 0,
                                                       "target": 1.5, "met": None, "runs_straddle_target": None}


def test_the_host_snapshot_has_the_load_whether_or_not_nvidia_smi_answers():
    state = repeat.host_snapshot()
    assert state["load_1min"] >= 0 and state["cpus"] >= 1 and "gpu_util_percent" in state


@pytest.mark.parametrize("config", ["raw", "trainer"])
def test_a_bench_train_worker_runs_its_windows_at_the_gates_on_the_cpu(tiny_model_dir, tmp_path, monkeypatch, config):
    """bench_train's --repeat worker with the tiny model on the CPU, the bare loop and the trainer: it waits at
    each gate until the parent opens it, times 2 windows of 1 step after a warm-up step, each window's micro-batches
    counted, then runs its 2 tail steps; the parent's summary has the medians of the two windows."""
    import bench_train

    from medical_r1 import data as data_mod

    monkeypatch.setattr(bench_train, "DATA", data_mod.SAMPLE_DATA_DIR)
    small = {"batch_size": 1, "grad_accum": 2, "packing": False, "max_seq_length": 1024}
    monkeypatch.setitem(bench_train.CONFIGS, "cpu", {"backend": "cpu", "params": small, "completion_only_loss": True,
                                                     **({"raw": True} if config == "raw" else {})})
    box = {}
    worker = threading.Thread(target=lambda: box.update(result=bench_train.run_windows(
        "cpu", tiny_model_dir, warmup=1, measure=1, windows=2, out=tmp_path, profiled=False)))
    (tmp_path / "gates").mkdir()
    worker.start()
    log = repeat.drive(tmp_path / "gates", ["cpu"], repeat.phases(2, bench_train.PROFILED_STEPS),
                       {"cpu": worker.is_alive}, timeout_s=300)
    worker.join()
    result = box["result"]
    assert log["cpu"]["failed_at_phase"] is None and len(log["cpu"]["host_before_phase"]) == 4
    assert [(r["round"], r["first_step"], r["end_step"]) for r in result["runs"]] == [(0, 2, 3), (1, 4, 5)]
    for run in result["runs"]:
        # unpacked examples one at a time: no padding
        assert run["micro_batches"] == 2  # 1 step of GRAD_ACCUM 2
        assert run["seconds"] > 0 and run["real_tokens"] > 0 and run["positions_tokens"] >= run["real_tokens"]
        assert run["mfu"] is None and run["peak_reserved_gib"] is None  # no GPU: no matmul rate, no GPU memory
    assert result["profile"]["steps"] == 2  # the tail, timed (profiled=False)
    assert len(result["losses"]) == 7 if config == "raw" else result["losses"]  # 1 + 2 x 2 + 2 steps
    windows = sorted(p.name for p in (tmp_path / "gates").glob("window_*"))
    assert windows == ["window_cpu_0.json", "window_cpu_1.json"]
    report = bench_train.summarise_repeated({"cpu": result})
    assert report["summary"]["cpu"]["real_tokens_per_s"]["n"] == 2


def test_the_repeated_report_judges_the_ratios_on_their_medians_and_shows_failures():
    import bench_train

    def runs(rates):
        return [{"round": k, "real_tokens_per_s": v, "answer_tokens_per_s": v / 2, "mfu": 0.3,
                 "peak_reserved_gib": 7.8, "seconds_per_step": 1.0, "cuda_mallocs": 0, "compiled_graphs": 0}
                for k, v in enumerate(rates)]

    results = {"a_project": {"runs": runs([7000, 6300, 7500]), "gradient_checkpointing": "unsloth"},
               "a_project_auto": {"runs": runs([11000, 7600, 9100]), "gradient_checkpointing": "False"},
               "r_raw_loop": {"runs": runs([7100, 6400, 7600])},
               "r_raw_loop_no_checkpointing": {"error": "worker exited with 1", "runs": []}}
    report = bench_train.summarise_repeated(results)
    auto = report["targets"]["auto_over_a"]
    assert auto["median"] == pytest.approx(9100 / 7500) and auto["met"] is False and auto["runs_straddle_target"]
    assert report["targets"]["a_over_r"]["met"] is True and report["targets"]["peak_gib"]["met"] is True
    assert "auto_over_r_no_checkpointing" not in report["targets"]  # a failed configuration is no figure
    text = bench_train.repeated_table(results, report, {"device": "fake", "windows": 3, "measure": 10})
    assert "| a_project_auto | False | 9,100 (7,600-11,000) |" in text
    assert "| r_raw_loop_no_checkpointing | failed: worker exited with 1" in text
    assert "| auto_over_a | 1.213 (1.206-1.571) | 1.5 | False |" in text


def test_a_configuration_s_own_environment_reaches_its_worker_only():
    import bench_train

    assert bench_train.worker_env("a_project_auto_expandable")["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert bench_train.worker_env("a_project_auto").get("PYTORCH_CUDA_ALLOC_CONF") == os.environ.get(
        "PYTORCH_CUDA_ALLOC_CONF")
    assert bench_train.worker_env("a_project")["PYTHONUNBUFFERED"] == "1"
    together = [bench_train.worker_env(n, parallel=True)["UNSLOTH_COMPILE_LOCATION"] for n in bench_train.CONFIGS]
    assert len(set(together)) == len(bench_train.CONFIGS)  # workers started together never share Unsloth's cache


def test_the_generation_bench_keeps_the_median_run_of_each_row_and_pairs_its_speed_ups():
    """bench_generate --repeat: rows run alternated; each row shows its median run and range; the speed-up of the
    new path over the old is the median of the rounds' ratios, not one run's."""
    import bench_generate

    def runs(rates):
        return [{"round": k, "tokens_per_s": v, "seconds": 1.0} for k, v in enumerate(rates)]

    all_runs = {"old_batched_32": runs([400, 300, 500]), "new_batched_32": runs([1200, 1000, 1400]),
                "broken": [{"error": "x", "round": 0}]}
    rows = bench_generate.aggregate_repeats(all_runs)
    assert rows["old_batched_32"]["tokens_per_s"] == 400 and rows["old_batched_32"]["tokens_per_s_spread"]["min"] == 300
    assert len(rows["new_batched_32"]["runs"]) == 3 and rows["broken"] == {"error": "x", "round": 0}
    # rounds: 3.0, 3.33, 2.8 -> median 3.0 (one run alone could have said 2.8 or 3.33)
    assert bench_generate.speedup(rows, "new_batched_32", "old_batched_32") == pytest.approx(3.0)
    single = {"a": {"tokens_per_s": 6.0}, "b": {"tokens_per_s": 2.0}}
    assert bench_generate.speedup(single, "a", "b") == 3.0 and bench_generate.speedup(single, "a", "c") is None


def test_the_profile_summary_counts_syncs_item_calls_and_the_optimizer_on_the_cpu():
    """--profile's table, from a CPU profile of two 'steps' (a matmul, one .item(), an optimizer step each)."""
    import bench_train
    import torch
    from torch.profiler import ProfilerActivity, profile

    weight = torch.nn.Parameter(torch.randn(64, 64))
    optimizer = torch.optim.SGD([weight], lr=0.1)  # no .item() of its own, unlike AdamW
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            loss = (torch.randn(8, 64) @ weight).square().mean()
            loss.backward()
            loss.item()
            optimizer.step()
            optimizer.zero_grad()
    summary = bench_train.profile_summary(prof, 2, 0.5)
    assert summary["wall_ms_per_step"] == 250 and summary["item_calls_per_step"] == 1
    assert summary["optimizer_cpu_ms_per_step"] > 0 and summary["cuda_malloc_free_per_step"] == 0
    assert any("mm" in key for key, _, _ in summary["top_cpu_ms_per_step"])


def test_the_repeat_parent_drives_its_workers_and_gathers_their_windows(tmp_path, monkeypatch):
    """bench_train's parent (run_repeated) with fake worker processes that play the gates as run_windows does:
    each worker gets the command and environment asked, the phases run alternated, each window gets the host's
    state recorded before it, and a worker that dies keeps the windows it finished."""
    import argparse

    import bench_train

    order, commands = [], {}

    class FakeWorker:
        def __init__(self, cmd, env):
            name = cmd[cmd.index("--worker") + 1]
            commands[name] = (cmd, env)
            windows = int(cmd[cmd.index("--repeat") + 1])
            self.code = None

            def play():
                gate = repeat.worker_gate(tmp_path / "gates", name)
                runs = []
                for phase in range(repeat.phases(windows, bench_train.PROFILED_STEPS)):
                    gate(phase)
                    order.append((name, phase))
                    if name == "r_raw_loop" and phase == 2:
                        self.code = 1  # dies in its second window
                        return
                    if 1 <= phase <= windows:
                        run = {"round": phase - 1, "real_tokens_per_s": 100.0 * phase}
                        runs.append(run)
                        (tmp_path / "gates" / f"window_{name}_{phase - 1}.json").write_text(json.dumps(run))
                (tmp_path / f"train_bench_{name}.json").write_text(json.dumps({"runs": runs}))
                self.code = 0

            self.thread = threading.Thread(target=play)
            self.thread.start()

        def poll(self):
            return None if self.thread.is_alive() else self.code

        def wait(self):
            self.thread.join()
            return self.code

    monkeypatch.setattr(bench_train.subprocess, "Popen", FakeWorker)
    monkeypatch.setattr(repeat, "host_snapshot", lambda: {"load_1min": 0.1})  # nvidia-smi runs through subprocess
    args = argparse.Namespace(out=tmp_path, warmup=1, measure=2, repeat=2, profile=True)
    names = ["a_project", "r_raw_loop"]
    results = bench_train.run_repeated(names, "/models/llama-8b", args)
    assert order == [("a_project", 0), ("r_raw_loop", 0), ("a_project", 1), ("r_raw_loop", 1), ("a_project", 2),
                     ("r_raw_loop", 2), ("a_project", 3)]
    cmd, env = commands["a_project"]
    assert "--profile" in cmd and cmd[cmd.index("--model-dir") + 1] == "/models/llama-8b"
    assert env["UNSLOTH_COMPILE_LOCATION"].endswith("a_project")
    assert [r["round"] for r in results["a_project"]["runs"]] == [0, 1]
    assert all("load_1min" in r["host_before"] for r in results["a_project"]["runs"])
    broken = results["r_raw_loop"]
    assert broken["error"] == "worker exited with 1" and [r["round"] for r in broken["runs"]] == [0]
    assert broken["failed_at_phase"] == 2 and results["a_project"]["failed_at_phase"] is None
