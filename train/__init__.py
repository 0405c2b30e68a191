"""Fine-tuning: data, degradation, losses, the training loop, evaluation and export."""
