"""Phase 1 on the toy world: the mini student learns it far above chance in minutes on this CPU.

This is the one slow test (under 6 minutes alone on 2 cores, about 11 beside the rest of the suite,
which it starts with): it is the evidence that the whole phase, data to evaluation, works. Chance is
50% (yes/no). The experiment gin trains 6 epochs (94% on the first 100 validation questions, 8 min);
this test trains 5 (1,800 steps), measured at 89% in 5 min 44 s, and asks for 30 points over chance.
Cheaper settings fall off fast (1,500 steps: 76%; 3 epochs: chance; batch 16 for 3 epochs: 61%;
learning rate 2e-3 for 4 epochs: 46%), because the analyze stage learns late to compare the
question's claim with the recalled fact."""

import json
import os

import gin
from tinythinker_jax import cli
from tinythinker_jax.data import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANCE = 0.5
REQUIRED = 0.8


def test_sft_learns_the_toy_world_far_above_chance(tmp_path):
    data_dir = str(tmp_path / "toyworld_yesno")
    prepare.ensure_prepared("toyworld_yesno", data_dir)
    model_dir = tmp_path / "model"
    argv = ["train", "--gin_search_paths", REPO, "--gin_file=gin/runs/sft.gin",
            "--gin_file=gin/experiments/toyworld_yesno_t5_mini_sft.gin", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.DATA_DIR='{data_dir}'", "--gin.trainer.train.eval_every=100000",  # evaluate once, at the end
            "--gin.trainer.train.max_eval_questions=100", "--gin.EPOCHS=5"]
    try:
        assert cli.main(argv) == 0
    finally:
        gin.clear_config()
    best = json.load(open(model_dir / "best" / "best.json"))
    assert best["validation_accuracy"] >= REQUIRED > CHANCE
