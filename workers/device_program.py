"""
The whole per-tile device program for one field: warp the resident reference, build the
normalised triplet, run the detector, find peaks, cut 63x63 stamps and classify them. Returns
per-candidate tensors for `skyblink.workers.pipeline.TilePipeline`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from . import tile_program as tp
from .pipeline import extract_stamps, uint16_from_int16

__all__ = ["make_device_program"]


def make_device_program(detector: object, classifier: object, reference: torch.Tensor, grid: torch.Tensor, *,
                        science_fwhm_px: float, reference_fwhm_px: float, scale: float = 1.0,
                        threshold: float = 0.3, top_k: int = 64) -> Callable[[torch.Tensor, int], dict[str, torch.Tensor]]:
    """
    Build the program for tiles sharing one reference and sampling grid (one field and CCD).

    Parameters
    ----------
    detector, classifier : TorchRunner
        Active runners (their ``infer_tensors`` is called on the current stream).
    reference : (Hr, Wr) tensor
        The field's reference CCD, resident on the device.
    grid : (B, 2, H, W) tensor
        Reference pixel coordinates of each tile's pixels.
    threshold, top_k : float, int
        New-source score threshold and candidate slots per tile; the ``valid`` column says
        which slots hold a candidate (the pipeline keeps only those).
    """

    def program(science: torch.Tensor, _index: int) -> dict[str, torch.Tensor]:
        sci = uint16_from_int16(science)
        ref = tp.warp_reference(reference, grid)
        triplet = tp.normalized_triplet(sci, ref, science_fwhm_px=science_fwhm_px,
                                        reference_fwhm_px=reference_fwhm_px, scale=scale)
        heat, offsets = detector.infer_tensors(triplet)  # type: ignore[attr-defined]
        score = heat[:, 1:3].amax(dim=1).float()  # new source: transient or moving
        keep = (score == F.max_pool2d(score[:, None], 5, 1, 2)[:, 0]) & (score >= threshold)
        values, flat = torch.topk(torch.where(keep, score, 0.0).flatten(1), k=top_k, dim=1)
        # Fixed-size outputs with a validity mask: a data-dependent count would stall the host.
        b = score.shape[0]
        tile = torch.arange(b, device=score.device).repeat_interleave(top_k)
        flat, values = flat.reshape(-1), values.reshape(-1)
        width = score.shape[-1]
        y, x = flat // width, flat % width
        stamps = extract_stamps(triplet, tile, y, x)
        rb, probs = classifier.infer_tensors(stamps)  # type: ignore[attr-defined]
        off = offsets.float()
        return {
            "valid": values > 0, "tile": tile, "y": y.float() + off[tile, 1, y, x], "x": x.float() + off[tile, 0, y, x],
            "score": values, "real_bogus": rb[:, 0].float().clone(), "class_probs": probs.float().clone(),
            "stamps": stamps.half(),
        }

    return program
