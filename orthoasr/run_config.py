"""Configuration of a whole training run: the model (`SupernetConfig`), data, optimiser,
schedules and stage lengths. Loaded from a YAML file in configs/ with `key=value` overrides
(`lr=3e-4`, `model.num_layers=4`, `model.budgets=[0.3,0.6,1.0]`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import SupernetConfig, budget_index

AUX_SCALES = ("constant", "focal")
PENALTY_MODES = ("constant", "warmup", "lagrange")
PENALTY_NORMS = ("l2", "l2_sqrt", "l1")
SELECTORS = ("orthosoftmax", "simple_topk")
DEVICES = ("auto", "cpu", "cuda")
BACKEND_NAMES = ("auto", "triton", "torch")
GRAD_SYNCS = ("ddp", "flat")
# smallest value of each int field
INT_MINIMUMS = {"max_frames": 1, "stage1_steps": 0, "stage2_steps": 0, "log_every": 1,
                "ckpt_every": 1, "keep_checkpoints": 1, "eval_batch_frames": 1,
                "buckets_per_step": 1, "num_workers": 0, "warmup_steps": 0,
                "penalty_warmup": 0, "seed": 0, "shape_classes": 0}
# float fields: (low, low included, high, high included); None: unbounded
FLOAT_RANGES = {"lr": (0, False, None, False), "score_lr": (0, False, None, False),
                "lr_final": (0, True, 1, True), "weight_decay": (0, True, None, False),
                "grad_clip": (0, False, None, False), "max_duration": (0, False, None, False),
                "tau0": (0, False, None, False), "tau_end": (0, False, None, False),
                "tau_min": (0, False, None, False), "score_init_std": (0, True, None, False),
                "penalty_scale": (0, True, None, False), "penalty_rho": (0, True, None, False),
                "aux_value": (0, True, None, False), "stochastic_depth": (0, True, 1, False),
                "distill_weight": (0, True, None, False),
                "ckpt_minutes": (0, False, None, False)}
BOOL_FIELDS = ("spec_augment", "bf16", "cuda_graphs", "cudnn_benchmark", "grads_in_place",
               "clamp_masks", "pair_batch")


@dataclass
class RunConfig:
    """Everything a run needs besides its work directory. Steps count optimiser updates."""

    model: SupernetConfig = field(default_factory=SupernetConfig)
    # data: JSONL manifests or LibriSpeech-layout directories (orthoasr.data.load_manifest)
    train_manifest: str = "data/synth-tiny/train.jsonl"   # `orthoasr synth --preset tiny`
    dev_manifest: str = "data/synth-tiny/dev.jsonl"
    test_manifest: str = "data/synth-tiny/test.jsonl"
    max_frames: int = 20000          # input feature frames (10 ms) per batch, padding included
    max_duration: float = 30.0       # training utterances longer than this (s) are skipped
    buckets_per_step: int = 1        # batches of the plan merged into one step (one process
                                     # doing the step of that many torchrun ranks)
    # static shapes: every training batch padded to one of this many (utterances, frames,
    # tokens) classes chosen from the training set (orthoasr/data/shapes.py), so that the
    # GPU meets a handful of shapes; 0: each batch padded to its own longest utterance
    shape_classes: int = 0
    spec_augment: bool = True
    num_workers: int = 0
    # torchrun: how the ranks average gradients. "flat": one all-reduce of all gradients,
    # copied into one flat buffer, after the backward; "ddp": DistributedDataParallel
    # (all-reduces buckets during the backward, walks the graph for the step's unused heads).
    # Same result; flat's step was 10-15% shorter on 2 H100s (bench/NOTES.md)
    grad_sync: str = "flat"
    # optimiser: AdamW, linear warm-up then cosine decay to lr * lr_final
    lr: float = 1e-3
    lr_final: float = 0.05
    warmup_steps: int = 500
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 5.0
    score_lr: float = 1e-2           # learning rate of the OrthoSoftmax scores (no decay)
    # stages
    stage1_steps: int = 1000
    stage2_steps: int = 1000
    # OrthoSoftmax: temperature tau_t = max(tau0 * gamma^t, tau_min); gamma reaches tau_end
    # at the end of stage 1 unless `gamma` is set
    tau0: float = 1.0
    tau_end: float = 0.05
    tau_min: float = 0.01
    gamma: float | None = None
    score_init_std: float = 1e-3
    # the unit selector of stage 1: OrthoSoftmax (the method), or Simple-Top-k (its
    # predecessor's relaxed top-k, an alternative for comparison; no penalty)
    selector: str = "orthosoftmax"
    penalty_norm: str = "l2"
    penalty_mode: str = "warmup"
    penalty_scale: float = 1.0
    penalty_warmup: int = 200
    penalty_rho: float = 0.0
    # clamp OrthoSoftmax's soft masks to <= 1 in stage 1. The method leaves them unclamped:
    # then two rows on one unit gate it at 2, and the subnet's loss rewards such
    # duplicates that the penalty must fight (experiments/EXPERIMENTS.md)
    clamp_masks: bool = False
    # auxiliary (subnet) loss scale s: constant `aux_value`, or focal 1 - exp(-L)
    aux_scale: str = "constant"
    aux_value: float = 0.3
    # in-place distillation in stage 2: each subnet's loss adds distill_weight * the
    # per-frame KL(supernet || subnet) of the output distributions (the supernet's output of
    # the same step, detached: the teacher learns from the labels only); 0: off
    distill_weight: float = 0.0
    # "PATH@BUDGET": train alone, from step 0, the subnet that the run whose checkpoint is
    # PATH froze for BUDGET (same model config): every step is that subnet's CTC through its
    # head, no selector, no other subnet (an individually trained baseline); "": off
    fixed_gates: str = ""
    stochastic_depth: float = 0.1    # stage 2: drop prob. of modules outside the smallest subnet
    # runtime
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    bf16: bool = True                # autocast to bf16 on CUDA; CPU always runs fp32
    # CUDA: capture each training step once per (shape class, stage, drawn budget) as a CUDA
    # graph and replay it (needs shape_classes > 0 and grad_sync=flat; on in configs/paper.yaml,
    # off here because shape classes are); ignored on the CPU
    cuda_graphs: bool = False
    # CUDA: cuDNN times its algorithms for each convolution shape once and keeps the fastest
    # (the frontend's convolutions; with shape classes the shapes repeat); ignored on the CPU
    cudnn_benchmark: bool = True
    # stage 1: the supernet's pass and the subnet's as one batch of twice the sequences
    # (ConformerSupernet.encode_pair: the same losses and gradients, half the launches, the
    # weight gradients summed by the kernels rather than added afterwards); component
    # granularity only. configs/paper.yaml turns it on (H200: 55.7 -> 54.1 ms a step,
    # bench/NOTES.md)
    pair_batch: bool = False
    # the encoder blocks' weight gradients added by the Triton kernels straight into their
    # .grad, kept from step to step and zeroed before each backward, instead of returned to
    # autograd (kernels/grads_in_place.py: stage 2's three passes then need no gradient adds);
    # not with grad_sync=ddp (its hooks would miss them) or fixed_gates
    grads_in_place: bool = True
    log_every: int = 10
    ckpt_every: int = 200
    ckpt_minutes: float = 5.0        # also checkpoint when this much wall time has passed
    keep_checkpoints: int = 3        # the last K checkpoints of the run stay on disk
    eval_batch_frames: int = 40000

    # fields that may differ between a checkpoint and the run that resumes it
    RESUMABLE_CHANGES = ("num_workers", "log_every", "ckpt_every", "ckpt_minutes",
                         "keep_checkpoints", "eval_batch_frames", "device", "backend",
                         "dev_manifest", "test_manifest", "buckets_per_step", "grad_sync",
                         "cuda_graphs", "cudnn_benchmark", "pair_batch", "grads_in_place")
    # optimiser schedule: may differ on `--resume --allow-schedule-change` (recorded)
    SCHEDULE_CHANGES = ("lr", "lr_final", "warmup_steps", "weight_decay", "betas",
                        "grad_clip", "score_lr")

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = SupernetConfig.from_dict(self.model)
        self.betas = tuple(float(b) for b in self.betas)
        self.validate()

    def validate(self) -> None:
        """Range-check every field; errors name the key and the value."""
        for name, minimum in INT_MINIMUMS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        for name, bounds in FLOAT_RANGES.items():
            _check_range(name, getattr(self, name), *bounds)
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for i, beta in enumerate(self.betas):
            _check_range(f"betas[{i}]", beta, 0, True, 1, False)
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {list(self.betas)}")
        if self.tau_end > self.tau0:
            raise ValueError(f"tau_end must be <= tau0 ({self.tau0}): the temperature anneals "
                             f"down, got {self.tau_end}")
        if self.tau_min > self.tau0:
            raise ValueError(f"tau_min must be <= tau0 ({self.tau0}), got {self.tau_min}")
        if self.gamma is not None:
            _check_range("gamma", self.gamma, 0, False, 1, True)
        for name, allowed in (("aux_scale", AUX_SCALES), ("penalty_mode", PENALTY_MODES),
                              ("penalty_norm", PENALTY_NORMS), ("selector", SELECTORS),
                              ("device", DEVICES),
                              ("backend", BACKEND_NAMES), ("grad_sync", GRAD_SYNCS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.pair_batch and self.model.granularity != "component":
            raise ValueError(f"pair_batch needs the model's granularity 'component', got "
                             f"{self.model.granularity!r}")
        if self.shape_classes and self.buckets_per_step > 1:
            raise ValueError(f"shape_classes ({self.shape_classes}) needs buckets_per_step 1, "
                             f"got {self.buckets_per_step}: merged batches of two classes "
                             "have no class shape")
        for name in ("train_manifest", "dev_manifest", "test_manifest"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a path, got {getattr(self, name)!r}")
        if self.penalty_mode == "warmup" and self.penalty_warmup < 1:
            raise ValueError(f"penalty_warmup must be >= 1, got {self.penalty_warmup}")

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    @property
    def fixed_subnet(self) -> int | None:
        """With fixed_gates, the index of the one subnet the run trains (its other masks,
        kept for eval and export, are the source run's, with untrained heads); else None."""
        if not self.fixed_gates:
            return None
        return budget_index(self.model.budgets, float(split_fixed_gates(self.fixed_gates)[1]))

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["model"] = self.model.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        values = dict(values)
        unknown = sorted(set(values) - set(_field_names(cls)))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}{_placement(unknown)}; valid keys: "
                             f"{valid_keys()}")
        model = values.pop("model", {}) or {}
        if isinstance(model, SupernetConfig):
            model = model.to_dict()
        unknown = sorted(set(model) - set(_field_names(SupernetConfig)))
        if unknown:
            unknown = ["model." + k for k in unknown]
            raise ValueError(f"unknown config keys {unknown}{_placement(unknown)}; "
                             f"valid keys: {valid_keys()}")
        model = {k: _coerce(SupernetConfig, k, v) for k, v in model.items()}
        values = {k: _coerce(cls, k, v) for k, v in values.items()}
        return cls(model=SupernetConfig.from_dict(model), **values)


def _check_range(name: str, value, low, low_included: bool, high, high_included: bool
                 ) -> None:
    """`value` must be a finite number within the bounds (None: unbounded)."""
    interval = (f"{'[' if low_included else '('}{low}, "
                f"{'inf)' if high is None else str(high) + (']' if high_included else ')')}")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and (value >= low if low_included else value > low) and \
        (high is None or (value <= high if high_included else value < high))
    if not ok:
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")


def _coerce(cls, name: str, value):
    """YAML reads `3e-4` (no dot) as a string: make numbers of float fields floats."""
    kind = str(next(f.type for f in dataclasses.fields(cls) if f.name == name))
    if kind.startswith("float") and isinstance(value, (str, int)) and \
            not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if kind.startswith("tuple[float"):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list of numbers such as [0.5, 1.0], got "
                             f"{value!r}")
        return [_coerce_number(name, v) for v in value]
    return value


def _coerce_number(name: str, value):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers, got {value!r}") from None


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def split_fixed_gates(spec: str) -> tuple[str, str]:
    """`fixed_gates` "CHECKPOINT@BUDGET" -> (CHECKPOINT, BUDGET as written)."""
    path, sep, budget = spec.rpartition("@")
    if not sep or not path:
        raise ValueError(f"fixed_gates must be 'CHECKPOINT@BUDGET', got {spec!r}")
    return path, budget


def valid_keys() -> list[str]:
    """Every key a YAML file or a `key=value` override may set."""
    run_keys = [n for n in _field_names(RunConfig) if n != "model"]
    return run_keys + ["model." + n for n in _field_names(SupernetConfig)]


def _placement(unknown: list[str]) -> str:
    """For unknown dotted keys that are valid at the other level (`num_layers` for
    model.num_layers, `model.lr` for lr): where each belongs, " (a model key: ...)"."""
    notes = []
    for key in unknown:
        if key.startswith("model.") and key[len("model."):] in valid_keys():
            notes.append(f"not a model key: {key[len('model.'):]}")
        elif "model." + key in valid_keys():
            notes.append(f"a model key: model.{key}")
    return f" ({'; '.join(notes)})" if notes else ""


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Set `key=value` pairs (values parsed as YAML, `model.<field>` for model fields)."""
    model = values.get("model") or {}
    if not isinstance(model, dict):
        raise ValueError(f"model must be a mapping of model keys (model: {{num_layers: 4, "
                         f"...}}), got {model!r}")
    values = {**values, "model": dict(model)}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"overrides must look like key=value, got {item!r}")
        if key not in valid_keys():
            raise ValueError(f"unknown config key {key!r}{_placement([key])}; valid keys: "
                             f"{valid_keys()}")
        value = parse_yaml(text, f"override {item!r}")
        if key.startswith("model."):
            values["model"][key[len("model."):]] = value
        else:
            values[key] = value
    return values


def load_run_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """The run config of YAML file `path` (defaults where it is silent) plus `overrides`."""
    values = {}
    if path is not None:
        path = find_config(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"config file {path} is not a YAML text file ({err.reason} at "
                             f"byte {err.start})") from None
        values = parse_yaml(text, f"config file {path}") or {}
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(values)}")
    return RunConfig.from_dict(apply_overrides(values, list(overrides)))


def parse_yaml(text: str, where: str):
    """`text` as YAML; a syntax error is a ValueError naming `where` and the place (yaml's
    own message names "<unicode string>")."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        place = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ValueError(f"{where} is not valid YAML: {problem}{place}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load's loader, but a key given twice in one mapping is an error (YAML forbids
    it; yaml kept the last value silently, so an `lr:` added below a copied config's own
    went unnoticed or was the one ignored)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str) and key in first:
                    raise yaml.constructor.ConstructorError(
                        problem=f"key {key!r} given twice (first at line {first[key] + 1})",
                        problem_mark=key_node.start_mark)
                first.setdefault(key, key_node.start_mark.line)
        return super().construct_mapping(node, deep)


def find_config(path: str | Path) -> Path:
    """`path` if it exists, else, for a preset name ("tiny", "tiny.yaml" or
    "configs/tiny.yaml"), that preset from the package (setup.py installs configs/ as
    orthoasr.configs) or, in a checkout, from its configs/ folder. A path in any other
    folder must exist: a typo there must not run a preset instead."""
    path = Path(path)
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("configs")):
        for folder in _config_folders():
            if (folder / path.with_suffix(".yaml").name).exists():
                return folder / path.with_suffix(".yaml").name
    if path.is_dir():
        raise ValueError(f"config file {path} is a folder; name a YAML file (shipped presets: "
                         f"{presets()})")
    raise FileNotFoundError(f"config file {path} not found (shipped presets: {presets()})")


def presets() -> list[str]:
    """The names of the run configs shipped with the package (or in a checkout's configs/)."""
    return sorted({p.stem for folder in _config_folders() for p in folder.glob("*.yaml")})


def _config_folders() -> tuple[Path, Path]:
    here = Path(__file__).resolve().parent
    return here / "configs", here.parent / "configs"


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted names of the fields that differ between two `RunConfig.to_dict()` values."""
    names = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += [f"{key}.{sub}" for sub in config_differences(a, b)]
        elif _normalise(a) != _normalise(b):
            names.append(key)
    return names


def _normalise(value):
    return list(value) if isinstance(value, (tuple, list)) else value


__all__ = ["RunConfig", "load_run_config", "apply_overrides", "valid_keys",
           "config_differences", "split_fixed_gates"]
