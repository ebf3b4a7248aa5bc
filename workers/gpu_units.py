"""
Work units on the GPU: the worker actor's pipelined path.

`GpuUnitProcessor` holds one `TilePipeline` (pinned ring and device buffers sized once, for
``batch`` windows of the work units' edge) and a small cache of reference CCDs resident on the
device. Units of one exposure CCD share the reference and the calibration, so they are batched
together: the raw 16-bit windows cross the bus, the device program
(`skyblink.workers.device_program`) runs on the compute stream while the next batch is copied,
and only candidate records and stamps come back. Candidates are kept where their pixel lies in the
unit's core, as on the CPU (`process_tile`), so each source is reported once.

Notes
-----
One processor per CUDA device; not thread-safe. Exposures stored as floating point (not 16-bit
ADU) cannot cross the bus as raw 16-bit pixels: they go through `process_tile` with the same
runners instead.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from itertools import groupby
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .align import control_points
from .calibration import CalibrationSpec
from .device_program import make_device_program
from .difference import flux_scale
from .pipeline import TilePipeline
from .tile_unit import CandidateRecord, WorkUnit, process_tile

__all__ = ["GpuUnitProcessor", "read_raw_region", "upsample_grid", "window_edge"]

#: Reference CCDs kept on the device (one per field and CCD being processed).
_REFERENCE_CACHE = 4


def window_edge(size: int, margin: int) -> int:
    """Edge of the window read for a unit: core plus margins, rounded up to the detector's stride (32)."""
    return int(math.ceil((size + 2 * margin) / 32) * 32)


class GpuUnitProcessor:
    """
    Process work units on one GPU with copy/compute overlap. Stable.

    Parameters
    ----------
    detector, classifier : TorchRunner
        Active torch runners on the device.
    size, margin : int
        Core edge and margin of every unit this processor will see (fixes the buffers' shape).
    batch : int
        Windows per device batch.
    threshold, top_k, snr_threshold : float, int, float
        As `process_tile`.
    slots : int
        Pinned host buffers in the ring.
    """

    def __init__(self, detector: Any, classifier: Any, *, size: int, margin: int, batch: int = 8,
                 threshold: float = 0.3, top_k: int = 64, snr_threshold: float = 5.0, slots: int = 3) -> None:
        self.detector, self.classifier = detector, classifier
        self.size, self.margin, self.batch = size, margin, batch
        self.edge = window_edge(size, margin)
        self.options = {"threshold": threshold, "top_k": top_k, "snr_threshold": snr_threshold}
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._programs: list[Any] = []  # the device program of each batch in flight (its grid)
        self.pipeline = TilePipeline(lambda science, index: self._programs[index](science, index),
                                     batch=batch, height=self.edge, width=self.edge, slots=slots, device=str(self.device))
        self._references: OrderedDict[tuple[str, str, str], torch.Tensor] = OrderedDict()
        self._warm_up()

    def _warm_up(self) -> None:
        """Run one batch of blank windows through the pipeline: kernels and allocator ready at start."""
        edge = self.edge
        ys, xs = torch.meshgrid(torch.linspace(0, edge - 1, 3, device=self.device),
                                torch.linspace(0, edge - 1, 3, device=self.device), indexing="ij")
        grid = upsample_grid(torch.stack([xs, ys])[None].expand(self.batch, 2, 3, 3).contiguous(), edge)
        reference = torch.full((edge, edge), 1000.0, device=self.device)
        self._programs = [make_device_program(self.detector, self.classifier, reference, grid, science_fwhm_px=3.0,
                                              reference_fwhm_px=3.0, **self.options)]
        blank = np.random.default_rng(0).poisson(1000.0, (self.batch, edge, edge)).astype(np.uint16)
        for _ in self.pipeline.run([blank]):
            pass
        self._programs = []

    def _reference(self, store: Any, key: str, ccd: str) -> torch.Tensor:
        cache_key = (store.url, key, ccd)
        if cache_key not in self._references:
            image = np.asarray(store.image(key, ccd)[...], dtype=np.float32)
            holes = np.isnan(image)
            if holes.any():  # a median of 1 pixel in 64 is a fill as good as the full median, 60x cheaper
                image[holes] = float(np.nanmedian(image[::8, ::8]))
            self._references[cache_key] = torch.from_numpy(image).to(self.device)
            while len(self._references) > _REFERENCE_CACHE:
                self._references.popitem(last=False)
        self._references.move_to_end(cache_key)
        return self._references[cache_key]

    def process(self, units: Sequence[WorkUnit], store: Any) -> dict[str, list[CandidateRecord]]:
        """
        Run the program on every unit (all of one store) and return each unit's candidates.

        Returns
        -------
        dict
            Unit key -> its candidates (an empty list when it has none), for every unit given.

        Raises
        ------
        ValueError
            A unit's size or margin differs from the processor's.
        """
        out: dict[str, list[CandidateRecord]] = {}
        for (exposure, ccd), group in groupby(units, key=lambda u: (u.exposure, u.ccd)):
            group = list(group)
            for unit in group:
                if (unit.size, unit.margin) != (self.size, self.margin):
                    msg = f"unit {unit.key} has size/margin {unit.size}/{unit.margin}, the processor {self.size}/{self.margin}"
                    raise ValueError(msg)
            if np.dtype(store.image(exposure, ccd).dtype) != np.uint16:
                for unit in group:
                    out[unit.key] = process_tile(unit, store, self.detector, self.classifier, **self.options)
                continue
            out.update(self._process_ccd(group, store, exposure, ccd))
        return out

    def _process_ccd(self, units: list[WorkUnit], store: Any, exposure: str, ccd: str) -> dict[str, list[CandidateRecord]]:
        from astropy.wcs.utils import proj_plane_pixel_scales  # noqa: PLC0415

        meta = store.ccd_metadata(exposure, ccd)
        reference_key = f"references/{meta['field']}"
        sci_header, ref_header = store.header(exposure, ccd), store.header(reference_key, ccd)
        sci_wcs, ref_wcs = store.wcs(exposure, ccd), store.wcs(reference_key, ccd)
        spec = CalibrationSpec.from_header(sci_header)
        scale_arcsec = float(proj_plane_pixel_scales(sci_wcs.celestial)[0] * 3600.0)
        fwhm = [float(h.get("SEEING", 1.0)) / scale_arcsec for h in (sci_header, ref_header)]
        scale = flux_scale(science_magzp=sci_header.get("MAGZP"), reference_magzp=ref_header.get("MAGZP"))
        reference = self._reference(store, reference_key, ccd)
        edge, b = self.edge, self.batch
        # One read of the region the group's windows cover: each stored chunk is decompressed once,
        # and the 16-bit pixels stay 16-bit up to the device.
        oys, oxs = [u.y0 - u.margin for u in units], [u.x0 - u.margin for u in units]
        by0, bx0 = min(oys), min(oxs)
        raw, beyond = read_raw_region(store.image(exposure, ccd), by0, bx0, max(oys) + edge - by0, max(oxs) + edge - bx0)

        def batches() -> Iterator[np.ndarray]:
            # A generator: batch i+1 is prepared on the host while the device runs batch i.
            for start in range(0, len(units), b):
                chunk = range(start, min(start + b, len(units)))
                windows, points, outside = [], [], []
                for i in chunk:
                    y, x = oys[i] - by0, oxs[i] - bx0
                    windows.append(raw[y : y + edge, x : x + edge])
                    points.append(control_points(sci_wcs, ref_wcs, (edge, edge), origin=(oys[i], oxs[i])))
                    outside.append(beyond[y : y + edge, x : x + edge])
                pad = b - len(windows)
                windows += [np.zeros((edge, edge), np.uint16)] * pad
                points += [points[-1]] * pad
                outside += [np.ones((edge, edge), bool)] * pad
                grid = upsample_grid(torch.from_numpy(np.stack(points)).to(self.device, torch.float32), edge)
                off = torch.from_numpy(np.stack(outside)).to(self.device, non_blocking=True)
                grid = torch.where(off[:, None], torch.full_like(grid, -1e6), grid)  # not covered: left out
                self._programs.append(make_device_program(
                    self.detector, self.classifier, reference, grid,
                    science_fwhm_px=fwhm[0], reference_fwhm_px=fwhm[1], scale=scale, gain=spec.gain,
                    saturate=spec.saturate, read_noise=spec.read_noise, **self.options))
                yield np.stack(windows)

        self._programs = []
        result: dict[str, list[CandidateRecord]] = {u.key: [] for u in units}
        for found in self.pipeline.run(batches()):
            self._programs[found.batch] = None  # its grid can go
            cols = found.columns
            for i in range(len(found)):
                index = found.batch * b + int(cols["tile"][i])
                if index >= len(units):
                    continue  # a padding slot
                unit = units[index]
                x, y = float(cols["x"][i]), float(cols["y"][i])
                m = unit.margin
                if not (m - 0.5 <= y < m + unit.size - 0.5 and m - 0.5 <= x < m + unit.size - 0.5):
                    continue  # in the margin: the neighbouring unit reports it
                result[unit.key].append(CandidateRecord(
                    unit.key, unit.exposure, unit.ccd, x + unit.x0 - m, y + unit.y0 - m, float(cols["score"][i]),
                    float(cols["snr"][i]), float(cols["real_bogus"][i]), tuple(float(p) for p in cols["class_probs"][i]),
                    np.asarray(cols["stamps"][i], np.float16)))
        return result


def read_raw_region(array: Any, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """
    Read [y0, y0+h) x [x0, x0+w) of a 16-bit image as 16-bit, filling what lies beyond its edge.

    Returns
    -------
    raw : (h, w) ndarray of uint16
        The pixels; beyond the image, the median of the pixels read (a neutral fill).
    beyond : (h, w) ndarray of bool
        Where the region lies beyond the image (to be left out of every statistic).
    """
    ny, nx = array.shape
    raw = np.zeros((h, w), np.uint16)
    beyond = np.ones((h, w), bool)
    ys, xs, ye, xe = max(0, y0), max(0, x0), min(ny, y0 + h), min(nx, x0 + w)
    if ye > ys and xe > xs:
        raw[ys - y0 : ye - y0, xs - x0 : xe - x0] = array[ys:ye, xs:xe]
        beyond[ys - y0 : ye - y0, xs - x0 : xe - x0] = False
        if beyond.any():
            raw[beyond] = np.uint16(np.median(raw[ys - y0 : ye - y0 : 8, xs - x0 : xe - x0 : 8]))
    return raw, beyond


def upsample_grid(points: torch.Tensor, edge: int) -> torch.Tensor:
    """
    Interpolate control points (`skyblink.workers.control_points`) to every pixel, on the device.

    Parameters
    ----------
    points : (B, 2, my, mx) tensor
        Reference (x, y) at a corner-aligned uniform lattice over the window.
    edge : int
        Window edge in pixels.

    Returns
    -------
    (B, 2, edge, edge) float32 tensor
        The sampling grid (bilinear, corner-aligned: exact at the control points; a
        sky projection bends by far less than 0.01 px over the 32 px between points).
    """
    return F.interpolate(points, size=(edge, edge), mode="bilinear", align_corners=True)
