"""The training loop both phases share (`loop`, `step`, `checkpointing`, `optimizers`, `metrics`) and phase 1
(SFT): its stage streams, their block schedule and the trainer."""
