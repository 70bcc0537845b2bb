"""reid: person and vehicle re-identification with the strong baseline and knowledge distillation."""

__version__ = "0.1.0"
