"""The report as a callback: after training, the best weights are evaluated on val and report.html is written."""

from __future__ import annotations

import copy

from pixelwise.engine.callbacks import Callback, RunState


class Report(Callback):
    """Writes ``RUN/report.html`` (and ``eval_val.json``, ``plots/``) when training ends, on rank 0."""

    def on_train_end(self, state: RunState) -> None:
        t = state.trainer
        if not state.is_main or t.data.val is None:
            return
        from pixelwise.report.build import report_run

        if t.data.custom:  # the user's Dataset and network: the best weights go into a copy of the network
            _, path = report_run(state.run_dir, "val", device=str(t.runtime.device), dataset=t.data.val,
                                 model=copy.deepcopy(t.eval_model.net) if t.cfg.model.arch == "custom" else None)
        else:
            _, path = report_run(state.run_dir, "val", device=str(t.runtime.device))
        state.paths["report"] = path
