"""
The networks: the tile detector, the stamp classifier, the port of ZTF's braai (VGG6), and the two combined.

All are plain `torch.nn.Module`s with fixed input conventions, so the same definition
trains on the CPU, exports to ONNX, and runs under torch on a GPU.

Inputs are normalized before they reach a network (by the worker's tile program,
`skyblink.workers.difference`, or for braai by `skyblink.evaluation.braai_port.braai_normalize`);
the detector and `Classifier` do no data-dependent normalization. `BraaiClassifier` (experimental,
not shipped) takes the classifier's input and makes braai's itself (a sky pedestal and braai's
row-wise L2, plain tensor operations), so its ONNX graph would still need no pre-processing outside it.

Notes
-----
Detector channels, in order: science, reference warped onto the science grid, difference; each
background-subtracted and divided by its noise (sigma units). Both networks apply ``asinh`` to
their input first, which keeps faint pixels linear and compresses bright stars. Classifier stamps use the same order (ZTF/braai's
science, template, difference), 63x63.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from skyblink.model_io import (  # the torch-free constants live in model_io
    CLASSIFIER_CLASSES,
    DETECTOR_CLASSES,
    STAMP_SIZE,
)

__all__ = [
    "CLASSIFIER_CLASSES",
    "DETECTOR_CLASSES",
    "STAMP_SIZE",
    "Braai",
    "BraaiClassifier",
    "Classifier",
    "Detector",
]



def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Detector(nn.Module):
    """
    Fully convolutional U-Net that turns a normalized (science, reference, difference) tile into
    per-pixel heatmaps and sub-pixel offsets. Experimental.

    Parameters
    ----------
    width : int
        Channels at full resolution of version 1.0's layout; doubled at each downsampling (capped
        at 8x). The stride-2 network has the same widths at each resolution from half on.
    stride : {1, 2}
        1 (version 1.0): the U-Net starts at full resolution and downsamples five times.
        2 (version 2.0): a space-to-depth stem makes each 2x2 block of input pixels the 12
        channels of one half-resolution pixel (nothing is lost), the U-Net runs at half
        resolution and downsamples four times, and the heads predict each block's four pixels
        as channels that a pixel shuffle puts back at full resolution. Only the input and the
        outputs touch full-resolution memory, which is what bounds the network on a GPU
        (issue 23); 2.6-3x fewer CPU seconds than 1.0 per tile.

    Notes
    -----
    Input ``(B, 3, H, W)`` float with H and W multiples of 32 (the total downsampling is 32 for
    both strides). Outputs ``heatmaps (B, 4, H, W)``: per-class probabilities (sigmoid) that a
    source of that class is centred on the pixel, classes in `DETECTOR_CLASSES`; ``offsets
    (B, 2, H, W)``: the (dx, dy) from the pixel centre to the source centre, in pixels.
    """

    def __init__(self, width: int = 8, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            msg = f"Detector stride must be 1 or 2, got {stride}"
            raise ValueError(msg)
        self.stride = stride
        # version 1.0's widths by resolution; the space-to-depth stem starts at its half-resolution level
        widths = [width * min(2**i, 8) for i in range(6)][stride - 1 :]
        levels = len(widths)
        self.stem = _block(3 * stride * stride, widths[0])
        self.down = nn.ModuleList(_block(widths[i], widths[i + 1], stride=2) for i in range(levels - 1))
        self.up = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels - 1)))
        cells = stride * stride  # full-resolution pixels predicted per output pixel
        self.heatmap = nn.Conv2d(widths[0], len(DETECTOR_CLASSES) * cells, 1)
        self.offset = nn.Conv2d(widths[0], 2 * cells, 1)
        assert self.heatmap.bias is not None  # Conv2d's default bias=True
        nn.init.constant_(self.heatmap.bias, -4.0)  # sources are rare: start near p=0.02
        self.stem_padding: int = 0  # zero input channels `pad_stem_channels` added (not in the weights' files)

    def pad_stem_channels(self, multiple: int = 8) -> None:
        """
        Give the stem's first convolution zero input channels up to a multiple of ``multiple``
        (in place; the same function: the added channels and their weights are zero). cuDNN's
        tensor-core convolutions read fp16 channels in groups of 8: version 2.0's 12 channels ran
        its non-tensor-core kernel, 1.5 ms of 5.4 a batch of 16 tiles on an H100. Inference only
        (a runner calls it on its own copy); the weights' files keep the unpadded layer.
        """
        conv = self.stem[0]
        assert isinstance(conv, nn.Conv2d)
        extra = -conv.in_channels % multiple
        if not extra:
            return
        padded = copy.deepcopy(conv)
        padded.in_channels += extra
        padded.weight = nn.Parameter(F.pad(conv.weight.detach(), (0, 0, 0, 0, 0, extra)), requires_grad=False)
        self.stem[0] = padded
        self.stem_padding = int(self.stem_padding) + extra

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (heatmaps, offsets) for a normalized input; see the class notes."""
        x = torch.asinh(x)
        x = F.pixel_unshuffle(x, self.stride) if self.stride > 1 else x
        if self.stem_padding:
            x = F.pad(x, (0, 0, 0, 0, 0, self.stem_padding))
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        for stage in self.up:
            skip = skips.pop()
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = stage(torch.cat([y, skip], dim=1))
        heat, offsets = self.heatmap(y), self.offset(y)
        if self.stride > 1:
            heat, offsets = F.pixel_shuffle(heat, self.stride), F.pixel_shuffle(offsets, self.stride)
        return torch.sigmoid(heat), offsets


class Classifier(nn.Module):
    """
    Real/bogus score and class probabilities for 63x63 (science, reference, difference) stamps.
    Experimental.

    Notes
    -----
    Input ``(B, 3, 63, 63)`` float in sigma units, like the detector's input. Outputs ``real_bogus
    (B, 1)``: probability that the difference shows a real astrophysical change (1 = real);
    ``class_probs (B, 7)``: softmax over `CLASSIFIER_CLASSES`.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(3, width),
            nn.MaxPool2d(2),  # 31
            _block(width, 2 * width),
            nn.MaxPool2d(2),  # 15
            _block(2 * width, 4 * width),
            nn.MaxPool2d(2),  # 7
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 7 * 7, 128), nn.ReLU(inplace=True), nn.Dropout(0.3))
        self.real_bogus = nn.Linear(128, 1)
        self.classes = nn.Linear(128, len(CLASSIFIER_CLASSES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (real_bogus, class_probs) for normalized stamps; see the class notes."""
        rb, classes = self.logits(x)
        return torch.sigmoid(rb), torch.softmax(classes, dim=1)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the pre-activation (real/bogus, class) logits, for training losses."""
        h = self.head(self.features(torch.asinh(x)))
        return self.real_bogus(h), self.classes(h)


class Braai(nn.Module):
    """
    ZTF's braai VGG6 (model d6_m7; Duev et al. 2019, MIT licence), ported to torch. Stable.

    Notes
    -----
    Input ``(B, 3, 63, 63)`` channels-first, normalized by `skyblink.evaluation.braai_port.braai_normalize`
    (row-wise L2, as ZTF did for d6_m7). Output ``(B, 1)``: the ``drb`` score ZTF puts in its alerts.
    Weights are converted from the upstream Keras HDF5 file by `skyblink.evaluation.braai_port`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)
        self.conv2 = nn.Conv2d(16, 16, 3)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.conv4 = nn.Conv2d(32, 32, 3)
        self.fc_1 = nn.Linear(1152, 256)
        self.fc_out = nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return drb for normalized stamps."""
        return torch.sigmoid(self.fc_out(self.features(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the (B, 256) activations of ``fc_1`` (after its ReLU), ``fc_out``'s input."""
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        x = F.max_pool2d(x, 4)
        # Keras flattened channels-last (H, W, C): permute before flattening to use its weights.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return F.relu(self.fc_1(x))


#: Sky level (sigma units) `BraaiClassifier` adds to (science, reference, difference) before braai's
#: row-wise L2 normalisation: braai was trained on raw ZTF cutouts, whose science and template carry
#: their sky; sigma-unit stamps have it subtracted. Chosen on the grouped real-alert folds (BENCHMARKS).
BRAAI_PEDESTAL = (20.0, 20.0, 0.0)
#: Half-size of the central box whose sum gives the difference's sign for braai (5 x 5 pixels).
ORIENT_HALF = 2


class BraaiClassifier(nn.Module):
    """
    The classifier v2: v1.0's simulator-trained network beside ZTF's trained braai trunk. Experimental.

    Parameters
    ----------
    width : int
        Width of the `Classifier` part.
    pedestal : tuple of 3 float
        Sky level added to each channel before braai's normalisation (`BRAAI_PEDESTAL`).

    Notes
    -----
    Same input and outputs as `Classifier` (``(B, 3, 63, 63)`` sigma-unit stamps -> ``real_bogus``,
    ``class_probs``), so the ONNX graph's names and the pipeline contract are unchanged. The forward
    does its own normalisation for each part: ``asinh`` for the `Classifier` trunk; the difference
    turned source-positive as ZTF's cutouts are, a pedestal and row-wise L2 (braai d6_m7's own
    pre-processing) for the `Braai` trunk (`braai_input`). ``real_bogus`` is one
    linear layer on both trunks' features (128 + 256); ``class_probs`` are the `Classifier`'s.
    braai's weights are those ZTF trained (Duev et al. 2019, MIT licence), loaded from the port.
    """

    pedestal: torch.Tensor  # (1, 3, 1, 1) buffer

    def __init__(self, width: int = 16, pedestal: tuple[float, float, float] = BRAAI_PEDESTAL) -> None:
        super().__init__()
        self.sky = Classifier(width)
        self.braai = Braai()
        self.register_buffer("pedestal", torch.tensor(pedestal, dtype=torch.float32).view(1, 3, 1, 1))
        self.real_bogus = nn.Linear(128 + 256, 1)

    def use_braai_output(self) -> BraaiClassifier:
        """
        Set ``real_bogus`` to braai's own output layer on the braai features (the `Classifier`
        features weighted zero), so that the network starts as braai; returns itself.
        """
        with torch.no_grad():
            self.real_bogus.weight.zero_()
            self.real_bogus.weight[:, 128:] = self.braai.fc_out.weight
            self.real_bogus.bias.copy_(self.braai.fc_out.bias)
        return self

    def braai_input(self, x: torch.Tensor) -> torch.Tensor:
        """
        Sigma-unit stamps -> braai's input: the difference turned source-positive, the pedestal
        added, each row divided by its L2 norm.

        braai learnt on ZTF's difference cutouts, which are source-positive (reference minus
        science for a fading source, ``isdiffpos = 'f'``); the classifier's stamps are science
        minus reference. The difference is multiplied by the sign of its sum over the central
        `ORIENT_HALF` -radius box, so braai sees a fading source as ZTF showed it: on the real ZTF
        alerts in ``../shared/data`` that sign is the packet's own in every case.
        """
        c, r = x.shape[-1] // 2, ORIENT_HALF
        centre = x[:, 2:3, c - r : c + r + 1, c - r : c + r + 1].sum(dim=(-2, -1), keepdim=True)
        sign = torch.where(centre < 0, -torch.ones_like(centre), torch.ones_like(centre))
        y = torch.cat([x[:, :2], x[:, 2:3] * sign], dim=1) + self.pedestal
        # Scaled by the row's largest |value| first (same result), so the squares stay finite in fp16.
        y = y / y.abs().amax(dim=-1, keepdim=True).clamp_min(1e-6)
        return y / torch.sqrt((y * y).sum(dim=-1, keepdim=True)).clamp_min(1e-6)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (B, 128) `Classifier` head features and the (B, 256) braai features."""
        return self.sky.head(self.sky.features(torch.asinh(x))), self.braai.features(self.braai_input(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (real_bogus, class_probs) for sigma-unit stamps; see the class notes."""
        rb, classes = self.logits(x)
        return torch.sigmoid(rb), torch.softmax(classes, dim=1)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the pre-activation (real/bogus, class) logits."""
        h_sky, h_braai = self.features(x)
        return self.real_bogus(torch.cat([h_sky, h_braai], dim=1)), self.sky.classes(h_sky)
