"""A `pixelwise tune` worker whose trials are scripted instead of trained (run as a process by tests/test_tune.py).

Everything but the training is the real thing: storage, study, heartbeat, retry of dead trials, the shared quota,
the report (heartbeat every 3 s, so a trial silent for 6 s is dead).
A trial sleeps SLEEP seconds (LONG for the trial numbered LONG_TRIAL) and scores len(arch) / 10 + lr.

    python tune_worker.py CONFIG SPACE STORAGE OUT TRIALS SLEEP [LONG_TRIAL LONG]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pixelwise.tune.study as study_module
from pixelwise.tune import TuneRequest, tune


def main() -> None:
    config, space, storage, out, trials, sleep = sys.argv[1:7]
    long_trial, long = (int(sys.argv[7]), float(sys.argv[8])) if len(sys.argv) > 8 else (-1, 0.0)

    def scripted(trial, parent, space_, base, settings, prune):  # noqa: ANN001, ANN202
        params = space_.suggest(trial)
        run = parent / f"trial-{trial.number:04d}"
        run.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("pid", os.getpid())
        time.sleep(long if trial.number == long_trial else float(sleep))
        return len(params["model.arch"]) / 10 + params["optim.lr"]

    study_module.run_trial = scripted
    tune(TuneRequest(config=Path(config), trials=int(trials), study="s", storage=storage, space=Path(space),
                     out=Path(out), heartbeat=3))


if __name__ == "__main__":
    main()
