"""Train the tiny model in its own process; with --kill-at N the process dies (os._exit) at the end of step N,
as a Kaggle session does when it is stopped. Used by test_failures.py to check resuming."""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from transformers import TrainerCallback  # noqa: E402

from medical_r1 import (
    artifacts,  # noqa: E402
    params,  # noqa: E402
)
from medical_r1 import data as data_mod  # noqa: E402
from medical_r1 import models as models_mod  # noqa: E402
from medical_r1 import runtime as rt_mod  # noqa: E402
from medical_r1 import training as training_mod  # noqa: E402


class DieAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os._exit(3)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--kill-at", type=int, default=0)
    args = parser.parse_args()
    p = params.Params(work_dir=args.work_dir, model_name=args.model, max_steps=8, batch_size=2, grad_accum=2,
                  warmup_steps=2, learning_rate=5e-3, eval_steps=100, save_steps=2, report_to="none", val_size=0)
    rt = rt_mod.detect_runtime()
    model, tok = models_mod.load_model_and_tokenizer(args.model, "cpu", rt, p.max_seq_length)
    rows = data_mod.load_sft_rows(str(data_mod.SAMPLE_DATA_DIR), "en")
    records, _ = data_mod.format_rows(rows[:24], tok, p.template, p.max_seq_length)
    model = models_mod.add_lora(model, "cpu", p)
    trainer = training_mod.make_trainer(model, tok, records, [], p, "cpu", rt)
    if args.kill_at:
        trainer.add_callback(DieAtStep(args.kill_at))
    training_mod.train(trainer, p)
    artifacts.save_pretrained_atomic(artifacts.artifact(p.work_dir, "adapter"), model, tok)


if __name__ == "__main__":
    main()
