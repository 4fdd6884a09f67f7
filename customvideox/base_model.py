"""Where CustomVideoX's weights come from, and one clear error when they are missing.

Two things are needed for the real method:

* **CogVideoX-5B** (the base model, paper section 6.1): a diffusers folder with ``model_index.json``,
  ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``. It is found, in order,
  at ``--model PATH`` (a folder), or ``--model OWNER/NAME`` (a hub id, looked up in the Hugging Face
  cache and downloaded when online), or by default the hub id :data:`COGVIDEOX_5B` in the Hugging Face
  cache (``$HF_HOME/hub``, default ``~/.cache/huggingface/hub``). Nothing is downloaded implicitly.
* **The reference LoRA** (``--lora FILE.safetensors``): no CustomVideoX weights are published, so it comes
  from ``customvideox train``. Without it the 3D-RA rows of Table 2 only run with ``--random-weights``
  (an untrained reference branch, stamped as random in every output). The ``naive`` row has no LoRA.
"""

from __future__ import annotations

import os
from pathlib import Path

COGVIDEOX_5B = "THUDM/CogVideoX-5b"
#: The diffusers folder layout of CogVideoX-5B.
MODEL_LAYOUT: tuple[str, ...] = ("model_index.json", "transformer/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")


class MissingWeightsError(FileNotFoundError):
    """A weight file or folder the method needs is absent; the message says what, where, and how to get it."""


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _base_model_help(detail: str) -> str:
    return (
        f"CustomVideoX needs the CogVideoX-5B base model: {detail}. Pass --model with a diffusers folder of "
        f"CogVideoX-5B ({', '.join(MODEL_LAYOUT)}) or with the hub id {COGVIDEOX_5B}, or put {COGVIDEOX_5B} in "
        f"the Hugging Face cache ({_hf_cache_dir()}), e.g. `huggingface-cli download {COGVIDEOX_5B}`. "
        "For a smoke run without any weights use --preset tiny."
    )


def check_model_folder(folder: str | os.PathLike) -> Path:
    """Check ``folder`` has CogVideoX-5B's diffusers layout; raise :class:`MissingWeightsError` naming what lacks."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MissingWeightsError(_base_model_help(f"the folder {folder} does not exist"))
    missing = [
        entry for entry in MODEL_LAYOUT
        if not ((folder / entry.rstrip("/")).is_dir() if entry.endswith("/") else (folder / entry).is_file())
    ]
    if missing:
        raise MissingWeightsError(_base_model_help(f"{folder} lacks {', '.join(missing)}"))
    return folder


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~", "/")) and not Path(model).exists()


def _from_hub(repo_id: str, allow_download: bool) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if not allow_download or constants.HF_HUB_OFFLINE:
        raise MissingWeightsError(_base_model_help(f"{repo_id} is not in the Hugging Face cache"))
    try:
        return Path(snapshot_download(repo_id))
    except Exception as error:  # network, auth, disk: all end the same way for the user
        raise MissingWeightsError(
            _base_model_help(f"{repo_id} is not cached and downloading it failed ({type(error).__name__}: {error})")
        ) from error


def locate_base_model(model: str | os.PathLike | None = None) -> Path:
    """The local folder of CogVideoX-5B (see the module docstring for the search order).

    A hub id given explicitly is downloaded when it is not cached (unless ``HF_HUB_OFFLINE``); the
    default (``model=None``) only looks in the cache.

    Raises:
        MissingWeightsError: naming the folder or hub id, the expected layout and the hub id.
    """
    if model is None:
        return check_model_folder(_from_hub(COGVIDEOX_5B, allow_download=False))
    model = str(model)
    if _looks_like_hub_id(model):
        return check_model_folder(_from_hub(model, allow_download=True))
    return check_model_folder(model)


def check_lora_file(lora: str | os.PathLike | None, ablation: str, random_weights: bool) -> Path | None:
    """The reference LoRA file, checked; ``None`` when running without one is allowed.

    Raises:
        MissingWeightsError: a ``--lora`` path that is not a file, or a 3D-RA ablation with no ``--lora``
            and no ``--random-weights``.
    """
    if lora is not None:
        path = Path(lora).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"--lora {path}: no such file (expected the reference LoRA as a .safetensors file written by "
                "`customvideox train` or CustomVideoXPipeline.save_reference_lora)"
            )
        return path
    if ablation != "naive" and not random_weights:
        raise MissingWeightsError(
            f"CustomVideoX ({ablation}) needs its reference LoRA and none was given: no CustomVideoX weights are "
            "published. Train one with `customvideox train` (docs/training.md) and pass --lora PATH.safetensors, or pass "
            "--random-weights to run with an untrained reference LoRA (every output is then stamped as random "
            "weights), or use --preset tiny for a smoke run."
        )
    return None
