"""Figures that hold on a second run: the configurations compared, run alternated in one invocation (A, B, C, A, B,
C, ...), warm-up left out, the host's load recorded before each run, and every figure given as the median of the
runs with their range. A ratio is met only when its median meets the target.

No torch here: the scheduling, the medians and the verdicts are tested on the CPU (tests/test_bench_repeat.py).

How bench_train.py uses it (`--repeat N`): one process per configuration (importing Unsloth patches transformers,
so configurations never share a process), each loading its model once and then waiting at a gate. The parent
opens the gates one process at a time: every process's warm-up (phase 0), then window 1 of each, window 2 of each,
..., then a tail (the profiled steps, when asked). So only one process uses the GPU at any moment, each window is
preceded by one untimed step (the allocator grows back after the idle process gave its cache back), and any drift
of the machine spreads over all configurations alike.
"""
import json
import os
import pathlib
import statistics
import subprocess
import time

POLL_S = 0.02


# ---- the order -------------------------------------------------------------------------------------------------

def alternated(names: list, repeats: int) -> list:
    """[(round, name)] in the order the runs happen: every configuration once per round."""
    if repeats < 1:
        raise ValueError(f"--repeat must be at least 1, got {repeats}")
    return [(r, name) for r in range(repeats) for name in names]


def phases(windows: int, tail: int) -> int:
    """How many gates a worker passes: its warm-up, each window, and the tail if it has one."""
    return windows + 1 + (1 if tail else 0)


class WindowSchedule:
    """Where a process's optimizer steps stop at a gate and which are timed. Steps (0-based): `warmup` untimed
    steps; then per window one untimed step (the first after the idle wait) and `measure` timed ones; then `tail`
    steps (profiled, or just run). Gates, at which the process waits for the parent: before step 0 (phase 0), before
    each window's untimed step (phase 1..windows) and before the tail (phase windows + 1).

    before_step(i) and after_step(i) are called around optimizer step i by the training loop; `hooks` supplies
    gate(phase), sync(), clock(), free_memory(), window_start(k) and window_end(k, first_step, end_step, seconds)."""

    def __init__(self, warmup: int, measure: int, windows: int, tail: int, hooks):
        if warmup < 1 or measure < 1 or windows < 1 or tail < 0:
            raise ValueError("warmup, measure and windows must be at least 1, tail at least 0")
        self.warmup, self.measure, self.windows, self.tail, self.hooks = warmup, measure, windows, tail, hooks
        self.untimed = [warmup + k * (measure + 1) for k in range(windows)]  # each window's first, untimed step
        self.tail_start = warmup + windows * (measure + 1)
        self.total_steps = self.tail_start + tail
        self.phases = phases(windows, tail)
        self.gates = {0: 0, **{s: k + 1 for k, s in enumerate(self.untimed)}, self.tail_start: windows + 1}
        self._start = None

    def before_step(self, i: int):
        if i in self.gates and (i < self.tail_start or self.tail):
            if i:
                self.hooks.free_memory()  # give the cache back while the others run
            self.hooks.gate(self.gates[i])

    def after_step(self, i: int):
        for k, s in enumerate(self.untimed):
            if i == s:
                self.hooks.sync()
                self.hooks.window_start(k)
                self._start = self.hooks.clock()
            elif i == s + self.measure:
                self.hooks.sync()
                self.hooks.window_end(k, s + 1, s + 1 + self.measure, self.hooks.clock() - self._start)


# ---- the gates (files in one folder: nothing to pipe, and a test can play either side) -------------------------

def gate_path(folder: pathlib.Path, name: str, phase: int) -> pathlib.Path:
    return pathlib.Path(folder) / f"gate_{name}_{phase}"


def go_path(folder: pathlib.Path, name: str, phase: int) -> pathlib.Path:
    return pathlib.Path(folder) / f"go_{name}_{phase}"


def worker_gate(folder, name: str):
    """The worker's side: say it waits at `phase`, then wait until the parent opens it."""
    def gate(phase: int):
        gate_path(folder, name, phase).write_text(str(time.time()))
        while not go_path(folder, name, phase).exists():
            time.sleep(POLL_S)
    return gate


def _wait(condition, alive, timeout_s: float) -> bool:
    """True once condition() holds; False when the process died or the time ran out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if not alive() or time.monotonic() > deadline:
            return condition()
        time.sleep(POLL_S)
    return True


def drive(folder, names: list, phases: int, alive: dict, snapshot=None, timeout_s: float = 1800) -> dict:
    """The parent's side: wait until every worker waits at phase 0 (loaded), then open phase p of each worker in
    turn, waiting for it to reach phase p + 1 (or to exit, after its last phase) before the next: one worker on the
    GPU at a time, in the alternated order. alive[name]() says whether a worker still runs. Returns, per worker,
    the host's state before each phase (snapshot()) and the phase at which it failed, if it did."""
    folder = pathlib.Path(folder)
    log = {name: {"host_before_phase": [], "failed_at_phase": None} for name in names}
    for name in names:
        if not _wait(gate_path(folder, name, 0).exists, alive[name], timeout_s):
            log[name]["failed_at_phase"] = 0
    for phase in range(phases):
        for name in names:
            if log[name]["failed_at_phase"] is not None:
                continue
            log[name]["host_before_phase"].append(snapshot() if snapshot else None)
            go_path(folder, name, phase).write_text(str(time.time()))
            last = phase == phases - 1
            reached = (lambda: not alive[name]()) if last else gate_path(folder, name, phase + 1).exists
            if not _wait(reached, alive[name] if not last else (lambda: True), timeout_s):
                log[name]["failed_at_phase"] = phase
    return log


def host_snapshot() -> dict:
    """The host's load average and, where nvidia-smi answers, the GPU's utilisation and memory in use: another
    tenant's work shows here before a run, when ours is idle."""
    state = {"load_1min": os.getloadavg()[0], "cpus": os.cpu_count(), "time": time.time()}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        util, used = (float(x) for x in out.splitlines()[0].split(","))  # the first GPU, the one benchmarked
        state["gpu_util_percent"], state["gpu_memory_used_mib"] = util, used
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        state["gpu_util_percent"] = state["gpu_memory_used_mib"] = None
    return state


# ---- the figures -----------------------------------------------------------------------------------------------

def spread(values: list) -> dict:
    """Median, min, max and count of the values that exist."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list, keys: list) -> dict:
    """{key: spread} over a configuration's runs."""
    return {key: spread([run.get(key) for run in runs]) for key in keys}


def paired_ratios(num_runs: list, den_runs: list, key: str) -> dict:
    """Run k of one configuration over run k of the other (neighbours in time, so drift cancels), and the spread
    of those ratios; the median is the figure a target is judged on."""
    by_round = {r.get("round"): r for r in den_runs}
    ratios = [n[key] / by_round[n.get("round")][key] for n in num_runs
              if n.get("round") in by_round and n.get(key) and by_round[n.get("round")].get(key)]
    return {**spread(ratios), "runs": ratios}


def verdict(figure: dict, target: float, at_most: bool = False) -> dict:
    """Met only when the median meets the target; None when there is no median. Says whether the runs
    straddle the target (some above, some below), which a single run could not show."""
    median = figure.get("median")
    met = None if median is None else (median <= target if at_most else median >= target)
    low, high = figure.get("min"), figure.get("max")
    straddles = None if median is None else low <= target <= high
    return {"median": median, "min": low, "max": high, "n": figure.get("n", 0), "target": target, "met": met,
            "runs_straddle_target": straddles}


def fmt(figure: dict, digits: int = 0, percent: bool = False) -> str:
    """'median (min-max)' as the tables print it."""
    if not figure or figure.get("median") is None:
        return "-"
    if percent:
        return f"{figure['median']:.1%} ({figure['min']:.1%}-{figure['max']:.1%})"
    return f"{figure['median']:,.{digits}f} ({figure['min']:,.{digits}f}-{figure['max']:,.{digits}f})"


def write_json(path, data):
    path = pathlib.Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)
