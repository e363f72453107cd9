#!/usr/bin/env bash
# SFT before RL, measured on the CPU: SmolLM2-135M-Instruct is fine-tuned on 48 GSM8K reference solutions
# written in the <reasoning>/<answer> format, then the first GRPO steps of the SFT model and of the untrained
# model are compared on the GSM8K format rewards. Prints reward means per step for both.
# Usage: bash benchmarks/sft_then_grpo.sh [OUT_DIR]   (needs ../shared/data/gsm8k or task.data_dir)
set -euo pipefail
OUT=${1:-outputs/sft-then-grpo}
DATA=${GSM8K_DIR:-../shared/data/gsm8k}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false
rlvr sft model=smollm2 task.data_dir=$DATA task.max_train_rows=48 sft.max_steps=24 sft.batch_size=4 sft.lr=5e-5 \
  sft.max_length=512 sft.progress=false sft.log_steps=4 hydra.run.dir=$OUT/sft
GRPO="task=gsm8k task.data_dir=$DATA reward=[gsm8k_soft_format,gsm8k_strict_format] trainer.max_steps=3
  trainer.prompts_per_step=4 trainer.num_generations=4 engine.max_new_tokens=200 trainer.eval_steps=0
  trainer.progress=false trainer.log_steps=1 trainer.seed=0"
rlvr train model=smollm2 $GRPO hydra.run.dir=$OUT/grpo-base
rlvr train model=hf model.name_or_path=$OUT/sft/final $GRPO hydra.run.dir=$OUT/grpo-sft
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("grpo-base", "grpo-sft"):
    for line in open(f"{out}/{name}/metrics.jsonl"):
        m = json.loads(line)
        print(f"{name:10s} step {m['step']}: soft_format {m['rewards/gsm8k_soft_format/mean']:.3f}  "
              f"strict_format {m['rewards/gsm8k_strict_format/mean']:.3f}  length {m['completion_length/mean']:.0f}")
PY
