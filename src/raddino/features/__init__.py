"""Feature store: sharded, resumable on-disk storage of encoder outputs, readable with numpy."""

from raddino.features.store import (
    Features,
    FeatureStoreWriter,
    LayerFeatures,
    ShardedArray,
    StoreMismatchError,
    StoreSummary,
    load_features,
)

__all__ = [
    "FeatureStoreWriter",
    "Features",
    "LayerFeatures",
    "ShardedArray",
    "StoreMismatchError",
    "StoreSummary",
    "load_features",
]
