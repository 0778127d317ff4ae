"""Steps: plain functions of their params and loaded entities, registered by name.

    @step("data_prep", params=DataPrepParams,
          inputs={"dataset": "data_load.dataset", "images": "data_load.images"},
          outputs=[Output("dataset", DetectionData), Output("images", ImageFiles), Output("report", Folder)])
    def data_prep(params: DataPrepParams, ctx: StepContext, *, dataset: DetectionData,
                  images: ImageFiles) -> Produced: ...

A step never sees the store, nor a store path. The runner resolves each input to a run, materialises its
directory and hands the step the entity its annotation names, loaded (`DetectionData.load(dir)`; see
cvpipe.pipeline.entity); the step returns `Produced(summary, **entities)` and the runner saves each entity
(`entity.save(dir)`) and commits it. The summary (JSON-able) is kept in the run manifest. What else a step
reads from the store (model_eval's champion) comes the same way, resolved by the runner (`resolve=`); what a
step decides about a model (promote, veto) it hands to `ctx.decide`, which the runner records.

`ctx.scratch` (and `ctx.workdir(name)`, a fresh folder in it) is the step's own temporary work area.
"""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from cvpipe.pipeline.entity import entity_class


class StepParams(BaseModel):
    """Base of every step's params model: unknown keys and wrong types fail fast."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class Output:
    """An output entity of a step: `entity` is its class (the step returns one; the runner saves it).

    `content_addressed` entities are stored once per distinct file content in the store's object area
    (an image shared by two loads is stored once); the run keeps an index of them.
    """

    name: str
    entity: type | None = None  # None: a plain directory the step fills (ctx.output(name)); throwaway steps
    content_addressed: bool = False
    description: str = ""


@dataclass
class Produced:
    """What a step returns: its summary (JSON-able, kept in the manifest) and its output entities by name."""

    summary: dict[str, Any]
    entities: dict[str, Any]

    def __init__(self, summary: dict[str, Any] | None = None, **entities: Any):
        self.summary, self.entities = dict(summary or {}), entities


@dataclass(frozen=True)
class Decision:
    """A step's verdict on a packed model (model_eval: passed, promote; model_test: a veto), which the runner
    records in the store's promotion log (cvpipe.store.promotion.record_decision)."""

    model_run_id: str
    passed: bool
    promote_on_pass: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None  # model_eval's gate decision record, kept with the event


@dataclass(frozen=True)
class Resolved:
    """Something a step reads from the store beyond its inputs, as the runner resolves it before looking for
    a cached run: `key` (JSON-able) is part of the cache key and the manifest's `depends_on`; `load()` gives
    the value handed to the step (called only when the step really runs)."""

    key: Any
    load: Callable[[], Any] = lambda: None
    keyed: bool = True  # False: the value follows from the step's inputs, so it adds nothing to the cache key


@dataclass(frozen=True)
class Input:
    """An input entity: the `entity` output of the latest complete (or pinned) run of `step`.

    An optional input is passed as None when no complete run exists. An optional input may name the
    step itself: it then resolves to the previous complete run (e.g. to compare with the last model).
    """

    step: str
    entity: str
    optional: bool = False

    @classmethod
    def parse(cls, ref: str | Input) -> Input:
        if isinstance(ref, Input):
            return ref
        optional = ref.endswith("?")
        step, _, entity = ref.rstrip("?").partition(".")
        if not step or not entity:
            raise ValueError(f"input reference {ref!r} must look like 'step.entity' (or 'step.entity?' if optional)")
        return cls(step=step, entity=entity, optional=optional)


@dataclass(frozen=True)
class SourceDigest:
    """What a step reads from outside the store (raw data), identified by its content: the runner records it
    in the manifest (`source`) and keys the step's cache on `digest`, so changed raw data is a new run."""

    uri: str
    digest: str  # sha256 over the content read (file bytes, archive bytes, or an object listing with ETags)
    files: int
    local: Path | None = None  # where it was fetched to, for the step to reuse (never recorded)
    # a local folder's {relative path: sha256}, as read for `digest` (never recorded): what changed since a
    # previous version (data_load writes a version as a change of the last one when only image bytes changed)
    file_digests: dict[str, str] | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        return {"uri": self.uri, "digest": self.digest, "files": self.files}


@dataclass
class StepContext:
    """What a running step may know about its own run: its id, the run ids of its inputs (for the record:
    model_eval names the model_pack run it judged), a scratch folder, and two hooks the runner wires.

    Long steps keep resumable state (e.g. the last training checkpoint) in `state` and call
    `save_state()`: the runner stores it at once. When an earlier run with the same inputs, params and
    code died, its last saved state is handed to the rerun as `resume`.
    """

    step: str
    run_id: str
    outputs: dict[str, Path]
    scratch: Path
    input_runs: dict[str, str | None] = field(default_factory=dict)
    state: Path | None = None
    resume: Path | None = None
    on_save_state: Callable[[], None] | None = None
    source: SourceDigest | None = None  # the step's raw source as the runner digested it (steps with `source=`)
    # Records a Decision in the promotion log (the runner wires it; None where no store is behind the run,
    # e.g. a step called by hand): returns what happened, in words.
    on_decide: Callable[[Decision], str] | None = None

    def save_state(self) -> None:
        if self.on_save_state is not None:
            self.on_save_state()

    def decide(self, decision: Decision) -> str:
        """Hand a promotion decision to the runner, which records it; what happened, in words."""
        if self.on_decide is None:
            return f"not recorded: no store behind this run (decide by hand: cvpipe promote {decision.model_run_id})"
        return self.on_decide(decision)

    def workdir(self, name: str) -> Path:
        """An empty folder to build an entity in. For a declared output it is where the runner collects that
        output (saving the returned entity then moves nothing, and a step that fails after writing its
        report still has it kept for diagnosis); any other name gets a fresh folder in scratch."""
        path = self.outputs.get(name) or self.scratch / "entities" / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def output(self, name: str) -> Path:
        """The folder of a plain-directory output (`Output(name)` without an entity class: throwaway steps)."""
        try:
            return self.outputs[name]
        except KeyError:
            raise KeyError(f"step {self.step!r} declares no output {name!r}; it has {sorted(self.outputs)}") from None


StepFunc = Callable[..., "Produced | dict[str, Any] | None"]
# (params, store, input run ids by keyword) -> JSON-able facts the result depends on; see `step(depends_on=)`
DependsOn = Callable[[Any, Any, "dict[str, str | None]"], "dict[str, Any] | None"]
# (params, store or None, input run ids by keyword) -> Resolved; see `step(resolve=)`
Resolver = Callable[[Any, Any, "dict[str, str | None]"], Resolved]


@dataclass(frozen=True)
class StepSpec:
    name: str
    func: StepFunc
    params: type[StepParams]
    inputs: dict[str, Input]
    outputs: dict[str, Output]
    description: str
    source: Callable[[Any], SourceDigest] | None = None  # params -> digest of the raw data the step reads
    depends_on: DependsOn | None = None  # what else in the store decides the result (see `step`)
    resolve: dict[str, Resolver] = field(default_factory=dict)  # keyword -> store state handed to the step

    @property
    def upstream(self) -> set[str]:
        return {i.step for i in self.inputs.values() if i.step != self.name}

    def input_classes(self) -> dict[str, type | None]:
        """Input keyword -> the entity class its annotation names (None: the raw directory)."""
        hints = typing.get_type_hints(self.func)
        return {kw: entity_class(hints.get(kw))[0] for kw in self.inputs}


_REGISTRY: dict[str, StepSpec] = {}
_BUILTINS_LOADED = False


def step(
    name: str,
    *,
    params: type[StepParams],
    inputs: dict[str, str | Input] | None = None,
    outputs: list[str | Output] | None = None,
    source: Callable[[Any], SourceDigest] | None = None,
    depends_on: DependsOn | None = None,
    resolve: dict[str, Resolver] | None = None,
) -> Callable[[StepFunc], StepFunc]:
    """Register `func(params, ctx, **inputs) -> Produced` as the step `name`.

    inputs: keyword name -> "producing_step.entity" (suffix "?" for optional); the keyword's annotation in
        `func` names the entity class the runner loads (`X | None` for an optional input).
    outputs: `Output`s (or bare names: plain directories the step fills through ctx.output).
    source: for steps that read raw data from outside the store, `source(params) -> SourceDigest`; the
        runner calls it before looking for a cached run, and hands the result to the step as `ctx.source`.
    depends_on: for steps whose result depends on store state that is not an input entity (model_eval
        compares with the promoted champion), `depends_on(params, store, input_runs) -> dict` names that state
        (JSON-able, e.g. {"reference": {"champion": RUN_ID}}); input_runs maps each input keyword to its run id
        (or None). The runner calls it before looking for a cached run, keys the cache on it and records it in
        the manifest as `depends_on`: a changed answer is a new run, an unchanged one reuses the cached run.
    resolve: keyword -> `resolver(params, store, input_runs) -> Resolved`, for what a step reads from the
        store beside its inputs (model_eval's champion): the key is recorded as depends_on[keyword], the
        loaded value is passed to the step as that keyword. The store is None where no runner is behind the
        call (tests); a resolver then says what it resolves to without one.
    """

    def register(func: StepFunc) -> StepFunc:
        outs = {o.name: o for o in (Output(o) if isinstance(o, str) else o for o in (outputs or []))}
        ins = {k: Input.parse(v) for k, v in (inputs or {}).items()}
        for key, inp in ins.items():
            if inp.step == name and not inp.optional:
                raise ValueError(f"step {name!r}: input {key!r} on itself must be optional")
        doc = (func.__doc__ or "").strip()
        _REGISTRY[name] = StepSpec(name, func, params, ins, outs, doc.splitlines()[0] if doc else "", source,
                                   depends_on, dict(resolve or {}))
        return func

    return register


def load_builtin_steps() -> None:
    """Import every module of `cvpipe.steps` so their steps register."""
    import cvpipe.steps as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


def registry() -> dict[str, StepSpec]:
    """Every step: the built-in ones (all imported) and those registered by plugins or tests."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        load_builtin_steps()
    return dict(_REGISTRY)


def registered() -> dict[str, StepSpec]:
    """The steps registered so far, importing nothing (a config model needs only the steps it names)."""
    return dict(_REGISTRY)


def has_step(name: str) -> bool:
    """Whether a step of this name exists. A built-in step lives in the module of its name
    (`cvpipe.steps.data_load`), so only that module is imported: a run of the data steps does not pay for
    importing the evaluation's plotting or the serving stack (seconds on a loaded machine)."""
    if name not in _REGISTRY and not _BUILTINS_LOADED and name.isidentifier():
        import importlib.util

        if importlib.util.find_spec(f"cvpipe.steps.{name}") is not None:
            importlib.import_module(f"cvpipe.steps.{name}")
    return name in _REGISTRY or name in registry()


def unregister(name: str) -> None:
    """Remove a step (tests register throwaway steps)."""
    _REGISTRY.pop(name, None)


def get_step(name: str) -> StepSpec:
    if not has_step(name):
        raise KeyError(f"unknown step {name!r}; known steps: {', '.join(sorted(registry())) or 'none'}")
    return _REGISTRY[name]


def execution_order(names: list[str]) -> list[str]:
    """Dependency order (inputs before consumers) of the given steps; ties keep the given order."""
    steps = {n: get_step(n) for n in names}
    wanted = list(dict.fromkeys(names))
    done: list[str] = []
    pending = list(wanted)
    while pending:
        for n in pending:
            if not (steps[n].upstream & (set(pending) - {n})):
                done.append(n)
                pending.remove(n)
                break
        else:
            raise ValueError(f"steps {pending} depend on each other in a cycle")
    return done
