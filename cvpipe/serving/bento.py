"""Build the Bento of a packed model dir and export it as a `.bento` archive, in a BentoML home of its own.

    build_bento("model/", "bento/", name="cvpipe-detector", version=run_id)
      -> bento/cvpipe-detector.bento, bento/Dockerfile, bento/README.md

The packed model dir becomes, whole, a BentoML model (bentoml.models.create) that the service declares, so
the Bento carries every variant the pack holds (model_int8.onnx, OpenVINO IR, ...); `openvino` is added to
the Bento's packages only when model.json lists an OpenVINO variant. The Bento holds only the torch-free modules
the service imports (SERVICE_PACKAGES, SERVICE_MODULES) and lists
bentoml, onnxruntime, numpy, pillow and opencv-python-headless (python.lock_packages: false).
The build runs in a child process with BENTOML_HOME set to a temporary dir: nothing leaks into ~/bentoml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cvpipe
from cvpipe.inference.packed import PackedModel

SERVICE = "cvpipe.serving.service:Detector"
# the torch-free modules the service imports: whole packages (every .py in them) plus single modules
SERVICE_PACKAGES = ("cvpipe/inference", "cvpipe/vision", "cvpipe/serving", "cvpipe/store")
SERVICE_MODULES = ("cvpipe/__init__.py",)


def service_files(repo_root: Path) -> list[str]:
    files = list(SERVICE_MODULES)
    for pkg in SERVICE_PACKAGES:
        files += sorted(p.relative_to(repo_root).as_posix() for p in (repo_root / pkg).glob("*.py"))
    return files


PACKAGES = ["bentoml>=1.4,<1.5", "onnxruntime>=1.17", "numpy>=1.26", "pillow>=10", "simplejpeg>=1.7",
            "opencv-python-headless>=4.8",
            "fsspec>=2023.1", "pyyaml>=6", "httptools>=0.6", "uvloop>=0.19"]  # uvicorn's C parser and loop


def bento_packages(packed: PackedModel) -> list[str]:
    """PACKAGES, plus openvino when the packed model has an OpenVINO variant."""
    uses_openvino = any(v.backend == "openvino" for v in packed.variants.values())
    return PACKAGES + (["openvino>=2024.0"] if uses_openvino else [])


def copy_model_dir(model_dir: Path, dest: Path) -> None:
    """Every regular file of the packed model dir, sub-folders included; links are not followed (a pack
    from a shared store must not smuggle files from outside its dir into the Bento)."""
    for src in sorted(model_dir.rglob("*")):
        rel = src.relative_to(model_dir)
        if src.is_symlink() or any(part.startswith(".") for part in rel.parts):
            continue
        if src.is_dir():
            (dest / rel).mkdir(parents=True, exist_ok=True)
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)

README = """# Bento `{tag}`

`{archive}` is a BentoML 1.4 Bento: the cvpipe REST service ({service}) plus the packed model as the BentoML
model `{model_tag}`. Endpoints: POST /predict (multipart field `image` or the raw image bytes; optional
`score_thr`), /test_data, /test_result, /info, and BentoML's /readyz, /livez, /metrics; OpenAPI UI at `/`.
Settings (workers, limits, timeouts, variant): `CVPIPE_*` variables, see cvpipe/serving/settings.py.

Serve it (a BentoML home of its own keeps ~/bentoml clean):

```bash
export BENTOML_HOME=$PWD/bentoml_home BENTOML_DO_NOT_TRACK=true
bentoml import {archive}
bentoml serve {tag} --port 3000           # CVPIPE_WORKERS=2 for two workers (settings: CVPIPE_*)
curl -F image=@test.jpg http://127.0.0.1:3000/predict
```

Container image (needs Docker; `Dockerfile` here is the one BentoML generates for this Bento):

```bash
bentoml containerize {tag} -t {name}:{version}
docker run --rm -p 3000:3000 {name}:{version}
```

Or `cvpipe serve` (latest model_pack run) / `cvpipe serve RUN_ID`.
"""


def bento_version(run_id: str | None) -> str:
    """A BentoML-valid version (lowercase letters, digits, '_', '-', '.') from a run id."""
    v = re.sub(r"[^a-z0-9_.-]", "-", (run_id or "").lower()).strip("-.")
    return v or "dev"


def bento_name(name: str) -> str:
    v = re.sub(r"[^a-z0-9_.-]", "-", name.lower()).strip("-.")
    return v or "cvpipe-detector"


def build_bento(model_dir: str | Path, out_dir: str | Path, name: str = "cvpipe-detector",
                version: str | None = None, bentoml_home: str | Path | None = None, timeout_s: float = 600) -> dict:
    """Build + export in a child process (own BENTOML_HOME). Returns {"archive", "tag", "model_tag", ...}."""
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = bento_name(name)
    version = bento_version(version or PackedModel.load(model_dir).run_id)
    with tempfile.TemporaryDirectory(prefix="cvpipe-bento-") as tmp:
        home = Path(bentoml_home) if bentoml_home else Path(tmp) / "bentoml_home"
        env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true",
                   CVPIPE_MODEL_TAG=f"{name}:{version}")
        request = {"model_dir": str(model_dir), "out_dir": str(out_dir), "name": name, "version": version,
                   "work_dir": str(Path(tmp) / "work")}
        proc = subprocess.run([sys.executable, "-m", "cvpipe.serving.bento", json.dumps(request)], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"building the Bento failed (exit {proc.returncode}):\n"
                               f"{(proc.stdout + proc.stderr)[-4000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    readme = README.format(tag=result["tag"], archive=Path(result["archive"]).name, service=SERVICE,
                           model_tag=result["model_tag"], name=name, version=version)
    (out_dir / "README.md").write_text(readme)
    return result


def _build_here(model_dir: Path, out_dir: Path, name: str, version: str, work_dir: Path) -> dict:
    """Runs in the child: BENTOML_HOME is already set."""
    import bentoml

    tag = f"{name}:{version}"
    packed = PackedModel.load(model_dir)
    with bentoml.models.create(tag, labels={"framework": "onnxruntime", "cvpipe": cvpipe.__version__},
                               metadata=packed.meta.get("metrics", {})
                               ) as model:
        copy_model_dir(model_dir, Path(model.path))
    # a build context with only the service's modules (no torch anywhere in it)
    repo_root = Path(cvpipe.__file__).resolve().parent.parent
    ctx = work_dir / "build_ctx"
    for rel in service_files(repo_root):
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo_root / rel, ctx / rel)
    bento = bentoml.bentos.build(
        SERVICE, name=name, version=version, build_ctx=str(ctx), include=["cvpipe/**/*.py"],
        labels={"cvpipe_run_id": version}, description=f"cvpipe detector {name}, model run {version}",
        python={"packages": bento_packages(packed), "lock_packages": False}, args={"model_tag": tag})
    archive = out_dir / f"{name}.bento"
    if archive.exists():
        archive.unlink()
    bentoml.bentos.export_bento(bento.tag, str(archive))
    dockerfile = _dockerfile(bento)
    if dockerfile:
        (out_dir / "Dockerfile").write_text(dockerfile)
    return {"archive": str(archive), "tag": str(bento.tag), "model_tag": tag, "bytes": archive.stat().st_size,
            "dockerfile": bool(dockerfile)}


def _dockerfile(bento) -> str | None:
    """The Dockerfile `bentoml containerize` would use (generated without Docker)."""
    try:
        from bentoml._internal.container.generate import generate_containerfile

        return generate_containerfile(bento.info.docker, str(bento.path), conda=bento.info.conda,
                                      bento_fs=Path(bento.path))
    except Exception:  # private API: fall back to the one inside the bento, if any
        found = list(Path(bento.path).glob("env/docker/Dockerfile"))
        return found[0].read_text() if found else None


if __name__ == "__main__":
    req = json.loads(sys.argv[1])
    res = _build_here(Path(req["model_dir"]), Path(req["out_dir"]), req["name"], req["version"], Path(req["work_dir"]))
    print(json.dumps(res))
