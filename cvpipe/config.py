"""Pipeline config: one YAML file (store, env, pipeline name, pins, and per-step params under each
step's name), validated with pydantic, overridable from the command line with `--set key=value`."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model

from cvpipe.pipeline.step import get_step, has_step, registered, registry

RESERVED = ("store", "env", "pipeline", "pins", "plugins")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: str = Field("store", description="Artifact store URL: a local folder (relative to the working directory, "
                                            "made absolute on load), s3://bucket/prefix, any fsspec URL")
    env: str = Field("dev", description="Environment name: the store's first level")
    pipeline: str = Field("default", description="Pipeline name: the store's second level")
    pins: dict[str, str] = Field(default_factory=dict, description="step name -> run id to use as input")
    plugins: list[str] = Field(default_factory=list, description="modules to import that register more steps "
                               "(each must be allowed: CVPIPE_ALLOW_PLUGINS or --allow-plugin)")

    _file_order: list[str] = PrivateAttr(default_factory=list)

    def step_names(self) -> list[str]:
        """Steps that have a section in this config, in file order (not the order their modules happened to be
        imported in: a config imports only the steps it names)."""
        present = [k for k in type(self).model_fields if k not in RESERVED and getattr(self, k) is not None]
        return sorted(present, key=lambda k: self._file_order.index(k) if k in self._file_order else len(present))

    def params(self, step: str) -> BaseModel:
        """This step's params: its section, or the step's defaults when the config has none."""
        value = getattr(self, step, None)
        return value if value is not None else get_step(step).params()

    def flat(self) -> dict[str, Any]:
        """Effective config as dotted keys, for the table printed at the start of a run."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = value

        walk("", self.model_dump(mode="json", exclude_none=True))
        return out


_MODELS: dict[tuple, type[_Base]] = {}


def config_model() -> type[_Base]:
    """The config model: the base keys plus one optional section per registered step (build_config has
    registered the steps its config names; the others are left unimported)."""
    steps = registered()
    key = tuple((name, spec.params) for name, spec in steps.items())
    if key not in _MODELS:
        fields = {name: (Optional[spec.params], None) for name, spec in steps.items()}
        _MODELS[key] = create_model("PipelineConfig", __base__=_Base, **fields)  # type: ignore[call-overload]
    return _MODELS[key]


def parse_override(text: str) -> tuple[list[str], Any]:
    """'model_train.epochs=5' -> (['model_train', 'epochs'], 5); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value, e.g. model_train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known_keys(loc: tuple) -> list[str]:
    """The keys a config section accepts: top-level keys and step names, or a step's params fields."""
    model: Any = config_model()
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
                     None)
        if model is None:
            return []
    return list(model.model_fields)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in e["loc"][:-1])
            where = f"in section {section!r}" if section else "at the top level"
            lines.append(f"  {key}: unknown key {where}{did_you_mean(str(e['loc'][-1]), _known_keys(e['loc']))}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n" + "\n".join(lines)


PLUGIN_ALLOW_ENV = "CVPIPE_ALLOW_PLUGINS"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def allowed_plugins() -> set[str]:
    """Modules the user trusts as plugins: CVPIPE_ALLOW_PLUGINS (comma-separated; `*` trusts any)."""
    return {m.strip() for m in os.environ.get(PLUGIN_ALLOW_ENV, "").split(",") if m.strip()}


def import_plugins(modules: list[str], allow: set[str] | None = None) -> None:
    """Import modules that register their own steps (`plugins:` in the config).

    Importing runs the module's code, and a config file may come from someone else: a plugin is imported
    only when the user allowed it (CVPIPE_ALLOW_PLUGINS, or `--allow-plugin` on the command line).
    """
    import importlib

    allow = allowed_plugins() if allow is None else allow
    for name in modules:
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            raise ConfigError(f"plugins: {name!r} is not a module name")
        if name not in allow and "*" not in allow:
            raise ConfigError(f"plugins: the config asks to import {name!r}, which runs its code; allow it with "
                              f"--allow-plugin {name} or {PLUGIN_ALLOW_ENV}={name}")
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"plugins: cannot import {name!r}: {e}") from None


def resolve_store(store: Any) -> Any:
    """A local store path made absolute against the working directory, before anything starts: a service
    or subprocess that runs elsewhere (the Bento's folder) must find the same store. URLs stay as they are."""
    if not isinstance(store, str) or not store or "://" in store:
        return store
    return str(Path(store).expanduser().resolve())


def build_config(data: dict | None, overrides: list[str] | None = None, allow_plugins: set[str] | None = None) -> _Base:
    data = apply_overrides(dict(data or {}), list(overrides or []))
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list):
        raise ConfigError("plugins: must be a list of module names")
    import_plugins(plugins, allow_plugins)
    unknown_steps = [k for k, v in data.items() if k not in RESERVED and not has_step(k)]
    if unknown_steps:  # named with a suggestion; pydantic would only say "extra"
        k = unknown_steps[0]
        raise ConfigError(f"invalid config:\n  {k}: unknown key at the top level (not a step: the steps are "
                          f"{', '.join(registry())}){did_you_mean(k, [*RESERVED, *registry()])}")
    if "store" in data:
        data["store"] = resolve_store(data["store"])
    # A step section written as `data_load:` with nothing under it means "run it with defaults".
    for name in [k for k in data if k not in RESERVED]:
        if data[name] is None:
            data[name] = {}
    try:
        cfg = config_model().model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None
    cfg._file_order = [k for k in data if k not in RESERVED]
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, allow_plugins: set[str] | None = None) -> _Base:
    """Read, override and validate a pipeline config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys (store, env, pipeline, steps)")
    return build_config(data, overrides, allow_plugins)
