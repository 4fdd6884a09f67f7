"""The switches of CustomVideoX's reference branch (paper section 4, Table 2).

One frozen dataclass, :class:`ReferenceConfig`, carries every hyper-parameter that the reference branch
reads at run time: which Table 2 row runs (``ablation``), how the reference stream is computed
(``mode``), the position shift of Eq. 5, the constants of TAB (Eq. 6-7) and ERAE (Eq. 8) and the
shape of the reference LoRA. It is plain data: it can be hashed into run records and round-tripped
through JSON (:meth:`ReferenceConfig.to_dict` / :meth:`ReferenceConfig.from_dict`).

A reference LoRA file records the ReferenceConfig it was trained with; :func:`resolve_reference_config` merges
that record with the settings a caller set explicitly (the file wins for every key the caller left unset).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: diffusers' default LoRA file name (``LORA_WEIGHT_NAME_SAFE``): where a saved reference LoRA lives in a folder.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

#: Table 2 rows, from the paper's baseline to the full method.
ABLATIONS: tuple[str, ...] = ("naive", "3d-ra", "3d-ra+tab", "3d-ra+tab+erae")
#: How the reference stream is computed, see :class:`ReferenceConfig`.
MODES: tuple[str, ...] = ("joint", "cached")
#: Which keys the reference *queries* attend to (joint mode only; cached mode is always "self").
REFERENCE_SCOPES: tuple[str, ...] = ("all", "self")
#: How ERAE's entity map A_e is scaled before the threshold lambda of Eq. 8 (see :class:`ReferenceConfig`).
ERAE_NORMALIZATIONS: tuple[str, ...] = ("per-frame", "per-clip", "probability")
#: Attention implementations: "fused" (two fused kernels merged by log-sum-exp, the default) or
#: "naive" (a dense softmax with the bias materialized; slow, for tests and debugging only).
ATTENTION_BACKENDS: tuple[str, ...] = ("fused", "naive")
#: The projections the reference LoRA may adapt. Only the attention projections are supported: they
#: are the layers whose reference-token and video-token computations are split in the attention
#: processor (rank 128 on these four in all 42 blocks of CogVideoX-5B is the paper's 132.12M).
LORA_TARGETS_SUPPORTED: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
#: Name of the peft adapter that holds the reference LoRA.
REFERENCE_ADAPTER_NAME = "reference"


@dataclass(frozen=True)
class ReferenceConfig:
    """Hyper-parameters of CustomVideoX's reference branch.

    Attributes:
        ablation: Table 2 row. ``"naive"``: the reference latent is concatenated as an extra first frame
            of the noisy input (no reference branch, no LoRA; its output frame is dropped).
            ``"3d-ra"``: 3D Reference Attention (Eq. 4-5) with the reference LoRA. ``"3d-ra+tab"``: plus the
            time-aware attention bias (Eq. 6-7). ``"3d-ra+tab+erae"`` (default): plus entity region-aware
            enhancement (Eq. 8), the full method.
        mode: ``"joint"`` recomputes the reference tokens at every denoising step inside the same
            attention as the video and text tokens (Eq. 4 literally: reference queries attend to all
            tokens, so the reference features depend on the noisy video and change per step).
            ``"cached"`` follows Algorithm 1 line 3: the reference features are extracted once per
            reference image, before the sampling loop. The reference stream then attends only to itself
            (it never sees text or video), so it is independent of the step, the prompt and the CFG
            branch; its per-layer keys and values are stored in a
            :class:`~customvideox.transformer.ReferenceCache` and reused at every step. Video and text
            queries attend to the reference keys identically in both modes.
        reference_scope: keys the reference queries attend to in joint mode: ``"all"`` (text, video and
            reference; the default for ``"joint"``) or ``"self"`` (reference only). ``None`` picks the
            mode's default. ``joint`` with ``"self"`` recomputes exactly what ``cached`` stores (used by the
            tests to check the cache); ``cached`` with ``"all"`` is rejected.
        rope_shift: delta of Eq. 5 as (temporal, height, width) in RoPE grid units: the reference token at
            spatial cell (h, w) gets the rotary position of the first video frame's cell plus delta,
            ``p_r = p_v(t=0, h, w) + delta``. The default ``(-1, 0, 0)`` places the reference one latent
            frame *before* the video, spatially aligned with it: a clean "frame -1", like an
            image-to-video condition frame. All relative offsets to video tokens then stay inside the range
            CogVideoX was trained on (|dt| <= 13, same spatial grid); a spatial shift such as ``(0, 0, W)``
            (OminiControl-style, no overlap with any video position) is one argument away.
        tab_gamma, tab_eps: gamma and epsilon of Eq. 7, ``M(t) = -gamma (2t/T - 1)^2 + eps``.
        erae_lambda: threshold lambda of Eq. 8, applied to the entity map after ``erae_normalization``.
        erae_b1: enhancement b1 of Eq. 8 added to the reference-key logits inside the entity region.
        erae_normalization: how the entity map ``A_e`` (the base attention probability of a video query on the
            entity tokens, mean over entity tokens and heads) is scaled before ``R_e = 1[A_e > lambda]`` (Eq. 8):
            ``"per-frame"`` (default): min-max over each latent frame's ``H' x W'`` tokens,
            ``(A - min_f) / (max_f - min_f)``; ``"per-clip"``: min-max over all ``F x H' x W'`` video tokens of the
            sample; ``"probability"``: the raw probability, no rescaling. A flat frame (per-frame) or clip
            (per-clip) gives an empty region. See docs/customvideox.md, "ERAE's region".
        num_train_timesteps: T of Eq. 7 (CogVideoX's DDIM scheduler: 1000; t in [0, T]).
        lora_rank: rank of the reference LoRA (paper: 128).
        lora_alpha: LoRA alpha; the LoRA update is scaled by ``lora_alpha / lora_rank``. The paper does not
            state it; the default 128 (scale 1.0) is the default of diffusers' CogVideoX LoRA fine-tuning
            script (``--rank 128 --lora_alpha 128``).
        lora_targets: module names (inside every block's ``attn1``) the LoRA adapts; a subset of
            :data:`LORA_TARGETS_SUPPORTED`.
        attention_backend: ``"fused"`` (default) or ``"naive"`` (dense bias; tests only).
    """

    ablation: str = "3d-ra+tab+erae"
    mode: str = "joint"
    reference_scope: str | None = None
    rope_shift: tuple[float, float, float] = (-1.0, 0.0, 0.0)
    tab_gamma: float = 10.0
    tab_eps: float = 0.1
    erae_lambda: float = 0.1
    erae_b1: float = 0.1
    erae_normalization: str = "per-frame"
    num_train_timesteps: int = 1000
    lora_rank: int = 128
    lora_alpha: float = 128.0
    lora_targets: tuple[str, ...] = field(default=LORA_TARGETS_SUPPORTED)
    attention_backend: str = "fused"

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ReferenceConfig.ablation={self.ablation!r}; expected one of {ABLATIONS}")
        if self.mode not in MODES:
            raise ValueError(f"ReferenceConfig.mode={self.mode!r}; expected one of {MODES}")
        if self.reference_scope is not None and self.reference_scope not in REFERENCE_SCOPES:
            raise ValueError(
                f"ReferenceConfig.reference_scope={self.reference_scope!r}; expected one of {REFERENCE_SCOPES}"
            )
        if self.mode == "cached" and self.reference_scope == "all":
            raise ValueError(
                "ReferenceConfig: mode='cached' needs reference_scope='self' (a cached reference cannot attend "
                "to the noisy video, which changes at every step); use mode='joint' for scope 'all'"
            )
        if self.erae_normalization not in ERAE_NORMALIZATIONS:
            raise ValueError(
                f"ReferenceConfig.erae_normalization={self.erae_normalization!r}; expected one of {ERAE_NORMALIZATIONS}"
            )
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"ReferenceConfig.attention_backend={self.attention_backend!r}; expected one of {ATTENTION_BACKENDS}"
            )
        object.__setattr__(self, "rope_shift", parse_rope_shift(self.rope_shift))
        targets = tuple(self.lora_targets)
        bad = [t for t in targets if t not in LORA_TARGETS_SUPPORTED]
        if bad or not targets:
            raise ValueError(
                f"ReferenceConfig.lora_targets={targets!r}: each must be one of {LORA_TARGETS_SUPPORTED} "
                "(the attention projections that the reference branch routes through the LoRA)"
            )
        object.__setattr__(self, "lora_targets", targets)
        if self.lora_rank <= 0:
            raise ValueError(f"ReferenceConfig.lora_rank must be positive, got {self.lora_rank}")
        if self.num_train_timesteps <= 0:
            raise ValueError(f"ReferenceConfig.num_train_timesteps must be positive, got {self.num_train_timesteps}")

    # -- derived switches ---------------------------------------------------------------------------
    @property
    def uses_reference_branch(self) -> bool:
        """True for every 3D-RA row; False for the naive frame-injection baseline."""
        return self.ablation != "naive"

    @property
    def uses_tab(self) -> bool:
        return self.ablation in ("3d-ra+tab", "3d-ra+tab+erae")

    @property
    def uses_erae(self) -> bool:
        return self.ablation == "3d-ra+tab+erae"

    @property
    def scope(self) -> str:
        """The effective reference-query scope ("all" or "self")."""
        if self.reference_scope is not None:
            return self.reference_scope
        return "all" if self.mode == "joint" else "self"

    def replace(self, **changes: Any) -> "ReferenceConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["rope_shift"] = list(self.rope_shift)
        data["lora_targets"] = list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReferenceConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ReferenceConfig.from_dict: unknown keys {unknown}")
        data = dict(data)  # rope_shift: any form parse_rope_shift takes (a list from JSON, "F,H,W")
        if "lora_targets" in data:
            data["lora_targets"] = tuple(data["lora_targets"])
        return cls(**data)


# ---------------------------------------------------------------------------------------------------
# Settings of a LoRA file vs explicit overrides
# ---------------------------------------------------------------------------------------------------

#: The LoRA's shape: always the file's (its tensors have that shape); an override that differs is refused.
LORA_SHAPE_KEYS: tuple[str, ...] = ("lora_rank", "lora_alpha", "lora_targets")
#: Implementation choices rather than model settings: never taken from a LoRA file (its record of them is
#: ignored), only from the overrides; every backend computes the same attention.
RUNTIME_KEYS: tuple[str, ...] = ("attention_backend",)


def reference_config_keys() -> tuple[str, ...]:
    """The field names of :class:`ReferenceConfig` (the keys an overrides mapping may hold)."""
    return tuple(f.name for f in dataclasses.fields(ReferenceConfig))


def parse_rope_shift(value: str | Sequence[float]) -> tuple[float, float, float]:
    """Eq. 5's delta as ``(dt, dh, dw)`` floats from ``"F,H,W"`` (e.g. ``"-1,0,0"``) or a 3-sequence."""
    parts = value.replace(" ", "").split(",") if isinstance(value, str) else list(value)
    try:
        shift = tuple(float(x) for x in parts)
    except (TypeError, ValueError):
        shift = ()
    if len(shift) != 3:
        raise ValueError(
            f"rope_shift={value!r}: expected three numbers (temporal, height, width) in RoPE grid units, e.g. '-1,0,0'"
        )
    return shift  # type: ignore[return-value]


def explicit_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keys of ``overrides`` that are set (value not None); unknown keys raise a ValueError naming them."""
    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(chosen) - set(reference_config_keys()))
    if unknown:
        raise ValueError(f"unknown reference settings {unknown}; known: {list(reference_config_keys())}")
    return chosen


def legacy_overrides(config: ReferenceConfig | None, with_lora_shape: bool) -> dict[str, Any]:
    """A full :class:`ReferenceConfig` passed where overrides are expected (the API before overrides existed).

    Its fields that differ from the paper defaults count as explicitly set; a field equal to its default
    counts as unset (so the LoRA file's value is taken for it). ``with_lora_shape=False`` also leaves out
    the LoRA shape, which a file always sets (the behaviour of that older API).
    """
    if config is None:
        return {}
    default = ReferenceConfig()
    skip = () if with_lora_shape else LORA_SHAPE_KEYS
    return {
        k: getattr(config, k)
        for k in reference_config_keys()
        if k not in skip and getattr(config, k) != getattr(default, k)
    }


def _config_or_error(values: Mapping[str, Any], source: str) -> ReferenceConfig:
    try:
        return ReferenceConfig.from_dict(dict(values))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from error


def resolve_reference_config(
    file_config: Mapping[str, Any] | ReferenceConfig | None,
    overrides: Mapping[str, Any] | None = None,
    source: str = "reference LoRA file",
) -> tuple[ReferenceConfig, list[str]]:
    """The ReferenceConfig a run uses: a LoRA file's training settings with the caller's explicit overrides.

    Every key comes from, in order: ``overrides`` (when present and not None), the file's record
    (``file_config``: the dict stored in the LoRA's metadata, possibly partial, e.g. only the LoRA shape for a
    file written by another tool), the paper defaults of :class:`ReferenceConfig`. Two exceptions: the LoRA
    shape (:data:`LORA_SHAPE_KEYS`) is always the file's, an override that differs raises a ValueError; and the
    runtime keys (:data:`RUNTIME_KEYS`) are never taken from the file.

    Args:
        file_config: the file's recorded settings, or None when there is no file.
        overrides: only the settings the user set explicitly (None values count as unset). ``rope_shift`` may be
            ``"F,H,W"``.
        source: names the file in messages.

    Returns:
        ``(config, conflicts)``: the resolved config and one message per override that contradicts a value the
        file records (naming the file, the key, the file's value and the override); the caller logs them.
    """
    chosen = explicit_overrides(overrides)
    recorded = file_config.to_dict() if isinstance(file_config, ReferenceConfig) else dict(file_config or {})
    recorded = {k: v for k, v in recorded.items() if k not in RUNTIME_KEYS}
    from_file = _config_or_error(recorded, source)
    config = _config_or_error({**recorded, **chosen}, f"{source} with overrides {chosen}")
    conflicts: list[str] = []
    for key in chosen:
        if key not in recorded or getattr(config, key) == getattr(from_file, key):
            continue
        file_value, wanted = getattr(from_file, key), getattr(config, key)
        if key in LORA_SHAPE_KEYS:
            raise ValueError(
                f"{source}: {key}={file_value!r} in the file, {wanted!r} requested; the LoRA's tensors have the "
                f"file's shape (leave {key} unset)"
            )
        conflicts.append(f"{source}: {key}={file_value!r} in the file, overridden by {key}={wanted!r}")
    return config, conflicts
