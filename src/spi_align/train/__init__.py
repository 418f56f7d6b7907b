"""Training with transformers' trainers: the training-time baseline that changes the policy's weights (DPO, compared
with inference-time search), and the reward model's top layers tuned by Bradley–Terry (`reward_trainer.py`)."""

from spi_align.train.dpo import preference_dataset, train_dpo

__all__ = ["preference_dataset", "train_dpo"]
