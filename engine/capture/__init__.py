"""Capture: run the VLM once per (example, condition) and stream what analyses need to a store."""

from __future__ import annotations

from priorscope.engine.capture.config import CaptureConfig, parse_shard, validate
from priorscope.engine.capture.run import capture

__all__ = ["CaptureConfig", "capture", "parse_shard", "validate"]
