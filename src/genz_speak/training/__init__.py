"""Supervised fine-tuning (LoRA/QLoRA, TRL SFTTrainer) and merging the adapter into a deployable model."""
