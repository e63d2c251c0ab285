"""`dvc repro`, with the time left for the whole run (what `make demo` runs).

    python -m pipeline.repro [DVC REPRO ARGUMENTS ...]

Before DVC starts, it plans the stages `dvc repro` will run (`pipeline.plan`: their work, timed by a
few seconds of measurement on this machine) and prints the projection. While DVC runs, each stage's
start prints a line with the stages done, the time so far and the time left; the running stage's
progress bar shows the whole run's time left beside its own. Each finished stage corrects the
projection of the rest by how long it took against its own projection. The exit status is DVC's.
With arguments (targets, `--force`, ...) the plan still covers what a bare `dvc repro` would run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from guide.io import atomic_write_text
from params import load_params
from stages.common import RUN_PROGRESS, clock

STARTS = re.compile(r"Running stage '(?P<name>[^']+)'")  # anywhere in the line: a bar's leftovers may precede it
SKIPS = re.compile(r"Stage '(?P<name>[^']+)' (didn't change|is cached)")


class Tracker:
    """The projection of the stages still to run, corrected by the ones that finished."""

    def __init__(self, estimates: dict[str, float], path: Path, clock_=time.time):
        self.estimates, self.path, self.now = dict(estimates), path, clock_
        self.started = self.now()
        self.current: tuple[str, float] | None = None
        self.actual = self.projected = 0.0  # seconds of the finished stages: measured, projected
        self.timings: list[tuple[str, float, float]] = []  # (stage, seconds it took, its projection)

    PRIOR_S = 60.0  # the projection's weight, in seconds of stages, against the first measured ones

    @property
    def scale(self) -> float:
        """How the finished stages' time compared with their projection (1 until one finished),
        damped so that a few seconds of small stages do not swing the whole estimate."""
        return (self.actual + self.PRIOR_S) / (self.projected + self.PRIOR_S)

    def _finish_current(self, now: float) -> None:
        if self.current is not None:
            name, since = self.current
            projected = self.estimates.pop(name, 0.0)
            self.actual += now - since
            self.projected += projected
            self.timings.append((name, now - since, projected))
            self.current = None

    def start(self, name: str) -> str:
        now = self.now()
        self._finish_current(now)
        self.current = (name, now)
        own = self.estimates.get(name, 0.0) * self.scale
        after = sum(v for k, v in self.estimates.items() if k != name) * self.scale
        atomic_write_text(str(self.path), json.dumps({"current": name, "current_left": own,
                                                      "current_since": now, "after": after}))
        total = len(self.timings) + len(self.estimates)
        return (f"[run] {name}: stage {len(self.timings) + 1}/{total} · {clock(now - self.started)} so far · "
                f"≈{clock(own + after)} left")

    def skip(self, name: str) -> None:
        self.estimates.pop(name, None)

    def finish(self) -> str:
        """The closing line: the run's time against its projection, and the same by stage kind."""
        now = self.now()
        self._finish_current(now)
        kinds: dict[str, list[float]] = {}
        for name, took, projected in self.timings:
            k = kinds.setdefault(name.split("-t")[0], [0.0, 0.0])
            k[0] += took
            k[1] += projected
        by_kind = ", ".join(f"{k} {clock(a)}/{clock(b)}" for k, (a, b) in kinds.items())
        return (f"[run] {len(self.timings)} stages in {clock(now - self.started)} (projected {clock(self.projected)}); "
                f"by kind, took/projected: {by_kind}")


def main(argv: list[str] | None = None) -> int:
    from pipeline.plan import make_plan, to_run

    args = sys.argv[1:] if argv is None else argv
    try:
        p = load_params("params.yaml")
    except Exception as e:  # ParamsError or a missing file: one line naming it
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    dvc = [sys.executable, "-m", "dvc", "repro", *args]
    try:
        names = to_run(".")
    except Exception as err:  # not a DVC repository, an unreadable lock: DVC itself says what is wrong
        print(f"[run] no plan ({type(err).__name__}: {' '.join(str(err).split())[:200]}); running dvc repro",
              flush=True)
        names = []
    if not names:
        return subprocess.call(dvc, env=env)
    t0 = time.perf_counter()
    plan = make_plan(p, names)
    print(f"[run] {len(names)} stages to run, projected {clock(plan.total)} on this machine "
          f"(`python -m pipeline.plan` for each stage; measured in {time.perf_counter() - t0:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="guide-run-") as tmp:
        tracker = Tracker(plan.estimates(), Path(tmp) / "progress.json")
        env[RUN_PROGRESS] = str(tracker.path)
        proc = subprocess.Popen(dvc, env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if m := STARTS.search(line):
                    print(tracker.start(m["name"]), flush=True)
                elif m := SKIPS.search(line):
                    tracker.skip(m["name"])
                sys.stdout.write(line)
                sys.stdout.flush()
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        print(tracker.finish(), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
