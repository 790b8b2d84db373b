"""Manifest files → validated policy. Reads files, nothing else."""

from gateway.manifests.loader import ManifestError, ManifestErrors, load_manifests
from gateway.manifests.models import KEY_ARGUMENT, Condition, ForwardKey, ServerSpec, ToolPolicy

__all__ = [
    "KEY_ARGUMENT",
    "Condition",
    "ForwardKey",
    "ManifestError",
    "ManifestErrors",
    "ServerSpec",
    "ToolPolicy",
    "load_manifests",
]
