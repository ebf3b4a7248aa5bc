"""
The contract between the night's configuration and the workers: two frozen records, built once
from `skyblink.config.SkyblinkConfig` by the driver and handed to every actor.

- `TileProgram`: what the per-tile program computes (the unit geometry, the detection and S/N
  thresholds, candidates per tile, PSF matching, cosmic-ray rejection, header keywords, the
  networks' precision). The CPU path (`skyblink.workers.process_tile`), the GPU path
  (`skyblink.workers.gpu_units.GpuUnitProcessor`, `skyblink.workers.device_program`) and the SEP
  baseline read it, under the configuration's own names.
- `WorkerConfig`: how the worker actors run it (the inference backend, the engine registry and
  trusted manifest, units per actor call, windows per device batch, calls a GPU actor prepares
  ahead, actors asked for, the health-check period) and the `TileProgram`.

Notes
-----
Driver side: imports no torch, onnxruntime or CUDA package (the driver builds the records).
Stable. The records' defaults are the configuration's embedded defaults, read from its schema,
so ``TileProgram()`` is the program of a night run with no configuration file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from skyblink.config import Backend, EnginesConfig, IngestConfig, NightConfig, SkyblinkConfig
from skyblink.headers import HeadersConfig
from skyblink.model_io import DETECTOR_STRIDE, ClassifierName

__all__ = ["Backend", "ClassifierName", "PrecisionName", "PsfMatchName", "TileProgram", "WorkerConfig", "compiles_for", "window_edge"]

PrecisionName = Literal["fp32", "fp16", "int8"]
PsfMatchName = Literal["gaussian", "kernel"]


def _default(section: type[Any], key: str) -> Any:
    """The embedded default of configuration key ``key`` of ``section`` (one place for defaults)."""
    return section.model_fields[key].default


def window_edge(size: int, margin: int) -> int:
    """
    Edge of the window read for a work unit: its core plus a margin on every side, rounded up to
    the detector's stride.

    Parameters
    ----------
    size, margin : int
        Core edge and margin in pixels.

    Returns
    -------
    int
        A multiple of `skyblink.model_io.DETECTOR_STRIDE`.
    """
    return int(math.ceil((size + 2 * margin) / DETECTOR_STRIDE) * DETECTOR_STRIDE)


def compiles_for(setting: bool | Literal["auto"], *, tiles_per_actor: float | None = None, watch: bool = False,
                 min_tiles: int = _default(NightConfig, "compile_min_tiles")) -> bool:
    """
    Whether GPU actors compile their device program (``night.compile_device_program``).

    Parameters
    ----------
    setting : bool or "auto"
        The configuration's value; a bool is returned as it is.
    tiles_per_actor : float, optional
        The run's tiles over its actors, where the run knows them; None: unknown.
    watch : bool
        A ``--watch`` run: the actors start before the night, so their compile is off the
        critical path.
    min_tiles : int
        ``night.compile_min_tiles``.

    Returns
    -------
    bool
        ``"auto"``: True with ``watch``, with an unknown size, or at ``min_tiles`` tiles per actor
        and more; False for smaller runs (the compile costs an H100 actor 17-84 s more at its start
        than the eager program and saves about 8.5 ms a tile).
    """
    if setting != "auto":
        return bool(setting)
    return watch or tiles_per_actor is None or tiles_per_actor >= min_tiles


@dataclass(frozen=True, slots=True)
class TileProgram:
    """
    The per-tile program's parameters, as the configuration names them. Stable.

    Attributes
    ----------
    tile_size : int
        Core edge of a work unit in pixels (``night.tile_size``, else ``ingest.tile_size``).
    margin : int
        Context read on every side of a core (``night.margin``).
    detector_threshold : float
        Detector new-source score a peak must reach (``night.detector_threshold``).
    snr_threshold : float
        Matched-filter S/N a candidate must reach in the difference (``night.snr_threshold``).
    top_k : int
        Most candidates kept per tile (``night.top_k``).
    psf_match : {"gaussian", "kernel"}
        PSF matching (``night.psf_match``).
    classifier : {"classifier", "survey_classifier"}
        The shipped real/bogus network the program runs (``night.classifier``).
    precision : {"fp32", "fp16", "int8"}
        The networks' precision on GPU backends (``engines.precision``).
    reject_cosmics : bool
        Flag and clean cosmic rays and hot pixels before the background.
    compile_device_program : bool
        On a GPU, compile the per-pixel steps and the detector and run the program as CUDA graphs
        (``night.compile_device_program``; its ``"auto"`` is decided by the night run,
        `compiles_for`, and is True here).
    headers : HeadersConfig
        Header keywords of the PSF size and the calibration (``[headers]``).
    """

    tile_size: int = _default(IngestConfig, "tile_size")
    margin: int = _default(NightConfig, "margin")
    detector_threshold: float = _default(NightConfig, "detector_threshold")
    snr_threshold: float = _default(NightConfig, "snr_threshold")
    top_k: int = _default(NightConfig, "top_k")
    psf_match: PsfMatchName = _default(NightConfig, "psf_match")
    classifier: ClassifierName = _default(NightConfig, "classifier")
    precision: PrecisionName = _default(EnginesConfig, "precision")
    reject_cosmics: bool = True
    compile_device_program: bool = True
    headers: HeadersConfig = field(default_factory=HeadersConfig)

    @classmethod
    def from_config(cls, config: SkyblinkConfig) -> TileProgram:
        """
        The program of a night run with ``config`` (validated already: every value in range).

        Parameters
        ----------
        config : SkyblinkConfig

        Returns
        -------
        TileProgram
        """
        night = config.night
        return cls(tile_size=night.tile_size or config.ingest.tile_size, margin=night.margin,
                   detector_threshold=night.detector_threshold, snr_threshold=night.snr_threshold, top_k=night.top_k,
                   psf_match=night.psf_match, classifier=night.classifier, precision=config.engines.precision,
                   headers=config.headers,
                   compile_device_program=compiles_for(night.compile_device_program))

    @property
    def window_edge(self) -> int:
        """Edge of a unit's window: core plus margins, rounded up to the detector's stride."""
        return window_edge(self.tile_size, self.margin)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """
    What a worker actor and the pool of them are given: built once per night from the configuration. Stable.

    Attributes
    ----------
    program : TileProgram
    backend : Backend
        Inference backend (``engines.backend``).
    registry : str or None
        Engine registry folder (``engines.registry``); None: the shipped models only.
    trusted_manifest : Path or None
        Hashes of the promoted releases and engines (``engines.trusted_manifest``).
    compile_cache : Path or None
        Where a GPU actor keeps torch.compile's caches of the compiled device program between starts
        (``engines.compile_cache``, else ``torch-compile/`` in the registry); None: torch's own
        default, a folder in the machine's temporary directory.
    units_per_call : int
        Work units in one call to an actor (``night.units_per_call``).
    device_batch : int
        Windows a GPU actor runs through its device program at once (``night.device_batch``).
    prepare_calls : int
        Calls a GPU actor reads and prepares on the host while one launches (``night.gpu_prepare_calls``).
    reference_cache_gib : float or None
        Device memory a GPU actor keeps reference CCDs in (``night.gpu_reference_cache_gib``; None:
        half of what its warm-up leaves free).
    actors : int or None
        Actors asked for (``night.workers``; None: one per GPU, else one per CPU).
    health_check_s : float
        How often the driver polls the actors' health (``night.health_check_s``).
    cpu_threads : int or None
        Threads of each CPU actor's inference sessions: the actors' share of the cluster's cores,
        set by the pool (`skyblink.cluster.WorkerPool`); None: the runtime's choice (every core).
    """

    program: TileProgram = field(default_factory=TileProgram)
    backend: Backend = _default(EnginesConfig, "backend")
    registry: str | None = None
    trusted_manifest: Path | None = None
    compile_cache: Path | None = None
    units_per_call: int = _default(NightConfig, "units_per_call")
    device_batch: int = _default(NightConfig, "device_batch")
    prepare_calls: int = _default(NightConfig, "gpu_prepare_calls")
    reference_cache_gib: float | None = _default(NightConfig, "gpu_reference_cache_gib")
    actors: int | None = None
    health_check_s: float = _default(NightConfig, "health_check_s")
    cpu_threads: int | None = None

    @classmethod
    def from_config(cls, config: SkyblinkConfig) -> WorkerConfig:
        """
        The workers of a night run with ``config`` (validated already: every value in range;
        ``night.compile_device_program = "auto"`` taken as True: the night run decides it, `compiles_for`).

        Parameters
        ----------
        config : SkyblinkConfig

        Returns
        -------
        WorkerConfig
        """
        night, engines = config.night, config.engines
        cache = engines.compile_cache or (str(Path(engines.registry) / "torch-compile") if engines.registry else None)
        return cls(program=TileProgram.from_config(config), backend=engines.backend, registry=engines.registry,
                   trusted_manifest=engines.trusted_manifest, compile_cache=Path(cache).expanduser() if cache else None,
                   units_per_call=night.units_per_call,
                   device_batch=night.device_batch, prepare_calls=night.gpu_prepare_calls,
                   reference_cache_gib=night.gpu_reference_cache_gib, actors=night.workers,
                   health_check_s=night.health_check_s)
