"""Training: TRL SFTTrainer with token losses, the train entry point, launchers, reference models, token labels."""
