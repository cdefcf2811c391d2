"""Model loading: the cached default model, clear errors, and the GGUF conversion being exact."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from app.engine import ModelLoadError, load_model
from app.engine.loading import CACHE_COMPLETE_MARKER, DEFAULT_MODEL_NAME, default_gguf_path, resolve_model_source
from tests.engine_support import chat_prompt, reference_generate
from tests.models import CACHE_DIR, TINY_CONTEXT, smollm2_folder


def test_cached_smollm2_loads_with_what_the_engine_needs(smollm2):
    assert smollm2.name == DEFAULT_MODEL_NAME
    assert smollm2.context_length == 8192
    assert smollm2.eos_token_ids == frozenset({2})
    assert smollm2.has_chat_template
    assert smollm2.tokenizer.eos_token == "<|im_end|>"
    assert smollm2.model.get_output_embeddings().weight.shape[0] == 49152
    assert not smollm2.model.training
    assert {p.dtype for p in smollm2.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("spec", ["smollm2", "default", "SmolLM2-135M-Instruct", "  SMOLLM2 "])
def test_default_aliases_reuse_the_cache_without_converting_again(spec):
    folder = smollm2_folder()
    assert (folder / CACHE_COMPLETE_MARKER).exists()
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    name, source = resolve_model_source(spec, CACHE_DIR)
    assert (name, source) == (DEFAULT_MODEL_NAME, folder)
    assert weights.stat().st_mtime_ns == before


def test_a_local_folder_loads_under_its_folder_name(tiny_llama_dir, tiny_llama):
    name, source = resolve_model_source(str(tiny_llama_dir), CACHE_DIR)
    assert name == tiny_llama_dir.name and source == tiny_llama_dir.resolve()
    assert tiny_llama.name == tiny_llama_dir.name
    assert tiny_llama.context_length == TINY_CONTEXT
    assert tiny_llama.eos_token_ids == frozenset({2})
    assert tiny_llama.has_chat_template


def test_a_gpt2_folder_without_template_loads(tiny_gpt2):
    eos = tiny_gpt2.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert not tiny_gpt2.has_chat_template
    assert tiny_gpt2.eos_token_ids == frozenset({eos})
    assert tiny_gpt2.context_length == 256  # n_positions


def test_a_missing_folder_says_what_to_pass(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no model folder at") as caught:
        load_model(str(missing), CACHE_DIR)
    assert str(missing) in str(caught.value) and "--model" in str(caught.value)
    with pytest.raises(ModelLoadError, match="no model folder"):
        load_model("./definitely-not-here/model", CACHE_DIR)


def test_an_unknown_hub_id_fails_offline_with_a_clear_message():
    with pytest.raises(ModelLoadError, match="cannot load model 'nobody-at-all/no-such-model-7319'") as caught:
        load_model("nobody-at-all/no-such-model-7319", CACHE_DIR)
    message = str(caught.value)
    assert "--model" in message and "local cache" in message
    assert "Traceback" not in message and "\n" not in message


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_model(str(tmp_path / "notes"), CACHE_DIR)
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(str(tmp_path / "garbled"), CACHE_DIR)


def test_missing_or_damaged_weights_are_a_load_error(tiny_llama_dir, tmp_path):
    no_weights = shutil.copytree(tiny_llama_dir, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(str(no_weights), CACHE_DIR)

    damaged = shutil.copytree(tiny_llama_dir, tmp_path / "damaged")
    weights = damaged / "model.safetensors"
    with weights.open("r+b") as file:  # an interrupted copy
        file.truncate(weights.stat().st_size // 2)
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(str(damaged), CACHE_DIR)


def test_the_saved_config_is_what_the_builder_asked_for(tiny_llama_dir):
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 64 and config["vocab_size"] == 49152


@pytest.mark.slow
def test_cached_conversion_is_exactly_the_gguf_model(smollm2):
    """The safetensors cache holds the same weights, tokenizer and greedy output as the GGUF itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    original.eval()
    ours = smollm2.model.state_dict()
    theirs = original.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    sample = "Héllo  wörld 🙂 日本語\n<|im_start|>user\nhi<|im_end|>"
    assert tokenizer.encode(sample, add_special_tokens=False) == smollm2.tokenizer.encode(
        sample, add_special_tokens=False
    )
    assert tokenizer.chat_template == smollm2.tokenizer.chat_template

    prompt = chat_prompt(smollm2, "Name three colours.")
    with torch.inference_mode():
        expected = original.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=20, do_sample=False, pad_token_id=2,
        )[0, len(prompt):].tolist()
    assert reference_generate(smollm2, prompt, 20) == expected
    assert len(expected) >= 5
