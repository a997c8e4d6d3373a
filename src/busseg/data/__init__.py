"""Data handling: raw BUSI reading, near-duplicate grouping, splitting, datasets, augmentation."""
