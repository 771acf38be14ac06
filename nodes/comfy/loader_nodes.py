"""The shared model loader node (thin: resolution and loading live in weights.py / the families)."""
from __future__ import annotations

import logging

from . import families, runtime
from . import weights as store
from .errors import NodeInputError

log = logging.getLogger("consistent_video")

MODEL_TYPE = "CVS_MODEL"
PRECISIONS = ["auto", "bf16", "fp16", "fp32"]
DEVICES = ["auto", "cuda", "cpu", "mps"]


def _weight_choices() -> list[str]:
    choices = [store.AUTO]
    for name in families.names():
        choices.extend(store.list_entries(families.get(name)))
    return sorted(set(choices), key=lambda c: (c != store.AUTO, c))


class CVS_ModelLoader:
    """Loads any supported model family into a typed handle."""

    DISPLAY_NAME = "CVS Model Loader"
    CATEGORY = "Consistent Video/Loaders"
    DESCRIPTION = ("Loads the weights of one model family (GVM, ...) from models/<family>/, an explicit path, "
                   "or a Hugging Face repo (downloaded into models/<family>/ when online). Loading is strict: "
                   "a checkpoint of another model, a truncated file or a missing file is reported by name.")
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("Model handle for the family's nodes (networks rest on the CPU until used).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (families.names(), {"tooltip": "Which model family to load."}),
            "weights": (_weight_choices(), {
                "default": store.AUTO,
                "tooltip": "A folder under models/<family>/. 'auto': the explicit path if set, else the "
                           "repo's folder under models/<family>/ (downloaded when missing and online)."}),
            "path": ("STRING", {"default": "", "tooltip": "Explicit weights folder (used when 'weights' is auto)."}),
            "repo_id": ("STRING", {"default": "", "tooltip": "Hugging Face repo id; empty = the family's official repo."}),
            "precision": (PRECISIONS, {"default": "auto", "tooltip": "auto: bf16 on GPUs that support it, "
                                                                    "fp16 on other CUDA GPUs, fp32 on CPU."}),
            "device": (DEVICES, {"default": "auto", "tooltip": "Where the networks run; auto follows ComfyUI."}),
        }}

    def load(self, family, weights, path, repo_id, precision, device):
        node = self.DISPLAY_NAME
        try:
            fam = families.get(family)
        except KeyError as exc:
            raise NodeInputError(node, "family", str(exc)) from None
        try:
            torch_device = runtime.resolve_device(device)
        except RuntimeError as exc:
            raise NodeInputError(node, "device", str(exc)) from None
        try:
            dtype = runtime.resolve_dtype(precision, torch_device)
        except ValueError as exc:
            raise NodeInputError(node, "precision", str(exc)) from None
        try:
            folder = store.resolve(fam, weights, path, repo_id)
            handle = fam.load(folder, torch_device, dtype)
        except store.WeightsError as exc:
            blamed = "path" if str(path).strip() else "weights"
            raise store.WeightsError(f"{node} ({fam.display_name}): input '{blamed}': {exc}\nExpected: "
                                     f"{fam.display_name} weights in the layout above (the pack's docs/weights.md)."
                                     ) from None
        if handle.is_smoke:
            log.warning("%s: %s are SMOKE weights (tiny, random): outputs will be noise.", node, folder)
        return (handle,)


NODE_CLASS_MAPPINGS = {"CVS_ModelLoader": CVS_ModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
