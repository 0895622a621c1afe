"""Evaluation: held-out final-answer accuracy and response NLL of any model."""
