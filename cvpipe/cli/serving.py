"""`cvpipe serve` and `cvpipe predict` (registered in cvpipe.cli.main). Heavy imports stay inside the functions."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Any, Optional

import typer

from cvpipe.cli.common import AllowPluginOpt, ConfigOpt, SetOpt, materialized, open_store, pick_config
from cvpipe.cli.common import fail as _fail


def _model_pack_run(config: Optional[Path], run_id: Optional[str], overrides: Optional[list[str]] = None,
                    allow_plugin: Optional[list[str]] = None, st=None):
    st = st or open_store(pick_config(None, config), overrides, allow_plugin)
    if run_id:
        try:
            rec = st.get_run(run_id)
        except (KeyError, ValueError) as e:
            _fail(str(e.args[0]) if e.args else f"no run {run_id}")
        if rec.step != "model_pack":
            _fail(f"run {run_id} is a {rec.step} run; give a model_pack run id (cvpipe runs --step model_pack)")
    else:
        from cvpipe.store.promotion import servable_run

        rec = servable_run(st)  # the champion: a model that passed its evaluation, or one promoted by hand
        if rec is None:
            packed = st.latest_run("model_pack")
            hint = (f"the newest packed model {packed.run_id} was not promoted; `cvpipe promotions` tells why, "
                    f"`cvpipe promote {packed.run_id}` promotes it by hand, or give its run id to serve it anyway"
                    if packed else "no complete model_pack run either: run the pipeline first")
            _fail(f"nothing promoted to serve in {st.uri(st.pipeline_path)}: {hint}")
    if rec.status != "complete":
        _fail(f"model_pack run {rec.run_id} is {rec.status}, not complete")
    return st, rec


def serve(
    run_id: Optional[str] = typer.Argument(
        None, help="model_pack run to serve (default: the promoted one, the champion; see `cvpipe promotions`)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    allow_plugin: Optional[list[str]] = AllowPluginOpt,
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 for all)."),
    port: int = typer.Option(3000, help="Port of the REST API."),
    workers: int = typer.Option(1, min=1, help="Service worker processes, one model each; each runs a model call "
                                "per CPU, so 1 uses every core (docs/production.md, Scale-out)."),
    batch: int = typer.Option(1, min=1, help="Adaptive batching: max images per model call (1 = off)."),
    follow: bool = typer.Option(False, "--follow", help="Poll the store and move to each newer complete "
                                "model_pack run that passes its check, without interruption."),
    follow_interval: float = typer.Option(10.0, min=0.5, help="Seconds between polls with --follow."),
    admin_token_env: Optional[str] = typer.Option(None, "--admin-token-env", help="Name of an environment "
                                                  "variable holding the token that enables POST /admin/reload."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Packed runtime/precision variant to serve "
                                          "(e.g. fp32, int8, openvino; default: the pack's choice)."),
    max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", min=1,
                                                  help="Requests one worker processes at once [default: 16]."),
    body_timeout: Optional[float] = typer.Option(None, "--body-timeout", min=0.1,
                                                 help="Seconds a request body may take to arrive [default: 10]."),
    max_body_bytes: Optional[int] = typer.Option(None, "--max-body-bytes", min=1024,
                                                 help="Largest request body [default: 20 MiB]."),
    settings_file: Optional[Path] = typer.Option(None, "--settings", help="YAML/JSON file of service settings "
                                                 "(docs/production.md lists them)."),
) -> None:
    """Serve a packed model's Bento over REST until Ctrl-C: POST /predict (multipart field `image` or raw
    image bytes), /info, /test_data, /test_result, /readyz, /livez, /metrics."""
    st = open_store(pick_config(None, config), overrides, allow_plugin)
    settings = _service_settings(st, settings_file, admin_token_env, batch_max=batch, variant=variant,
                                 max_concurrency=max_concurrency, body_timeout_s=body_timeout,
                                 max_body_bytes=max_body_bytes, follow=follow, follow_interval_s=follow_interval)
    st, rec = _model_pack_run(config, run_id, st=st)
    archives = sorted(materialized(st, rec, "bento").glob("*.bento"))
    if not archives:
        _fail(f"model_pack run {rec.run_id} has no .bento archive in its bento entity (packed with bento: false?)")
    env = {k: v for k, v in settings.env().items() if k != "CVPIPE_WORKERS"}  # ServiceProcess sets workers
    notes = ("; following the store" if follow else "") + ("; POST /admin/reload enabled" if admin_token_env else "")
    _serve_until_stopped(archives[0], rec.run_id, host, port, workers, env, notes)


def _service_settings(st, settings_file: Optional[Path], admin_token_env: Optional[str], *, follow: bool, **values):
    """The service's settings, checked here before a server starts, with the model its workers read: the
    user's CVPIPE_* environment and settings file, then the command line."""
    import os

    from cvpipe.serving.settings import SETTINGS_FILE_ENV, ServiceSettings, SettingsError

    token = os.environ.get(admin_token_env, "") if admin_token_env else None
    if admin_token_env and not token:
        _fail(f"${admin_token_env} is empty: it must hold the admin token", 2)
    environ = {**os.environ, **({SETTINGS_FILE_ENV: str(settings_file)} if settings_file else {})}
    try:
        return ServiceSettings.load(environ, follow_store=st.url if (follow or admin_token_env) else None,
                                    store_env=st.env, store_pipeline=st.pipeline, follow=follow, admin_token=token,
                                    **values)
    except SettingsError as e:
        named = f"${admin_token_env}" if admin_token_env else "CVPIPE_ADMIN_TOKEN"
        _fail(str(e).replace("CVPIPE_ADMIN_TOKEN", named), 2)


def _serve_until_stopped(archive: Path, run_id: str, host: str, port: int, workers: int, env: dict, notes: str):
    """Run `bentoml serve` on the archive until Ctrl-C, SIGTERM or SIGHUP (or the server dies: exit 1)."""
    import signal
    import time

    from rich.console import Console

    from cvpipe.serving.process import ServiceProcess, ServiceStartError

    def stop_on_signal(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop_on_signal)
    console = Console(stderr=True)
    try:
        with ServiceProcess(archive, host=host, port=port, workers=workers, env=env) as svc:
            console.print(f"serving [bold]{archive.name}[/] (model_pack run {run_id}) at [bold]{svc.url}[/] with "
                          f"{workers} worker(s){notes}; Ctrl-C to stop\n  try: curl -F image=@photo.jpg "
                          f"{svc.url}/predict", highlight=False)
            while svc.proc is not None and svc.proc.poll() is None:
                time.sleep(0.5)
            console.print(f"[red]the server exited[/]; log tail:\n{svc.log_tail()}")
            raise typer.Exit(1)
    except ServiceStartError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        console.print("stopped")


def _load_predictor(model: str, arch: Optional[str], config: Optional[Path], score_thr: Optional[float],
                    overrides: Optional[list[str]] = None, variant: Optional[str] = None):
    """(predict(image) -> Detections, class names, category ids) for a run id, a model dir, an ONNX or a .pt."""
    from cvpipe.inference.predictor import Predictor

    path = Path(model)
    if path.is_dir():
        return _packed_predictor(path, variant)
    if path.suffix.lower() == ".onnx" and path.is_file():
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        meta = {e.key: e.value for e in proto.metadata_props}
        shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        n_out = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
        num_classes = (n_out - 5) if n_out else 80
        names, ids = _coco_or_numbered(num_classes)
        raw = meta.get("graph") not in ("decoded",)  # Megvii-style exports are raw; cvpipe marks decoded graphs
        if proto.graph.output[0].name == "detections":
            _fail("that is an end-to-end graph (model_e2e.onnx); give model.onnx or the packed model dir")
        p = Predictor(path, names, ids, (shape[2] or 640, shape[3] or 640), raw_outputs=raw)
        return p.predict, names, ids
    if path.suffix.lower() in (".pt", ".pth") and path.is_file():
        return _torch_predictor(path, arch)
    if path.exists():
        _fail(f"{path}: expected a model_pack run id, a packed model dir, an .onnx or a .pt/.pth checkpoint")
    st, rec = _model_pack_run(config, model, overrides)
    return _packed_predictor(materialized(st, rec, "model"), variant)


def _packed_predictor(model_dir: Path, variant: Optional[str]):
    """(predict, class names, category ids) of a packed model dir; a bad pack is one line, not a traceback."""
    from cvpipe.inference.predictor import Predictor

    try:
        p = Predictor.from_dir(model_dir, variant=variant)
    except (ValueError, KeyError, OSError) as e:  # PackedModelError, an unknown variant, an unreadable file
        _fail(f"cannot load the packed model in {model_dir}: {e}")
    return p.predict, p.class_names, p.category_ids


def _coco_or_numbered(num_classes: int):
    if num_classes == 80:
        from cvpipe.inference.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES

        return list(COCO_CLASS_NAMES), list(COCO_CATEGORY_IDS)
    return [f"class_{i}" for i in range(num_classes)], list(range(num_classes))


def _torch_predictor(path: Path, arch: Optional[str]):
    """PyTorch eager through the same letterbox / postprocess as the ONNX predictor."""
    from cvpipe.export.onnx import load_trained
    from cvpipe.inference.torch_predictor import TorchPredictor
    from cvpipe.models.yolox import SCALES

    scale = arch.lower().removeprefix("yolox-").removeprefix("yolox_") if arch else None
    model, loaded = load_trained(path, scale=scale)
    meta = loaded.meta or {}
    names = meta.get("class_names") or _coco_or_numbered(model.num_classes)[0]
    ids = meta.get("category_ids") or _coco_or_numbered(model.num_classes)[1]
    size = meta.get("input_size") or SCALES[model.scale].input_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    predictor = TorchPredictor(model, size, score_thr=meta.get("score_thr", 0.25))
    return predictor.predict, list(names), [int(i) for i in ids]


def predict(
    images: list[Path] = typer.Argument(..., help="Image files."),
    model: str = typer.Option(..., "--model", "-m", help="model_pack run id, packed model dir, .onnx file, or "
                                                        ".pt/.pth checkpoint (cvpipe, Megvii or mmdetection layout)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="YOLOX scale of a checkpoint without cvpipe meta, "
                                                          "e.g. yolox-s (default: inferred from the weights)."),
    json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    score_thr: Optional[float] = typer.Option(None, "--score-thr", min=0.0, max=1.0,
                                              help="Score threshold (default: the model's, 0.25)."),
    save_vis: Optional[Path] = typer.Option(None, "--save-vis", help="Folder to write images with boxes drawn."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Packed runtime/precision variant (e.g. fp32, "
                                          "int8, openvino; default: the pack's choice)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Detect objects in images with a packed model (run id or dir), an ONNX file or a PyTorch checkpoint."""
    from rich.console import Console

    from cvpipe.inference.predictor import detections_to_json
    from cvpipe.vision import ImageDecodeError, read_image

    out = Console()
    predict_fn, names, ids = _load_predictor(model, arch, config, score_thr, overrides, variant)
    results: list[dict[str, Any]] = []
    failed = 0
    if save_vis:
        save_vis.mkdir(parents=True, exist_ok=True)
    for path in images:
        try:
            image = read_image(path)
        except (OSError, ImageDecodeError) as e:
            failed += 1
            results.append({"image": str(path), "error": str(e)})
            if not json:
                Console(stderr=True).print(f"[red]{path}: {e}[/]")
            continue
        dets = detections_to_json(predict_fn(image, score_thr), names, ids)
        results.append({"image": str(path), "width": image.shape[1], "height": image.shape[0], "detections": dets})
        if save_vis:
            _save_vis(image, dets, save_vis / (Path(path).stem + "_det.jpg"))
        if not json:
            out.print(_detections_table(path, image, dets))
    if json:
        out.print_json(jsonlib.dumps(results))
    if failed:
        raise typer.Exit(1)


def _save_vis(image, dets: list[dict], path: Path) -> None:
    import cv2

    from cvpipe.inference.visualize import draw_detections

    vis = draw_detections(image, [d["box"] for d in dets], [d["category_name"] for d in dets],
                          [d["score"] for d in dets])
    cv2.imwrite(str(path), vis)


def _detections_table(path: Path, image, dets: list[dict]):
    from rich.table import Table

    table = Table(title=f"{path} ({image.shape[1]}x{image.shape[0]}): {len(dets)} detections", title_justify="left")
    for col in ("class", "score", "x1", "y1", "x2", "y2"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for d in dets:
        table.add_row(d["category_name"], f"{d['score']:.3f}", *(f"{v:.1f}" for v in d["box"]))
    return table
