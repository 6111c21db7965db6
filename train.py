"""Train Llama-MTSK with the Matryoshka objective, then evaluate WER at every scale.

    python train.py configs/demo.yaml                        # the embedded demo, on a laptop CPU
    accelerate launch train.py configs/lrs3_avsr.yaml        # any accelerate config (configs/accelerate/)
    python train.py CONFIG.yaml --max_steps 100 --lora_strategy mss    # YAML, then command-line overrides

Steps: (1) generate the embedded corpus if asked and missing; (2) assemble a new model from pretrained parts, or
load a Llama-MTSK checkpoint; (3) train with the transformers Trainer, every scale every step in one LLM pass
(per-scale losses logged), resuming with `--resume_from_checkpoint`; (4) average the last N checkpoints; (5) save
`<output_dir>/final` (model, processor, remote code, model card); (6) evaluate WER, LLM tokens and TFLOPs per scale
on the test split (report, Markdown table, plot) and put the WER table in the model card; (7) transcribe a test clip
through `pipeline("automatic-speech-recognition")` loaded from the saved folder; (8) `--push_to_hub`.
All fields: `python train.py --help`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
from transformers import set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

from llama_mtsk import LlamaMTSKForConditionalGeneration
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_data.augment import AugmentationConfig, NoiseSource
from mtsk_data.collator import MTSKCollator, babble_from_records, decode_corpus
from mtsk_data.records import load_split, shard_paths
from mtsk_data.sampler import FrameBatchSampler, frame_counts
from mtsk_data.streaming import StreamingFrameBatches
from mtsk_train.arguments import DataArguments, ModelArguments, parse_arguments, parse_snrs
from mtsk_train.assemble import assemble_model
from mtsk_train.averaging import average_checkpoints, last_checkpoints
from mtsk_train.ctc_warmup import warm_up_audio_projectors
from mtsk_train.encoder_cache import EncodedAudioCollator, check_cacheable, encode_audio_records
from mtsk_train.evaluation import evaluate_sweep, markdown_table, wer_table, write_report
from mtsk_train.hub import save_checkpoint
from mtsk_train.resume import check_resume_checkpoint
from mtsk_train.trainer import MatryoshkaTrainer, StreamingEpochCallback, TimeBudgetCallback


logger = logging.getLogger("train")


def prepare_corpus(data_args: DataArguments, is_main_process: bool) -> dict | None:
    """Generates the embedded corpus into `dataset_dir` when asked and not complete yet (main process only); returns
    the generation summary (clips, hours, clips generated now, seconds taken)."""
    if not data_args.generate_embedded_corpus or not is_main_process:
        return None
    from mtsk_data.synthetic.corpus import generate_corpus

    num_train, num_validation, num_test = data_args.corpus_sizes
    summary = generate_corpus(
        data_args.dataset_dir, num_train, num_validation, num_test, seed=data_args.corpus_seed, progress=True
    )
    logger.info(
        "embedded corpus: %d clips (%.2f h) in %s; %d generated now in %.0f s",
        summary["clips"], summary["hours"], data_args.dataset_dir, summary["generated"], summary["seconds_taken"],
    )
    return summary


def build_model(model_args: ModelArguments) -> tuple[LlamaMTSKForConditionalGeneration, LlamaMTSKProcessor]:
    if is_deepspeed_zero3_enabled():
        # ZeRO-3 partitions every model as transformers loads it: the parts could not be assembled, nor the trained
        # model evaluated. FSDP2 shards the parameters during training and gathers them for saving and evaluation.
        raise ValueError("DeepSpeed ZeRO-3 is not supported; shard the parameters with configs/accelerate/fsdp.yaml")
    if model_args.model_name_or_path is not None:
        from transformers import AutoProcessor

        model = LlamaMTSKForConditionalGeneration.from_pretrained(model_args.model_name_or_path, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
        return model.freeze_for_training(), processor
    config_fields = {
        name: getattr(model_args, name)
        for name in (
            "audio_rates", "video_rates", "compression", "projector_hidden_size", "projector_layer_norm",
            "lora_strategy", "lora_r", "lora_alpha", "lora_init", "prompt",
        )
        if getattr(model_args, name) is not None
    }
    return assemble_model(
        llm=model_args.llm,
        llm_num_layers=model_args.llm_num_layers,
        llm_config=model_args.llm_config,
        audio_encoder=model_args.audio_encoder or model_args.audio_encoder_config,
        video_encoder=model_args.video_encoder or model_args.video_encoder_config,
        modality=model_args.modality,
        audio_window_seconds=model_args.audio_window_seconds,
        freeze_audio_encoder=model_args.freeze_audio_encoder,
        freeze_video_encoder=model_args.freeze_video_encoder,
        freeze_language_model=model_args.freeze_language_model,
        standardize_audio=model_args.standardize_audio,
        **config_fields,
    )


def load_records(data_args: DataArguments, split: str, extra_dirs: list[str] = ()):
    """One split of `dataset_dir`, joined by the same split of every folder in `extra_dirs` (at most
    `extra_train_max_clips` clips of each, the first ones), without clips longer than `max_clip_seconds`."""
    from datasets import concatenate_datasets

    parts = [load_split(data_args.dataset_dir, split)]
    for folder in extra_dirs:
        extra = load_split(folder, split)
        if data_args.extra_train_max_clips is not None:
            extra = extra.select(range(min(data_args.extra_train_max_clips, len(extra))))
        parts.append(extra.select_columns(parts[0].column_names))
    records = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if data_args.max_clip_seconds is not None:
        kept = [index for index, duration in enumerate(records["duration"]) if duration <= data_args.max_clip_seconds]
        if len(kept) < len(records):
            logger.info(
                "%s: leaving out %d of %d clips longer than max_clip_seconds=%g",
                split, len(records) - len(kept), len(records), data_args.max_clip_seconds,
            )
            records = records.select(kept)
    return records


def noise_source(data_args: DataArguments, train_records, seed: int) -> NoiseSource:
    if data_args.noise_file is not None:
        return NoiseSource.from_file(data_args.noise_file)
    return babble_from_records(train_records, seed=seed)


def average_last_checkpoints(model, output_dir: str, count: int) -> list[Path]:
    """Loads the mean of the last `count` checkpoints into `model`; returns the checkpoints used. Frozen parameters,
    the same in every checkpoint, keep the model's values."""
    folders = last_checkpoints(output_dir, count)
    if len(folders) < 2:
        return folders
    parameters = model.named_parameters(remove_duplicate=False)
    frozen = {name for name, parameter in parameters if not parameter.requires_grad}
    missing, unexpected = model.load_state_dict(average_checkpoints(folders, frozen=frozen), strict=False)
    tied = {name for name in missing if name.endswith("lm_head.weight")}  # saved once, with the embedding
    if unexpected or set(missing) - frozen - tied:
        raise ValueError(f"Averaged checkpoints do not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return folders


def transcribe_example(final_dir: Path, record: dict, scale: tuple) -> str:
    """One held-out clip through the automatic-speech-recognition pipeline, loaded from the saved folder."""
    from transformers import pipeline

    recognizer = pipeline("automatic-speech-recognition", model=str(final_dir), trust_remote_code=True)
    modality = recognizer.model.config.modality
    if modality == "audio":
        source = record["audio"]["bytes"]  # audio-only corpora have no video at all
    elif modality == "video":
        source = record["video"]["bytes"]
    else:
        source = {"audio": record["audio"]["bytes"], "video": record["video"]["bytes"]}
    return recognizer(source, scale=scale)["text"]


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_arguments(argv)
    check_resume_checkpoint(training_args.resume_from_checkpoint)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout)
    torch.set_flush_denormal(True)  # denormal floats made CPU training steps several times slower on x86
    started = time.monotonic()
    set_seed(training_args.seed)

    corpus = prepare_corpus(data_args, training_args.process_index == 0)
    if training_args.world_size > 1:
        torch.distributed.barrier()
    model, processor = build_model(model_args)
    modality = model.config.modality
    trains_batch_norm = model.config.uses_video and not model.config.freeze_video_encoder
    if training_args.world_size > 1 and trains_batch_norm and torch.cuda.is_available():
        # As the authors: BatchNorm statistics of a trained AV-HuBERT front end over the global batch (GPU only).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_records = load_records(data_args, data_args.train_split, data_args.extra_train_dirs)
    noise = noise_source(data_args, train_records, training_args.seed)

    augmentation = AugmentationConfig(train_snrs_db=tuple(parse_snrs(data_args.train_snrs_db)))
    train_collator = MTSKCollator(
        processor, modality=modality, training=data_args.augment, augmentation=augmentation, noise=noise,
        seed=training_args.seed,
    )
    eval_collator = MTSKCollator(processor, modality=modality, training=False)
    callbacks = []
    if data_args.streaming:
        train_batches = StreamingFrameBatches(
            shard_paths(data_args.dataset_dir, data_args.train_split), data_args.max_frames, seed=training_args.seed
        )
        callbacks.append(StreamingEpochCallback(train_batches, train_collator))
    else:
        lengths = frame_counts(train_records["n_frames"], train_records["duration"])
        train_batches = FrameBatchSampler(lengths, data_args.max_frames, seed=training_args.seed)
    if data_args.decode_once and data_args.cache_audio_encoder_outputs and modality == "audio":
        raise ValueError("decode_once has nothing to do with cache_audio_encoder_outputs for an audio-only model: the "
                         "cache reads every clip once already; drop decode_once")
    train_dataset = train_records
    if data_args.decode_once:  # the same batches as from the files, without a decoding worker competing for the cores
        train_dataset = decode_corpus(train_records, processor, modality, name=data_args.train_split)
    if data_args.cache_audio_encoder_outputs:  # after the sampler has checked every clip fits a batch
        if data_args.streaming:
            raise ValueError("cache_audio_encoder_outputs encodes the whole training split up front: drop streaming")
        check_cacheable(model, data_args.augment)
        # With decode_once, the clips are encoded from the decoded arrays (an audio-visual model keeps their video).
        train_list = [train_dataset[index] for index in range(len(train_dataset))]
        encoder_outputs = encode_audio_records(
            model,
            processor,
            train_list,
            noise=noise,
            noisy_copies=data_args.cached_noisy_copies,
            noisy_snrs_db=[snr for snr in augmentation.train_snrs_db if snr is not None],
            seed=training_args.seed,
        )
        train_collator = EncodedAudioCollator(
            processor,
            encoder_outputs,
            mask_window=data_args.encoder_output_mask_window,
            seed=training_args.seed,
            video_collator=(
                MTSKCollator(processor, modality="video", seed=training_args.seed) if modality == "audiovisual" else None
            ),
        )
        if training_args.audio_ctc_warmup_steps and training_args.resume_from_checkpoint is None:
            warm_up_audio_projectors(
                model,
                train_collator,
                train_list,
                training_args.audio_ctc_warmup_steps,
                batch_size=training_args.audio_ctc_warmup_batch_size,
                learning_rate=training_args.audio_ctc_warmup_learning_rate,
                seed=training_args.seed,
            )
    eval_records = eval_batches = None
    if data_args.eval_split is not None:
        eval_records = load_records(data_args, data_args.eval_split)
        eval_lengths = frame_counts(eval_records["n_frames"], eval_records["duration"])
        eval_batches = FrameBatchSampler(eval_lengths, data_args.max_frames, shuffle=False)
        if data_args.decode_once:
            eval_records = decode_corpus(eval_records, processor, modality, name=data_args.eval_split)
    if training_args.max_train_minutes is not None:
        callbacks.append(TimeBudgetCallback(training_args.max_train_minutes))

    trainer = MatryoshkaTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_records,
        processing_class=processor,
        train_batches=train_batches,
        eval_batches=eval_batches,
        train_collator=train_collator,
        eval_collator=eval_collator,
        callbacks=callbacks,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    logged_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "corpus": corpus,
        "trainable_parameters": sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad),
        "steps": trainer.state.global_step,
        "train_loss": train_result.training_loss,  # the mean over the run
        "last_logged_loss": logged_losses[-1] if logged_losses else None,
    }
    # From here on every process holds all the weights (under FSDP2 a plain copy on the gathered shards): process 0
    # saves them, and every process evaluates its share of the test split.
    model = trainer.full_model()
    if training_args.world_size > 1:
        # DDP and FSDP keep the parameters in sync but let each process update its BatchNorm statistics in its last
        # step (and on CPU there is no SyncBatchNorm): give every process the statistics that process 0 saves.
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    trainer.accelerator.wait_for_everyone()  # process 0 has written the last checkpoint before anyone averages
    averaged = average_last_checkpoints(model, training_args.output_dir, training_args.average_last_checkpoints)
    summary["averaged_checkpoints"] = [folder.name for folder in averaged]
    summary["train_minutes"] = (time.monotonic() - started) / 60

    final_dir = Path(training_args.output_dir) / "final"
    if trainer.is_world_process_zero():
        save_checkpoint(final_dir, model, processor, model_name=training_args.hub_model_id)
    test_records = load_records(data_args, data_args.test_split)
    if training_args.eval_max_samples is not None:
        test_records = test_records.select(range(min(training_args.eval_max_samples, len(test_records))))
    test_list = [test_records[index] for index in range(len(test_records))]
    noise_scales = training_args.eval_noise_scales
    results, _ = evaluate_sweep(
        model,
        processor,
        test_list,
        snrs_db=parse_snrs(training_args.eval_snrs_db),
        noise=noise,
        # [rate] names a scale of a single-modality model, as the plain integer `scale=` takes.
        noise_scales=None if noise_scales is None else [scale[0] if len(scale) == 1 else scale for scale in noise_scales],
        blank_video=training_args.eval_blank_video,
        batch_size=training_args.eval_batch_size,
        generate_kwargs={"num_beams": training_args.eval_num_beams, "max_new_tokens": training_args.eval_max_new_tokens},
        process_index=training_args.process_index,
        num_processes=training_args.world_size,
    )
    if trainer.is_world_process_zero():
        write_report(results, final_dir, title=f"Llama-MTSK on {Path(data_args.dataset_dir).name} / {data_args.test_split}")
        logger.info("WER per scale:\n%s", markdown_table(results))
        save_checkpoint(  # again, with the WER table in the model card
            final_dir,
            model,
            processor,
            wer_table={Path(data_args.dataset_dir).name: wer_table(results)},
            model_name=training_args.hub_model_id,
            push_to_hub=training_args.push_to_hub,
            repo_id=training_args.hub_model_id,
            private=training_args.hub_private_repo,
            token=training_args.hub_token,
        )
        summary["wer"] = {str(scale): value for scale, value in wer_table(results).items()}
        if training_args.transcribe_example:
            example = test_list[0]
            text = transcribe_example(final_dir, example, model.config.scales[0])
            logger.info("pipeline transcript of %s at %s: %r (reference %r)", example["id"], model.config.scales[0], text, example["text"])
            summary["example"] = {"id": example["id"], "reference": example["text"], "transcript": text}
        summary["total_minutes"] = (time.monotonic() - started) / 60
        logger.info("done in %.1f min: %s", summary["total_minutes"], summary)
        # The run's record (times, WER per scale, the pipeline example) for BENCHMARKS.md: run_benchmarks.py --demo.
        (Path(training_args.output_dir) / "run_summary.json").write_text(json.dumps(summary, indent=2))
    # Each process closes its side of the process group before it exits: a process left to exit with gloo's (or
    # DeepSpeed's) threads still running can abort ("terminate called without an active exception").
    trainer.accelerator.end_training()
    return summary


if __name__ == "__main__":
    main()
