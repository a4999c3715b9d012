"""Data: datasets (TFDS, digits, image folders), their preparation, identity and input pipeline."""
