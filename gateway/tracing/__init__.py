"""OpenTelemetry traces of every ``tools/call``, when asked for.

On when three things hold: the ``[otel]`` extra is installed (``opentelemetry-sdk``), the
standard ``OTEL_*`` environment asks for traces (``OTEL_TRACES_EXPORTER`` other than ``none``,
or an OTLP endpoint), and ``OTEL_SDK_DISABLED`` is not true. Otherwise nothing of the SDK nor
of ``gateway.tracing.otel`` is imported, and the serving path is exactly what it is without
tracing. This module itself imports nothing from OpenTelemetry.

What a trace holds is described in ``gateway.tracing.otel``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.tracing.otel import Tracing

logger = logging.getLogger(__name__)

_ASKING = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def requested(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (without looking at what is installed)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if exporters:
        return exporters != {"none"}
    return any(environ.get(name) for name in _ASKING)


def setup(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The configured tracing, or None: not asked for, or the ``[otel]`` extra is missing."""
    env = os.environ if environ is None else environ
    if not requested(env):
        return None
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        logger.warning(
            "OTEL_* asks for traces but OpenTelemetry's SDK is not installed: "
            "pip install 'mcp-idempotency-gateway[otel]'. Serving without traces."
        )
        return None
    from gateway.tracing.otel import Tracing

    return Tracing.from_environment(env)
