"""Tiny randomly initialised models of every supported architecture, for fast tests.

Built from a config with a fixed seed (the way transformers tests itself), with a small byte-level BPE
tokenizer trained on a fixed text, so nothing is downloaded. Same seed, same weights, same tokenizer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

from editkit.errors import UnknownNameError
from editkit.models.lm import LanguageModel

VOCAB = 384
HIDDEN = 32
LAYERS = 4

TEXT = """The Eiffel Tower is located in the city of Paris. The Colosseum is in Rome.
Danielle Darrieux's mother tongue is French. Toko Yasuda plays the guitar. Autonomous University of Madrid,
which is located in Spain. The capital of Germany is Berlin and the capital of Italy is Rome.
Michael Jordan plays the sport of basketball. Lionel Messi plays the sport of soccer. Apple was founded by
Steve Jobs. Microsoft was founded by Bill Gates. The official language of Brazil is Portuguese.
Who is the prime minister of the United Kingdom? The president of France lives in the Elysee Palace.
"""


@lru_cache(maxsize=4)
def _tokenizer_json(vocab: int) -> str:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT] * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab: int = VOCAB) -> PreTrainedTokenizerFast:
    """The tiny models' byte-level BPE tokenizer; a smaller ``vocab`` gives another tokenizer of the same text."""
    if not 259 < vocab <= VOCAB:
        raise ValueError(f"vocab must be in (259, {VOCAB}] (256 bytes and 3 special tokens), got {vocab}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab)),
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
    )
    tok.model_max_length = 2048
    return tok


def _config(arch: str) -> tf.PretrainedConfig:
    common: dict[str, Any] = {"vocab_size": VOCAB, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    if arch == "llama":
        return tf.LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            **common,
        )
    if arch == "gemma3":
        return tf.Gemma3TextConfig(
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=2048,
            sliding_window=16,
            **common,
        )
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=2048, **common)
    if arch == "gptj":
        return tf.GPTJConfig(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=2048, rotary_dim=4, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            max_position_embeddings=2048,
            **common,
        )
    if arch == "t5":
        t5 = tf.T5Config(
            d_model=HIDDEN,
            d_ff=64,
            num_layers=LAYERS,
            num_decoder_layers=2,
            num_heads=4,
            d_kv=8,
            **common,
        )
        t5.decoder_start_token_id = 0
        return t5
    raise UnknownNameError("tiny architecture", arch, TINY_ARCHS)


TINY_ARCHS = ("llama", "gemma3", "gpt2", "gptj", "gpt_neox", "t5")


def tiny_model(arch: str = "llama", seed: int = 0) -> LanguageModel:
    """A seeded random model of architecture ``arch`` (one of :data:`TINY_ARCHS`), float32, in eval mode."""
    config = _config(arch)
    config._attn_implementation = "eager"
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)  # transformers initialises weights from the global RNG; restore it afterwards
        if arch == "t5":
            model = tf.T5ForConditionalGeneration(config)  # type: ignore[arg-type]
        else:
            model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(gen_state)
    return LanguageModel(model.eval(), tiny_tokenizer(), name=f"tiny-{arch}-s{seed}")


def tiny_encoder(seed: int = 0) -> tuple[nn.Module, PreTrainedTokenizerFast]:
    """A seeded random BERT encoder (2 layers, width 32) with the tiny tokenizer, for tests of scope classifiers."""
    config = tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = tf.BertModel(config)
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval(), tiny_tokenizer()
