"""
The whole per-tile device program for one field: calibrate the raw science pixels to electrons,
reject and clean cosmic rays, warp the resident reference, build the normalised triplet, run the
detector, keep the peaks whose matched-filter S/N reaches the threshold and the difference's own
point sources (`skyblink.workers.peaks`), cut 63x63 stamps and classify them: the steps of `skyblink.workers.process_tile`, in torch. Returns per-candidate
tensors for `skyblink.workers.pipeline.TilePipeline`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

from . import tile_program as tp
from .calibration import calibrate_tensor
from .cosmics import detect_cosmics_tensor
from .matched_filter import DEFAULT_SNR_THRESHOLD, matched_filter_snr_tensor
from .peaks import DIFFERENCE_SNR_THRESHOLD, difference_point_sources_tensor
from .pipeline import extract_stamps, uint16_from_int16
from .tile_unit import FLOAT16_MAX

__all__ = ["make_device_program"]


def make_device_program(detector: object, classifier: object, reference: torch.Tensor, grid: torch.Tensor, *,
                        science_fwhm_px: float, reference_fwhm_px: float, scale: float = 1.0,
                        threshold: float = 0.3, top_k: int = 64, snr_threshold: float = DEFAULT_SNR_THRESHOLD,
                        gain: float | None = None, saturate: float | None = None, read_noise: float = 0.0,
                        bias: float | torch.Tensor | None = None, flat: torch.Tensor | None = None,
                        reject_cosmics: bool = True, psf_match: str = "gaussian") -> Callable[[torch.Tensor, int], dict[str, torch.Tensor]]:
    """
    Build the program for tiles sharing one reference and sampling grid (one field and CCD).

    Parameters
    ----------
    detector, classifier : TorchRunner or TensorRTRunner
        Active runners (their ``infer_tensors`` is called on the current stream with device
        tensors; a TensorRT engine reads and writes them in place through their pointers).
    reference : (Hr, Wr) tensor
        The field's reference CCD, resident on the device.
    grid : (B, 2, H, W) tensor
        Reference pixel coordinates of each tile's pixels.
    science_fwhm_px, reference_fwhm_px : float
        PSF FWHM of each image in pixels.
    scale : float
        Reference-to-science flux factor in ADU (`skyblink.workers.flux_scale`); multiplied by
        ``gain`` here, as the science is calibrated to electrons.
    threshold, top_k : float, int
        New-source score threshold and candidate slots per tile; the ``valid`` column says
        which slots hold a candidate (the pipeline keeps only those).
    snr_threshold : float
        Minimum matched-filter S/N of a candidate in the difference.
    gain, saturate, read_noise : float, optional
        The science CCD's header ``GAIN`` (e-/ADU), ``SATURATE`` (ADU) and ``RDNOISE`` (e-).
    bias, flat : float or tensor broadcastable to (B, H, W), optional
        Calibration of the tiles' pixels, where given.
    reject_cosmics : bool
        Flag and clean cosmic rays and hot pixels before the background.
    psf_match : {"gaussian", "kernel"}
        PSF matching (`skyblink.workers.tile_program.normalized_triplet`).

    Returns
    -------
    callable
        ``program(science_int16 (B, H, W), batch_index) -> dict`` of per-candidate tensors:
        valid, tile, y, x, score, snr, real_bogus, class_probs, stamps.
    """
    def program(science: torch.Tensor, _index: int) -> dict[str, torch.Tensor]:
        calibrated = calibrate_tensor(uint16_from_int16(science), gain=gain, bias=bias, flat=flat, saturate=saturate)
        sci, bad = calibrated.electrons, calibrated.mask
        if reject_cosmics:
            cosmics = detect_cosmics_tensor(sci, read_noise=read_noise, mask=bad | ~torch.isfinite(sci))
            sci, bad = cosmics.cleaned, bad | cosmics.mask
        ref = tp.warp_reference(reference, grid)
        triplet = tp.normalized_triplet(sci, ref, science_fwhm_px=science_fwhm_px, reference_fwhm_px=reference_fwhm_px,
                                        scale=scale * (gain or 1.0), science_mask=bad & torch.isfinite(sci),
                                        psf_match=psf_match)
        heat, offsets = detector.infer_tensors(triplet)  # type: ignore[attr-defined]
        snr = matched_filter_snr_tensor(triplet[:, 2], max(science_fwhm_px, reference_fwhm_px), renormalize=True)
        peak_snr = F.max_pool2d(snr[:, None], 3, 1, 1)[:, 0]  # as find_peaks: the best S/N within 1 pixel
        score = heat[:, 1:3].amax(dim=1).float()  # new source: transient or moving
        keep = (score == F.max_pool2d(score[:, None], 5, 1, 2)[:, 0]) & (score >= threshold) & (peak_snr >= snr_threshold)
        # As find_peaks: the difference's point sources with no detector peak within 1 FWHM, after the detector's.
        fwhm = max(science_fwhm_px, reference_fwhm_px)
        source, sub_dy, sub_dx = difference_point_sources_tensor(snr, fwhm, snr_threshold=max(snr_threshold, DIFFERENCE_SNR_THRESHOLD))
        reach = int(math.ceil(fwhm))
        source &= F.max_pool2d(keep[:, None].float(), 2 * reach + 1, 1, reach)[:, 0] == 0
        priority = torch.where(keep, 2.0 + score, torch.where(source, 1.0 + torch.tanh(snr / 1000.0), 0.0))
        values, index = torch.topk(priority.flatten(1), k=top_k, dim=1)
        # Fixed-size outputs with a validity mask: a data-dependent count would stall the host.
        b = score.shape[0]
        tile = torch.arange(b, device=score.device).repeat_interleave(top_k)
        index, values = index.reshape(-1), values.reshape(-1)
        width = score.shape[-1]
        y, x = index // width, index % width
        stamps = extract_stamps(triplet, tile, y, x)
        rb, probs = classifier.infer_tensors(stamps)  # type: ignore[attr-defined]
        from_detector = values >= 2.0
        off_y = torch.where(from_detector, offsets[tile, 1, y, x].float(), sub_dy[tile, y, x])
        off_x = torch.where(from_detector, offsets[tile, 0, y, x].float(), sub_dx[tile, y, x])
        return {
            "valid": values > 0, "tile": tile, "y": y.float() + off_y, "x": x.float() + off_x,
            "score": torch.where(values > 0, score[tile, y, x], 0.0), "snr": peak_snr[tile, y, x], "real_bogus": rb[:, 0].float().clone(),
            "class_probs": probs.float().clone(), "stamps": stamps.clamp(-FLOAT16_MAX, FLOAT16_MAX).half(),
        }

    return program
