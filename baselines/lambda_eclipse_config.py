"""The λ-ECLIPSE prior's configuration and folder layout (upstream ``src/priors/lambda_prior_transformer.py``),
torch-free: describing the method imports only this module, building it :mod:`baselines.lambda_eclipse_model`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from videobench.weights import WeightsLoadError

#: The files of a prior folder (the layout of ``ECLIPSE-Community/Lambda-ECLIPSE-Prior-v1.0``).
PRIOR_CONFIG_FILE = "config.json"
PRIOR_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class LambdaPriorConfig:
    """The prior's ``config.json`` (the published values are the defaults here).

    Published: 16 heads x 32 channels (width 512), 10 blocks, CLIP width 1280, 77 text tokens and 4 extra tokens
    (control, text embedding, noise, ``prd``). Fields follow upstream's ``PriorTransformer.__init__``.
    """

    num_attention_heads: int = 16
    attention_head_dim: int = 32
    num_layers: int = 10
    embedding_dim: int = 1280
    num_embeddings: int = 77
    additional_embeddings: int = 4
    dropout: float = 0.0
    norm_in_type: str | None = None
    embedding_proj_norm_type: str | None = None
    encoder_hid_proj_type: str | None = "linear"
    added_emb_type: str | None = "prd"
    embedding_proj_dim: int | None = None
    clip_embed_dim: int | None = None

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def sequence_length(self) -> int:
        return self.num_embeddings + self.additional_embeddings

    def validate(self, where: str = "config") -> LambdaPriorConfig:
        """Raise ``ValueError`` (naming ``where``) for settings the published prior does not use."""
        problems = []
        if self.added_emb_type != "prd":
            problems.append(f"added_emb_type={self.added_emb_type!r} (only 'prd': the output is the prd token)")
        if self.encoder_hid_proj_type != "linear":
            problems.append(f"encoder_hid_proj_type={self.encoder_hid_proj_type!r} (only 'linear')")
        for name in ("norm_in_type", "embedding_proj_norm_type"):
            if getattr(self, name) not in (None, "layer"):
                problems.append(f"{name}={getattr(self, name)!r} (None or 'layer')")
        if self.additional_embeddings != 4:
            problems.append(f"additional_embeddings={self.additional_embeddings} (λ-ECLIPSE appends 4 tokens)")
        if self.embedding_proj_dim not in (None, self.embedding_dim):
            problems.append("embedding_proj_dim must equal embedding_dim (the control token shares its input)")
        if problems:
            raise ValueError(f"{where}: unsupported λ-ECLIPSE prior config: " + "; ".join(problems))
        return self

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LambdaPriorConfig:
        """Read a prior ``config.json`` (diffusers ``_``-prefixed keys are ignored; unknown keys are errors)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise WeightsLoadError(f"{path}: cannot read the prior config ({error})") from error
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in raw.items() if not key.startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise WeightsLoadError(f"{path}: unknown prior config key(s) {', '.join(unknown)} "
                                   "(is this the λ-ECLIPSE prior's config.json?)")
        try:
            return cls(**values).validate(str(path))
        except ValueError as error:
            raise WeightsLoadError(str(error)) from error

    def to_json_dict(self) -> dict[str, Any]:
        """The published ``config.json`` content (upstream's class name and the diffusers version it used)."""
        return {"_class_name": "PriorTransformer", "_diffusers_version": "0.20.2", **asdict(self)}
