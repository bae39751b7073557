"""Class activation maps of a segmentation model (``pixelwise explain``), through the ``grad-cam`` package.

The target is grad-cam's ``SemanticSegmentationTarget``: the sum of the class's logits over a region (the pixels
predicted as the class, its true pixels, or a box), so the map answers "which features made the network call these
pixels CLASS". The layer is chosen per architecture automatically (``auto_layer``): the decoder's last feature
map at 1/4 of the input's resolution or coarser, so the map can point at objects a few pixels wide yet is still
some layers before the head (not just the class's logit map); the encoder's deepest stage where there is no
decoder (the whole ``encoder`` for ``seed_cnn``). ``layer=`` (``--layer``) names another module of the network
(dotted path).
``reseg``'s map is of its CNN encoder, before the RNN sweeps mix information along rows and columns, so it shows
what the features saw, not how far the RNN carried it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pixelwise.errors import PixelwiseError
from pixelwise.inference.onnx_backend import pad_to_multiple

METHODS = ("gradcam", "gradcam++", "eigencam")
REGIONS = ("predicted", "truth", "box")
EXTRA = "pip install 'pixelwise[explain]'"


@dataclass
class Explanation:
    cam: np.ndarray  # (H, W) float32 0-1
    region: np.ndarray  # (H, W) bool: the pixels whose class logits were explained
    prediction: np.ndarray  # (H, W) uint8
    class_index: int
    layer: str
    method: str


def _cam_class(method: str) -> Any:
    try:
        from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
    except ImportError:
        raise PixelwiseError(f"explanations need the grad-cam package: {EXTRA}") from None
    if method not in METHODS:
        raise PixelwiseError(f"--method {method}: choose one of {', '.join(METHODS)}")
    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}[method]


def auto_layer(net: Any, channels: int, side: int = 64) -> str:
    """The dotted name (in ``net``) of the module whose map is explained, found by running a probe input.

    With a decoder: its last module (in execution order) whose output is a 4-D map at 1/4 of the input's
    resolution or coarser (Unet's stride-4 block, FPN's and DeepLabV3+'s merged output). Without one: the
    encoder's deepest stage. Measured (docs/guide.md, Explanations): the encoder's deepest stage (1/32) puts the
    map's peak inside the explained class's region far less often on the demo data, because at 1/32 a small
    object is a fraction of one cell.
    """
    import torch

    decoder, encoder = getattr(net, "decoder", None), getattr(net, "encoder", None)
    if encoder is None and decoder is None:
        raise PixelwiseError(f"{type(net).__name__}: no .encoder or .decoder to take a target layer from; name one "
                             "with --layer (a module whose output is an (N, C, h, w) feature map)")
    seen: list[tuple[str, int]] = []  # (dotted name in net, output area), in the order the outputs are made
    hooks = []
    for name, module in net.named_modules():
        def hook(mod: Any, inp: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                seen.append((name, out.shape[-1] * out.shape[-2]))
        hooks.append(module.register_forward_hook(hook))
    try:
        device = next(net.parameters()).device
        with torch.no_grad():
            net(torch.zeros(1, channels, side, side, device=device))
    finally:
        for h in hooks:
            h.remove()
    if isinstance(decoder, torch.nn.Module):
        # at 1/4 of the input's resolution or coarser, but a map, not a gate: MAnet's squeeze-and-excitation
        # blocks output 1x1 (global pooling), whose Grad-CAM is one constant value
        coarse = [n for n, area in seen if (n == "decoder" or n.startswith("decoder."))
                  and area * 16 <= side * side and area * 1024 >= side * side]
        if coarse:
            return coarse[-1]
    mine = [(n, area) for n, area in seen if encoder is not None and (n == "encoder" or n.startswith("encoder."))]
    if not mine:
        raise PixelwiseError(f"{type(net).__name__}: no (N, C, h, w) feature map to explain found; name a layer "
                             "with --layer")
    smallest = min(area for _, area in mine)
    return [n for n, area in mine if area == smallest][-1]


def find_layer(net: Any, name: str) -> Any:
    modules = dict(net.named_modules())
    if name not in modules:
        close = [n for n in modules if n and name.split(".")[-1] in n][:5]
        raise PixelwiseError(f"--layer {name}: no such module in the network" +
                             (f" (similar: {', '.join(close)})" if close else ""))
    return modules[name]


def region_mask(region: str, class_index: int, prediction: np.ndarray, truth: np.ndarray | None = None,
                box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The pixels whose class logits are explained: predicted as the class, truly of it, or inside a box."""
    if region == "predicted":
        return prediction == class_index
    if region == "truth":
        if truth is None:
            raise PixelwiseError("--region truth needs the image's mask (--masks DIR, or a split of the run's data)")
        return truth == class_index
    if region == "box":
        if box is None:
            raise PixelwiseError("--region box needs --box X0,Y0,X1,Y1 (pixels)")
        x0, y0, x1, y1 = box
        out = np.zeros(prediction.shape, bool)
        out[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        return out
    raise PixelwiseError(f"--region {region}: choose one of {', '.join(REGIONS)}")


def explain(seg: Any, image: Any, class_name: str, method: str = "gradcam", region: str = "predicted",
            truth: np.ndarray | None = None, box: tuple[int, int, int, int] | None = None, layer: str | None = None,
            net: Any = None) -> Explanation:
    """The class activation map of ``class_name`` on one image (an array or a file) for a run's ``Segmenter``.

    ``net``: explain this network instead of ``seg.model`` (the randomised-weights sanity check uses it).
    """
    _cam_class(method)  # the extra and the method checked before any prediction
    if class_name not in seg.class_names:
        raise PixelwiseError(f"--class {class_name}: not a class of this model ({', '.join(seg.class_names)})")
    k = seg.class_names.index(class_name)
    prediction = seg.predict(image, tile=0)
    mask = region_mask(region, k, prediction, truth, box)
    if not mask.any():
        raise PixelwiseError(f"class {class_name} has no pixels in the {region} region of this image; nothing to "
                             "explain (try --region truth or box)")
    return explain_region(seg, image, k, mask, method, layer, net, prediction)


def explain_region(seg: Any, image: Any, k: int, mask: np.ndarray, method: str = "gradcam", layer: str | None = None,
                   net: Any = None, prediction: np.ndarray | None = None) -> Explanation:
    """The class activation map of class index ``k``'s logits summed over ``mask`` (H, W bool)."""
    import torch

    cam_class = _cam_class(method)
    if not hasattr(seg.backend, "model"):
        raise PixelwiseError("explanations need a run directory (the PyTorch network), not an exported ONNX model")
    model = net if net is not None else seg.model
    img = seg._image(image)  # model input: uint8, or float32 in the data's units
    if prediction is None:
        prediction = seg.predict(image, tile=0)
    layer = layer or auto_layer(model.net, seg.channels, max(64, model.min_size))
    target_layer = find_layer(model.net, layer)
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    h, w = img.shape[:2]
    x = pad_to_multiple(np.ascontiguousarray(img.transpose(2, 0, 1)[None]), model.pad_multiple, model.min_size)
    target_mask = np.zeros(x.shape[-2:], np.float32)
    target_mask[:h, :w] = mask
    device = next(model.parameters()).device
    tensor = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    try:
        with torch.inference_mode(False), torch.enable_grad(), cam_class(model=model, target_layers=[target_layer]) \
                as cam:
            grey = cam(input_tensor=tensor, targets=[SemanticSegmentationTarget(k, target_mask)])[0]
    except RuntimeError as e:
        raise PixelwiseError(f"{method} cannot explain this model at layer {layer} ({type(model.net).__name__}): "
                             f"{e}") from None
    return Explanation(_rescaled(grey[:h, :w]), mask, prediction, k, layer, method)


def _rescaled(cam: np.ndarray) -> np.ndarray:
    """The map scaled to 0-1 by its own minimum and maximum (all zeros where it is constant). grad-cam scales the
    map of the padded input, and its peak may lie in the padding, which the image's map does not include."""
    cam = np.asarray(cam, np.float32)
    low, high = float(cam.min()), float(cam.max())
    if high <= low:
        return np.zeros_like(cam)
    return ((cam - low) / (high - low)).astype(np.float32)


def pointing_hit(cam: np.ndarray, region: np.ndarray, tolerance: int = 15) -> bool:
    """The pointing game (Zhang et al., 2016): does the map's maximum lie within ``tolerance`` pixels (a disk, as
    Zhang et al. and TorchRay count) of the region? A constant map has no maximum to point with: a miss."""
    if float(np.max(cam)) <= float(np.min(cam)):
        return False
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    y0, x0 = max(y - tolerance, 0), max(x - tolerance, 0)
    yy, xx = np.ogrid[y0 : y + tolerance + 1, x0 : x + tolerance + 1]
    near = (yy - y) ** 2 + (xx - x) ** 2 <= tolerance**2
    return bool((region[y0 : y + tolerance + 1, x0 : x + tolerance + 1] & near[: region.shape[0] - y0,
                                                                             : region.shape[1] - x0]).any())


def overlay(rgb: np.ndarray, cam: np.ndarray, region: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The map as a jet heat overlay on the 8-bit picture, with the explained region's outline in white."""
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    out = (rgb.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(out)
    cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, min(rgb.shape[:2]) // 200))
    return out
