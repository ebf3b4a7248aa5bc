"""
Tracklet linking and trajectory prediction on synthetic detections with known motion: rates and
directions recovered within their errors, outliers rejected, few false tracklets among random
detections, prediction ellipses that hold the truth as often as they should.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from skyblink.reduce.linking import (
    LinkingParameters,
    TangentPlane,
    fit_motion,
    link_tracklets,
    predict,
)

T0 = 61000.0
TIMES = T0 + np.arange(5) * 15.0 / 1440.0  # five exposures 15 min apart
CENTRE = SkyCoord(45.0 * u.deg, 20.0 * u.deg)


def _mover(rng: np.random.Generator, rate: float, pa: float, sigma: float, times: np.ndarray = TIMES) -> tuple[np.ndarray, np.ndarray]:
    start = CENTRE.directional_offset_by(rng.uniform(0, 360) * u.deg, rng.uniform(0, 300) * u.arcsec)
    here = start.directional_offset_by(pa * u.deg, rate * (times - times[len(times) // 2]) * 24.0 * u.arcsec)
    noisy = here.spherical_offsets_by(rng.normal(0, sigma, len(times)) * u.arcsec, rng.normal(0, sigma, len(times)) * u.arcsec)
    return noisy.ra.deg, noisy.dec.deg


def _random(rng: np.random.Generator, n: int, radius_arcsec: float = 700.0) -> tuple[np.ndarray, np.ndarray]:
    points = CENTRE.directional_offset_by(rng.uniform(0, 360, n) * u.deg, np.sqrt(rng.uniform(size=n)) * radius_arcsec * u.arcsec)
    return points.ra.deg, points.dec.deg


def test_tangent_plane_round_trip_and_orientation() -> None:
    plane = TangentPlane(45.0, 20.0)
    xi, eta = plane.to_plane(np.array([45.0]), np.array([20.0]))
    assert abs(xi[0]) < 1e-9 and abs(eta[0]) < 1e-9
    east = CENTRE.directional_offset_by(90 * u.deg, 10 * u.arcsec)
    xi, eta = plane.to_plane(np.array([east.ra.deg]), np.array([east.dec.deg]))
    assert xi[0] == pytest.approx(10.0, abs=1e-6) and abs(eta[0]) < 1e-3
    ra, dec = plane.to_sky(xi, eta)
    assert SkyCoord(ra[0] * u.deg, dec[0] * u.deg).separation(east).arcsec < 1e-6


def test_fit_recovers_rate_and_direction_within_errors() -> None:
    rng = np.random.default_rng(3)
    pulls_rate, pulls_pa = [], []
    for _ in range(200):
        rate, pa = float(np.exp(rng.uniform(np.log(6), np.log(3600)))), float(rng.uniform(0, 360))
        ra, dec = _mover(rng, rate, pa, 0.1)
        tr = fit_motion(TIMES, ra, dec, np.full(5, 0.1))
        pulls_rate.append((tr.rate - rate) / tr.rate_err)
        pulls_pa.append(((tr.position_angle - pa + 180) % 360 - 180) / tr.position_angle_err)
    # Pulls are unit normal when the errors are right: within 1 sigma ~68 %, spread ~1.
    for pulls in (np.array(pulls_rate), np.array(pulls_pa)):
        assert 0.6 <= np.mean(np.abs(pulls) < 1) <= 0.76
        assert 0.8 <= np.std(pulls) <= 1.2


def test_links_every_mover_and_rejects_outliers() -> None:
    rng = np.random.default_rng(5)
    mjd, ra, dec, label, epoch = [], [], [], [], []
    truth = {}
    for k in range(12):
        rate, pa = float(np.exp(rng.uniform(np.log(6), np.log(3000)))), float(rng.uniform(0, 360))
        r, d = _mover(rng, rate, pa, 0.08)
        truth[k] = (rate, pa)
        mjd += TIMES.tolist()
        ra += r.tolist()
        dec += d.tolist()
        label += [k] * 5
        epoch += list(range(5))
    for e, t in enumerate(TIMES):  # 30 unrelated detections per exposure
        r, d = _random(rng, 30)
        mjd += [t] * 30
        ra += r.tolist()
        dec += d.tolist()
        label += [-1] * 30
        epoch += [e] * 30
    # An outlier on mover 0's path in exposure 2, 3 arcsec off: must not replace the true detection.
    i0 = [i for i, lab in enumerate(label) if lab == 0 and epoch[i] == 2][0]
    off = SkyCoord(ra[i0] * u.deg, dec[i0] * u.deg).directional_offset_by(0 * u.deg, 3 * u.arcsec)
    mjd.append(TIMES[2])
    ra.append(off.ra.deg)
    dec.append(off.dec.deg)
    label.append(-2)
    epoch.append(2)
    label_arr = np.array(label)
    tracklets = link_tracklets(np.array(mjd), np.array(ra), np.array(dec), np.full(len(mjd), 0.08), np.array(epoch))
    pure = [tr for tr in tracklets if len(set(label_arr[tr.members])) == 1 and label_arr[tr.members[0]] >= 0]
    assert len(pure) == 12 and len(tracklets) <= 12 + 1
    for tr in pure:
        rate, pa = truth[int(label_arr[tr.members[0]])]
        assert tr.n_detections == 5
        assert abs(tr.rate - rate) < 4 * tr.rate_err + 1e-6
        assert abs((tr.position_angle - pa + 180) % 360 - 180) < 4 * tr.position_angle_err + 1e-6


def test_a_field_seen_many_times_links_like_all_pairs_with_nearby_seeds() -> None:
    """24 exposures of one field, movers missed in a third of them: seeding from exposures at most
    3 apart (the default) finds every mover whole, as seeding from every pair does, and no more
    chance alignments of unrelated detections."""
    rng = np.random.default_rng(21)
    times = T0 + np.arange(24) * 10.0 / 1440.0
    mjd, ra, dec, label, epoch = [], [], [], [], []
    for k in range(8):
        rate, pa = float(np.exp(rng.uniform(np.log(6), np.log(600)))), float(rng.uniform(0, 360))
        r, d = _mover(rng, rate, pa, 0.08, times)
        seen = rng.uniform(size=24) > 1 / 3
        mjd += times[seen].tolist()
        ra += r[seen].tolist()
        dec += d[seen].tolist()
        label += [k] * int(seen.sum())
        epoch += np.flatnonzero(seen).tolist()
    for e, t in enumerate(times):
        r, d = _random(rng, 25)
        mjd += [t] * 25
        ra += r.tolist()
        dec += d.tolist()
        label += [-1] * 25
        epoch += [e] * 25
    args = (np.array(mjd), np.array(ra), np.array(dec), np.full(len(mjd), 0.08), np.array(epoch))
    label_arr = np.array(label)

    def movers_whole(tracklets: list) -> list[int]:
        return sorted(int(label_arr[tr.members[0]]) for tr in tracklets if len(set(label_arr[tr.members])) == 1
                      and label_arr[tr.members[0]] >= 0 and tr.n_detections == int(np.sum(label_arr == label_arr[tr.members[0]])))

    near = link_tracklets(*args)
    every = link_tracklets(*args, params=LinkingParameters(seed_epochs=24))
    assert movers_whole(near) == movers_whole(every) == list(range(8))
    false_near = [tr for tr in near if np.all(label_arr[tr.members] < 0)]
    false_every = [tr for tr in every if np.all(label_arr[tr.members] < 0)]
    assert len(near) == 8 + len(false_near) and len(false_near) <= len(false_every)


def test_false_tracklet_rate_on_random_detections_is_small() -> None:
    rng = np.random.default_rng(11)
    n_tracklets = 0
    trials = 5
    for _ in range(trials):
        mjd, ra, dec, epoch = [], [], [], []
        for e, t in enumerate(TIMES):
            r, d = _random(rng, 40)
            mjd += [t] * 40
            ra += r.tolist()
            dec += d.tolist()
            epoch += [e] * 40
        n_tracklets += len(link_tracklets(np.array(mjd), np.array(ra), np.array(dec), np.full(len(mjd), 0.08), np.array(epoch)))
    # 200 random detections per field x 5 fields: at most about one chance 3-point alignment per field.
    assert n_tracklets / trials <= 1.0


def test_trails_reject_misaligned_links() -> None:
    rng = np.random.default_rng(2)
    rate, pa = 1800.0, 30.0  # 15 arcsec in a 30 s exposure: trailed
    ra, dec = _mover(rng, rate, pa, 0.1)
    n = 5
    common = {"exptime_s": np.full(n, 30.0), "fwhm_arcsec": np.full(n, 1.0)}
    good = link_tracklets(TIMES, ra, dec, np.full(n, 0.1), np.arange(n), trail_length_arcsec=np.full(n, 15.0),
                          trail_pa_deg=np.full(n, pa % 180), **common)
    assert len(good) == 1 and good[0].n_detections == n
    crossed = link_tracklets(TIMES, ra, dec, np.full(n, 0.1), np.arange(n), trail_length_arcsec=np.full(n, 15.0),
                             trail_pa_deg=np.full(n, (pa + 90) % 180), **common)
    assert crossed == []
    point_like = link_tracklets(TIMES, ra, dec, np.full(n, 0.1), np.arange(n), trail_length_arcsec=np.zeros(n),
                                trail_pa_deg=np.full(n, np.nan), **common)
    assert point_like == []


def test_stationary_source_is_not_a_tracklet() -> None:
    rng = np.random.default_rng(4)
    ra, dec = _mover(rng, 0.0, 0.0, 0.08)
    assert link_tracklets(TIMES, ra, dec, np.full(5, 0.08), np.arange(5), params=LinkingParameters()) == []


def test_prediction_ellipse_holds_the_truth_as_often_as_stated() -> None:
    rng = np.random.default_rng(8)
    inside_1sigma, inside_68 = [], []
    for _ in range(400):
        rate, pa = float(np.exp(rng.uniform(np.log(6), np.log(3600)))), float(rng.uniform(0, 360))
        start = CENTRE.directional_offset_by(rng.uniform(0, 360) * u.deg, rng.uniform(0, 300) * u.arcsec)
        later = TIMES[-1] + 1.0 / 24.0
        positions = start.directional_offset_by(pa * u.deg, rate * (np.append(TIMES, later) - TIMES[2]) * 24.0 * u.arcsec)
        noisy = positions[:5].spherical_offsets_by(rng.normal(0, 0.1, 5) * u.arcsec, rng.normal(0, 0.1, 5) * u.arcsec)
        guess = predict(fit_motion(TIMES, noisy.ra.deg, noisy.dec.deg, np.full(5, 0.1)), later)
        dx, dy = (a.to_value(u.arcsec) for a in SkyCoord(guess.ra * u.deg, guess.dec * u.deg).spherical_offsets_to(positions[5]))
        d = np.array([dx, dy])
        m2 = float(d @ np.linalg.solve(guess.covariance, d))
        inside_1sigma.append(m2 <= 1.0)
        inside_68.append(m2 <= 2.2788)
    # 2-D Gaussian: 39.3 % inside the 1-sigma ellipse, 68 % inside 1.515 sigma; binomial 3-sigma bands for 400.
    assert 0.32 <= np.mean(inside_1sigma) <= 0.47
    assert 0.61 <= np.mean(inside_68) <= 0.75
