"""The benchmark's worker processes: each training spec runs as
``python -m compress.bench.training --worker SPEC``, ``jobs`` at a time, with one log per
spec and a progress line a minute.

Workers are separate processes so that each holds its own torch threads (one by default:
two trainings on two cores), and a crash or a kill takes one training, not the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
READY = "checkpoint ready"  # a worker prints it once its checkpoint is written


def _launch(spec: dict, log_path: Path, threads: int) -> subprocess.Popen:
    from compress.atomic import write_text

    spec_path = log_path.with_suffix(".spec.json")
    write_text(spec_path, json.dumps(spec, indent=2) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])))
    log = open(log_path, "w")
    try:
        return subprocess.Popen([sys.executable, "-m", "compress.bench.training", "--worker", str(spec_path)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(PACKAGE_ROOT))
    finally:
        log.close()  # the child holds its own descriptor


READY = "checkpoint ready"


def _log_text(log_path: Path) -> str:
    try:
        return log_path.read_text(errors="replace")
    except OSError:
        return ""


def _last_epoch_line(log_path: Path) -> str:
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.startswith(("epoch ", "packing"))]
    except OSError:
        return ""
    return lines[-1] if lines else "starting"


def run_jobs(specs: list[dict], jobs: int, threads: int, log_dir: Path, status_every: float = 60.0) -> None:
    """Run ``specs`` as worker processes, ``jobs`` at a time, printing progress.

    A spec with ``"needs": name`` starts only once the spec of that name has its
    checkpoint in this call (its worker printed ``READY``: a fine-tuning after the training
    it starts from, while that one's rows are still being evaluated); otherwise specs start
    in list order.
    """
    pending, running, t0 = list(specs), {}, time.perf_counter()
    finished: set[str] = set()
    names = {s["name"] for s in specs}
    for s in specs:
        if s.get("needs") and s["needs"] not in names:
            raise ValueError(f"spec {s['name']!r} needs {s['needs']!r}, which is not among the specs")
    last_status = t0
    try:
        while pending or running:
            while len(running) < jobs:
                for name in running:  # a checkpoint is ready before its rows are evaluated
                    if name not in finished and READY in _log_text(log_dir / f"{name}.log"):
                        finished.add(name)
                ready = [s for s in pending if not s.get("needs") or s["needs"] in finished]
                if not ready:
                    break
                spec = ready[0]
                pending.remove(spec)
                print(f"[{time.perf_counter() - t0:6.0f} s] start {spec['name']}", flush=True)
                running[spec["name"]] = (_launch(spec, log_dir / f"{spec['name']}.log", threads), time.perf_counter())
            time.sleep(0.2)
            for name, (proc, started) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[name]
                finished.add(name)
                log = log_dir / f"{name}.log"
                if rc != 0:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                    raise RuntimeError(f"training {name!r} failed (exit {rc}); log {log}:\n{tail}")
                print(f"[{time.perf_counter() - t0:6.0f} s] done  {name} in {time.perf_counter() - started:.0f} s",
                      flush=True)
            if running and time.perf_counter() - last_status >= status_every:
                last_status = time.perf_counter()
                states = ", ".join(f"{n} ({time.perf_counter() - s:.0f} s: {_last_epoch_line(log_dir / f'{n}.log')})"
                                   for n, (_, s) in running.items())
                print(f"[{last_status - t0:6.0f} s] running: {states}", flush=True)
    finally:
        for proc, _ in running.values():  # only on an error: stop the workers this call started
            proc.terminate()
            proc.wait()
