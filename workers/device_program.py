"""
The whole per-tile device program for one field: calibrate the raw science pixels to electrons,
reject and clean cosmic rays, warp the resident reference, build the normalised triplet, run the
detector, keep the peaks whose matched-filter S/N reaches the threshold and the difference's own
point sources (`skyblink.workers.peaks`), cut 63x63 stamps and classify them: the steps of
`skyblink.workers.process_tile`, in torch. Returns per-candidate
tensors for `skyblink.workers.pipeline.TilePipeline`.

Notes
-----
On a GPU the program never waits for the host: everything before the detector is one CUDA graph
and the peaks and stamps another (the detector and classifier runners keep their own launch
modes). With PSF matching by solved kernels the solve runs eagerly between two graphs of the steps
before and after it, reading its pixel lists' lengths back once a batch. The graphs' per-pixel
steps are compiled by Inductor (`skyblink.workers.fused`). A graph is captured
once per shapes and options and shared by every program, whatever its field: the per-field
numbers (gain, saturation, read noise, flux scale, the PSF-match and matched-filter taps) enter
as one small tensor copied into the graph's input, so the first call pays for compilation and
capture (the actors' warm-up), and later ones for a few launches. Measured in
benchmarks/BENCHMARKS.md, "Throughput (issue 23)".
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from skyblink.psf_units import FWHM_PER_SIGMA

from . import psf_match as pm
from . import psf_match_tensor as pmt
from . import tile_program as tp
from .calibration import calibrate_tensor
from .cosmics import detect_cosmics_tensor
from .difference import match_kernel_sigma
from .fused import fused, set_fusion
from .matched_filter import matched_filter_snr_tensor, matched_filter_taps
from .peaks import (
    DIFFERENCE_SNR_THRESHOLD,
    any_within,
    difference_point_sources_at,
    difference_windows,
    max_filter_tensor,
    windows_bound,
)
from .pipeline import extract_stamps, uint16_from_int16
from .program_config import TileProgram
from .tile_unit import FLOAT16_MAX

__all__ = ["BACKGROUND_PASSES", "make_device_program"]

#: Histogram passes of the backgrounds on a GPU, run without asking whether they converged
#: (`skyblink.workers.tile_program.background`): simulated frames converge within 7, the real
#: frames measured within 24 (a Spitzer mosaic); a mesh converged earlier is not changed by more.
BACKGROUND_PASSES = 24
#: Blur taps either side that the PSF-matching and matched-filter blurs are padded to (wider
#: PSFs round up to a multiple of 8): one compiled program and CUDA graph serve every seeing.
_MATCH_RADIUS = 8
_FILTER_RADIUS = 16

#: Places a tile's peaks are tested at (`_peaks`), as a multiple of its ``top_k`` slots: the detector's
#: peaks and the difference's local maxima at its S/N threshold, best first (the synthetic tiles of
#: benchmarks/worker_pipeline.py hold 305-313 such places a tile, 236-239 of them detector peaks, and
#: fill their 64 slots from the best 256 as from all of them).
_CANDIDATES_PER_SLOT = 4
#: Per-field numbers of the program, in this order, then the taps (`_FieldNumbers`).
_SCALARS = ("gain", "saturate", "bias", "read_noise", "scale", "sci_factor", "ref_factor", "filter_norm")


def _padded_radius(needed: int, floor: int) -> int:
    return max(floor, 8 * math.ceil(needed / 8))


@dataclass(frozen=True, slots=True)
class _Layout:
    """Static shape of a program: what a compiled function and a CUDA graph are specialised on."""

    match_radius: int
    filter_radius: int
    reject_cosmics: bool
    threshold: float
    top_k: int
    snr_threshold: float
    difference_bound: int  # the padding of the difference's point-source windows (`skyblink.workers.peaks.windows_bound`)


def _field_numbers(layout: _Layout, *, science_fwhm_px: float, reference_fwhm_px: float, scale: float,
                   gain: float | None, saturate: float | None, read_noise: float, bias: float | None,
                   windows: list[int], device: torch.device) -> torch.Tensor:
    """
    Every per-field number of the program in one float64 vector on ``device`` (one small copy):
    the scalars, the taps and the difference's ``windows`` (`skyblink.workers.peaks.difference_windows`).
    """
    sci_taps, ref_taps, sci_factor, ref_factor = tp.psf_match_taps(science_fwhm_px, reference_fwhm_px,
                                                                   radius=layout.match_radius)
    filter_taps, filter_norm = matched_filter_taps(max(science_fwhm_px, reference_fwhm_px), radius=layout.filter_radius)
    scalars = [1.0 if gain is None else float(gain), math.inf if saturate is None else float(saturate),
               0.0 if bias is None else float(bias), float(read_noise), float(scale) * (gain or 1.0), sci_factor, ref_factor,
               filter_norm]
    values = torch.from_numpy(np.concatenate([np.asarray(scalars), sci_taps.double().numpy(), ref_taps.double().numpy(),
                                              filter_taps.double().numpy(), windows],
                                             dtype=np.float64))
    if device.type != "cuda":
        return values.to(device)
    # Pinned and asynchronous: a pageable copy would wait for the work queued on the stream.
    return values.pin_memory().to(device, non_blocking=True)


@functools.lru_cache(maxsize=16)
def _operators(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`skyblink.workers.tile_program.background_operators` of the program's 64-pixel mesh, made once per shape."""
    return tp.background_operators(height, width, 64, device)


def _sections(numbers: torch.Tensor, layout: _Layout) -> tuple[torch.Tensor, ...]:
    """`_field_numbers` cut into its parts (views): scalars, science taps, reference taps, filter taps, windows."""
    m, f = 2 * layout.match_radius + 1, 2 * layout.filter_radius + 1
    n = len(_SCALARS)
    return tuple(numbers.split([n, m, m, f, numbers.shape[0] - n - 2 * m - f]))


def _unpack(numbers: torch.Tensor, layout: _Layout) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """`_field_numbers` back into named 0-d tensors (float32, the read noise float64) and three tap vectors."""
    values, *taps, _ = _sections(numbers, layout)
    scalars = {name: values[i] if name == "read_noise" else values[i].to(torch.float32) for i, name in enumerate(_SCALARS)}
    return scalars, tuple(t.to(torch.float32) for t in taps)


def _windows(numbers: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """The difference's point-source windows (`skyblink.workers.peaks.difference_windows`) from `_field_numbers`, int64."""
    return _sections(numbers, layout)[-1].to(torch.int64)


def _calibrated(science: torch.Tensor, reference: torch.Tensor, grid: torch.Tensor, v: dict[str, torch.Tensor],
                bias_frame: torch.Tensor | None, flat: torch.Tensor | None,
                layout: _Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Calibration, cosmic rays and the warp: (science in electrons, its bad pixels, the pixels where
    no candidate may stand, the reference on the tiles' grid), each (B, H, W). The last mask holds
    the saturated or unusable-flat pixels, and the cosmic-ray pixels of a tile whose flags
    overflowed the cleaning's or the later passes' capacity (`skyblink.workers.cosmics.Cosmics`). No host sync.
    """
    bias = v["bias"] if bias_frame is None else bias_frame
    sci, bad, unmeasured, ref = _electrons_and_reference(science, v["gain"], v["saturate"], bias, flat, reference, grid)
    saturated = bad
    if layout.reject_cosmics:
        cosmics = detect_cosmics_tensor(sci, read_noise=v["read_noise"], mask=unmeasured)
        sci, bad = cosmics.cleaned, bad | cosmics.mask
        # A tile that flagged more pixels in a pass than the cleaning's capacity (`CLEANING_CAPACITY`), or
        # had more blocks to look at again than a later pass's (`REPASS_CAPACITY`), may keep some flagged
        # pixels uncleaned or a cosmic ray's edge unflagged: no candidate may stand on its flagged pixels
        # (no host sync).
        saturated = saturated | (cosmics.mask & cosmics.overflow[:, None, None])
    return sci, bad & torch.isfinite(sci), saturated, ref


@fused
def _electrons_and_reference(science: torch.Tensor, gain: torch.Tensor, saturate: torch.Tensor, bias: torch.Tensor,
                             flat: torch.Tensor | None, reference: torch.Tensor,
                             grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The 16-bit science calibrated to electrons, its mask (saturated, unusable flat), that mask
    with the non-finite pixels, and the reference warped onto the tiles' grid; fused on CUDA.
    """
    calibrated = calibrate_tensor(uint16_from_int16(science), gain=gain, bias=bias, flat=flat, saturate=saturate)
    sci, mask = calibrated.electrons, calibrated.mask
    return sci, mask, mask | ~torch.isfinite(sci), tp.warp_reference(reference, grid)


def _front(science: torch.Tensor, reference: torch.Tensor, grid: torch.Tensor, numbers: torch.Tensor,
           bias_frame: torch.Tensor | None, flat: torch.Tensor | None, operators: tuple[torch.Tensor, torch.Tensor],
           layout: _Layout, passes: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Calibration to the matched-filter S/N with the Gaussian PSF match: (triplet (B, 3, H, W), S/N
    (B, H, W), the mask of `_calibrated` where no candidate may stand). No host sync.
    """
    v, (sci_taps, ref_taps, filter_taps) = _unpack(numbers, layout)
    sci, bad, saturated, ref = _calibrated(science, reference, grid, v, bias_frame, flat, layout)
    triplet = tp.gaussian_triplet(sci, ref, scale=v["scale"], science_mask=bad, taps=(sci_taps, ref_taps),
                                  noise_factors=(v["sci_factor"], v["ref_factor"]), passes=passes, operators=operators)
    snr = matched_filter_snr_tensor(triplet[:, 2], 1.0, renormalize=True, taps=(filter_taps, v["filter_norm"]))
    return triplet, snr, saturated


def _kernel_front(science: torch.Tensor, reference: torch.Tensor, grid: torch.Tensor, numbers: torch.Tensor,
                  bias_frame: torch.Tensor | None, flat: torch.Tensor | None,
                  operators: tuple[torch.Tensor, torch.Tensor], layout: _Layout, passes: int | None,
                  fwhm: tuple[float, float]) -> tuple[torch.Tensor, ...]:
    """
    With PSF matching by solved kernels, everything before the solve (`tile_program.kernel_match_inputs`):
    its seven tensors, then the mask of `_calibrated`. No host sync.
    """
    v, _ = _unpack(numbers, layout)
    sci, bad, saturated, ref = _calibrated(science, reference, grid, v, bias_frame, flat, layout)
    parts = tp.kernel_match_inputs(sci, ref, science_fwhm_px=fwhm[0], reference_fwhm_px=fwhm[1], scale=v["scale"],
                                   science_mask=bad, passes=passes, operators=operators)
    return (*parts, saturated)


def _kernel_back(layout: _Layout, sci: torch.Tensor, sci_rms: torch.Tensor, ref: torch.Tensor, ref_rms: torch.Tensor,
                 covered: torch.Tensor, sci_m: torch.Tensor, sci_rms_m: torch.Tensor, ref_m: torch.Tensor,
                 ref_rms_m: torch.Tensor, solved: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    With PSF matching by solved kernels, everything after the solve: the triplet
    (`tile_program.kernel_triplet`, the Gaussian match where a window's kernel did not solve) and
    the matched-filter S/N. No host sync.
    """
    v, (sci_taps, ref_taps, filter_taps) = _unpack(numbers, layout)
    triplet = tp.kernel_triplet(sci, sci_rms, ref, ref_rms, covered, matched=(sci_m, sci_rms_m, ref_m, ref_rms_m),
                                solved=solved, taps=(sci_taps, ref_taps), noise_factors=(v["sci_factor"], v["ref_factor"]))
    snr = matched_filter_snr_tensor(triplet[:, 2], 1.0, renormalize=True, taps=(filter_taps, v["filter_norm"]))
    return triplet, snr


def _detector_peaks(heat: torch.Tensor, snr: torch.Tensor, threshold: float,
                    snr_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The detector's peaks that pass the S/N gate: (keep, score, peak S/N) maps."""
    peak_snr = max_filter_tensor(snr, 3)  # as find_peaks: the best S/N within 1 pixel (NaN spreads, as a max-pool)
    score = heat[:, 1:3].amax(dim=1).float()  # new source: transient or moving
    keep = (score == max_filter_tensor(score, 5)) & (score >= threshold) & (peak_snr >= snr_threshold)
    return keep, score, peak_snr


@fused
def _peaks(triplet: torch.Tensor, heat: torch.Tensor, offsets: torch.Tensor, snr: torch.Tensor, masked: torch.Tensor,
           windows: torch.Tensor, threshold: float, snr_threshold: float, top_k: int,
           bound: int) -> tuple[torch.Tensor, ...]:
    """
    Peaks, their S/N gate, top-K slots and stamps, as `skyblink.workers.find_peaks`: the detector's
    peaks first, then the difference's own point sources with no detector peak within 1 FWHM;
    none whose core holds a ``masked`` pixel (`skyblink.workers.peaks.masked_cores`). Returns
    (valid, tile, y, x, score, snr, stamps), ``top_k`` slots a tile.

    The maps are only searched for places that could be either (the detector's peaks above its
    threshold and S/N gate, the local maxima of the S/N at the difference's threshold); their
    `_CANDIDATES_PER_SLOT` times ``top_k`` best of a tile, by the priority each would have, are
    then tested where they stand (masked core, negative lobe, ring, a detector peak near a
    source: the windows of `skyblink.workers.peaks.difference_point_sources` read at
    those places, not filtered over the whole tile), and the ``top_k`` best that pass fill the
    slots. These are the slots of testing every pixel (a test only lowers a place's priority)
    whenever a tile holds no more places than it tests or ``top_k`` of those tested pass; a tile
    whose best `_CANDIDATES_PER_SLOT` times ``top_k`` places mostly fail may leave slots empty
    that a lower place would have filled. No host sync (a CUDA graph captures it whole); fused on CUDA. The
    FWHM enters as its ``windows`` (`skyblink.workers.peaks.difference_windows`, a device tensor
    within ``bound``), so one compiled program serves every seeing up to the bound.
    """
    b, h, w = snr.shape
    keep, score, peak_snr = _detector_peaks(heat, snr, threshold, snr_threshold)
    level = torch.nan_to_num(snr.to(torch.float32))
    least = max(snr_threshold, DIFFERENCE_SNR_THRESHOLD)
    local = (level >= least) & (level == max_filter_tensor(level, 5))
    rank = 1.0 + torch.tanh(level / 1000.0)  # a source's priority, by S/N
    hoped = torch.where(keep, 2.0 + score, torch.where(local, rank, 0.0)).flatten(1)
    _, at = torch.topk(hoped, k=min(h * w, _CANDIDATES_PER_SLOT * top_k), dim=1)  # (B, n) places
    blocked = any_within(masked, at, windows[0], bound=bound)
    detected = keep.flatten(1).gather(1, at) & ~blocked
    source, sub_dy, sub_dx = difference_point_sources_at(snr, at, windows, bound=bound, snr_threshold=least)
    # A source with a detector peak near it is that peak's: the peaks (all among the places) as a map.
    peaks_map = torch.zeros((b, h * w), dtype=torch.bool, device=snr.device).scatter(1, at, detected).reshape(b, h, w)
    source &= ~any_within(peaks_map, at, windows[2], bound=bound) & ~blocked
    priority = torch.where(detected, 2.0 + score.flatten(1).gather(1, at),
                           torch.where(source, rank.flatten(1).gather(1, at), 0.0))
    # Fixed-size outputs with a validity mask: a data-dependent count would stall the host.
    values, pick = torch.topk(priority, k=top_k, dim=1)
    tile = torch.arange(b, device=snr.device).repeat_interleave(top_k)
    index, values = at.gather(1, pick).reshape(-1), values.reshape(-1)
    from_detector = detected.gather(1, pick).reshape(-1)
    y, x = index // w, index % w
    off_y = torch.where(from_detector, offsets[tile, 1, y, x].float(), sub_dy.gather(1, pick).reshape(-1))
    off_x = torch.where(from_detector, offsets[tile, 0, y, x].float(), sub_dx.gather(1, pick).reshape(-1))
    stamps = extract_stamps(triplet, tile, y, x)
    return (values > 0, tile, y.float() + off_y, x.float() + off_x, torch.where(values > 0, score[tile, y, x], 0.0),
            peak_snr[tile, y, x], stamps)


class _Graph:
    """
    One CUDA graph of a function of tensors: static input buffers that each call copies its
    arguments into (skipped when an argument is the buffer itself), replayed on the current stream.
    The outputs are the graph's own: read or copy them before the next call.
    """

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]], args: list[torch.Tensor]) -> None:
        self.inputs = [a.clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compilation, autotuning and the allocator's first blocks
            for _ in range(2):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # Thread-local capture: other threads of the actor may copy results back meanwhile.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.outputs = fn(*self.inputs)

    def __call__(self, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for buffer, value in zip(self.inputs, args, strict=True):
            if buffer.data_ptr() != value.data_ptr():
                buffer.copy_(value)
        self.graph.replay()
        return self.outputs


_GRAPHS: dict[tuple[object, ...], _Graph] = {}
_GRAPHS_LOCK = threading.Lock()


def _graph(name: str, fn: Callable[..., tuple[torch.Tensor, ...]], args: list[torch.Tensor], layout: _Layout) -> _Graph:
    """The CUDA graph of ``fn`` for these argument shapes (captured at the first call: warm-up)."""
    key = (name, layout, tuple((tuple(a.shape), a.dtype, a.device) for a in args))
    with _GRAPHS_LOCK:
        if key not in _GRAPHS:
            _GRAPHS[key] = _Graph(fn, args)
        return _GRAPHS[key]


def make_device_program(detector: object, classifier: object, reference: torch.Tensor, grid: torch.Tensor,
                        program: TileProgram | None = None, *, science_fwhm_px: float, reference_fwhm_px: float,
                        scale: float = 1.0, gain: float | None = None, saturate: float | None = None,
                        read_noise: float = 0.0, bias: float | torch.Tensor | None = None,
                        flat: torch.Tensor | None = None,
                        graphs: bool | None = None) -> Callable[[torch.Tensor, int], dict[str, torch.Tensor]]:
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
    program : TileProgram, optional
        The program's ``detector_threshold``, ``top_k`` (candidate slots per tile; the ``valid``
        column says which slots hold a candidate, the pipeline keeps only those),
        ``snr_threshold`` (minimum matched-filter S/N in the difference), ``reject_cosmics``
        (flag and clean cosmic rays and hot pixels before the background) and ``psf_match``
        (`skyblink.workers.tile_program.normalized_triplet`); default: the configuration's defaults.
    science_fwhm_px, reference_fwhm_px : float
        PSF FWHM of each image in pixels.
    scale : float
        Reference-to-science flux factor in ADU (`skyblink.workers.flux_scale`); multiplied by
        ``gain`` here, as the science is calibrated to electrons.
    gain, saturate, read_noise : float, optional
        The science CCD's header ``GAIN`` (e-/ADU), ``SATURATE`` (ADU) and ``RDNOISE`` (e-).
    bias, flat : float or tensor broadcastable to (B, H, W), optional
        Calibration of the tiles' pixels, where given.
    graphs : bool, optional
        Run the program as two CUDA graphs around the detector, its per-pixel steps compiled
        (`skyblink.workers.fused`): no host synchronisation and a few launches a batch. Default:
        on CUDA devices. With ``psf_match="kernel"`` the kernels' solve runs between two graphs
        (it reads its pixel lists' lengths back once a batch) and the peaks make a third.
        Every program of the same shapes and options shares its graphs, captured at the first
        call (the actors' warm-up): per-field numbers reach them as one small tensor.

    Returns
    -------
    callable
        ``program(science_int16 (B, H, W), batch_index) -> dict`` of per-candidate tensors:
        valid, tile, y, x, score, snr, real_bogus, class_probs, stamps.
    """
    params = program or TileProgram()
    threshold, top_k, snr_threshold = params.detector_threshold, params.top_k, params.snr_threshold
    reject_cosmics, psf_match = params.reject_cosmics, params.psf_match
    set_fusion(params.compile_device_program)
    if graphs is None:
        graphs = params.compile_device_program and reference.device.type == "cuda"
    device = reference.device
    b, _, h, w = grid.shape
    match_sigma = max(match_kernel_sigma(science_fwhm_px, reference_fwhm_px))
    filter_sigma = max(science_fwhm_px, reference_fwhm_px) / FWHM_PER_SIGMA
    windows = difference_windows(max(science_fwhm_px, reference_fwhm_px))  # the difference's point sources
    layout = _Layout(_padded_radius(int(4.0 * match_sigma + 0.5), _MATCH_RADIUS),
                     _padded_radius(int(4.0 * filter_sigma + 0.5), _FILTER_RADIUS),
                     reject_cosmics, float(threshold), int(top_k), float(snr_threshold),
                     _padded_radius(windows_bound(windows), 8))
    bias_frame = bias if isinstance(bias, torch.Tensor) else None
    numbers = _field_numbers(layout, science_fwhm_px=science_fwhm_px, reference_fwhm_px=reference_fwhm_px, scale=scale,
                             gain=gain, saturate=saturate, read_noise=read_noise,
                             bias=None if isinstance(bias, torch.Tensor) else bias, windows=windows, device=device)
    operators = _operators(h, w, device)
    use_graphs = device.type == "cuda" if graphs is None else graphs
    kernel_fwhm = None if psf_match == "gaussian" else (science_fwhm_px, reference_fwhm_px)
    frames_name = f"bias={bias_frame is not None} flat={flat is not None}"  # which frames the inputs hold
    if kernel_fwhm is not None:  # what the kernel front's capture depends on besides the layout
        frames_name += (f" kernel half={pm.kernel_half_width(*kernel_fwhm)}"
                        f" reference convolved={science_fwhm_px >= reference_fwhm_px}")
    made = None
    if device.type == "cuda":  # the numbers' copy, queued on this stream, before any program reads them
        made = torch.cuda.Event()
        made.record()

    def frames(rest: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        it = iter(rest)
        return (next(it) if bias_frame is not None else None), (next(it) if flat is not None else None)

    def front(science: torch.Tensor, ref: torch.Tensor, grd: torch.Tensor, nums: torch.Tensor, ay: torch.Tensor,
              ax: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if kernel_fwhm is None:
            return _front(science, ref, grd, nums, *frames(rest), (ay, ax), layout, BACKGROUND_PASSES)
        return _kernel_front(science, ref, grd, nums, *frames(rest), (ay, ax), layout, BACKGROUND_PASSES, kernel_fwhm)

    def kernel_back(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _kernel_back(layout, *tensors)

    def back(triplet: torch.Tensor, heat: torch.Tensor, offsets: torch.Tensor, snr: torch.Tensor, masked: torch.Tensor,
             nums: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _peaks(triplet, heat, offsets, snr, masked, _windows(nums, layout), layout.threshold, layout.snr_threshold,
                      layout.top_k, layout.difference_bound)

    def stage(name: str, fn: Callable[..., tuple[torch.Tensor, ...]], args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return _graph(name, fn, args, layout)(args) if use_graphs else fn(*args)

    def run(science: torch.Tensor, _index: int) -> dict[str, torch.Tensor]:
        if made is not None:
            torch.cuda.current_stream().wait_event(made)
        with torch.inference_mode():
            inputs = [science, reference, grid, numbers, *operators,
                      *([bias_frame] if bias_frame is not None else []), *([flat] if flat is not None else [])]
            if kernel_fwhm is None:
                triplet, snr, masked = stage(f"front {frames_name}", front, inputs)
            else:
                # Two graphs around the kernels' solve, which reads its pixel lists' lengths back once a batch.
                sci, sci_rms, ref, ref_rms, covered, usable, fit, masked = stage(f"front {frames_name}", front, inputs)
                *matched, solved = pmt.kernel_match_tensor(sci, sci_rms, ref, ref_rms, covered, usable, kernel_fwhm[0],
                                                           kernel_fwhm[1], fit=fit)
                triplet, snr = stage("kernel back", kernel_back, [sci, sci_rms, ref, ref_rms, covered, *matched, solved, numbers])
            heat, offsets = detector.infer_tensors(triplet)  # type: ignore[attr-defined]
            middle = [triplet, heat, offsets, snr, masked, numbers]
            found = stage("peaks", back, middle)
            valid, tile, y, x, score, peak_snr, stamps = found
            rb, probs = classifier.infer_tensors(stamps)  # type: ignore[attr-defined]
            return {
                "valid": valid.clone(), "tile": tile.clone(), "y": y.clone(), "x": x.clone(), "score": score.clone(),
                "snr": peak_snr.clone(), "real_bogus": rb[:, 0].float().clone(), "class_probs": probs.float().clone(),
                "stamps": stamps.clamp(-FLOAT16_MAX, FLOAT16_MAX).half(),
            }

    return run
