"""Phase 1 (SFT) training: stage streams, their block schedule, the trainer and evaluation."""
