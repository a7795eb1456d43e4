"""Tiny random-weight Qwen2-Audio and Qwen2.5-Omni models (see tiny_models.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.integration.tiny_parts import (
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIALS,
    _fast,
    _save,
    _vision_processors,
    byte_bpe,
)


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
