"""
Build valid alert packets from numpy stamps and an astropy WCS.

The night's reduce step calls `AlertBuilder.build` once per alert: it derives the deterministic
alertId, writes the three stamps as gzipped FITS with the stamp's WCS (``CRPIX`` shifted by the
stamp's origin) and returns an `Alert`. `cut_stamp` cuts a stamp around a position, padding with
NaN at the image edge.

Notes
-----
`AlertBuilder` caches one `StampWriter` per WCS object (the header cards are rendered once per
CCD); it is thread-safe for concurrent `build` calls.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from skyblink.stamps import STAMP_SIZE

from .cutouts import GzipMode, StampWriter
from .packet import Alert, Cutout, CutoutKind, Detection, MovingObject, make_alert_id

if TYPE_CHECKING:
    from astropy.wcs import WCS

__all__ = ["STAMP_SIZE", "AlertBuilder", "cut_stamp"]

_WRITER_CACHE = 256


def cut_stamp(image: np.ndarray, x: float, y: float, *, size: int = STAMP_SIZE) -> tuple[np.ndarray, int, int]:
    """
    Cut a square stamp centred on a pixel position, NaN-padded where it leaves the image.

    Parameters
    ----------
    image : (ny, nx) ndarray
    x, y : float
        0-based column and row of the detection; the stamp is centred on the nearest pixel.
    size : int, optional
        Odd stamp edge (default 63).

    Returns
    -------
    stamp : (size, size) ndarray of float32
        A new array.
    x0, y0 : int
        Where the stamp's pixel [0, 0] lies on the image (negative when padded on that side).

    Raises
    ------
    ValueError
        size is not odd and positive, or the image is not 2-D.
    """
    if size < 1 or size % 2 == 0:
        msg = f"size must be odd and positive, got {size!r}"
        raise ValueError(msg)
    if image.ndim != 2:  # images have two axes
        msg = f"image must be 2-D, got shape {image.shape}"
        raise ValueError(msg)
    half = size // 2
    x0, y0 = round(x) - half, round(y) - half
    ny, nx = image.shape
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + size, nx), min(y0 + size, ny)
    if xa == x0 and ya == y0 and xb == x0 + size and yb == y0 + size:
        return np.array(image[ya:yb, xa:xb], dtype=np.float32), x0, y0
    stamp = np.full((size, size), np.nan, dtype=np.float32)
    if xb > xa and yb > ya:
        stamp[ya - y0 : yb - y0, xa - x0 : xb - x0] = image[ya:yb, xa:xb]
    return stamp, x0, y0


class AlertBuilder:
    """
    Make alert packets of one night from detections and numpy stamps. Stable.

    Parameters
    ----------
    night : str
        The night (e.g. ``"20261125"``); part of every alertId.
    gzip_mode : {"rle", "deflate", "stored"}, optional
        Compression of the cutouts (config: alerts.cutout_gzip).
    real_bogus_model : str, optional
        The network that scored the detections, name and version (``"classifier 1.0"``), written
        into every packet (``realBogusModel``); None leaves it unrecorded.
    """

    def __init__(self, night: str, *, gzip_mode: GzipMode = "rle", real_bogus_model: str | None = None) -> None:
        if not night or any(c.isspace() for c in night):
            msg = f"night must be a non-empty name without spaces, got {night!r}"
            raise ValueError(msg)
        self.night = night
        self.gzip_mode: GzipMode = gzip_mode
        self.real_bogus_model = real_bogus_model
        self._writers: OrderedDict[int, tuple[object, StampWriter]] = OrderedDict()
        self._lock = threading.Lock()

    def writer_for(self, wcs: WCS | None) -> StampWriter:
        """
        Return the (cached) stamp writer of an image's WCS.

        Parameters
        ----------
        wcs : astropy.wcs.WCS or None

        Returns
        -------
        StampWriter
        """
        key = id(wcs)
        with self._lock:
            hit = self._writers.get(key)
            if hit is not None and hit[0] is wcs:
                self._writers.move_to_end(key)
                return hit[1]
        writer = StampWriter(wcs, gzip_mode=self.gzip_mode)
        with self._lock:
            self._writers[key] = (wcs, writer)  # holding wcs keeps its id unique while cached
            while len(self._writers) > _WRITER_CACHE:
                self._writers.popitem(last=False)
        return writer

    def build(
        self,
        detection: Detection,
        *,
        object_id: int,
        science: np.ndarray | None,
        template: np.ndarray | None,
        difference: np.ndarray | None,
        wcs: WCS | None,
        origin: tuple[int, int],
        prv_detections: Sequence[Detection] = (),
        moving_object: MovingObject | None = None,
    ) -> Alert:
        """
        Build one alert packet with its cutouts.

        Parameters
        ----------
        detection : Detection
            The triggering detection; its exposure, CCD and candidate id make the alertId.
        object_id : int
            The associated object.
        science, template, difference : (ny, nx) ndarray or None
            The stamps (the template warped onto the science grid); None leaves that cutout out.
        wcs : astropy.wcs.WCS or None
            WCS of the full science image the stamps were cut from.
        origin : (int, int)
            (x0, y0): where the stamps' pixel [0, 0] lies on that image (from `cut_stamp`).
        prv_detections : sequence of Detection, optional
            The object's earlier detections of the night, oldest first.
        moving_object : MovingObject, optional
            Motion and predicted position, for moving objects.

        Returns
        -------
        Alert

        Raises
        ------
        ValueError
            A stamp is not 2-D or the WCS has not two axes.
        """
        alert_id = make_alert_id(self.night, detection.exposure_id, detection.ccd, detection.candidate_id)
        writer = self.writer_for(wcs)
        x0, y0 = origin

        def cutout(stamp: np.ndarray | None, kind: CutoutKind) -> Cutout | None:
            if stamp is None:
                return None
            return Cutout(f"{alert_id}-{kind}.fits.gz", writer.encode(stamp, x0, y0))

        return Alert(
            alert_id=alert_id,
            night=self.night,
            object_id=object_id,
            detection=detection,
            prv_detections=tuple(prv_detections),
            moving_object=moving_object,
            cutout_science=cutout(science, CutoutKind.SCIENCE),
            cutout_template=cutout(template, CutoutKind.TEMPLATE),
            cutout_difference=cutout(difference, CutoutKind.DIFFERENCE),
            real_bogus_model=self.real_bogus_model,
        )
