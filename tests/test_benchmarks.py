"""The benchmark command runs end to end (tiny shapes) and writes its JSON and report; speed itself is not asserted."""

import json
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def test_benchmark_command_writes_results_and_report(tmp_path):
    results, report = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    command = [sys.executable, str(REPO / "benchmarks" / "run_benchmarks.py"), "--smoke", "--results", str(results), "--report", str(report)]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]

    cpu = json.loads(results.read_text())["cpu"]
    assert [row["scale"] for row in cpu["inference_per_scale"]] == [[4, 2], [4, 5], [16, 2], [16, 5]]
    tokens = [row["llm_tokens"] for row in cpu["inference_per_scale"]]
    assert tokens[0] > tokens[1] > tokens[3] and tokens[0] > tokens[2] > tokens[3]
    assert all(row["prefill_s"] > 0 and row["generate_s"] > 0 for row in cpu["inference_per_scale"])
    assert {row["lora_strategy"] for row in cpu["overhead"]} == {"none", "mss"}
    assert cpu["batching"]["batch_size"] == 8 and cpu["batching"]["speedup"] > 0
    assert len(cpu["training_step"]) == len(cpu["training_memory"]) == 4
    assert cpu["data_pipeline"]["decode_augment_x_real_time"] > 0

    text = report.read_text()
    for heading in ("1. Cost per scale", "2. Overhead", "3. Batching", "4. The Matryoshka training step", "5. The data pipeline"):
        assert heading in text
    assert "one stacked pass (ours)" in text and "one pass per scale (authors)" in text
