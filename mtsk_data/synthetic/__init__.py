"""Synthetic speech corpora, generated offline with eSpeak NG instead of downloaded.

- `corpus`: the embedded audio-visual corpus (`python -m mtsk_data.synthetic`): sentences of a small grammar
  (`grammar`) said by 16 eSpeak voices, with a mouth video driven by the same phoneme timing (`visemes`);
- `espeak_words`: eSpeak reading random strings of common English words, audio only
  (`python -m mtsk_data.synthetic.espeak_words`);
- `wordnet_sentences`: eSpeak reading WordNet's example sentences, audio only
  (`python -m mtsk_data.synthetic.wordnet_sentences`).
"""
