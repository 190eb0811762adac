"""Training core: DPO + cross-entropy loss and answer log-probabilities (plain PyTorch)."""
