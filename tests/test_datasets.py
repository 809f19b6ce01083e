import numpy as np
import torch

from datasets import balanced_subset, make_loader, random_subset


def test_synthetic_splits_yield_contract_items(tiny_synthetic_splits):
    train = tiny_synthetic_splits.train
    image, target, group_code, sample_id = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert target == train.metadata.loc[0, "target"]
    assert train.group_names[group_code] == train.metadata.loc[0, "group"]
    assert sample_id == train.metadata.loc[0, "sample_id"]
    assert train.synthetic and tiny_synthetic_splits.info["synthetic"]
    assert train.group_names == ["Female/Old", "Female/Young", "Male/Old", "Male/Young"]


def test_loader_batches_and_balanced_subset(tiny_synthetic_splits):
    train = tiny_synthetic_splits.train
    images, targets, groups, ids = next(iter(make_loader(train, 16, shuffle=True, seed=1)))
    assert images.shape == (16, 3, 32, 32) and len(ids) == 16
    counts = balanced_subset(train, 80, seed=0).group_counts()
    assert sorted(counts.values()) == [20, 20, 20, 20]
    assert sum(random_subset(train, 80, seed=0).group_counts().values()) == 80
