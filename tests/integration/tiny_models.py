"""Tiny random-weight models, built from configs and saved like real checkpoints.

Each builder writes a folder that the backends load through the same
`from_pretrained` calls, quantization included, that real hub checkpoints take:
config.json + safetensors, a tokenizer made here with the `tokenizers` library,
and the processor files (image processor, feature extractor) the real models ship.
Sizes are kept tiny (hidden 64, 1-2 layers, a few hundred tokens) so a worker
loads one in about a second on two cores. Every linear layer's input width is a
multiple of 64: bitsandbytes' CPU 4-bit kernels repack weights in blocks of 64 and
fail on narrower layers (real checkpoints are far wider).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.integration.tiny_audio import (
    build_qwen2_audio,
    build_qwen25_omni_full,
    build_qwen25_omni_thinker,
)
from tests.integration.tiny_parts import (
    QWEN_CHAT_TEMPLATE,
    QWEN_VL_SPECIALS,
    QWEN_VL_TEMPLATE,
    _fast,
    _save,
    _vision_processors,
    byte_bpe,
    wordpiece,
)


def _qwen_vl(config_cls, model_cls, processor_cls, vision_config: dict, out: Path) -> Path:
    """A Qwen VL model with a 2-layer text model and the given tiny vision tower."""

    tok = byte_bpe(QWEN_VL_SPECIALS)
    ids = {t: tok.token_to_id(t) for t in QWEN_VL_SPECIALS}
    fast = _fast(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = QWEN_VL_TEMPLATE
    torch.manual_seed(0)
    config = config_cls(
        text_config=dict(
            vocab_size=tok.get_vocab_size(),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            bos_token_id=None,
            rope_parameters={
                "rope_type": "default",
                "mrope_section": [2, 3, 3],
                "rope_theta": 10000.0,
            },
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = model_cls(config)
    images, videos = _vision_processors()
    processor = processor_cls(
        image_processor=images,
        video_processor=videos,
        tokenizer=fast,
        chat_template=QWEN_VL_TEMPLATE,
    )
    return _save(model, fast, out, processor)


def build_qwen2_vl(out: Path) -> Path:
    """A Qwen2-VL with a 1-layer vision tower and a 2-layer text model."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    vision = dict(depth=1, embed_dim=64, hidden_size=64, num_heads=2, mlp_ratio=2)
    return _qwen_vl(Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, vision, out)


def build_qwen25_vl(out: Path) -> Path:
    """A Qwen2.5-VL (windowed vision tower, timed video positions), as tiny as Qwen2-VL's."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )

    vision = dict(
        depth=1,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        out_hidden_size=64,
        fullatt_block_indexes=[0],
        window_size=112,
    )
    return _qwen_vl(
        Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, vision, out
    )


def build_blip_vqa(out: Path) -> Path:
    """A BLIP question-answering model: 1-layer ViT, 1-layer text encoder and decoder."""
    from transformers import BlipConfig, BlipForQuestionAnswering
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tok = wordpiece()
    fast = _fast(
        tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[CLS]",
        eos_token="[SEP]",
    )
    torch.manual_seed(0)
    config = BlipConfig(
        text_config=dict(
            vocab_size=tok.get_vocab_size(),
            hidden_size=64,
            encoder_hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=128,
            bos_token_id=tok.token_to_id("[CLS]"),
            eos_token_id=tok.token_to_id("[SEP]"),
            pad_token_id=tok.token_to_id("[PAD]"),
            sep_token_id=tok.token_to_id("[SEP]"),
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
        ),
        projection_dim=64,
        image_text_hidden_size=64,
    )
    model = BlipForQuestionAnswering(config)
    images = BlipImageProcessorPil(size={"height": 64, "width": 64})
    return _save(model, fast, out, images)


def build_whisper(out: Path) -> Path:
    """A Whisper with 1 encoder and 1 decoder layer and the generation config it needs."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    langs = ["<|en|>", "<|fr|>", "<|de|>"]
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *langs,
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]
    tok = byte_bpe(specials)
    ids = {t: tok.token_to_id(t) for t in specials}
    fast = _fast(
        tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=tok.get_vocab_size(),
        num_mel_bins=80,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        d_model=64,
        max_source_positions=1500,
        max_target_positions=128,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config)
    gen = model.generation_config
    gen.decoder_start_token_id = ids["<|startoftranscript|>"]
    gen.eos_token_id = gen.pad_token_id = ids["<|endoftext|>"]
    gen.no_timestamps_token_id = ids["<|notimestamps|>"]
    gen.lang_to_id = {t: ids[t] for t in langs}
    gen.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    gen.is_multilingual = True
    gen.max_length = 64
    gen.forced_decoder_ids = None
    gen.begin_suppress_tokens = None
    gen.suppress_tokens = None
    # Saved as a checkpoint's own generation config, not one derived from config.json
    # (transformers drops the Whisper-specific fields of a derived one when loading it).
    gen._from_model_config = False
    features = WhisperFeatureExtractor(feature_size=80)
    return _save(model, fast, out, features)


def build_bert_classifier(out: Path, labels: tuple[str, ...] = ("negative", "positive")) -> Path:
    """A 2-layer BERT sequence classifier with named labels (bert-tiny's shape, smaller)."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = wordpiece()
    fast = _fast(
        tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = BertForSequenceClassification(config)
    return _save(model, fast, out)


def build_qwen2_lm(out: Path) -> Path:
    """A 2-layer Qwen2 causal LM with a chat template (the transformers text backend)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_bpe(specials)
    ids = {t: tok.token_to_id(t) for t in specials}
    fast = _fast(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = QWEN_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return _save(model, fast, out)


BUILDERS = {
    "tiny-qwen2-vl": build_qwen2_vl,
    "tiny-qwen25-vl": build_qwen25_vl,
    "tiny-blip-vqa": build_blip_vqa,
    "tiny-whisper": build_whisper,
    "tiny-qwen2-audio": build_qwen2_audio,
    "tiny-qwen25-omni": build_qwen25_omni_thinker,
    "tiny-qwen25-omni-full": build_qwen25_omni_full,
    "tiny-bert-classifier": build_bert_classifier,
    "tiny-qwen2-lm": build_qwen2_lm,
}


def build_all(root: Path) -> dict[str, Path]:
    """Build every tiny model under root; return {name: folder}."""
    return {name: build(root / name) for name, build in BUILDERS.items()}
