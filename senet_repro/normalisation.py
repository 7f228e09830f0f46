"""torchvision's RGB mean/std input folded into a SENet checkpoint's first convolution.

Every checkpoint `senet_repro.conversion` writes expects the Caffe release's input
(BGR, 0..255 minus `CAFFE_MEAN_BGR`). timm's legacy SENets, and torchvision's
detectors, feed RGB 0..1 normalised by the ImageNet mean/std below.

`fold_rgb_normalisation` makes a checkpoint take that RGB mean/std input
instead: the first convolution's input channels are reversed and scaled by
255 * std, and its response to the mean offset moves into the following
BatchNorm's running mean. This is exact except where the first convolution's
window overlaps its zero padding: the folded network pads with torchvision's
mean colour, 255 * (0.485, 0.456, 0.406) = (123.675, 116.28, 103.53) in RGB,
where Caffe padded with its own mean colour (123, 117, 104), a difference of at
most 0.72 grey levels, under one 8-bit quantisation step. `measure_fold`
measures the effect (`FoldEffect`); the CLI prints it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .models import meta_model, weights_for
from .models.blocks import BN_EPS
from .models.checkpoint import TORCHVISION_MEAN, TORCHVISION_STD
from .transforms import CAFFE_MEAN_BGR


def _first_convolution(name: str) -> tuple[nn.Conv2d, str, str]:
    """The convolution that sees the image, its state_dict prefix and its BatchNorm's prefix."""
    weights = weights_for(name)
    conv, norm = weights.first_conv, weights.first_norm
    module = meta_model(name).get_submodule(conv)
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"{name}'s {conv} is not a convolution")
    return module, conv, norm


def fold_rgb_normalisation(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    mean: Sequence[float] = TORCHVISION_MEAN,
    std: Sequence[float] = TORCHVISION_STD,
) -> dict[str, torch.Tensor]:
    """A state_dict (our layout) for RGB 0..1 input normalised by `mean` / `std`.

    With Caffe input c_b = 255 x_(2-b) - m_b (b: B, G, R) and torchvision input
    t_r = (x_r - mean_r) / std_r: c_b = 255 std_(2-b) t_(2-b) + d_b with
    d_b = 255 mean_(2-b) - m_b. So the weight becomes W[:, 2-r] * 255 std_r and
    the constant W . d (over the whole window) is subtracted from the
    BatchNorm's running mean, which the bias-free convolution feeds. Exact
    wherever the window lies inside the image; see the module docstring for the border.
    """
    _, conv, norm = _first_convolution(name)
    weight = state_dict[f"{conv}.weight"].double()
    offset = 255.0 * torch.tensor(mean, dtype=torch.float64).flip(0) - torch.tensor(
        CAFFE_MEAN_BGR, dtype=torch.float64
    )
    response = (weight * offset.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    scale = 255.0 * torch.tensor(std, dtype=torch.float64)
    out = dict(state_dict)
    out[f"{conv}.weight"] = (weight.flip(1) * scale.view(1, 3, 1, 1)).float()
    out[f"{norm}.running_mean"] = (state_dict[f"{norm}.running_mean"].double() - response).float()
    return out


@dataclass(frozen=True)
class FoldEffect:
    """How far the folded network is from the Caffe one on a seeded random 0..1 RGB image.

    All three are max abs differences relative to the Caffe network's max |value|:
    the first convolution + BatchNorm output where its window lies inside the
    image (`interior`, float32 round-off) and where it overlaps the padding
    (`border`), and the logits.
    """

    interior: float
    border: float
    logits: float

    def summary(self) -> str:
        return (
            f"torchvision's RGB normalisation folded into the first convolution: on a seeded "
            f"random image the first layer differs by {self.interior:.1e} inside and "
            f"{self.border:.1e} at the zero-padded border, the logits by {self.logits:.1e} "
            "(relative to their scales)"
        )


def _border_mask(size: int, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """Output positions along one axis whose window overlaps the padding."""
    starts = torch.arange((size + 2 * padding - kernel) // stride + 1) * stride - padding
    return (starts < 0) | (starts + kernel > size)


@torch.no_grad()
def measure_fold(
    name: str,
    caffe: Mapping[str, torch.Tensor],
    folded: Mapping[str, torch.Tensor],
    size: int = 224,
    seed: int = 0,
) -> FoldEffect:
    """Compare the Caffe-input and folded state_dicts on the same seeded random image."""
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    caffe_input = 255.0 * image.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    rgb_input = (image - torch.tensor(TORCHVISION_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        TORCHVISION_STD
    ).view(1, 3, 1, 1)
    conv, conv_key, norm_key = _first_convolution(name)

    def first_layer(state: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.conv2d(x, state[f"{conv_key}.weight"], None, conv.stride, conv.padding)
        return nn.functional.batch_norm(
            y,
            state[f"{norm_key}.running_mean"],
            state[f"{norm_key}.running_var"],
            state[f"{norm_key}.weight"],
            state[f"{norm_key}.bias"],
            False,
            0.0,
            BN_EPS,
        )

    reference, ours = first_layer(caffe, caffe_input), first_layer(folded, rgb_input)
    if isinstance(conv.padding, str):
        raise TypeError(f"{name}'s first convolution has padding {conv.padding!r}, not explicit")
    rows = _border_mask(size, conv.kernel_size[0], conv.stride[0], conv.padding[0])
    cols = _border_mask(size, conv.kernel_size[1], conv.stride[1], conv.padding[1])
    border = rows[:, None] | cols[None, :]
    error = (ours - reference).abs() / reference.abs().max()
    clean = meta_model(name)
    logits = torch.func.functional_call(clean, dict(caffe), (caffe_input,))
    folded_logits = torch.func.functional_call(clean, dict(folded), (rgb_input,))
    return FoldEffect(
        interior=float(error[..., ~border].max()),
        border=float(error[..., border].max()),
        logits=float((folded_logits - logits).abs().max() / logits.abs().max()),
    )
