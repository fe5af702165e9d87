"""GPU smoke test for the managed vLLM server.

This is the one test allowed to skip: it needs vLLM and a CUDA GPU, which CI and the development
machines do not have. On a GPU machine with weights cached: RLM_VLLM_MODEL=Qwen/Qwen3-0.6B pytest
tests/test_vllm_gpu.py
"""

from __future__ import annotations

import os
import shutil

import pytest

import rlm
from rlm.serving import VLLMServer

MODEL = os.environ.get("RLM_VLLM_MODEL", "Qwen/Qwen3-0.6B")


def _gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(shutil.which("vllm") is None or not _gpu(), reason="needs vLLM and a CUDA GPU (GPU smoke test)")
async def test_vllm_serves_an_rlm_run():
    with VLLMServer(model=MODEL, served_model_name="root", max_model_len=8192, max_logprobs=5) as server:
        result = await rlm.arun("What is len(context)? Put it in answer['content'].", "x" * 1234,
                                model="root", base_url=server.base_url, max_turns=4, logprobs=True)
    assert result.turns and result.usage.root.calls >= 1
    assert all(t.logprobs for t in result.turns)
    assert not server.running
