"""The model fixtures, loaded once as a plugin by ``tests/conftest.py`` (engine, services and
page tests all use them; a fixture costs nothing until a test asks for it). Models are built once per session in
temporary folders and loaded through ``app.engine.loading.load_model``; SmolLM2 comes
from the model cache (``CHAT_TEST_CACHE_DIR``, default ``data/model-cache``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from app.engine import LoadedModel, load_model
from app.engine.fast_linear import pack_linear_layers
from tests.models import CACHE_DIR, build_tiny_gpt2, build_tiny_llama, smollm2_folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir), CACHE_DIR)


@pytest.fixture(scope="session")
def tiny_llama_packed(tiny_llama: LoadedModel) -> LoadedModel:
    """A copy of ``tiny_llama`` whose linears run on prepacked oneDNN kernels."""
    packed = copy.deepcopy(tiny_llama)
    if pack_linear_layers(packed.model) == 0:
        pytest.skip("oneDNN packed linears are not available on this machine")
    return packed


@pytest.fixture(scope="session")
def tiny_llama_bf16(tiny_llama: LoadedModel) -> LoadedModel:
    """A copy of ``tiny_llama`` on the opt-in lossy kernels (``CHAT_KERNELS=bf16``)."""
    from app.engine.cpu_features import has_native_bf16

    if not has_native_bf16():
        pytest.skip("this CPU has no AVX512_BF16 or AMX: the bf16 kernels are refused here")
    lossy = copy.deepcopy(tiny_llama)
    if pack_linear_layers(lossy.model, "bf16") == 0:
        pytest.skip("oneDNN packed linears are not available on this machine")
    return lossy


@pytest.fixture
def fresh_tiny_llama(tiny_llama_dir: Path) -> LoadedModel:
    """Its own instance of the tiny Llama, for tests that put hooks on the model."""
    return load_model(str(tiny_llama_dir), CACHE_DIR)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), CACHE_DIR)


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real default model, loaded once per session."""
    return load_model("smollm2", CACHE_DIR)


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder(), local_files_only=True)
