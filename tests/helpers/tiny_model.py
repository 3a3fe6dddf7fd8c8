"""Tiny randomly initialised BERT models in sentence-transformers layout, made locally.

They export, quantize and embed in a second or two, so most model and index tests use them;
only the equivalence test with sentence-transformers loads the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "the customer asked for a renewal quote before the end of the quarter",
    "follow up with procurement about the signed purchase order and invoice",
    "acme corporation evaluates the analytics add on for many seats",
    "meeting notes pricing tiers single sign on data residency security review",
    "opportunity closed lost budget moved to next fiscal year",
    "call back regarding the invoice dispute phone email contact account",
    "pilot project succeeded moving to a company wide rollout in europe",
    "hamburg berlin london paris office visit next tuesday monday",
]


def make_tiny_model(
    folder: Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    max_positions: int = 128,
    max_seq_length: int = 64,
    pooling: str = "mean",
    normalize: bool = True,
    seed: int = 0,
) -> Path:
    """Write a tiny BERT (weights, fast tokenizer, pooling config) into ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS * 4, WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_seq_length,
    )
    fast.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
    )
    BertModel(config).eval().save_pretrained(str(folder), safe_serialization=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": hidden,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": False,
            }
        )
    )
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tiny test model\n")
    return folder
