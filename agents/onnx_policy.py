"""A trained policy exported by `poa-gym export`, run with onnxruntime: what the router sidecar loads.

An export folder holds `policy.onnx` (normalised observation -> deterministic action in [-1, 1]^k)
and `policy.json` (feature names, VecNormalize's statistics, the knobs and their ranges). This
module reads both and needs neither the simulator nor torch: it imports numpy and onnxruntime
only, so the sidecar runs it beside a live Dynamo deployment.

    policy = OnnxPolicy.load("checkpoints/NAME")          # or checkpoints/NAME/export
    policy.check_matches(knobs, feature_names)            # the deployment's own knobs and features
    override = policy.knob_values(observation)            # -> router_config_override
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

POLICY_FORMAT = "poa-gym-policy"
POLICY_FORMAT_VERSION = 1
POLICY_JSON = "policy.json"
POLICY_ONNX = "policy.onnx"
EXPORT_DIR = "export"  # a checkpoint's export folder: checkpoints/NAME/export
# envs.observation.SCHEMA_VERSION, repeated so that the sidecar needs no simulator (a test checks).
OBSERVATION_SCHEMA_VERSION = 1


class KnobLike(Protocol):
    """A knob and its range: `envs.sim.knobs.KnobRange`, or the sidecar's own description of one."""

    name: str
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Knob:
    """One knob the action sets; action entry a in [-1, 1] maps onto [low, high]."""

    name: str
    low: float
    high: float

    def value(self, action: float) -> float:
        # envs.sim.knobs.action_to_override's formula, repeated here so the sidecar needs no simulator.
        clipped = min(max(float(action), -1.0), 1.0)
        return self.low + (clipped + 1.0) / 2.0 * (self.high - self.low)


@dataclass(frozen=True, slots=True)
class Normalization:
    """VecNormalize's observation statistics: clip((obs - mean) / sqrt(var + epsilon), +-clip_obs)."""

    mean: np.ndarray
    var: np.ndarray
    clip_obs: float
    epsilon: float

    def apply(self, batch: np.ndarray) -> np.ndarray:
        # float64 arithmetic then float32, as VecNormalize.normalize_obs does (its stats are float64).
        scaled = (batch - self.mean) / np.sqrt(self.var + self.epsilon)
        return np.clip(scaled, -self.clip_obs, self.clip_obs).astype(np.float32)


def find_export_dir(path: str | Path) -> Path | None:
    """The export folder at `path` (it holds policy.json) or under it (`path/export`), if any."""
    root = Path(path)
    for candidate in (root, root / EXPORT_DIR):
        if (candidate / POLICY_JSON).is_file():
            return candidate
    return None


class OnnxPolicy:
    """SB3's deterministic `predict` on an exported policy: normalise in numpy, run the ONNX graph."""

    def __init__(
        self,
        name: str,
        session: ort.InferenceSession,
        feature_names: tuple[str, ...],
        knobs: tuple[Knob, ...],
        normalization: Normalization | None,
        control_interval_s: float,
        files: tuple[Path, ...] = (),
    ) -> None:
        self.name = name
        self.files = files  # policy.json and policy.onnx, where it was loaded from
        self._session = session
        self._input = session.get_inputs()[0].name
        self._feature_names = feature_names
        self._knobs = knobs
        self._normalization = normalization
        self._control_interval_s = control_interval_s

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> OnnxPolicy:
        """From an export folder, or a checkpoint folder holding `export/`.

        Raises:
            FileNotFoundError: no policy.json at `path` or `path/export`, or its ONNX file is absent.
            ValueError: policy.json is malformed, or the ONNX graph's shapes disagree with it.
        """
        folder = find_export_dir(path)
        if folder is None:
            raise FileNotFoundError(
                f"{path}: no {POLICY_JSON} here or in {EXPORT_DIR}/ (run `poa-gym export {path}` first)"
            )
        spec_path = folder / POLICY_JSON
        try:
            spec = json.loads(spec_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{spec_path}: not readable JSON ({error})") from None
        fields = _Fields(spec_path, spec)
        fields.expect("format", POLICY_FORMAT)
        fields.expect("format_version", POLICY_FORMAT_VERSION)
        feature_names = _feature_names(fields)
        knobs = _knobs(fields)
        normalization = _normalization(fields, len(feature_names))
        interval_s = fields.number("control_interval_s", positive=True)
        onnx = fields.mapping("onnx")
        onnx_path = folder / fields.get(onnx, "onnx.file", str)
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{spec_path}: field onnx.file names {onnx_path}, which does not exist")
        session = _session(onnx_path)
        _check_graph(session, onnx_path, fields, onnx, len(feature_names), len(knobs))
        files = (spec_path, onnx_path)
        return cls(name or f"ppo:{path}", session, feature_names, knobs, normalization, interval_s, files)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._feature_names

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return self._knobs

    @property
    def knob_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self._knobs)

    @property
    def control_interval_s(self) -> float:
        """The control interval the policy was trained at (its history features assume it)."""
        return self._control_interval_s

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Actions in [-1, 1]^k (float32) for one observation `(n,)` or a batch `(b, n)`; the MLP
        is stateless, so `state` comes back unchanged and `deterministic` is always honoured as True
        (the export holds the Gaussian's mean only)."""
        batch = np.asarray(observation, dtype=np.float64)
        single = batch.ndim == 1
        if single:
            batch = batch.reshape(1, -1)
        if batch.ndim != 2 or batch.shape[1] != len(self._feature_names):
            raise ValueError(
                f"{self.name}: observation shape {np.shape(observation)} does not match "
                f"{len(self._feature_names)} features"
            )
        inputs = (
            self._normalization.apply(batch) if self._normalization is not None else batch.astype(np.float32)
        )
        (actions,) = self._session.run(None, {self._input: inputs})
        actions = np.asarray(actions, dtype=np.float32)
        return (actions[0] if single else actions), state

    def knob_values(self, observation: np.ndarray) -> dict[str, float]:
        """The knob values for one observation: the sidecar's `router_config_override`."""
        if np.ndim(observation) != 1:
            raise ValueError(
                f"{self.name}: knob_values takes one observation, got shape {np.shape(observation)}"
            )
        action, _ = self.predict(observation)
        return {knob.name: knob.value(a) for knob, a in zip(self._knobs, action.tolist(), strict=True)}

    def check_matches(self, knobs: Sequence[KnobLike], feature_names: Sequence[str]) -> None:
        """Fail unless the environment (or deployment) has the knobs (names, order, ranges) and the
        observation features this policy was trained on.

        Raises:
            ValueError: the knobs or the features differ; the message shows both sides.
        """
        theirs = tuple(Knob(k.name, float(k.low), float(k.high)) for k in knobs)
        if theirs != self._knobs:
            raise ValueError(
                f"'{self.name}' sets knobs {_show(self._knobs)}, but the environment's are {_show(theirs)}; "
                "a policy drives only the knobs, in the order and ranges, it was trained on "
                "(Dynamo 1.6.1 and v0.9 scenarios have different router knobs)"
            )
        if tuple(feature_names) != self._feature_names:
            missing = [f for f in self._feature_names if f not in feature_names]
            extra = [f for f in feature_names if f not in self._feature_names]
            raise ValueError(
                f"'{self.name}' reads {len(self._feature_names)} observation features, the environment "
                f"gives {len(feature_names)} (missing: {missing}, not in the policy: {extra}; "
                "or the order differs): train or export against the same observation schema"
            )


def _show(knobs: Sequence[Knob]) -> str:
    return "[" + ", ".join(f"{k.name} [{k.low:g}, {k.high:g}]" for k in knobs) + "]"


class _Fields:
    """policy.json's fields, each read with a message that names the file, the field and the rule."""

    def __init__(self, path: Path, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(spec).__name__}")
        self.path = path
        self.spec = spec

    def error(self, field: str, rule: str) -> ValueError:
        return ValueError(f"{self.path}: field {field} {rule}")

    def get(self, parent: Mapping[str, Any], dotted: str, kind: type | tuple[type, ...]) -> Any:
        key = dotted.rsplit(".", 1)[-1]
        if key not in parent:
            raise self.error(dotted, "is missing")
        value = parent[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error(dotted, f"must be {_kind_name(kind)}, got {value!r}")
        return value

    def mapping(self, field: str) -> Mapping[str, Any]:
        return self.get(self.spec, field, dict)

    def expect(self, field: str, expected: Any) -> None:
        value = self.spec.get(field)
        if value != expected:
            raise self.error(field, f"must be {expected!r} (this loader reads that format), got {value!r}")

    def number(self, dotted: str, positive: bool = False, parent: Mapping[str, Any] | None = None) -> float:
        value = float(self.get(self.spec if parent is None else parent, dotted, (int, float)))
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise self.error(dotted, f"must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
        return value

    def vector(self, parent: Mapping[str, Any], dotted: str, size: int) -> np.ndarray:
        values = self.get(parent, dotted, list)
        if len(values) != size or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise self.error(dotted, f"must be a list of {size} numbers (one per feature)")
        array = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise self.error(dotted, "must hold finite numbers")
        return array


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true or false"}
    return "a number" if isinstance(kind, tuple) else names.get(kind, kind.__name__)


def _feature_names(fields: _Fields) -> tuple[str, ...]:
    observation = fields.mapping("observation")
    version = fields.get(observation, "observation.schema_version", int)
    if version != OBSERVATION_SCHEMA_VERSION:
        raise fields.error(
            "observation.schema_version",
            f"must be {OBSERVATION_SCHEMA_VERSION} (this loader's), got {version}",
        )
    names = fields.get(observation, "observation.feature_names", list)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise fields.error("observation.feature_names", "must be a non-empty list of distinct strings")
    size = fields.get(observation, "observation.size", int)
    if size != len(names):
        raise fields.error("observation.size", f"must equal the {len(names)} feature names, got {size}")
    return tuple(names)


def _knobs(fields: _Fields) -> tuple[Knob, ...]:
    entries = fields.get(fields.mapping("action"), "action.knobs", list)
    if not entries:
        raise fields.error("action.knobs", "must name at least one knob")
    knobs = []
    for i, entry in enumerate(entries):
        field = f"action.knobs[{i}]"
        if not isinstance(entry, dict):
            raise fields.error(field, f"must be an object with name, low, high; got {entry!r}")
        name = fields.get(entry, f"{field}.name", str)
        low = fields.number(f"{field}.low", parent=entry)
        high = fields.number(f"{field}.high", parent=entry)
        if not low < high:
            raise fields.error(field, f"needs low < high, got [{low}, {high}]")
        knobs.append(Knob(name, low, high))
    return tuple(knobs)


def _normalization(fields: _Fields, size: int) -> Normalization | None:
    section = fields.mapping("normalization")
    if not fields.get(section, "normalization.enabled", bool):
        return None
    var = fields.vector(section, "normalization.var", size)
    if np.any(var < 0):
        raise fields.error("normalization.var", "must hold variances >= 0")
    return Normalization(
        mean=fields.vector(section, "normalization.mean", size),
        var=var,
        clip_obs=fields.number("normalization.clip_obs", positive=True, parent=section),
        epsilon=fields.number("normalization.epsilon", parent=section),
    )


def _session(onnx_path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # A few-kilobyte MLP runs fastest on one thread, and evaluation runs many policies in parallel
    # processes; onnxruntime's default (one thread per core each) would oversubscribe the machine.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for a bad model
        raise ValueError(f"{onnx_path}: onnxruntime cannot load it ({error})") from None


def _check_graph(
    session: ort.InferenceSession,
    onnx_path: Path,
    fields: _Fields,
    onnx: Mapping[str, Any],
    num_features: int,
    num_knobs: int,
) -> None:
    """The graph has one float input of shape (batch, num_features) and one float output of shape
    (batch, num_knobs), named as policy.json says."""
    for field, args, size, what in (
        ("onnx.input", session.get_inputs(), num_features, "features"),
        ("onnx.output", session.get_outputs(), num_knobs, "knobs"),
    ):
        expected = fields.get(onnx, field, str)
        if len(args) != 1 or args[0].name != expected:
            found = [a.name for a in args]
            raise ValueError(
                f"{onnx_path}: the graph's {field} is {found}, but {fields.path} says {expected!r}"
            )
        shape = args[0].shape
        dynamic_batch = len(shape) == 2 and not isinstance(shape[0], int)
        if args[0].type != "tensor(float)" or not dynamic_batch or shape[1] != size:
            raise ValueError(
                f"{onnx_path}: {field} {expected!r} is {args[0].type} of shape {shape}; "
                f"{fields.path} needs tensor(float) of shape (batch, {size}), a dynamic batch axis and "
                f"its {size} {what}"
            )
