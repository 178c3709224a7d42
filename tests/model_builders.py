"""Random-weight sequence classifiers of several families, with tokenizers generated here (no downloads).

Each family gets the kind of tokenizer its real checkpoints use: WordPiece
(BERT), byte-level BPE (RoBERTa, ModernBERT), and Unigram / SentencePiece-style
pieces (DeBERTa-v2, XLM-R). Their predictions mean nothing; they exist to show
that the worker scores any sequence classifier exactly as transformers does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from worker.model.random_model import _WORDS, build_vocab

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
CORPUS = [" ".join(_WORDS[i: i + 12]) for i in range(0, len(_WORDS), 5)] * 3


def _labels(num_labels: int) -> dict[str, Any]:
    names = ["NEGATIVE", "NEUTRAL", "POSITIVE", "MIXED"][:num_labels] if num_labels > 1 else ["SCORE"]
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def _byte_level_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(CORPUS, vocab_size=600, min_frequency=1, special_tokens=specials, show_progress=False)
    model = __import__("json").loads(trainer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _unigram(specials: list[str]) -> list[tuple[str, float]]:
    pieces = [(s, 0.0) for s in specials]
    pieces += [("▁" + w, -5.0 - i * 0.01) for i, w in enumerate(sorted(set(_WORDS)))]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"-()"
    pieces += [(c, -12.0) for c in letters] + [("▁" + c, -11.0) for c in letters] + [("▁", -10.0)]
    return pieces


def bert(directory: Path, num_labels: int, problem_type: str | None) -> None:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = build_vocab("tiny")
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=512, type_vocab_size=2, pad_token_id=0,
                        problem_type=problem_type, **SMALL, **_labels(num_labels))
    _save(directory, BertForSequenceClassification(config), tokenizer)


def roberta(directory: Path, num_labels: int, problem_type: str | None) -> None:
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizer

    vocab, merges = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
    config = RobertaConfig(vocab_size=len(vocab), max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, type_vocab_size=1, problem_type=problem_type, **SMALL, **_labels(num_labels))
    _save(directory, RobertaForSequenceClassification(config), tokenizer)


def xlm_roberta(directory: Path, num_labels: int, problem_type: str | None) -> None:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizer

    pieces = _unigram(["<s>", "<pad>", "</s>", "<unk>"]) + [("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=pieces)
    config = XLMRobertaConfig(vocab_size=len(pieces), max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, type_vocab_size=1, problem_type=problem_type, **SMALL, **_labels(num_labels))
    _save(directory, XLMRobertaForSequenceClassification(config), tokenizer)


def deberta_v2(directory: Path, num_labels: int, problem_type: str | None) -> None:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Tokenizer

    pieces = _unigram(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer = DebertaV2Tokenizer(vocab=pieces, unk_id=1)
    config = DebertaV2Config(vocab_size=len(pieces), max_position_embeddings=512, pad_token_id=0, type_vocab_size=0,
                             relative_attention=True, position_buckets=32, pos_att_type=["p2c", "c2p"],
                             problem_type=problem_type, **SMALL, **_labels(num_labels))
    _save(directory, DebertaV2ForSequenceClassification(config), tokenizer)


def modernbert(directory: Path, num_labels: int, problem_type: str | None) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import ModernBertConfig, ModernBertForSequenceClassification, PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    vocab, merges = _byte_level_bpe(specials)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]",
                                        sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]")
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    config = ModernBertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=512, pad_token_id=vocab["[PAD]"],
                              cls_token_id=vocab["[CLS]"], sep_token_id=vocab["[SEP]"], bos_token_id=vocab["[CLS]"],
                              eos_token_id=vocab["[SEP]"], global_attn_every_n_layers=2, local_attention=16,
                              problem_type=problem_type, **_labels(num_labels))
    _save(directory, ModernBertForSequenceClassification(config), tokenizer)


def _save(directory: Path, model: Any, tokenizer: Any) -> None:
    import torch

    torch.manual_seed(3)
    for name, parameter in model.named_parameters():  # weights large enough that texts score clearly differently
        torch.nn.init.normal_(parameter, std=0.15 if "classifier" in name else 0.5)
    model.eval().save_pretrained(directory, safe_serialization=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(directory)


FAMILIES: dict[str, Callable[[Path, int, str | None], None]] = {
    "bert": bert,
    "roberta": roberta,
    "xlm-roberta": xlm_roberta,
    "deberta-v2": deberta_v2,
    "modernbert": modernbert,
}
