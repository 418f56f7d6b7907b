"""Training-time baselines: methods that change the policy's weights (DPO), compared with inference-time search."""

from spi_align.train.dpo import preference_dataset, train_dpo

__all__ = ["preference_dataset", "train_dpo"]
