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

import os
import tempfile
import warnings
from pathlib import Path
from importlib import metadata
from typing import Any, Dict, Optional

import mlflow
import numpy as np
import torch

from sofnet import checkpoint
from sofnet.early_exit import EarlyExit

_REQUIREMENTS = ("torch", "torchvision", "mlflow", "omegaconf", "numpy")


def _requirements() -> list[str]:
    out = []
    for name in _REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


class SofnetPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(clips)`` -> softmax scores ``[B, K]`` from the skipping path (early exit as configured)."""

    def load_context(self, context: Any) -> None:
        """Rebuild the network from the ``model_config`` and ``weights`` artifacts."""
        self.spec = checkpoint.read_spec(Path(context.artifacts["model_config"]).parent)
        self.model = checkpoint.build_network(self.spec, checkpoint.safe_load(context.artifacts["weights"]),
                                              context.artifacts["weights"])

    # ``np.ndarray`` is the one hint MLflow derives no schema from (the tensor signature of ``signature()`` is ours);
    # without a hint it warns at every import of this class.
    def predict(self, context: Any, model_input: np.ndarray, params: Optional[Dict[str, Any]] = None) -> np.ndarray:
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
        et = EarlyExit.from_config(self.spec.get("early_exit") or {})
        kwargs = et.infer_kwargs() if et.enabled and et.applies_to(self.model) else {}
        out = self.model.infer(x.to(next(self.model.parameters()).dtype), **kwargs)
        return out.logits.float().softmax(-1).numpy()


def write_artifacts(model: torch.nn.Module, directory: str, et: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Write ``model.json`` and ``weights.pt`` (:mod:`sofnet.checkpoint`'s format) into ``directory``."""
    checkpoint.write_model(directory, model, et)
    return {"model_config": os.path.join(directory, checkpoint.MODEL),
            "weights": os.path.join(directory, checkpoint.WEIGHTS)}


def signature(model: torch.nn.Module) -> Any:
    """The model's tensor signature: clips ``[-1, T, 3, S, S]`` float32 in, probabilities ``[-1, K]`` out.

    Unnamed specs, so ``predict`` gets the array itself; MLflow checks every input against the shape (a single clip
    goes in as ``clip[None]``)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    hp = model.hparams()
    clip = (-1, hp["num_segments"], 3, hp["input_size"], hp["input_size"])
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), clip)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, hp["num_classes"]))]))


def log_pyfunc(model: torch.nn.Module, name: str = "model", et: Optional[Dict[str, Any]] = None,
               registered_model_name: Optional[str] = None, step: int = 0) -> Any:
    """Log ``model`` as a :class:`SofnetPyfunc` in the active run (and register it when a name is given).

    ``step`` is the epoch whose metrics the logged model is linked to (the best epoch). No input example is logged:
    one clip of a paper config is 16 x 3 x 224 x 224 floats (~30 MB as MLflow's JSON); the signature gives the shape.

    Returns:
        MLflow's ``ModelInfo`` (``registered_model_version`` is set when registered).
    """
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow warns on every call that no input example was given; the docstring says why there is none.
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        artifacts = write_artifacts(model, tmp, et)
        info = mlflow.pyfunc.log_model(name=name, python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                                       artifacts=artifacts, signature=signature(model), step=step,
                                       pip_requirements=_requirements())
    if registered_model_name:
        info.registered_model_version = _register(info, registered_model_name)
    return info


def _register(info: Any, name: str) -> int:
    """Register the logged model ``info`` as a new version of ``name`` (created if missing); returns the version.

    What ``log_model(registered_model_name=...)`` does for a logged model (its source ``models:/<model_id>``), through
    the client, which prints nothing: MLflow's own path prints two lines straight to stderr ("Successfully registered
    model", "Created version"), past the logging levels, that the tracker's one line already says."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as e:  # another job (or an earlier stage) created it: a new version of it, as MLflow does
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = client.create_model_version(name, source=info.model_uri, run_id=info.run_id, model_id=info.model_id)
    return int(version.version)


def load_network(model_uri: str) -> torch.nn.Module:
    """The torch network of a logged pyfunc (``runs:/...``, ``models:/<name>@<alias>``), in eval mode.

    Downloaded into a temporary directory removed once the weights are in memory: MLflow's own download directory
    is never removed, a model's size left in /tmp at every load."""
    with tempfile.TemporaryDirectory(prefix="sofnet-model-") as tmp:
        return mlflow.pyfunc.load_model(model_uri, dst_path=tmp).unwrap_python_model().model
