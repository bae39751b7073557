"""``pixelwise push RUN USER/REPO``: a run onto the Hugging Face Hub, loadable with ``Segmenter.load("hf://...")``.

The repository gets what loading needs and what a reader wants to see: ``config.yaml`` (resolved: class table,
channels, normalisation), ``best.safetensors``, ``summary.json``, ``metrics.csv``, ``dataset.json``,
``eval_val.json``, ``classes.json`` (the class table on its own), optionally ``model.onnx`` / ``model.int8.onnx``
and ``smp/`` (plain smp), and ``README.md``, the model card (``share.card``). The files are staged in a temporary
folder, then sent in one commit with huggingface_hub's ``HfApi`` (``create_repo``, ``upload_folder``), which
reads ``HF_TOKEN`` (or ``huggingface-cli login``) and ``HF_ENDPOINT``. ``--to-folder DIR`` writes the staged
files instead of uploading them.
"""

from __future__ import annotations

import json
import ntpath
import posixpath
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from pixelwise.atomic import check_out_dir
from pixelwise.config import load_run_config, read_yaml
from pixelwise.errors import PixelwiseError
from pixelwise.progress import console
from pixelwise.report.build import current_evaluation
from pixelwise.share.card import model_card

# calibration.json (``pixelwise calibrate``): the temperature Segmenter applies, so hf:// loads predict as the run does
RUN_FILES = ("config.yaml", "best.safetensors", "summary.json", "metrics.csv", "dataset.json", "calibration.json")
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
PATHS_INSIDE = ("config.yaml", "summary.json", "dataset.json", "eval_val.json")  # may name files on this machine


def _portable(value: Any, root: str | None) -> Any:
    """``value`` with every absolute path in it made local-free: under the data root -> ``ROOTNAME/...``, elsewhere
    -> the file or folder name. What a run records about this machine (``/home/alice/...``) stays on it."""
    if isinstance(value, dict):
        return {k: _portable(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, root) for v in value]
    if not isinstance(value, str) or not (posixpath.isabs(value) or ntpath.isabs(value)) or len(value) < 2:
        return value
    kind = PurePosixPath if posixpath.isabs(value) else PureWindowsPath  # a run made on Windows, pushed elsewhere
    path = kind(value)
    if root and path.is_relative_to(kind(root)):
        return (PurePosixPath(kind(root).name) / path.relative_to(kind(root)).as_posix()).as_posix()
    return path.name or value


def _strip_local_paths(folder: Path) -> None:
    """Rewrite the staged config and JSON files with ``_portable`` paths (loading needs none of them)."""
    config = read_yaml(folder / "config.yaml")
    root = (config.get("data") or {}).get("root")
    for name in PATHS_INSIDE:
        file = folder / name
        if not file.is_file():
            continue
        if name.endswith(".yaml"):
            file.write_text(yaml.safe_dump(_portable(config, root), sort_keys=False))
        else:
            file.write_text(json.dumps(_portable(json.loads(file.read_text()), root), indent=2))


def stage(run_dir: Path, folder: Path, repo_id: str, onnx: str | None = None, smp: bool = False) -> list[str]:
    """Write the repository's files for ``run_dir`` into ``folder``; returns their names."""
    cfg = load_run_config(run_dir)  # a resolved run config, or a clear error
    if not (run_dir / "best.safetensors").is_file():
        raise PixelwiseError(f"{run_dir}: no best.safetensors yet (training writes it after its first evaluation)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, folder / name)
    evaluation = current_evaluation(run_dir, "val")  # of these weights only, as the card's figures (None: stale)
    if evaluation is not None:
        (folder / "eval_val.json").write_text(json.dumps(evaluation, indent=2))
    _strip_local_paths(folder)
    (folder / "classes.json").write_text(json.dumps(cfg.data.classes.model_dump(mode="json", exclude_none=True),
                                                    indent=2))
    if onnx is not None:
        from pixelwise.export.onnx import export_onnx

        fp32 = Path(export_onnx(run_dir, folder / "model.onnx")["path"])
        if onnx == "int8":
            from pixelwise.export.quantize import quantize

            quantize(run_dir, fp32, folder / "model.int8.onnx")
    if smp:
        from pixelwise.export.smp import export_smp

        export_smp(run_dir, folder / "smp")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    (folder / "README.md").write_text(model_card(run_dir, repo_id, files))
    return sorted([*files, "README.md"])


def push(run_dir: Path, repo_id: str, private: bool = False, onnx: str | None = None, smp: bool = False,
         to_folder: Path | None = None, api: Any = None) -> dict[str, Any]:
    """Stage ``run_dir`` and upload it to ``repo_id`` (or write it to ``to_folder``); ``api``: an ``HfApi``."""
    if not REPO_ID.match(repo_id):
        raise PixelwiseError(f"{repo_id}: expected USER/REPO (or ORG/REPO), e.g. alice/camvid-unet")
    if onnx not in (None, "fp32", "int8"):
        raise PixelwiseError(f"--onnx {onnx}: fp32 or int8")
    run_dir = Path(run_dir)
    if to_folder is not None:
        check_out_dir(Path(to_folder), "--to-folder")
        if Path(to_folder).is_dir() and any(Path(to_folder).iterdir()):
            raise PixelwiseError(f"--to-folder {to_folder}: the folder is not empty; give a new or empty one")
    with tempfile.TemporaryDirectory(prefix="pixelwise-push-") as tmp:
        staged = Path(tmp) / "repo"
        files = stage(run_dir, staged, repo_id, onnx, smp)
        if to_folder is not None:
            shutil.copytree(staged, to_folder, dirs_exist_ok=True)
            return {"folder": str(to_folder), "files": files}
        if api is None:
            try:
                from huggingface_hub import HfApi
            except ImportError:
                raise PixelwiseError("pixelwise push needs huggingface_hub: pip install 'pixelwise[hub]'") from None
            api = HfApi()
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(staged), repo_type="model",
                                       commit_message=f"pixelwise push {run_dir.name}")
        except Exception as e:  # no token, no network, no right to write there ...
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise PixelwiseError(f"pushing {run_dir} to {repo_id} failed ({reason}); check HF_TOKEN (or "
                                 "`huggingface-cli login`), the network and HF_ENDPOINT, and that you may write "
                                 "to that namespace") from None
    url = getattr(commit, "commit_url", None) or f"{getattr(api, 'endpoint', 'https://huggingface.co')}/{repo_id}"
    console.print(f"pushed {len(files)} files to {repo_id}: load with Segmenter.load('hf://{repo_id}')")
    return {"repo_id": repo_id, "url": url, "files": files, "private": private}
