"""The models tests run on, built on the spot or read from the cache: nothing is downloaded.

- ``build_tiny_llama``: a random 2-layer Llama with SmolLM2's tokenizer and chat template
  (the one tiny-model builder of the suite: engine, services, server and browser tests);
- ``build_tiny_gpt2``: a random 2-layer GPT-2 with its own small byte-level BPE and no chat
  template (the DialoGPT / Gradio-tutorial family);
- ``smollm2_folder``: the real default model, converted from its GGUF once per machine.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from app.engine.loading import DEFAULT_MODEL_NAME, resolve_model_source

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = CACHE_DIR = Path(os.environ.get("CHAT_TEST_CACHE_DIR") or ROOT / "data" / "model-cache")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
TINY_CONTEXT = 512
# what the server tests give their tiny model: room for long chats and the default 256 new tokens
SERVER_CONTEXT = 2048

DIALOG_TEXT = """\
hello there, how are you today? i am fine, thank you, and you?
what is your name? my name is bot. nice to meet you! the weather is nice today.
do you like music? yes, i like music a lot. what about you? i like books and films.
good morning. good night. see you later. bye for now, have a nice day!
can you tell me a story? once upon a time there was a little robot who wanted to sing.
"""


# ---------------------------------------------------------------- building tiny models


def smollm2_folder() -> Path:
    """The converted SmolLM2 folder in the cache (converting the GGUF once if it is missing)."""
    _, folder = resolve_model_source("smollm2", CACHE_DIR)
    assert Path(folder) == CACHE_DIR / DEFAULT_MODEL_NAME
    return Path(folder)


def build_tiny_llama(target: Path, *, max_positions: int = TINY_CONTEXT, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 64) using SmolLM2's tokenizer files and chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (target / "config.json").exists():  # built already (a module's fixtures share one folder)
        return target
    source = smollm2_folder()
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=0.2,  # peaked logits: greedy argmax has clear winners
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    return target


def build_tiny_gpt2(target: Path, *, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 with a ~400-token byte-level BPE trained here and no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(DIALOG_TEXT.splitlines(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    assert not getattr(tokenizer, "chat_template", None)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=eos, eos_token_id=eos, initializer_range=0.2,
    )
    target.mkdir(parents=True, exist_ok=True)
    GPT2LMHeadModel(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
