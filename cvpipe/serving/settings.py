"""The service's settings: ONE pydantic model, read once per worker from CVPIPE_* environment variables and
an optional YAML/JSON file. Every knob of the service is here; nothing else in cvpipe.serving reads os.environ.

    CVPIPE_SETTINGS_FILE=/etc/cvpipe/serve.yaml   # optional: keys are the field names below
    CVPIPE_WORKERS=2 CVPIPE_MAX_BODY_BYTES=5000000 ...   # each field as CVPIPE_<NAME>; wins over the file

Limits are PER WORKER unless a field says otherwise: N workers accept N x max_concurrency requests at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from cvpipe.inference.runtimes import usable_cpus
from cvpipe.vision import DEFAULT_MAX_PIXELS

ENV_PREFIX = "CVPIPE_"
SETTINGS_FILE_ENV = "CVPIPE_SETTINGS_FILE"


class SettingsError(ValueError):
    """Settings that do not validate; the message names the variable or key."""


MIN_TOKEN_CHARS = 16  # a shorter (e.g. inherited, forgotten) token refuses to start rather than guard reloads


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=True)

    # --- the model ------------------------------------------------------------------------------------------
    model_tag: str | None = Field(None, description="BentoML model to serve (default: the bento's own, set "
                                     "at build time).")
    model_dir: Path | None = Field(None, description="A packed model dir to serve instead of the BentoML "
                                      "model (the service run in-process, e.g. by tests, without a Bento).")
    variant: str | None = Field(None, description="Packed model variant to run (e.g. fp32, int8, openvino; "
                                   "default: the packed model's default).")
    workers: int = Field(1, ge=1, le=64, description="Worker processes (one model each; one already uses every "
                         "core through model_threads).")
    intra_op_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime threads per model call.")
    model_threads: int | None = Field(None, ge=1, le=64, description="Model calls one worker runs at the same "
                                         "time (default: the CPUs this worker may use, at most 8: a worker that "
                                         "gets most connections can still use every core).")
    batch_max: int = Field(1, ge=1, le=64, description="Adaptive batching: most images per model call "
                           "(1 = off; measured slower on CPU, see docs/production.md).")
    batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="Adaptive batching: longest wait for a batch.")
    # --- input limits (per request) ---------------------------------------------------------------------------
    max_body_bytes: int = Field(20 * 2**20, ge=1024, description="Largest request body; a larger "
                                "Content-Length gets 413 before a byte of the body is read.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Largest image (width x height from its "
                            "header); larger gets 413 before decoding.")
    reduced_decode: bool = Field(False, description="Decode JPEGs at least twice the model input at 1/2, 1/4 "
                                 "or 1/8 scale (libjpeg DCT scaling, never below the model input): far less "
                                 "memory and time for camera-size photos, pixels not identical to a full decode.")
    # --- resources (per worker) -------------------------------------------------------------------------------
    decode_budget_mb: int = Field(512, ge=16, description="Peak decode memory of the requests one worker "
                                  "decodes at once (7 bytes per pixel, counted from headers); requests wait "
                                  "for their share, an image that alone exceeds it gets 413.")
    max_concurrency: int = Field(16, ge=1, description="Requests one worker processes at once after their body "
                                 "has arrived; more wait up to queue_timeout_s, then get 503.")
    queue_timeout_s: float = Field(10.0, gt=0, description="Longest wait for a processing slot or decode budget.")
    body_timeout_s: float = Field(10.0, gt=0, description="The whole request body must arrive within this "
                                  "time of the headers, else 408 (slow clients cannot hold a worker).")
    upload_budget_mb: int = Field(512, ge=1, description="Memory for request bodies one worker holds at once: "
                                  "arriving, waiting for a slot or being processed (a body counts from its "
                                  "Content-Length until its answer); an upload that does not fit gets 503.")
    request_timeout_s: float = Field(60.0, gt=0, description="BentoML's per-request timeout (504).")
    trace_predict: bool = Field(False, description="OpenTelemetry spans for /predict (BentoML's tracing "
                                "middleware makes one per response message: ~20 % of the worker's own "
                                "cost per request, measured; the other endpoints are always traced).")
    # --- model updates (cvpipe.serving.swap) -----------------------------------------------------------------
    follow_store: str | None = Field(None, description="Store URL to load new model_pack runs from.")
    store_env: str = "dev"
    store_pipeline: str = "default"
    follow: bool = Field(False, description="Poll follow_store and move to each newer good run.")
    follow_interval_s: float = Field(10.0, gt=0)
    min_live_recall: float = Field(0.5, ge=0.0, le=1.0, description="A swapped-in model must find this "
                                      "share of the live model's reference boxes on the live test image (IoU "
                                      "0.5; 0 = off); a reload with accept_risk skips it.")
    release_key_header: str = Field("x-client-id", min_length=1, description="Request header whose value "
                                    "keeps a client on one model during a canary release.")
    admin_token: SecretStr | None = Field(None, min_length=MIN_TOKEN_CHARS, description="Enables POST "
                                             f"/admin/reload (Bearer token, {MIN_TOKEN_CHARS} characters or more).")

    @property
    def model_threads_or_auto(self) -> int:
        return self.model_threads or min(8, usable_cpus())

    @property
    def decode_budget_bytes(self) -> int:
        return self.decode_budget_mb * 2**20

    @property
    def upload_budget_bytes(self) -> int:
        return self.upload_budget_mb * 2**20

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides) -> ServiceSettings:
        """File (CVPIPE_SETTINGS_FILE), then CVPIPE_<FIELD> variables, then keyword overrides."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        path = environ.get(SETTINGS_FILE_ENV)
        if path:
            values.update(_read_file(Path(path)))
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw.strip() != "":
                values[name] = raw.strip()
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise SettingsError("invalid cvpipe service settings: " + "; ".join(
                f"{ENV_PREFIX}{'.'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors())) from None

    def env(self) -> dict[str, str]:
        """These settings as CVPIPE_* variables (for a child `bentoml serve`); unset fields are left out."""
        out = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, Path):
                value = str(value)
            out[ENV_PREFIX + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def _read_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise SettingsError(f"{SETTINGS_FILE_ENV}={path}: {e}") from None
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of setting names to values")
    return data
