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


def build_qwen2_audio(out: Path) -> Path:
    """A Qwen2-Audio: 1-layer audio encoder, 2-layer Qwen2 text model."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|audio_bos|>",
        "<|audio_eos|>",
        "<|AUDIO|>",
    ]
    tok = byte_bpe(specials)
    ids = {t: tok.token_to_id(t) for t in specials}
    fast = _fast(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = QWEN_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Qwen2AudioConfig(
        audio_config=dict(
            num_mel_bins=128,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=128,
            d_model=64,
            max_source_positions=1500,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=tok.get_vocab_size(),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        audio_token_index=ids["<|AUDIO|>"],
    )
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=fast,
        chat_template=QWEN_CHAT_TEMPLATE,
        audio_token="<|AUDIO|>",
        audio_bos_token="<|audio_bos|>",
        audio_eos_token="<|audio_eos|>",
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# The tokens Qwen2.5-Omni's processor finds on its tokenizer by name.
OMNI_TOKENS = {
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "audio_token": "<|AUDIO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}


def _omni_thinker_config(ids: dict[str, int], vocab_size: int) -> dict:
    """A Qwen2.5-Omni thinker: tiny audio and vision towers, 2 text layers."""
    return dict(
        audio_config=dict(
            num_mel_bins=128,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=128,
            d_model=64,
            output_dim=64,
            n_window=100,
            max_source_positions=1500,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[0],
            window_size=112,
        ),
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default",
                "mrope_section": [2, 3, 3],
                "rope_theta": 10000.0,
            },
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        user_token_id=ids["<|im_start|>"],
    )


def _omni_processor(fast):
    from transformers import Qwen2_5OmniProcessor, WhisperFeatureExtractor

    images, videos = _vision_processors()
    return Qwen2_5OmniProcessor(
        image_processor=images,
        video_processor=videos,
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=fast,
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def _omni_tokenizer():
    tok = byte_bpe(QWEN_SPECIALS)
    fast = _fast(
        tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=OMNI_TOKENS
    )
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast, {t: tok.token_to_id(t) for t in QWEN_SPECIALS}


def build_qwen25_omni_thinker(out: Path) -> Path:
    """A Qwen2.5-Omni thinker-only checkpoint (text output)."""
    from transformers import (
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
    )

    fast, ids = _omni_tokenizer()
    torch.manual_seed(0)
    config = Qwen2_5OmniThinkerConfig(**_omni_thinker_config(ids, len(fast)))
    model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return _save(model, fast, out, _omni_processor(fast))


def build_qwen25_omni_full(out: Path) -> Path:
    """A full Qwen2.5-Omni checkpoint, as the hub ships it: the thinker, the talker
    (speech tokens) and token2wav (the vocoder), with tiny sizes throughout."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    fast, ids = _omni_tokenizer()
    thinker = _omni_thinker_config(ids, len(fast))
    talker = dict(
        vocab_size=128,
        tts_text_start_token_id=ids["<|im_start|>"],
        tts_text_end_token_id=ids["<|im_end|>"],
        tts_text_pad_token_id=ids["<|endoftext|>"],
        tts_codec_start_token_id=120,
        tts_codec_end_token_id=121,
        tts_codec_pad_token_id=122,
        tts_codec_mask_token_id=123,
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        embedding_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
    )
    token2wav = dict(
        dit_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            ff_mult=2,
            emb_dim=32,
            head_dim=32,
            repeats=2,
            num_embeds=128,
            mel_dim=16,
            enc_emb_dim=32,
            enc_dim=32,
            enc_channels=[32, 32, 32, 32, 64],
            enc_kernel_sizes=[5, 3, 3, 3, 1],
            enc_dilations=[1, 2, 3, 4, 1],
            enc_attention_channels=16,
            enc_res2net_scale=2,
            enc_se_channels=16,
            look_ahead_layers=[1],
            look_backward_layers=[0],
        ),
        bigvgan_config=dict(
            mel_dim=16,
            upsample_initial_channel=32,
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3, 5]],
            upsample_rates=[4, 4],
            upsample_kernel_sizes=[8, 8],
        ),
    )
    torch.manual_seed(0)
    config = Qwen2_5OmniConfig(
        thinker_config=thinker,
        talker_config=talker,
        token2wav_config=token2wav,
        enable_audio_output=True,
    )
    model = Qwen2_5OmniForConditionalGeneration(config)
    model.thinker.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    _save(model, fast, out, _omni_processor(fast))
    # The voices of the talker, which Qwen2_5OmniForConditionalGeneration.from_pretrained
    # reads from every full checkpoint.
    voice = {"bos_token": 120, "cond": torch.randn(1, 32), "ref_mel": torch.randn(1, 30, 16)}
    torch.save({"Chelsie": voice, "Ethan": voice}, out / "spk_dict.pt")
    return out


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
