"""Calibrating `generate(..., scale="cascade")`: the confidence threshold that keeps the WER near the finest scale's
at the lowest LLM cost.

Each trained scale decodes the validation clips once. Because a row's transcript at a scale does not depend on the
other rows of its batch (batched decoding equals single-sample decoding), the cascade at any threshold can then be
replayed exactly from those decodes: a row stops at the first scale, from the coarsest, whose confidence reaches the
threshold (or at the finest), and costs the LLM tokens of every pass it went through (input and generated tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jiwer
import torch

from llama_mtsk import LlamaMTSKForConditionalGeneration
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor, normalize_text
from mtsk_data.collator import MTSKCollator


CONFIDENCE_KINDS = ("mean", "min")


@dataclass
class ScaleDecodes:
    """One scale's greedy (or beam) transcripts of every clip, with their confidences and LLM costs."""

    scale: tuple[int | None, int | None]
    hypotheses: list[str]
    confidences: dict[str, list[float]]  # by confidence kind
    llm_tokens: list[int]


@dataclass
class CascadePoint:
    """The cascade at one threshold: its WER, mean LLM tokens per clip and the share of clips ending at each scale."""

    confidence: str
    threshold: float
    wer: float
    mean_llm_tokens: float
    final_scales: dict[str, float]


@torch.no_grad()
def decode_every_scale(
    model: LlamaMTSKForConditionalGeneration,
    processor: LlamaMTSKProcessor,
    records: Sequence[dict[str, Any]],
    batch_size: int = 16,
    generate_kwargs: dict[str, Any] | None = None,
) -> list[ScaleDecodes]:
    """Decodes `records` at every trained scale, in the cascade's order (coarsest first)."""
    model.eval()
    generate_kwargs = {"max_new_tokens": 32, **(generate_kwargs or {}), "return_dict_in_generate": True, "output_scores": True}
    collator = MTSKCollator(processor, modality=model.config.modality, training=False)
    device = next(model.parameters()).device
    batches = [collator(records[start : start + batch_size]) for start in range(0, len(records), batch_size)]
    decodes = []
    for scale in model.cascade_order():
        hypotheses, tokens = [], []
        confidences: dict[str, list[float]] = {kind: [] for kind in CONFIDENCE_KINDS}
        for batch in batches:
            inputs = {name: value.to(device) for name, value in batch.items() if name != "labels"}
            outputs = model.generate(**inputs, scale=scale, **generate_kwargs)
            hypotheses += [normalize_text(text) for text in processor.batch_decode(outputs.sequences)]
            tokens += outputs.llm_tokens.tolist()
            for kind in CONFIDENCE_KINDS:
                confidences[kind] += model._confidence(outputs, kind).tolist()
        decodes.append(ScaleDecodes(scale, hypotheses, confidences, tokens))
    return decodes


def replay_cascade(
    decodes: Sequence[ScaleDecodes], references: Sequence[str], confidence: str, threshold: float
) -> CascadePoint:
    """The cascade's result at `threshold`, replayed from every scale's decodes (coarsest first)."""
    hypotheses, costs, final = [], [], []
    for row in range(len(references)):
        cost = 0
        for step, decoded in enumerate(decodes):
            cost += decoded.llm_tokens[row]
            if step == len(decodes) - 1 or decoded.confidences[confidence][row] >= threshold:
                hypotheses.append(decoded.hypotheses[row])
                final.append(str(decoded.scale))
                break
        costs.append(cost)
    shares = {str(decoded.scale): final.count(str(decoded.scale)) / len(final) for decoded in decodes}
    return CascadePoint(
        confidence=confidence,
        threshold=threshold,
        wer=jiwer.wer(list(references), hypotheses),
        mean_llm_tokens=sum(costs) / len(costs),
        final_scales=shares,
    )


def cascade_frontier(decodes: Sequence[ScaleDecodes], references: Sequence[str]) -> list[CascadePoint]:
    """The cascade at every threshold that changes its result, for both confidence kinds: -inf, +inf and the
    midpoints between neighbouring confidence values seen before the finest scale (a midpoint, not a value itself,
    so that a last-digit difference between batch shapes cannot move a clip across the threshold)."""
    points = []
    for kind in CONFIDENCE_KINDS:
        values = sorted({value for decoded in decodes[:-1] for value in decoded.confidences[kind]})
        midpoints = [(low + high) / 2 for low, high in zip(values, values[1:])]
        thresholds = [-math.inf, *midpoints, math.inf]
        points += [replay_cascade(decodes, references, kind, threshold) for threshold in thresholds]
    return points


def choose_threshold(
    decodes: Sequence[ScaleDecodes], references: Sequence[str], max_wer_increase: float = 0.005
) -> tuple[CascadePoint, list[CascadePoint]]:
    """The cheapest cascade (fewest mean LLM tokens, then lowest WER) whose WER is at most the finest scale's plus
    `max_wer_increase` (0.005 = half a WER point); returns it and the whole frontier."""
    finest_wer = jiwer.wer(list(references), decodes[-1].hypotheses)
    frontier = cascade_frontier(decodes, references)
    allowed = [point for point in frontier if point.wer <= finest_wer + max_wer_increase + 1e-12]
    best = min(allowed, key=lambda point: (point.mean_llm_tokens, point.wer))
    return best, frontier
