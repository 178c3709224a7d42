"""Randomly initialised DistilBERT classifiers, for machines that can't download weights.

``tiny`` is for tests (milliseconds per batch); ``base`` has the real
distilbert-base architecture, so it costs exactly the compute of the real
checkpoint and is what benchmarks use. Their predictions mean nothing.
"""

from __future__ import annotations

import itertools
import string
from pathlib import Path
from typing import Literal

from worker.model.loading import RANDOM_WEIGHTS_MARKER

Size = Literal["tiny", "base"]

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Enough common words that English text tokenises into roughly as many
# pieces as with the real vocabulary; the rest of the vocabulary is filler.
_WORDS = """
the of and to a in is it you that he was for on are with as i his they be at one have this from or had by
not word but what some we can out other were all there when up use your how said an each she which do
their time if will way about many then them write would like so these her long make thing see him two has
look more day could go come did number sound no most people my over know water than call first who may
down side been now find any new work part take get place made live where after back little only round man
year came show every good me give our under name very through just form sentence great think say help low
line differ turn cause much mean before move right boy old too same tell does set three want air well also
play small end put home read hand port large spell add even land here must big high such follow act why ask
men change went light kind off need house picture try us again animal point mother world near build self
earth father movie film love hate bad terrible awful excellent amazing boring best worst product service
really quite never always nothing everything happy sad angry recommend buy bought price quality slow fast
""".split()


def build_vocab(size: Size) -> list[str]:
    letters = string.ascii_lowercase + string.digits
    vocab = list(_SPECIAL)
    vocab += list(letters) + list(string.punctuation)
    vocab += ["##" + c for c in letters]
    vocab += sorted(set(_WORDS) - set(vocab))
    if size == "base":
        target = 30522  # distilbert-base-uncased's vocabulary size
        for a, b in itertools.product(string.ascii_lowercase, repeat=2):
            vocab += [a + b, "##" + a + b]
        for a, b, c in itertools.product(string.ascii_lowercase, repeat=3):
            if len(vocab) >= target:
                break
            vocab.append("##" + a + b + c)
        vocab = vocab[:target]
    return vocab


def write_random_model(directory: Path, size: Size = "tiny", *, seed: int = 0) -> Path:
    """Write config, safetensors weights and a fast tokenizer that ``SentimentEngine.load`` reads."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(size)
    tokenizer = DistilBertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.model_max_length = 512
    dims = (
        dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64)
        if size == "tiny"
        else dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072)
    )
    config = DistilBertConfig(
        vocab_size=len(vocab),
        max_position_embeddings=512,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=0,
        **dims,
    )
    torch.manual_seed(seed)
    model = DistilBertForSequenceClassification(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / RANDOM_WEIGHTS_MARKER).write_text(
        f"Randomly initialised DistilBERT ({size}, seed {seed}). Its predictions mean nothing.\n"
    )
    return directory
