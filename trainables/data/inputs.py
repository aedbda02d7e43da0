"""Are a trial's inputs (its PCam files and backbone weights) present and readable on this node?

One check, two callers: the CLI runs it before Ray starts on a local run (exit 2, one
line), and every trial runs it on its own node before any stage, so on a cluster, where
only the workers may hold the data, the first trial that lacks them stops the sweep
(tune.sweep) instead of every trial failing the same way.
"""

from __future__ import annotations

import socket
from pathlib import Path

from trainables.config import TrialConfig
from trainables.report_keys import INPUT_ERROR_KEY
from trainables.storage import is_uri



class MissingInputError(FileNotFoundError):
    """Data or weights a trial needs are missing or unreadable where it runs."""


def node_name() -> str:
    """Return this node as 'hostname (ip)' (the IP Ray knows it by when Ray is up)."""
    try:
        import ray

        ip = ray.util.get_node_ip_address() if ray.is_initialized() else socket.gethostbyname(socket.gethostname())
    except Exception:  # noqa: BLE001 - a name for a message; never worth failing over
        ip = "?"
    return f"{socket.gethostname()} ({ip})"


def check_weights(weights: str, backbone: str) -> None:
    """Raise MissingInputError when `weights` is a local path that is absent or unreadable: no
    directory, no or bad config.json, another architecture, no or corrupt safetensors file.
    A Hugging Face id (owner/name, not a path here) is not checked: the trial downloads it."""
    from trainables.model import check_local_checkpoint

    if not weights:
        return
    looks_like_path = weights.startswith(("/", ".", "~")) or weights.count("/") != 1
    try:
        if not check_local_checkpoint(weights, backbone):
            if looks_like_path:
                raise MissingInputError(f"model.weights {weights!r}: no such directory")
            return
    except (OSError, ValueError) as err:
        raise MissingInputError(str(err).splitlines()[0]) from None
    directory = Path(weights).expanduser()
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise MissingInputError(f"model.weights {weights!r}: no *.safetensors file in {directory}")
    from safetensors import safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise MissingInputError(f"model.weights: cannot read {path}: {str(err).splitlines()[0]}") from None


def check_pcam(root: str) -> None:
    """Raise MissingInputError naming the file when a PCam split under `root` is missing or unreadable."""
    from trainables.data.datasets import PCAM_PREFIX, check_dataset

    try:
        check_dataset(root, PCAM_PREFIX, ("y",))
    except (OSError, ValueError) as err:
        raise MissingInputError(str(err).splitlines()[0]) from None


def check_inputs(cfg: TrialConfig, data_root: str) -> None:
    """Raise MissingInputError (one line, naming the path) when the PCam files under `data_root` or
    the model weights are missing or unreadable here; the embedded digits set is never missing."""
    if cfg.data.dataset == "pcam" and not cfg.data.synthetic and not is_uri(data_root):
        check_pcam(data_root)
    check_weights(cfg.model.weights, cfg.model.backbone)


__all__ = ["INPUT_ERROR_KEY", "MissingInputError", "check_inputs", "check_pcam", "check_weights", "node_name"]
