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

        # the user's network: the best weights go into a copy of it (with their Dataset, or with data files)
        model = copy.deepcopy(t.eval_model.net) if t.cfg.model.arch == "custom" else None
        _, path = report_run(state.run_dir, "val", device=str(t.runtime.device),
                             dataset=t.data.val if t.data.custom else None, model=model)
        state.paths["report"] = path
