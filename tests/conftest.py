"""Shared fixtures: a tiny random-weight Qwen2 checkpoint with a real byte-level BPE tokenizer,
written to disk and loaded through the same code path as any local model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from models.engine import Engine, EngineConfig
from models.loading import load_model
from models.spec import ModelSpec

TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
CORPUS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Client:\n    def get(self, url):\n        return self.session.request('GET', url)\n",
    "import os\nfor name in os.listdir('.'):\n    print(name)\n",
]


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=TINY_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=fast.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_checkpoint) -> ModelSpec:
    # fp32 without quantization: exactness tests compare against the plain model.
    return ModelSpec(source=str(tiny_checkpoint), quantization="none", device="cpu", context_length=2048)


@pytest.fixture
def tiny_loaded(tiny_spec):
    return load_model(tiny_spec)


@pytest.fixture
def make_engine(tiny_loaded):
    engines: list[Engine] = []

    def make(**config) -> Engine:
        engine = Engine(tiny_loaded, EngineConfig(**config))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()
