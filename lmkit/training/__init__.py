"""Training: one loop shared by pretraining and finetuning, parameterized by an objective."""
