"""``pixelwise push``: a run onto the Hugging Face Hub with its model card (registered on ``cli.app`` by cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pixelwise.progress import console as err
from pixelwise.progress import stdout as out


def push(
    run: Path = typer.Argument(..., help="Run directory."),
    repo: str = typer.Argument(..., help="Hugging Face repository, USER/REPO (created if missing)."),
    private: bool = typer.Option(False, help="Create the repository private."),
    onnx: str | None = typer.Option(None, help="Also export and upload model.onnx: fp32, or int8 (both files)."),
    smp: bool = typer.Option(False, help="Also upload smp/, a folder plain smp.from_pretrained loads."),
    to_folder: Path | None = typer.Option(None, help="Write the repository's files here instead of uploading "
                                                     "(no network): to look at the model card first."),
) -> None:
    """Push a run to the Hugging Face Hub: weights, config, class table, model card; then Segmenter.load('hf://...')."""
    from pixelwise.share.push import push as push_run

    result = push_run(run, repo, private=private, onnx=onnx, smp=smp, to_folder=to_folder)
    if to_folder is not None:
        err.print(f"wrote {len(result['files'])} files to {to_folder} (README.md is the model card); nothing "
                  "was uploaded")
    out.print_json(json.dumps(result))
