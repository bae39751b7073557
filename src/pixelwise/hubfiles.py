"""Models on the Hugging Face Hub: ``hf://OWNER/NAME[/PATH][@REVISION]`` -> a local run directory or .onnx file.

One place for ``serve``, ``Segmenter.load`` and ``model.init_from``. Only the files a model needs are downloaded
(the run's config.yaml, best.safetensors, summary.json and calibration.json, or the .onnx named), once, into the
Hugging Face cache (``HF_HOME``); a private repository takes ``HF_TOKEN``. What is downloaded is loaded as any
local model: safetensors, a YAML config read with the safe loader, or an ONNX graph, so no code from the
repository runs.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from pixelwise.errors import PixelwiseError

RUN_FILES = ("config.yaml", "best.safetensors", "summary.json", "calibration.json", "model.onnx")
FORM = "hf://OWNER/NAME[/PATH][@REVISION], e.g. hf://org/camvid-unet or hf://org/camvid-unet/model.onnx"


def parse(source: str) -> tuple[str, str, str | None]:
    """(repository id, path inside it, revision) of an hf:// address."""
    rest, _, revision = source.split("://", 1)[1].partition("@")
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise PixelwiseError(f"{source}: expected {FORM}")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None


def hub_model(source: str) -> Path:
    """Download (or find in the cache) what ``source`` names; a run directory, or the .onnx it names or holds."""
    repo, inside, revision = parse(source)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PixelwiseError(f"{source}: hf:// models need the huggingface_hub package: pip install huggingface_hub") \
            from None
    if inside.endswith(".onnx"):
        patterns = [inside, str(PurePosixPath(inside).parent / "summary.json").removeprefix("./")]
    else:
        patterns = [f"{inside}/{name}" if inside else name for name in RUN_FILES]
    try:
        local = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except Exception as e:  # offline, no such repository or revision, gated, private without a token ...
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise PixelwiseError(f"{source}: could not be downloaded from the Hugging Face Hub ({reason}); check the "
                             "name and revision, the network (HF_HUB_OFFLINE), and HF_TOKEN for a private repository"
                             ) from None
    path = local / inside if inside else local
    if path.is_dir() and not (path / "config.yaml").is_file() and (path / "model.onnx").is_file():
        path = path / "model.onnx"  # an export without its run: served by ONNX Runtime
    if not path.exists() or (path.is_dir() and not (path / "config.yaml").is_file()):
        raise PixelwiseError(f"{source}: holds no {inside or 'run'} to serve: give a folder with a run's config.yaml "
                             "and best.safetensors, or an exported .onnx file (hf://OWNER/NAME/model.onnx)")
    return path
