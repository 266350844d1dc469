"""Phase 1, reasoning acquisition: SFT on the teacher's stage data, the stages interleaved in blocks."""
