"""What both phases share: data and model set-up, validation, the training loop (`loop`, `step`, `streams`,
`schedule`, `optimizers`, `metrics`), training checkpoints and the best model, step markers, and the
`PhaseResult` every phase's `done.json` holds. `training/` (phase 1) and `reflection/` (phase 2) build on it
and never import each other."""
