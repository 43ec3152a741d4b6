"""The MLflow model of a trained network: a pyfunc that rebuilds it from its config and a plain state dict.

The model is logged "from code" (``pyfunc_entry.py``), so nothing is pickled at all, and nothing is unpickled
but tensors: the artifacts are ``model.json`` (``model.hparams()`` plus the early-exit
settings) and ``weights.pt`` (a state dict read with ``torch.load(weights_only=True)``). Usage::

    from sofnet.train.pyfunc import log_pyfunc
    info = log_pyfunc(model, name="model", et={"enabled": True, "rho": 0.999, "t_min": 4, "mode": "reached"},
                      registered_model_name="sofnet-anet")          # inside an active MLflow run

    import mlflow
    m = mlflow.pyfunc.load_model("models:/sofnet-anet@best")
    probs = m.predict(clip)                                        # clip [B, T, 3, H, W] (or [T, 3, H, W]) -> [B, K]
    net = load_network("models:/sofnet-anet@best")                 # the torch module, eval mode
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from importlib import metadata
from typing import Any, Dict, Optional

import mlflow
import numpy as np
import torch

from sofnet.models import build_model

_REQUIREMENTS = ("torch", "torchvision", "mlflow", "omegaconf", "numpy")


def _requirements() -> list[str]:
    out = []
    for name in _REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def build_network(spec: Dict[str, Any], weights_path: str) -> torch.nn.Module:
    """Rebuild the network of ``spec["model"]`` (``model.hparams()``) and load the state dict at ``weights_path``."""
    hparams = dict(spec["model"], pretrained="none")  # the weights come from the state dict, never a download
    model = build_model(hparams)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


class SofnetPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(clips)`` -> softmax scores ``[B, K]`` from the skipping path (early exit as configured)."""

    def load_context(self, context: Any) -> None:
        """Rebuild the network from the ``model_config`` and ``weights`` artifacts."""
        with open(context.artifacts["model_config"], encoding="utf-8") as f:
            self.spec = json.load(f)
        self.model = build_network(self.spec, context.artifacts["weights"])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would derive a schema from them
        """Score clips.

        Args:
            context: MLflow context (unused).
            model_input: ``[B, T, 3, H, W]`` or ``[T, 3, H, W]`` normalized frames (numpy array or tensor).
            params: Unused (early exit comes from ``model.json``).

        Returns:
            ``[B, K]`` float32 class probabilities.
        """
        x = torch.as_tensor(np.asarray(model_input), dtype=torch.float32)
        if x.dim() == 4:
            x = x.unsqueeze(0)
        if x.dim() != 5:
            raise ValueError(f"expected clips [B, T, 3, H, W], got shape {tuple(x.shape)}")
        et = self.spec.get("early_exit") or {}
        kwargs = {"rho": et["rho"], "t_min": et["t_min"], "mode": et["mode"]} if et.get("enabled") else {}
        if getattr(self.model, "shift", None) == "bidirectional":
            kwargs = {}
        out = self.model.infer(x.to(self.model.fc.weight.dtype), **kwargs)
        return out.logits.float().softmax(-1).numpy()


def write_artifacts(model: torch.nn.Module, directory: str, et: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Write ``model.json`` and ``weights.pt`` for ``model`` into ``directory``; returns the artifact paths."""
    os.makedirs(directory, exist_ok=True)
    spec = {"model": model.hparams(), "early_exit": dict(et or {})}
    config_path, weights_path = os.path.join(directory, "model.json"), os.path.join(directory, "weights.pt")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=1)
    torch.save({k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
                for k, v in model.state_dict().items()}, weights_path)
    return {"model_config": config_path, "weights": weights_path}


def log_pyfunc(model: torch.nn.Module, name: str = "model", et: Optional[Dict[str, Any]] = None,
               registered_model_name: Optional[str] = None) -> Any:
    """Log ``model`` as a :class:`SofnetPyfunc` in the active run (and register it when a name is given).

    Returns:
        MLflow's ``ModelInfo`` (``registered_model_version`` is set when registered).
    """
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = write_artifacts(model, tmp, et)
        return mlflow.pyfunc.log_model(name=name, python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                                       artifacts=artifacts,
                                       pip_requirements=_requirements(), registered_model_name=registered_model_name)


def load_network(model_uri: str) -> torch.nn.Module:
    """The torch network of a logged pyfunc (``runs:/...``, ``models:/<name>@<alias>``), in eval mode."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model
