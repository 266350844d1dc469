"""Phase 2, self-reflection: preference pairs from the student's own sampled chains, and the DPO + RPO loss."""
