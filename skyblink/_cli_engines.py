"""
``skyblink train ...`` and ``skyblink engines ...``: train the networks, build and list engines.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer
from rich.table import Table

from ._cli_common import console, effective_config, err_console, fail
from .lazy_import import lazy_module

if TYPE_CHECKING:
    from skyblink import engines, storage
    from skyblink.cluster import planning as cluster_planning
    from skyblink.engines import _trt as engines_trt
    from skyblink.engines import build as engine_build
    from skyblink.engines import calibration_set, canary, gate, lifecycle
    from skyblink.engines import channels as engine_channels
    from skyblink.engines import export as engine_export
    from skyblink.engines.training import train as training
    from skyblink.workers import program_config

    from .config import SkyblinkConfig
else:
    # The ML side (torch, onnx, TensorRT) loads when an engine command runs, not for --help.
    engines = lazy_module("skyblink.engines")
    storage = lazy_module("skyblink.storage")
    cluster_planning = lazy_module("skyblink.cluster.planning")
    program_config = lazy_module("skyblink.workers.program_config")
    engines_trt = lazy_module("skyblink.engines._trt")
    engine_build = lazy_module("skyblink.engines.build")
    calibration_set = lazy_module("skyblink.engines.calibration_set")
    canary = lazy_module("skyblink.engines.canary")
    gate = lazy_module("skyblink.engines.gate")
    lifecycle = lazy_module("skyblink.engines.lifecycle")
    engine_channels = lazy_module("skyblink.engines.channels")
    engine_export = lazy_module("skyblink.engines.export")
    training = lazy_module("skyblink.engines.training.train")

__all__ = ["engines_app", "train_app"]

train_app = typer.Typer(help="Train the networks on simulated nights (writes ONNX, weights and a model card).", no_args_is_help=True)
engines_app = typer.Typer(help="Build, list and check TensorRT engines.", no_args_is_help=True)

ModelsOption = Annotated[
    Path | None, typer.Option("--models", help="Models folder to write (default: the package's shipped models).")
]
EpochsOption = Annotated[int | None, typer.Option("--epochs", help="Training epochs (default: the shipped model's).")]
FieldsOption = Annotated[int | None, typer.Option("--fields", help="Simulated fields of training data (default: 16 for the detector, 8 for the classifier).")]
ExposuresOption = Annotated[int | None, typer.Option("--exposures", help="Exposures per field of training data (default 5).")]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Seed of the training night (default 1).")]
RegistryOption = Annotated[
    Path | None,
    typer.Option("--registry", help="Engine registry folder (config: engines.registry; env SKYBLINK_ENGINES__REGISTRY)."),
]


def _training_config(which: str, epochs: int | None, fields: int | None, exposures: int | None, seed: int | None):
    base = training.DETECTOR_DEFAULTS if which == "detector" else training.CLASSIFIER_DEFAULTS
    changes: dict[str, Any] = {k: v for k, v in {"fields": fields, "exposures_per_field": exposures, "seed": seed}.items() if v is not None}
    data = replace(base.data, **changes)
    return replace(base, data=data, **({"epochs": epochs} if epochs is not None else {}))


def _print_card(card: dict) -> None:
    val = card["validation"]
    table = Table(title=f"{card['name']} {card['version']}: validation on simulated exposures")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in val.items():
        if isinstance(value, (int, float)):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"trained in {card['training_seconds']:.0f} s; files: {', '.join(v['file'] for v in card['onnx'].values())}")


def _train(ctx: typer.Context, which: str, epochs: int | None, fields: int | None, exposures: int | None,
           seed: int | None, models: Path | None) -> None:
    effective_config(ctx)
    function = training.train_detector if which == "detector" else training.train_classifier
    card = function(_training_config(which, epochs, fields, exposures, seed), out_root=models,
                    progress=lambda line: err_console.print(line, markup=False, highlight=False))
    _print_card(card)


@train_app.command("detector")
def train_detector_command(
    ctx: typer.Context,
    epochs: EpochsOption = None,
    fields: FieldsOption = None,
    exposures: ExposuresOption = None,
    seed: SeedOption = None,
    models: ModelsOption = None,
) -> None:
    """Train the tile detector on a simulated night and write it with its model card."""
    _train(ctx, "detector", epochs, fields, exposures, seed, models)


@train_app.command("classifier")
def train_classifier_command(
    ctx: typer.Context,
    epochs: EpochsOption = None,
    fields: FieldsOption = None,
    exposures: ExposuresOption = None,
    seed: SeedOption = None,
    models: ModelsOption = None,
) -> None:
    """Train the real/bogus and class classifier on simulated stamps and write it with its model card."""
    _train(ctx, "classifier", epochs, fields, exposures, seed, models)


@engines_app.command("build")
def engines_build(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", help="detector, classifier or braai.")],
    precision: Annotated[str, typer.Option("--precision", help="fp32 or fp16 (from the fp16 ONNX export).")] = "fp32",
    profiles: Annotated[
        list[str] | None,
        typer.Option("--profile", help="NAME:BMIN-BOPT-BMAX@HxW, repeatable (default: the model's standard set)."),
    ] = None,
    targets: Annotated[
        list[str] | None,
        typer.Option("--target", help="Compute capability to build for (TensorRT-RTX), repeatable; default 8.0 8.6 8.9 12.0."),
    ] = None,
    builder: Annotated[str | None, typer.Option("--builder", help="tensorrt or tensorrt_rtx (default: tensorrt if installed).")] = None,
    registry: RegistryOption = None,
    models: ModelsOption = None,
) -> None:
    """Build a TensorRT engine from a shipped ONNX model into the registry, with its manifest."""
    config = effective_config(ctx, **{"engines.registry": str(registry) if registry else None})
    if precision not in ("fp32", "fp16"):
        raise fail(f"--precision must be fp32 or fp16, got {precision!r} (INT8 engines come from a Q/DQ graph)")
    try:
        specs = [engines.ProfileSpec.parse(p) for p in profiles] if profiles else None
        version = "d6_m7" if model == "braai" else engines.MODEL_VERSIONS[model]
        registry_dir = Path(config.engines.registry).expanduser()
        source = _braai_onnx(precision, registry_dir) if model == "braai" else engines.onnx_path(model, precision, models)
        manifest = engine_build.build_engine(source, registry_dir, model=model, model_version=version,
                                precision=precision, profiles=specs, compute_capabilities=targets, builder=builder)
    except (ValueError, engines.ModelNotShippedError, engine_build.EngineBuildError, engines_trt.TensorRTUnavailableError) as exc:
        raise fail(f"error: {exc}") from None
    console.print(f"built {manifest.engine_file} ({manifest.engine_bytes / 1e6:.1f} MB) in {manifest.build_seconds:.2f} s "
                  f"with {manifest.builder} {manifest.builder_version} for {', '.join(manifest.compute_capabilities)}", markup=False)


def _braai_onnx(precision: str, registry_dir: Path) -> Path:
    """Export the shipped braai port (weights only) to ONNX beside the registry; reused when present."""
    from skyblink.evaluation.braai_port import load_braai  # noqa: PLC0415

    target = registry_dir / "onnx" / f"braai.{precision}.onnx"
    if not target.exists():
        engine_export.export_onnx(load_braai(), target, precision=precision)  # type: ignore[arg-type]
    return target


@engines_app.command("list")
def engines_list(ctx: typer.Context, registry: RegistryOption = None) -> None:
    """List the engines in the registry with their manifests' key fields."""
    config = effective_config(ctx, **{"engines.registry": str(registry) if registry else None})
    reg = engines.EngineRegistry(Path(config.engines.registry).expanduser())
    table = Table(title=f"engines in {reg.root}")
    for column in ("engine", "model", "version", "precision", "builder", "targets", "profiles", "MB"):
        table.add_column(column)
    for m in reg.manifests():
        table.add_row(m.engine_file, m.model, m.model_version, m.precision, f"{m.builder} {m.builder_version}",
                      " ".join(m.compute_capabilities), " ".join(p.name for p in m.profiles), f"{m.engine_bytes / 1e6:.1f}")
    console.print(table)


ModelArgument = Annotated[str, typer.Argument(help="detector or classifier.")]


def _registry_dir(ctx: typer.Context, registry: Path | None, **more: object) -> tuple[Path, SkyblinkConfig]:
    config = effective_config(ctx, **{"engines.registry": str(registry) if registry else None}, **more)
    return Path(config.engines.registry).expanduser(), config


def _check_model(model: str) -> Literal["detector", "classifier"]:
    if model not in ("detector", "classifier"):
        raise fail(f"MODEL must be detector or classifier, got {model!r}", 2)
    return cast(Literal["detector", "classifier"], model)


@engines_app.command("quantize")
def engines_quantize(
    ctx: typer.Context,
    model: ModelArgument,
    calibration: Annotated[str, typer.Option("--calibration", help="stratified (default) or bright-crowded (the careless set, for comparison).")] = "stratified",
    method: Annotated[str, typer.Option("--method", help="percentile (default), minmax or entropy: ONNX Runtime's calibrator.")] = "percentile",
    validation_exposures: Annotated[int, typer.Option("--validation-exposures", help="Exposures of the gate's validation night (default 10).")] = 10,
    dark_deep_exposures: Annotated[int, typer.Option("--dark-deep-exposures", help="Dark deep validation exposures of the detector (default 10).")] = 10,
    image_size: Annotated[int, typer.Option("--image-size", help="Validation CCD edge in pixels (default 1024).")] = 1024,
    no_build: Annotated[bool, typer.Option("--no-build", help="Do not build the TensorRT-RTX engine from the Q/DQ graph.")] = False,
    registry: RegistryOption = None,
) -> None:
    """Quantize to INT8 (Q/DQ) on the stratified calibration set, gate against fp32, register as candidate, build."""
    _check_model(model)
    if calibration not in ("stratified", "bright-crowded") or method not in ("percentile", "minmax", "entropy"):
        raise fail("--calibration must be stratified or bright-crowded; --method percentile, minmax or entropy", 2)
    root, _ = _registry_dir(ctx, registry)
    spec = calibration_set.stratified_spec() if calibration == "stratified" else calibration_set.bright_crowded_spec()
    validation = gate.ValidationSpec(exposures=validation_exposures, image_size=image_size, dark_deep_exposures=dark_deep_exposures)
    try:
        result = lifecycle.quantize_candidate(model, root, calibration=spec, method=method, validation=validation,  # type: ignore[arg-type]
                                    cache_dir=root / "calibration", build=not no_build)
    except gate.AccuracyGateError as exc:
        raise fail(str(exc)) from None
    console.print(result.gate.report(), markup=False, highlight=False)
    for key, value in lifecycle.describe(result).items():
        console.print(f"{key}: {value}", markup=False, highlight=False)


@engines_app.command("promote")
def engines_promote(
    ctx: typer.Context,
    model: ModelArgument,
    store: Annotated[str, typer.Option("--store", help="An ingested night's store whose work units the shadow run uses.")],
    fraction: Annotated[float | None, typer.Option("--fraction", help="Fraction of work units run in shadow (config engines.canary_fraction, default 0.1).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="canary or production (default: the next step).")] = None,
    registry: RegistryOption = None,
) -> None:
    """Run the candidate (or canary) in shadow next to production; promote one channel if within tolerances."""
    checked = _check_model(model)
    if to not in (None, "canary", "production"):
        raise fail(f"--to must be canary or production, got {to!r}", 2)
    target = cast(Literal["canary", "production"] | None, to)
    root, config = _registry_dir(ctx, registry, **{"engines.canary_fraction": fraction})
    night = config.night
    size = night.tile_size or config.ingest.tile_size
    try:
        shadow_store = storage.NightStore(store)
        units = [u for key in shadow_store.exposure_keys()
                 for u in cluster_planning.plan_tiles(shadow_store, key, size=size, margin=night.margin)]
        report = canary.promote(checked, root, shadow_store, units, to=target, fraction=config.engines.canary_fraction,
                                tolerances=canary.PromotionTolerances.from_config(config.engines),
                                program=program_config.TileProgram.from_config(config))
    except (engine_channels.ChannelError, FileNotFoundError) as exc:
        raise fail(f"error: {exc}") from None
    except canary.PromotionError as exc:
        raise fail(str(exc)) from None
    console.print(report.text(), markup=False, highlight=False)
    console.print(f"promoted {report.release} to {report.target}", markup=False, highlight=False)


@engines_app.command("rollback")
def engines_rollback(ctx: typer.Context, model: ModelArgument, registry: RegistryOption = None) -> None:
    """Put the previous production release of MODEL back (or the shipped model when there is none)."""
    _check_model(model)
    root, _ = _registry_dir(ctx, registry)
    try:
        previous = engine_channels.Channels(root).rollback(model)
    except engine_channels.ChannelError as exc:
        raise fail(f"error: {exc}") from None
    console.print(f"{model} production is now {previous.label if previous else 'the shipped model'}", markup=False)


@engines_app.command("channels")
def engines_channels(ctx: typer.Context, registry: RegistryOption = None) -> None:
    """Show each model's candidate, canary and production releases."""
    root, _ = _registry_dir(ctx, registry)
    table = Table(title=f"release channels in {root}")
    for column in ("model", *engine_channels.CHANNELS, "history"):
        table.add_column(column)
    channels = engine_channels.Channels(root)
    for model, slots in channels.state().items():
        cells = [slot.label.split(" ", 1)[1] if (slot := slots[c]) else "-" for c in engine_channels.CHANNELS]
        table.add_row(model, *cells, str(len(channels.history(model))))
    console.print(table)


@engines_app.command("trust")
def engines_trust(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Trusted manifest to write; mount it read-only into the workers "
                                                   "and set engines.trusted_manifest to it.")],
    registry: RegistryOption = None,
) -> None:
    """Vouch for the registry as it is: write the sha256 of the production releases (and their history) and engines."""
    root, _ = _registry_dir(ctx, registry)
    try:
        trusted = engines.write_trusted_manifest(root, out)
    except (engines.IntegrityError, OSError, ValueError) as exc:
        raise fail(f"error: {exc}") from None
    releases = sum(len(v) for v in trusted.releases.values())
    console.print(f"{out}: {releases} release(s) of {len(trusted.releases)} model(s), {len(trusted.engines)} engine(s)",
                  markup=False)
