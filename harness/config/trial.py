"""The typed trial config: every default of a trial, validated, split into training and sampling parts.

A trial is ``seed + data + model + train`` (what determines a checkpoint) plus
``sampler + eval`` (what only affects sampling and evaluation). Unknown keys are errors
that name the key and suggest the closest valid one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal, get_type_hints

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from harness.config.recipes import RECIPES
from harness.config.sampler import SAMPLER_OMITTED_AT_DEFAULT, SamplerSection
from harness.config.section import Section, known
from harness.data.registry import DATASETS, dataset_shape
from harness.data.types import DatasetShape
from harness.errors import UserError, did_you_mean, short
from harness.evaluation import EXTRACTORS, METRICS
from harness.tasks.base import Task, check_guidance
from harness.tasks.registry import task_for
from models.backbone import SIZE_PRESETS
from models.losses import LOSSES
from models.schedulers import SCHEDULERS
from models.text import TextConfig, clip_folder_problem
from models.trainer import TrainConfig


class ConfigError(UserError):
    """Invalid study or trial configuration; the message names the field, the value and what was expected."""


class DataConfig(Section):
    name: str = "digits"
    options: dict[str, Any] = Field(default_factory=dict)

    _name = field_validator("name")(lambda v: known(v, DATASETS, "dataset"))

    @model_validator(mode="after")
    def _options(self) -> DataConfig:
        """Unknown or invalid options (a tokenizer key, say) fail here, before any data loads."""
        dataset_shape(self.name, **self.options)
        return self


class ModelSection(Section):
    timestep: Literal["explicit", "implicit"] = "implicit"
    size: str = "tiny"
    depth: int | None = Field(default=None, ge=1, le=512)
    width: int | None = Field(default=None, ge=8, le=65536)
    heads: int | None = Field(default=None, ge=1, le=4096)
    mlp_ratio: float = Field(default=4.0, gt=0, le=64)
    time_scale: float = Field(default=1000.0, gt=0, le=1e9)
    patch: tuple[int, ...] | None = None  # tokens per transformer position along each grid axis
    # Captions as the condition: models.text.TextConfig fields ({encoder: learned} or
    # {encoder: clip, path: FOLDER}); the data must be captioned. None: class labels, if any.
    text: dict[str, Any] | None = None

    _size = field_validator("size")(lambda v: known(v, SIZE_PRESETS, "model size"))

    @field_validator("text")
    @classmethod
    def _text(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            try:  # types and bounds first: TextConfig's own checks assume them
                TextSection.model_validate(v)
            except ValidationError as err:
                e = err.errors()[0]
                where = ".".join(str(part)[:100] for part in e["loc"])
                raise ValueError(f"model.text.{where} = {short(e.get('input'))}: {e['msg']}") from None
            text = TextConfig.from_dict(v)  # unknown keys and bad values fail here, naming them
            problem = clip_folder_problem(text.path) if text.path is not None else None
            if problem:
                raise ValueError(problem)
        return v


def section_from_dataclass(
    cls: type, constraints: dict[str, FieldInfo], exclude: tuple[str, ...]
) -> type[Section]:
    """A Section with the dataclass's fields (names, types, defaults: the one definition), each
    narrowed by its entry in ``constraints`` (bounds); fields in ``exclude`` are left out."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    if set(constraints) - names:
        raise TypeError(f"constraints on fields {sorted(set(constraints) - names)} that {cls.__name__} lacks")
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = (
            f.default
            if f.default_factory is dataclasses.MISSING
            else Field(default_factory=f.default_factory)
        )
        fields[f.name] = (Annotated[hints[f.name], constraints.get(f.name, Field())], default)
    return create_model(f"{cls.__name__}Fields", __base__=Section, __module__=__name__, **fields)


# models.text.TextConfig's fields, bounded (a million layers is a typo, refused before planning)
TEXT_BOUNDS = {"max_length": Field(ge=1, le=4096), "depth": Field(ge=1, le=48), "heads": Field(ge=1, le=64)}
TextSection = section_from_dataclass(TextConfig, TEXT_BOUNDS, exclude=())


# Bounds on models.trainer.TrainConfig's fields; their names, types (choices as Literal) and
# defaults come from the dataclass. Its seed is the trial's (TrialConfig.seed), not a train field.
# Every float is finite (Section); the upper bounds are far beyond any real run (the paper's
# ImageNet training: 400,000 steps at batch 256) and stop a typo (steps: 1e12) before any work.
TRAIN_CONSTRAINTS: dict[str, FieldInfo] = {
    "steps": Field(ge=1, le=10**9),
    "batch_size": Field(ge=1, le=2**20),
    "grad_accum": Field(ge=1, le=2**16),
    "lr": Field(gt=0),
    "weight_decay": Field(ge=0),
    "warmup_steps": Field(ge=0, le=10**9),
    "grad_clip": Field(ge=0),
    "ema_decay": Field(ge=0, le=1),
    "class_dropout": Field(ge=0, le=1),
    "t_eps": Field(ge=0, lt=1),
    "checkpoint_every": Field(ge=0, le=10**9),
}


class TrainSection(section_from_dataclass(TrainConfig, TRAIN_CONSTRAINTS, exclude=("seed",))):
    """``models.trainer.TrainConfig`` without its seed, validated: see TRAIN_CONSTRAINTS."""

    _scheduler = field_validator("scheduler")(lambda v: known(v, SCHEDULERS, "scheduler"))
    _loss = field_validator("loss")(lambda v: known(v, LOSSES, "loss weighting"))

    @model_validator(mode="after")
    def _trainer_accepts(self) -> TrainSection:
        """The trainer's own checks run here, so that a parameter the scheduler does not take
        fails at validation, not when the training starts."""
        try:
            TrainConfig(**self.model_dump())
        except TypeError as err:  # the scheduler's unexpected keyword argument
            raise ValueError(f"train.scheduler_params {self.scheduler_params}: {err}") from None
        return self


def _known_metrics(names: list[str]) -> list[str]:
    return [known(name, METRICS, "metric") for name in names]


def _known_extractor(name: str | None) -> str | None:
    return name if name is None else known(name, EXTRACTORS, "extractor")


class ExtraProtocol(Section):
    """A second scoring of the same samples with another extractor, on the first ``num_samples``
    of each seed against a seeded subset of ``num_reference`` reference images (None: all), for
    extractors too slow for the full counts (Inception on CPU); its metrics are recorded as
    ``<extractor>/<metric>``."""

    extractor: str
    metrics: list[str] = Field(default_factory=lambda: ["fid"], min_length=1)
    num_samples: int | None = Field(default=None, ge=2, le=1_000_000)
    num_reference: int | None = Field(default=None, ge=2, le=10_000_000)

    _metrics = field_validator("metrics")(_known_metrics)
    _extractor = field_validator("extractor")(_known_extractor)

    def key(self, metric: str) -> str:
        return f"{self.extractor}/{metric}"


Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what torch's, numpy's and Optuna's generators all take


def distinct_seeds(seeds: list[int]) -> list[int]:
    """Seeds named twice would count one draw twice (an interval narrower than the data allow)."""
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"{short(twice)} named more than once; expected distinct seeds")
    return seeds


class EvalSection(Section):
    num_samples: int = Field(default=500, ge=2, le=1_000_000)  # per sample seed
    batch_size: int = Field(default=250, ge=1, le=2**20)
    metrics: list[str] = Field(default_factory=lambda: ["fid", "kid_mean", "precision", "recall", "is_mean"])
    extractor: str | None = None
    sample_seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=1000)
    extra_protocols: list[ExtraProtocol] = Field(default_factory=list)

    _metrics = field_validator("metrics")(_known_metrics)
    _extractor = field_validator("extractor")(_known_extractor)
    _seeds = field_validator("sample_seeds")(distinct_seeds)

    @model_validator(mode="after")
    def _extra_counts(self) -> EvalSection:
        for i, extra in enumerate(self.extra_protocols):
            if extra.num_samples is not None and extra.num_samples > self.num_samples:
                raise ValueError(
                    f"extra_protocols.{i}.num_samples = {extra.num_samples} is more than eval.num_samples ="
                    f" {self.num_samples}: an extra protocol scores the first samples of each seed"
                )
        return self


class TrialConfig(Section):
    """One trial, resolved: every field has a value."""

    seed: Seed = 0
    recipe: str | None = None  # the named recipe (harness.config.recipes) the trial was built from; a label
    data: DataConfig = Field(default_factory=DataConfig)

    _recipe = field_validator("recipe")(lambda v: v if v is None else known(v, RECIPES, "recipe"))
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    sampler: SamplerSection = Field(default_factory=SamplerSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    TRAINING_KEYS: ClassVar[tuple[str, ...]] = ("seed", "data", "model", "train")

    def _dump(self, **kwargs) -> dict[str, Any]:
        """model_dump without the fields added after checkpoints existed, while at their default:
        a new option must not change the hash (and so orphan the checkpoint) of a config that
        does not use it."""
        d = self.model_dump(mode="json", **kwargs)
        for dotted, default in OMITTED_AT_DEFAULT.items():
            *sections, name = dotted.split(".")
            node: Any = d
            for section in sections:
                node = node.get(section) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get(name, default) == default:
                node.pop(name, None)
        return d

    @model_validator(mode="after")
    def _task_checks(self) -> TrialConfig:
        """The trial's task family refuses, here, every trial it would fail on after training; the
        network's config is built (not the network) so that a model it cannot build is refused too."""
        shape, task = self.shape(), self.task()
        task.check(self, shape)
        if not self.sampler.is_baseline:
            try:
                model = task.model_config(self, shape)
            except (ValueError, TypeError) as err:
                message = str(err)
                raise UserError(message if message.startswith("model") else f"model: {message}") from None
            check_guidance(self, model)
        return self

    def shape(self) -> DatasetShape:
        """The data's grid, vocabulary, classes, modalities and caption words (nothing loaded)."""
        return dataset_shape(self.data.name, **self.data.options)

    def task(self) -> Task:
        """The task family the trial belongs to (``harness.tasks``)."""
        return task_for(self, self.shape())

    def training_part(self) -> dict[str, Any]:
        """What the checkpoint depends on. A data baseline trains nothing: only its data and seed."""
        keys = ("seed", "data") if self.sampler.is_baseline else self.TRAINING_KEYS
        part = {k: v for k, v in self._dump().items() if k in keys}
        if not self.sampler.is_baseline and DATASETS[self.data.name].stream is not None:
            # Streamed splits are read in seeded epoch orders, which in-memory draws never were:
            # a checkpoint trained (or half trained) the earlier way must not be taken for one.
            part["data_order"] = "epochs"
        return part

    def identity(self) -> dict[str, Any]:
        """What the trial's result depends on: everything, except that a data baseline ignores the
        model, the training recipe and every sampler option but its name."""
        d = self._dump(exclude={"recipe"})  # a label: the settings say it all
        if self.sampler.is_baseline:
            sampler = {k: v for k, v in d["sampler"].items() if k in ("name", "condition_on")}
            d = {**self.training_part(), "sampler": sampler, "eval": d["eval"]}
        return d

    def training_hash(self) -> str:
        return config_hash(self.training_part())

    def trajectory_hash(self) -> str | None:
        """The training's trajectory, shared by every training config that differs from it only in
        ``train.steps`` (and ``checkpoint_every``); None for a data baseline or a learning rate
        that depends on the number of steps. See :func:`trajectory_of`."""
        return None if self.sampler.is_baseline else trajectory_of(self.training_part())

    def trial_hash(self) -> str:
        return config_hash(self.identity())


# "section.field" (or "section.sub.field") -> default, for fields added after checkpoints were
# cached (see TrialConfig._dump); the sampler's also leave the sample folder's name alone
# (SamplerSection.settings).
OMITTED_AT_DEFAULT: dict[str, Any] = {
    "model.patch": None,
    "model.text": None,
    "sampler.condition_on": None,
    **SAMPLER_OMITTED_AT_DEFAULT,
    "train.tf32": False,
    "train.fused_adamw": "auto",
    "train.activation_checkpointing": False,
}


STEP_FREE_LR_DECAYS = ("constant",)  # the learning rate at a step does not depend on train.steps
NOT_IN_TRAJECTORY = ("steps", "checkpoint_every")


def trajectory_of(training_part: dict[str, Any]) -> str | None:
    """A hash of a training part without its number of steps, when the learning rate at each
    step does not depend on that number (constant after warm-up): the state after s steps of a
    longer run of the same trajectory is then, bit for bit, what a run of s steps ends with (the
    data, the masks and the label dropout are drawn from the seed, step by step). So a training
    continues from the finished training of the same trajectory that is the longest shorter
    one (``harness.run.store``), and ``train.steps`` as a study axis gives learning curves
    from one training. With ``lr_decay: cosine`` every number of steps has its own schedule,
    and nothing is shared."""
    train = training_part.get("train", {})
    if train.get("lr_decay", TrainSection().lr_decay) not in STEP_FREE_LR_DECAYS:
        return None
    train = {k: v for k, v in train.items() if k not in NOT_IN_TRAJECTORY}
    return config_hash({**training_part, "train": train})


def config_hash(d: dict[str, Any]) -> str:
    """A short, stable content hash of a JSON-able dict."""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def valid_keys(model: type[BaseModel] = TrialConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the config, leaves and sections."""
    keys = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += valid_keys(sub, f"{key}.")
    return keys


def check_key(key: str) -> None:
    """Raises ConfigError for an unknown dotted key, suggesting the closest valid one."""
    keys = valid_keys()
    if key in keys or key.startswith(("data.options.", "train.scheduler_params.", "model.text.")):
        return
    hint = did_you_mean(key, keys, cutoff=0.5) if len(key) <= 200 else ""  # a typo is short
    raise ConfigError(f"unknown config key {short(key)}{hint}")


def get_dotted(d: dict[str, Any], key: str) -> Any:
    """d["a"]["b"] for key "a.b"; None where a section or the leaf is missing."""
    node: Any = d
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """d["a"]["b"] = value for key "a.b", creating sections as needed (also where the section is
    None, e.g. ``model.text.prefix`` over the base's ``model.text: null``)."""
    *parents, leaf = key.split(".")
    for part in parents:
        if d.get(part) is None:
            d[part] = {}
        d = d[part]
    d[leaf] = value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def build_trial(d: dict[str, Any], where: str = "config") -> TrialConfig:
    """Validates a nested dict into a TrialConfig; errors name every bad field and value."""
    for key in flatten(d):
        check_key(key)
    try:
        return TrialConfig.model_validate(d)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
            # A whole-config check (no location) names its field in the message itself.
            lines.append(f"  {loc} = {short(e.get('input'))}: {e['msg']}" if loc else f"  {e['msg']}")
        raise ConfigError(f"invalid {where}:\n" + "\n".join(lines)) from None
