"""training: PPO on the environment (`poa-gym train`), checkpoints, W&B, ONNX export."""
