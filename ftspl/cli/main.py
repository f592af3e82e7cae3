"""The ``ftspl`` command: thin Typer wrappers over the engine, export and train layers.

Imports are lazy (inside each command) so ``ftspl query`` loads only numpy,
onnxruntime, hnswlib, SQLite and PIL: never torch. This is the only layer that
prints. User mistakes (:class:`FtsplError`) become one line on stderr and a
non-zero exit code (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer

from ftspl.cli import console
from ftspl.cli.data_cmd import data_app
from ftspl.cli.index_cmds import index_app
from ftspl.cli.options import VERBOSE_HELP, DeviceOpt, HomeOpt, JsonOpt, ThreadsOpt, UP_HELP
from ftspl.cli.options import home_of as _home, runtime_of as _runtime
from ftspl.engine.constants import MAX_FILE_BYTES, MAX_IMAGE_PIXELS
from ftspl.engine.errors import FtsplError
from ftspl.engine.scoring.views import DEFAULT_BLEND_WEIGHT as _BLEND, DEFAULT_DEPTH as _DEPTH, DEFAULT_RERANK as _RERANK
from ftspl.engine.scoring.regions import DEFAULT_REGION_FUSION as _REGION_FUSION, DEFAULT_REGIONS as _REGIONS
from ftspl.train.config import TrainConfig  # torch-free: the defaults of `ftspl train`

app = typer.Typer(
    name="ftspl",
    help="Find 3D shapes from a photo: export encoders, index meshes, query photos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(index_app, name="index")
app.add_typer(data_app, name="data")

@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP)) -> None:
    console.setup_logging(verbose)


# --------------------------------------------------------------------- export
@app.command()
def export(
    run: Optional[Path] = typer.Argument(None, help="A training run folder (from 'ftspl train')."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Export ImageNet-pretrained encoders (no training)."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", help="Backbone for --pretrained."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="ImageNet weights file (alexnet)."),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (default) or torchscript."),
    precision: str = typer.Option("auto", "--precision", help="auto (default): int8 on a machine without a GPU when the run's photos and shapes (or --calibration) can calibrate it, else fp32; fp32; int8: quantised for CPUs; fp16: for GPUs."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="With --precision int8: a folder of photos and meshes to calibrate on (needed with --pretrained; default: the run's source and target)."),
    look: Optional[str] = typer.Option(None, "--look", help=f"How gallery views are coloured: grey or materials (the shapes' own colours and textures). A run serves the look it trained with; --pretrained defaults to {TrainConfig.look}."),
    home: Optional[Path] = HomeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Write the image and multi-view encoders as ONNX + manifest, checked against torch."""
    from ftspl.cli.train_cmds import export_cmd

    export_cmd(run, pretrained, backbone, weights, exporter, _home(home), as_json, precision, calibration, look)


# ---------------------------------------------------------------------- train
_PRESET_HELP = (
    "Ablation preset: source_only, IDCA, ICAV, FT, FT_centroid_pl, SPL, FTSPL (default), FTSPL_global; "
    "the paper's Table I deep baselines: CORAL, DANN, MMD, JAN. Explicit switches below override it."
)


#: TrainConfig's defaults are the one copy of the training budget; the options below show them
_TRAIN = {f.name: f.default for f in fields(TrainConfig)}


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option ``name`` (not its default). By the source's name: typer ships its own
    click, whose ParameterSource is not click.core's."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


@app.command()
def train(
    ctx: typer.Context,
    source: Optional[Path] = typer.Option(None, "--source", help="Labelled photos: SOURCE/<class>/*.jpg or a 'path label' list file (with --continue: the run's)."),
    target: Path = typer.Option(..., "--target", help="Unlabelled shapes: a folder of meshes / 12-view folders or a list file."),
    out: Path = typer.Option(Path(_TRAIN["out"]), "--out", help="Run folder (checkpoint, config, metrics); with --continue the default is RUN-continued."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Held-out labelled photos for per-round retrieval metrics."),
    val: Optional[Path] = typer.Option(None, "--val", help="Labelled validation photos (never trained on) that choose the best round; default: carve --val-frac of --source."),
    val_frac: float = typer.Option(_TRAIN["val_frac"], "--val-frac", help="Share of each class's --source photos held out for validation when --val is not given (0: none; export then uses the last round)."),
    val_shapes: Optional[Path] = typer.Option(None, "--val-shapes", help="Labelled validation meshes (VAL_SHAPES/<class>/<mesh>): validation then ranks the val photos against them."),
    preset: str = typer.Option(_TRAIN["preset"], "--preset", help=_PRESET_HELP),
    mode: str = typer.Option(_TRAIN["mode"], "--mode", help="head (frozen backbone, cached features; minutes on CPU), partial (the last --train-blocks blocks fine-tune on cached activations; CPU) or full (whole backbone; GPU)."),
    train_blocks: int = typer.Option(_TRAIN["train_blocks"], "--train-blocks", help="Partial mode: how many of the backbone's last blocks train (efficientnet_lite0: 1-17, its MBConv blocks and conv head)."),
    backbone_lr_mult: float = typer.Option(_TRAIN["backbone_lr_mult"], "--backbone-lr-mult", help="Partial/full modes: the backbone's learning rate as a multiple of --lr."),
    backbone: str = typer.Option(_TRAIN["backbone"], "--backbone", help="efficientnet_lite0 or alexnet."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="ImageNet weights file for the backbone (alexnet)."),
    up: Optional[str] = typer.Option(None, "--up", help=UP_HELP),
    look: str = typer.Option(_TRAIN["look"], "--look", help="How the target shapes' views are coloured: grey or materials (their own colours and textures; grey where they have none). Export and index add follow the run's look."),
    idca: Optional[bool] = typer.Option(None, "--idca/--no-idca", help="Inter-domain centroid alignment (Eq. 4 mean term)."),
    icav: Optional[bool] = typer.Option(None, "--icav/--no-icav", help="Intra-class attribute variation (Eq. 4 covariance term)."),
    pseudo: Optional[str] = typer.Option(None, "--pseudo", help="Pseudo-labels: classifier, centroid or spl."),
    selection: Optional[str] = typer.Option(None, "--selection", help="Shape selection: classwise, global or all."),
    target_ce: Optional[bool] = typer.Option(None, "--target-ce/--no-target-ce", help="Cross-entropy on selected shapes."),
    align: Optional[str] = typer.Option(None, "--align", help="Domain-alignment loss: none, coral, dann, mmd or jan (default: the preset's; FTSPL: none)."),
    align_phase: Optional[str] = typer.Option(None, "--align-phase", help="When --align trains: all epochs or only the warmup (default: the preset's)."),
    align_weight: Optional[float] = typer.Option(None, "--align-weight", help="Weight of the alignment loss beside the source cross-entropy (default: the preset's)."),
    keep_pretrained: float = typer.Option(_TRAIN["keep_pretrained"], "--keep-pretrained", help="Weight (0-1) of the pretrained features in the served embedding beside the adapted ones (0: adapted only)."),
    keep_pretrained_dims: int = typer.Option(_TRAIN["keep_pretrained_dims"], "--keep-pretrained-dims", help="Principal directions of the pretrained features kept (fitted on the target shapes)."),
    rounds: int = typer.Option(_TRAIN["rounds"], "--rounds", help="SPL rounds L."),
    epochs: int = typer.Option(_TRAIN["epochs"], "--epochs", help="Epochs per round."),
    warmup_epochs: int = typer.Option(_TRAIN["warmup_epochs"], "--warmup-epochs", help="Source-only epochs before round 1."),
    lr: float = typer.Option(_TRAIN["lr"], "--lr", help="SGD learning rate (momentum 0.9)."),
    lam: float = typer.Option(_TRAIN["lam"], "--lam", help="Final strength of the Eq. 4 terms (ramped from 0)."),
    batch_size: int = typer.Option(_TRAIN["batch_size"], "--batch-size", help="Batch size (paper: 32)."),
    augment_copies: int = typer.Option(_TRAIN["augment_copies"], "--augment-copies", help="Head/partial modes: augmented copies per photo."),
    seed: int = typer.Option(_TRAIN["seed"], "--seed", help="Random seed (same seed, same result)."),
    device: str = typer.Option(_TRAIN["device"], "--device", help="auto (CUDA when present), cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last checkpoint."),
    continue_run: Optional[Path] = typer.Option(None, "--continue", help="A finished run folder: run its FTSPL rounds again from its exported network on --target (more shapes), with its photos, backbone and budget."),
    nproc: int = typer.Option(1, "--nproc", help="Train with N processes on this machine (torch DDP: one GPU each, or gloo on CPU); launches torchrun."),
    home: Optional[Path] = HomeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train the shared photo/shape encoder with FTSPL (labelled photos + unlabelled shapes)."""
    from ftspl.cli.train_cmds import train_cmd

    if continue_run is not None:  # RUN's config with the new target (ftspl.train.continuation)
        from ftspl.cli.train_cmds import train_continue_cmd

        given = {n: v for n, v in (("out", out), ("backbone", backbone)) if _typed(ctx, n)}
        train_continue_cmd(continue_run, target, given.get("out"), source, given.get("backbone"), device, as_json,
                           _home(home), nproc=nproc, resume=resume)
        return
    if source is None:
        from ftspl.engine.errors import UsageError

        raise UsageError("train needs --source (labelled photos), or --continue RUN")
    switches = dict(idca=idca, icav=icav, pseudo=pseudo, selection=selection, target_ce=target_ce, align=align,
                    align_phase=align_phase, align_weight=align_weight)
    overrides = {k: v for k, v in switches.items() if v is not None}
    settings = dict(
        source=str(source), target=str(target), out=str(out), queries=str(queries) if queries else None,
        backbone=backbone, weights=str(weights) if weights else None, mode=mode, rounds=rounds, epochs=epochs,
        warmup_epochs=warmup_epochs, lr=lr, lam=lam, batch_size=batch_size, augment_copies=augment_copies,
        train_blocks=train_blocks, backbone_lr_mult=backbone_lr_mult,
        keep_pretrained=keep_pretrained, keep_pretrained_dims=keep_pretrained_dims,
        seed=seed, device=device, val=str(val) if val else None, val_frac=val_frac,
        val_shapes=str(val_shapes) if val_shapes else None, look=look,
    )
    if up is not None:  # TrainConfig.up (None: the render spec's default); export and index add follow it
        settings["up"] = up
    # flags the user typed win over the preset's tuned values; the rest keep the preset's
    explicit = {k for k in settings if k in ctx.params and _typed(ctx, k)}
    train_cmd(preset, settings, overrides, resume, as_json, _home(home), nproc=nproc, explicit=explicit | {"up"})


# ---------------------------------------------------------------------- query
@app.command()
def query(
    photos: list[Path] = typer.Argument(..., help="One or more photos (JPEG, PNG, WebP, BMP), or shapes (a mesh file or view folder: the shapes that look like it)."),
    top: int = typer.Option(10, "--top", "-k", help="How many shapes to return per photo."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Write a PNG contact sheet here."),
    max_pixels: int = typer.Option(MAX_IMAGE_PIXELS, "--max-pixels", min=1, help="Refuse larger photos (decompression-bomb guard)."),
    max_file_bytes: int = typer.Option(MAX_FILE_BYTES, "--max-file-bytes", min=1, help="Refuse larger photo files."),
    hnsw_ef: Optional[int] = typer.Option(None, "--hnsw-ef", min=1, help="HNSW search breadth for this query (default: the one stored by index add)."),
    max_distance: Optional[float] = typer.Option(None, "--max-distance", min=0.0, help="Mark hits farther than this as no match (default: the threshold of 'ftspl eval PHOTOS --calibrate', if any)."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="The same cut as a cosine similarity in [-1, 1]."),
    fuse: bool = typer.Option(False, "--fuse", help="The photos show one object: answer one ranked list for all of them."),
    fusion: str = typer.Option("mean", "--fusion", help="With --fuse: mean (of the photos' embeddings), max (best photo per shape) or rank (reciprocal rank fusion)."),
    rerank: str = typer.Option(_RERANK, "--rerank", help=f"Re-rank the top {_DEPTH} by each shape's best-matching view: none (pooled order), view (best view's similarity) or blend (pooled and best view mixed by --rerank-weight)."),
    rerank_weight: float = typer.Option(_BLEND, "--rerank-weight", min=0.0, max=1.0, help="With --rerank blend: the best view's share of the score."),
    box: Optional[str] = typer.Option(None, "--box", metavar="X0,Y0,X1,Y1", help="Search with this part of each photo: pixels, or fractions from 0 to 1 of its width and height."),
    regions: Optional[str] = typer.Option(None, "--regions", help=f"Also search windows of each photo and fuse them per shape: none (the whole photo), crops (windows cut out and embedded) or rmac (windows of the encoder's feature map, one pass). Default: {_REGIONS}."),
    region_fusion: Optional[str] = typer.Option(None, "--region-fusion", help=f"With --regions: how a shape's region distances combine: max (its best region), mean (every region) or top3 (its three best). Default: {_REGION_FUSION}."),
    device: str = DeviceOpt,
    threads: int = ThreadsOpt,
    home: Optional[Path] = HomeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The nearest shapes for each photo; hits beyond the open-set threshold are marked "no match"."""
    import time

    t0 = time.perf_counter()  # JSON startup_s: from here to an open model and index; query_s apart
    from ftspl.cli.commands import query_cmd

    query_cmd(photos, top, sheet, _home(home), _runtime(device, threads), as_json, max_pixels=max_pixels,
              max_file_bytes=max_file_bytes, hnsw_ef=hnsw_ef, started=t0, max_distance=max_distance,
              min_score=min_score, fusion=fusion if fuse else None, rerank=(rerank, rerank_weight), box=box,
              regions=(regions, region_fusion))


@app.command("eval")
def evaluate(
    queries: Path = typer.Argument(..., help="Labelled photos: QUERIES/<label>/*.jpg"),
    calibrate: bool = typer.Option(False, "--calibrate", help="Set the index's open-set threshold from these photos (classes absent from the index count as unknown)."),
    precision: float = typer.Option(0.95, "--precision", min=0.01, max=1.0, help="With --calibrate: the precision on known photos the threshold keeps."),
    device: str = DeviceOpt,
    threads: int = ThreadsOpt,
    home: Optional[Path] = HomeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Retrieval metrics (NN, FT, ST, F, DCG, ANMRR, AUC) of labelled photos against the labelled index, or --calibrate the "no match" threshold."""
    from ftspl.cli.commands import calibrate_cmd, eval_cmd

    if calibrate:
        calibrate_cmd(queries, _home(home), _runtime(device, threads), precision, as_json)
    else:
        eval_cmd(queries, _home(home), _runtime(device, threads), as_json)


@app.command()
def doctor(home: Optional[Path] = HomeOpt, device: str = DeviceOpt, as_json: bool = JsonOpt) -> None:
    """Check the GL stack, onnxruntime providers, the model and the index; exit 1 on failure."""
    from ftspl.cli.commands import doctor_cmd

    doctor_cmd(_home(home), device, as_json)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the demo's data, sheet and results."),
    as_json: bool = JsonOpt,
) -> None:
    """FTSPL end to end on a CPU in minutes: build the small SH3D benchmark, train (head mode), export, index, query held-out photos, metrics, contact sheet."""
    from ftspl.cli.demo import demo_cmd

    demo_cmd(out, as_json)


def cli():
    """The click command behind ``app``, with ``-v/--verbose`` on every subcommand too.

    The root option only works before the subcommand (``ftspl -v index add``);
    users type it at the end (``ftspl index add DIR -v``) just as often, so
    each leaf command gets the same flag, added here so that no command can
    forget it.
    """
    from typer.core import TyperOption

    def verbose(ctx, param, value: bool) -> None:
        if value:
            console.setup_logging(True)

    def add(cmd) -> None:
        if hasattr(cmd, "commands"):  # a group (Typer's own click: no isinstance on click.Group)
            for sub in cmd.commands.values():
                add(sub)
        elif not any(o in ("-v", "--verbose") for p in cmd.params for o in (*p.opts, *p.secondary_opts)):
            cmd.params.append(TyperOption(param_decls=["--verbose", "-v"], is_flag=True, default=False,
                                          expose_value=False, callback=verbose, help=VERBOSE_HELP))

    command = typer.main.get_command(app)
    add(command)
    return command


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any non-loopback one needs --token or --insecure."),
    port: int = typer.Option(8000, "--port", help="TCP port (0: any free one, printed when ready)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="FTSPL_SERVE_TOKEN", help="Bearer token every /api call must carry (or $FTSPL_SERVE_TOKEN)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without a token."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Allow this origin to call the API from its pages (repeatable; none by default)."),
    workers: int = typer.Option(0, "--workers", help="Queries computed at once, one core each (0: one per core)."),
    queue: int = typer.Option(16, "--queue", help="Queries waiting beyond --workers; more get 503 + Retry-After."),
    max_photos: int = typer.Option(8, "--max-photos", help="Photos per request."),
    max_pixels: int = typer.Option(MAX_IMAGE_PIXELS, "--max-pixels", min=1, help="Refuse larger photos (as ftspl query)."),
    max_file_bytes: int = typer.Option(MAX_FILE_BYTES, "--max-file-bytes", min=1, help="Refuse larger photo files (as ftspl query)."),
    max_body_bytes: int = typer.Option(64 * 1024 * 1024, "--max-body-bytes", min=1, help="Refuse larger request bodies, before parsing."),
    poll: float = typer.Option(0.5, "--poll", help="Seconds between checks for new index commits."),
    device: str = DeviceOpt,
    home: Optional[Path] = HomeOpt,
) -> None:
    """Serve the HTTP API and the search page over the index, following it while 'index add' runs."""
    from ftspl.cli.serve_cmd import serve_cmd
    from ftspl.serve.config import ServeConfig, default_workers

    serve_cmd(ServeConfig(
        home=home, host=host, port=port, token=token, insecure=insecure, cors_origins=tuple(cors_origin),
        workers=workers or default_workers(), queue=queue, max_photos=max_photos, max_pixels=max_pixels,
        max_file_bytes=max_file_bytes, max_body_bytes=max_body_bytes, poll_s=poll, device=device,
    ))


def main() -> None:
    """Console entry point: run the app, turning user errors into one line + exit code.

    Typer (standalone mode) already maps usage errors to exit 2 and Ctrl-C to
    an abort; everything of ours that a user can cause is an FtsplError.
    """
    try:
        cli()(prog_name="ftspl")
    except FtsplError as exc:
        console.error(str(exc))
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
