"""What the tiny models are made of: a corpus, tokenizers trained on it, chat templates and
special tokens, and how a model and its tokenizer are saved (see tiny_models.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "hello world the cat sat on the mat what is in this picture describe the image",
    "a red square on a blue background listen to the audio and tell me what you hear",
    "this movie was great i loved it this film was terrible and boring",
    "what color is the car yes no two three one video frames of a ball",
]

# Qwen's chat template, reduced to what the conveyor backends send: text, image, video
# and audio content parts, each media part becoming its placeholder token span.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif part['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|AUDIO|>",
]
# Qwen2-VL names its vision tokens differently from Omni; the template is shared.
QWEN_VL_TEMPLATE = (
    QWEN_CHAT_TEMPLATE.replace("<|vision_bos|>", "<|vision_start|>")
    .replace("<|vision_eos|>", "<|vision_end|>")
    .replace("<|IMAGE|>", "<|image_pad|>")
    .replace("<|VIDEO|>", "<|video_pad|>")
)
QWEN_VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def byte_bpe(specials: list[str], vocab_size: int = 320) -> Tokenizer:
    """Train a small byte-level BPE tokenizer with the given special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def wordpiece(vocab_size: int = 200) -> Tokenizer:
    """Train a small BERT-style WordPiece tokenizer ([CLS] ... [SEP])."""
    from tokenizers import processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        CORPUS * 4,
        trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False
        ),
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def _fast(tok: Tokenizer, **kwargs) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _save(model, tokenizer, out: Path, *extra) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for part in extra:
        part.save_pretrained(out)
    return out


# Pixel budgets of the tiny processors: 2x2 to 4x4 merged 28-pixel blocks per image or frame.


TINY_PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}


def _vision_processors():
    """The image and video processors of a Qwen vision checkpoint, with tiny budgets."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2VLImageProcessorPil(**TINY_PIXELS), Qwen2VLVideoProcessor(**TINY_PIXELS)
