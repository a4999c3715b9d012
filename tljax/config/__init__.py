"""Config fields: their types, accepted ranges and what each changes (numbers, pretraining)."""
