"""Shared fixtures: a session-wide local Ray and a factory of small FITS exposures with known WCS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tan_wcs(shape: tuple[int, int], *, ra: float = 150.0, dec: float = 2.0, scale_arcsec: float = 0.6,
            rotation_deg: float = 0.0) -> Any:
    """Return a TAN WCS with a CD matrix centred on the image."""
    from astropy.wcs import WCS  # the GPU machines run the gpu tests without astropy

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    theta = np.deg2rad(rotation_deg)
    s = scale_arcsec / 3600.0
    wcs.wcs.cd = s * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return wcs


def make_image(shape: tuple[int, int], dtype: str, seed: int = 0) -> np.ndarray:
    """Sky-like pixels: a noisy background with a few bright blobs."""
    rng = np.random.default_rng(seed)
    image = rng.normal(1000.0, 30.0, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(5):
        y0, x0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        image += 20000 * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / 8.0)
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.round(image), info.min, info.max).astype(dtype)
    return image.astype(dtype)


def write_exposure(path: Path, *, shape: tuple[int, int] = (96, 128), dtype: str = "uint16", ccds: int = 1,
                   seed: int = 0, compressed: bool = False, header: dict[str, Any] | None = None,
                   with_wcs: bool = True) -> list[np.ndarray]:
    """Write a FITS exposure (single-HDU, multi-extension or tile-compressed) and return its pixels."""
    from astropy.io import fits

    primary = fits.Header()
    primary.update({"DATE-OBS": "2026-11-25T03:00:00", "MJD-OBS": 61004.125, "EXPTIME": 30.0, "FILTER": "r",
                    "GAIN": 1.5, "RDNOISE": 5.0, "SATURATE": 60000.0})
    primary.update(header or {})
    images = [make_image(shape, dtype, seed + i) for i in range(ccds)]
    hdus: list[Any] = []
    for i, data in enumerate(images):
        hdr = tan_wcs(shape, ra=150.0 + 0.05 * i).to_header() if with_wcs else fits.Header()
        if ccds == 1 and not compressed:
            hdr.update(primary)
            hdus.append(fits.PrimaryHDU(data, header=hdr))
        elif compressed:
            hdr["EXTNAME"] = f"CCD{i:03d}"
            hdus.append(fits.CompImageHDU(data, header=hdr, compression_type="RICE_1"))
        else:
            hdr["EXTNAME"] = f"CCD{i:03d}"
            hdus.append(fits.ImageHDU(data, header=hdr))
    if not (ccds == 1 and not compressed):
        hdus.insert(0, fits.PrimaryHDU(header=primary))
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return images


@pytest.fixture
def exposure_writer() -> Callable[..., list[np.ndarray]]:
    """`write_exposure(path, **options)`: write a small FITS exposure, return its pixels."""
    return write_exposure


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests, with the reason, where no CUDA device is visible (CI, laptops)."""
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible; GPU figures are in benchmarks/BENCHMARKS.md")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for the whole session (2 CPUs, as on CI); the pipeline reuses it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, the real survey files; tests needing it skip with the reason where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real survey data not found at {SHARED_DATA} (shared/ is beside the checkout in CI)")
    return SHARED_DATA


#: Required agreement of a stored WCS with astropy on the original header.
ONE_MAS_DEG = 1e-3 / 3600.0


def _assert_round_trip(store: Any, key: str, path: Path) -> None:
    """Pixels equal exactly; header cards equal; WCS maps pixels to the sky within 1 mas."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(path) as hdul:
        images = [(n, h) for n, h in enumerate(hdul) if h.is_image and h.header.get("NAXIS", 0) == 2]
        assert len(store.ccd_names(key)) == len(images)
        for ccd, (number, hdu) in zip(store.ccd_names(key), images, strict=True):
            np.testing.assert_array_equal(store.image(key, ccd)[...], hdu.data)
            assert store.image(key, ccd).dtype == hdu.data.dtype.newbyteorder("=")
            assert store.header(key, ccd) == hdu.header
            original = WCS(hdu.header, fobj=hdul)
            stored = store.wcs(key, ccd)
            ny, nx = hdu.data.shape
            yy, xx = np.mgrid[0 : ny : max(1, ny // 7), 0 : nx : max(1, nx // 7)]
            a = original.pixel_to_world(xx.ravel(), yy.ravel())
            b = stored.pixel_to_world(xx.ravel(), yy.ravel())
            assert isinstance(a, SkyCoord)
            assert np.max(a.separation(b).deg) < ONE_MAS_DEG, f"{path} HDU {number}"


@pytest.fixture
def assert_round_trip() -> Callable[[Any, str, Path], None]:
    """`assert_round_trip(store, key, fits_path)`: the store holds exactly what the FITS file holds."""
    return _assert_round_trip
