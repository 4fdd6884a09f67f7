"""The switches of CustomVideoX's reference branch (paper section 4, Table 2).

One frozen dataclass, :class:`ReferenceConfig`, carries every hyper-parameter that the reference branch
reads at run time: which Table 2 row runs (``ablation``), how the reference stream is computed
(``mode``), the position shift of Eq. 5, the constants of TAB (Eq. 6-7) and ERAE (Eq. 8) and the
shape of the reference LoRA. It is plain data: it can be hashed into run records and round-tripped
through JSON (:meth:`ReferenceConfig.to_dict` / :meth:`ReferenceConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Table 2 rows, from the paper's baseline to the full method.
ABLATIONS: tuple[str, ...] = ("naive", "3d-ra", "3d-ra+tab", "3d-ra+tab+erae")
#: How the reference stream is computed, see :class:`ReferenceConfig`.
MODES: tuple[str, ...] = ("joint", "cached")
#: Which keys the reference *queries* attend to (joint mode only; cached mode is always "self").
REFERENCE_SCOPES: tuple[str, ...] = ("all", "self")
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
        erae_lambda: threshold lambda of Eq. 8 on the per-frame min-max normalized entity map.
        erae_b1: enhancement b1 of Eq. 8 added to the reference-key logits inside the entity region.
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
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"ReferenceConfig.attention_backend={self.attention_backend!r}; expected one of {ATTENTION_BACKENDS}"
            )
        shift = tuple(float(x) for x in self.rope_shift)
        if len(shift) != 3:
            raise ValueError(f"ReferenceConfig.rope_shift must be (temporal, height, width), got {self.rope_shift!r}")
        object.__setattr__(self, "rope_shift", shift)
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
        data = dict(data)
        if "rope_shift" in data:
            data["rope_shift"] = tuple(data["rope_shift"])
        if "lora_targets" in data:
            data["lora_targets"] = tuple(data["lora_targets"])
        return cls(**data)
