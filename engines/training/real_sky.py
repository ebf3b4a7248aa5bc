"""
Training that sees the real sky: the classifier fine-tuned on real survey cutouts.

Ingredients (each switchable in `RealSkyRecipe`, each measured in the grouped folds of
`skyblink.evaluation.real_folds` by ``benchmarks/realbogus_real.py``):

* **distill** -- every training alert's stamps (`skyblink.engines.stamps.external_stamps`, the per-survey
  stamp rule: ZTF 63x63 at 1.01"/px, Rubin block-averaged to the pipeline's 0.6"/px) with its
  survey's own score as a soft target: ``drb`` (else ``rb``) for ZTF, ``reliability`` for Rubin.
* **inject** -- fake injection on real cutouts (the DES / Rubin practice): a training alert's
  template is the sky; a Gaussian point source of the survey's seeing (the packet's PSF FWHM) is
  added to the science and difference channels at the centre, at S/N 5-80 (label real); the
  difference background is white noise or the same alert's difference turned and rolled so its
  own source is off centre (`build_pool` makes every sample from one alert's cutouts only).
* **residuals** -- real-image bogus built from the same templates, centred on the brightest
  source of the template: misregistration dipoles (science = template shifted 0.3-1.5 px),
  PSF-mismatch rings (science = template blurred), and clean subtractions of a static source
  (label bogus).
* **sim** -- simulated stamps with truth (`build_training_data`), real/bogus and class losses,
  so the simulated-night behaviour is kept.

Within a fold every real ingredient comes from the training folds' alerts only (`RealSkyPool`
records the alert each sample was made from). The shipped classifier's convolutional trunk is
kept and only its head is trained on the trunk's features (`RealSkyRecipe.layers`: the
real/bogus output layer, or both fully connected layers): a forward pass per sample once, then
seconds per fold, which is what a 2-core CPU shared by several jobs affords; the network and its
ONNX graph keep their shape. Training the trunk itself on real cutouts is not done here.

Notes
-----
CPU (torch), seeded.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from skyblink.model_io import STAMP_SIZE
from skyblink.psf_units import FWHM_PER_SIGMA
from skyblink.storage.alerts.survey_packets import Survey, SurveyAlert

from ..catalog import load_network
from ..networks import Classifier
from ..stamps import TRAINING_PIXEL_SCALE, ExternalStampRule, external_stamps
from .dataset import TrainingDataConfig, build_training_data

__all__ = ["RealSkyPool", "RealSkyRecipe", "alert_targets", "build_pool", "psf_sigma_px", "real_sky_samples",
           "train_head", "trunk_features"]

_FWHM_TO_SIGMA = 1.0 / FWHM_PER_SIGMA
_CENTRE = STAMP_SIZE // 2


@dataclass(frozen=True, slots=True)
class RealSkyRecipe:
    """
    What one real-sky training run uses (module notes). Experimental.

    Attributes
    ----------
    distill, inject, residuals, sim : bool
        The ingredients.
    per_alert : int
        Injected positives and residual negatives made from each training alert (each kind).
    sim_fields : int
        Simulated fields (3 exposures each) for the ``sim`` ingredient.
    layers : {"output", "head", "all"}
        ``output``: only the real/bogus output layer is trained (a logistic regression on the
        shipped head's 128 features, L-BFGS, L2 penalty ``l2``); ``head``: both fully connected
        layers and the outputs (AdamW, ``epochs`` over mini-batches); ``all``: the whole network
        on the pool's stamps (rotations and flips; slow on a CPU).
    l2 : float
        L2 penalty of the ``output`` logistic regression.
    epochs, batch_size, learning_rate, seed, threads : head training
    """

    distill: bool = True
    inject: bool = True
    residuals: bool = True
    sim: bool = True
    per_alert: int = 2
    sim_fields: int = 2
    layers: str = "output"
    l2: float = 1e-2
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 7
    threads: int = 2

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain data (for a model card)."""
        return asdict(self)


def alert_targets(alerts: Sequence[SurveyAlert]) -> np.ndarray:
    """Return (N,) float: each alert's survey score (drb, else rb; reliability), NaN when none."""
    return np.array([math.nan if a.packet_score is None else float(a.packet_score) for a in alerts], dtype=np.float32)


def psf_sigma_px(alert: SurveyAlert) -> float:
    """
    Return the Gaussian sigma of the alert's PSF in pixels of its classifier stamp.

    ZTF: the candidate's ``fwhm`` (pixels, 1.01"/px; 2 px when absent or not positive). Rubin:
    the second moment of the packet's PSF image (0.2"/px), divided by the block-averaging factor
    to the pipeline's 0.6"/px; 0.8" FWHM when the packet has no PSF.
    """
    stamps = alert.stamps
    if alert.survey is Survey.ZTF:
        fwhm = alert.record.get("fwhm")
        fwhm = float(fwhm) if fwhm is not None and math.isfinite(float(fwhm)) and 0.5 < float(fwhm) < 10 else 2.0
        return fwhm * _FWHM_TO_SIGMA
    factor = max(1, round(TRAINING_PIXEL_SCALE / stamps.pixel_scale_arcsec)) if stamps is not None else 1
    sigma = 0.8 / 0.2 * _FWHM_TO_SIGMA
    psf = None if stamps is None else stamps.psf
    if psf is not None and np.isfinite(psf).all() and psf.sum() > 0:
        p = np.clip(psf, 0, None) / np.clip(psf, 0, None).sum()
        yy, xx = np.indices(p.shape)
        cy, cx = (p * yy).sum(), (p * xx).sum()
        var = 0.5 * ((p * (yy - cy) ** 2).sum() + (p * (xx - cx) ** 2).sum())
        if 0.25 < var < 100:
            sigma = math.sqrt(var)
    return max(sigma / factor, 0.5)


def _gaussian(sigma: float, dy: float, dx: float, flux: float) -> np.ndarray:
    yy, xx = np.indices((STAMP_SIZE, STAMP_SIZE), dtype=np.float32)
    g = np.exp(-((yy - _CENTRE - dy) ** 2 + (xx - _CENTRE - dx) ** 2) / (2 * sigma**2))
    return (flux * g / g.sum()).astype(np.float32)


def _to_centre(image: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """Roll that brings the brightest pixel within 20 px of the centre (the template's star or host) to it."""
    window = image[_CENTRE - 20 : _CENTRE + 21, _CENTRE - 20 : _CENTRE + 21]
    y, x = np.unravel_index(int(np.argmax(window)), window.shape)
    if window[y, x] < 5:
        return int(rng.integers(-15, 16)), int(rng.integers(-15, 16))
    return 20 - int(y), 20 - int(x)


def _background(diffs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A difference background: white noise, or a training alert's difference turned and rolled off centre."""
    if len(diffs) == 0 or rng.uniform() < 0.5:
        return rng.standard_normal((STAMP_SIZE, STAMP_SIZE)).astype(np.float32)
    d = np.rot90(diffs[rng.integers(len(diffs))], int(rng.integers(4)))
    shift = rng.integers(12, 26, 2) * rng.choice([-1, 1], 2)
    return np.roll(d, tuple(int(s) for s in shift), axis=(0, 1)).astype(np.float32)


def real_sky_samples(stamps: np.ndarray, sigmas: np.ndarray, recipe: RealSkyRecipe,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """
    Injected positives and real-residual negatives from training alerts' stamps.

    Parameters
    ----------
    stamps : (N, 3, 63, 63) float32
        The training alerts' classifier stamps (sigma units).
    sigmas : (N,) float
        Their PSF sigma in stamp pixels (`psf_sigma_px`).
    recipe : RealSkyRecipe
        ``inject`` / ``residuals`` and ``per_alert``.
    rng : numpy Generator

    Returns
    -------
    (M, 3, 63, 63) float32 stamps and (M,) float32 real/bogus labels
    """
    out: list[np.ndarray] = []
    labels: list[float] = []
    diffs = stamps[:, 2]
    noise = lambda: rng.standard_normal((STAMP_SIZE, STAMP_SIZE)).astype(np.float32)  # noqa: E731
    for template, sigma in zip(stamps[:, 1], sigmas, strict=True):
        for _ in range(recipe.per_alert):
            if recipe.inject:
                t = np.roll(template, _to_centre(template, rng), axis=(0, 1)) if rng.uniform() < 0.5 else template
                s = float(sigma) * rng.uniform(0.85, 1.2)
                snr = math.exp(rng.uniform(math.log(5.0), math.log(80.0)))
                flux = snr * math.sqrt(4 * math.pi) * s
                dy, dx = (float(v) for v in rng.uniform(-0.5, 0.5, 2))
                star = _gaussian(s, dy, dx, flux)
                out.append(np.stack([t + star + noise(), t, star + _background(diffs, rng)]))
                labels.append(1.0)
            if recipe.residuals:
                t = np.roll(template, _to_centre(template, rng), axis=(0, 1))
                kind = rng.integers(3)
                gain = rng.uniform(0.5, 1.0)
                if kind == 0:  # misregistration dipole
                    angle = rng.uniform(0, 2 * math.pi)
                    r = rng.uniform(0.3, 1.5)
                    sci = ndimage.shift(t, (r * math.sin(angle), r * math.cos(angle)), order=1, mode="nearest")
                elif kind == 1:  # PSF mismatch ring
                    sci = ndimage.gaussian_filter(t, rng.uniform(0.5, 1.5) * float(sigma))
                    sci *= t.sum() / max(float(sci.sum()), 1e-6) if sci.sum() > 0 else 1.0
                else:  # a clean subtraction of whatever sits there
                    sci = t.copy()
                diff = gain * (sci - t) + _background(diffs, rng)
                out.append(np.stack([sci + noise(), t, diff]).astype(np.float32))
                labels.append(0.0)
    if not out:
        return np.zeros((0, 3, STAMP_SIZE, STAMP_SIZE), np.float32), np.zeros(0, np.float32)
    return np.stack(out).astype(np.float32), np.array(labels, np.float32)


def _sim_stamps(recipe: RealSkyRecipe) -> Any:
    cfg = TrainingDataConfig(fields=recipe.sim_fields, exposures_per_field=3, seed=recipe.seed + 100, workers=1)
    return build_training_data(cfg).stamps


def trunk_features(model: Classifier, stamps: np.ndarray, batch: int = 256) -> np.ndarray:
    """Return (N, F) float32: the classifier's convolutional features (its head's input) of stamps."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(stamps), batch):
            out.append(torch.flatten(model.features(torch.asinh(torch.from_numpy(stamps[i : i + batch]))), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass
class RealSkyPool:
    """
    Every sample a real-sky training may draw, with the alert it was made from. Experimental.

    Built once (`build_pool`); a fold's training takes the samples whose ``owner`` is a training
    alert (and the simulated ones, owner -1), so nothing of a held-out alert reaches its model.

    Attributes
    ----------
    kind : (M,) array of str
        ``"alert"``, ``"inject"``, ``"residual"`` or ``"sim"``.
    owner : (M,) int
        Index of the alert a sample came from; -1 for simulated stamps.
    rb : (M,) float32
        Real/bogus target (soft for alerts: the survey's score; NaN when the packet has none).
    cls : (M,) int
        Class index (simulated stamps), -1 elsewhere.
    features : (M, F) float32
        The shipped classifier's trunk features of each sample.
    stamps : (M, 3, 63, 63) float32 or None
        The samples themselves (kept by `build_pool` for ``layers="all"``).
    """

    kind: np.ndarray
    owner: np.ndarray
    rb: np.ndarray
    cls: np.ndarray
    features: np.ndarray
    stamps: np.ndarray | None = None


def build_pool(alerts: Sequence[SurveyAlert], recipe: RealSkyRecipe = RealSkyRecipe(), *, sim: Any | None = None,
               trunk: Classifier | None = None, rule: ExternalStampRule | None = None) -> RealSkyPool:
    """
    Make every ingredient of ``recipe`` once (each injection from one alert's own cutouts) and
    its trunk features (`trunk_features` of ``trunk``, default the shipped classifier); the
    alerts' stamps by ``rule`` (default `ExternalStampRule()`).
    """
    torch.set_num_threads(recipe.threads)
    trunk = trunk if trunk is not None else load_network("classifier")
    rng = np.random.default_rng(recipe.seed)
    stamps = np.stack([external_stamps(a, rule) for a in alerts])
    xs = [stamps]
    kind = [np.full(len(alerts), "alert")]
    owner = [np.arange(len(alerts))]
    rb = [alert_targets(alerts)]
    for i, alert in enumerate(alerts):
        # The difference background comes from the alert's own difference (turned, rolled off centre).
        x, y = real_sky_samples(stamps[i : i + 1], np.array([psf_sigma_px(alert)]), recipe, rng)
        xs.append(x)
        kind.append(np.where(y == 1, "inject", "residual"))
        owner.append(np.full(len(y), i))
        rb.append(y)
    cls = [np.full(sum(len(k) for k in kind), -1)]
    if recipe.sim:
        sim = sim if sim is not None else _sim_stamps(recipe)
        xs.append(sim.stamps)
        kind.append(np.full(len(sim.labels), "sim"))
        owner.append(np.full(len(sim.labels), -1))
        rb.append(sim.real.astype(np.float32))
        cls.append(sim.labels.astype(np.int64))
    x = np.concatenate(xs).astype(np.float32)
    return RealSkyPool(np.concatenate(kind), np.concatenate(owner), np.concatenate(rb).astype(np.float32),
                       np.concatenate(cls), trunk_features(trunk, x), x)


def train_head(pool: RealSkyPool, train_alerts: np.ndarray, recipe: RealSkyRecipe = RealSkyRecipe(), *,
               base: Classifier | None = None) -> Classifier:
    """
    Fine-tune the classifier's head (trunk frozen) on a fold's share of ``pool``.

    Parameters
    ----------
    pool : RealSkyPool
    train_alerts : (N_alerts,) bool
        Which alerts are in the training folds.
    recipe : RealSkyRecipe
        Ingredients to use (``distill``, ``inject``, ``residuals``, ``sim``), epochs, rate, seed.
    base : Classifier, optional
        The network whose trunk made the pool's features; default the shipped classifier.

    Returns
    -------
    Classifier
        ``base``'s trunk with the trained head, eval mode (a new module; ``base`` is not changed).
    """
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(1)  # small matrices: one thread is as fast and does not fight a shared machine
    model = copy.deepcopy(base if base is not None else load_network("classifier"))
    use = {"alert": recipe.distill, "inject": recipe.inject, "residual": recipe.residuals, "sim": recipe.sim}
    take = np.array([use[k] for k in pool.kind]) & np.isfinite(pool.rb)
    mine = np.zeros(len(pool.owner), bool)
    real_owner = pool.owner >= 0
    mine[real_owner] = train_alerts[pool.owner[real_owner]]
    take &= mine | ~real_owner
    f = torch.from_numpy(pool.features[take])
    rb = torch.from_numpy(pool.rb[take])
    cls = torch.from_numpy(pool.cls[take])
    if recipe.layers == "output":
        model.eval()
        with torch.no_grad():
            h = model.head(f)
        layer = model.real_bogus
        opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(layer(h)[:, 0], rb) + recipe.l2 * layer.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return model.eval()
    if recipe.layers == "all":
        return _train_all(model, pool, take, recipe)
    params = [*model.head.parameters(), *model.real_bogus.parameters(), *model.classes.parameters()]
    adam = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=1e-3)
    n = len(f)
    steps = recipe.epochs * -(-n // recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(adam, max_lr=recipe.learning_rate, total_steps=max(steps, 1))
    gen = torch.Generator().manual_seed(recipe.seed)
    model.head.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(n, generator=gen).split(recipe.batch_size):
            h = model.head(f[idx])
            loss = F.binary_cross_entropy_with_logits(model.real_bogus(h)[:, 0], rb[idx])
            labelled = cls[idx] >= 0
            if labelled.any():
                loss = loss + F.cross_entropy(model.classes(h)[labelled], cls[idx][labelled]) * labelled.float().mean()
            adam.zero_grad()
            loss.backward()
            adam.step()
            sched.step()
    return model.eval()


def _train_all(model: Classifier, pool: RealSkyPool, take: np.ndarray, recipe: RealSkyRecipe) -> Classifier:
    """Fine-tune every layer on the pool's stamps chosen by ``take`` (AdamW, one-cycle)."""
    if pool.stamps is None:
        msg = "layers='all' needs the pool's stamps (a pool from build_pool, not from features alone)"
        raise ValueError(msg)
    torch.set_num_threads(recipe.threads)
    x = torch.from_numpy(pool.stamps[take])
    rb = torch.from_numpy(pool.rb[take])
    cls = torch.from_numpy(pool.cls[take])
    adam = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=1e-4)
    n = len(x)
    steps = recipe.epochs * -(-n // recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(adam, max_lr=recipe.learning_rate, total_steps=max(steps, 1))
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(n, generator=gen).split(recipe.batch_size):
            xb = torch.rot90(x[idx], int(torch.randint(0, 4, (1,), generator=gen)), dims=(2, 3))
            if torch.rand(1, generator=gen).item() < 0.5:
                xb = xb.flip(-1)
            rb_logit, class_logits = model.logits(xb)
            loss = F.binary_cross_entropy_with_logits(rb_logit[:, 0], rb[idx])
            labelled = cls[idx] >= 0
            if labelled.any():
                loss = loss + F.cross_entropy(class_logits[labelled], cls[idx][labelled]) * labelled.float().mean()
            adam.zero_grad()
            loss.backward()
            adam.step()
            sched.step()
    return model.eval()
