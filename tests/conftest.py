import pytest
import torch

# Small knobs so that every variant runs on tiny CPU shapes (heads=2, head_dim=16, N<=128).
SMALL_KNOBS = {
    "full": {},
    "flash": {},
    "local": {"window": 16},
    "bigbird": {"block_size": 16},
    "reformer": {"bucket_size": 16, "n_hashes": 2},
    "random_feature": {"num_features": 64},
    "performer": {"num_features": 64},
    "linear": {},
    "linformer": {"k": 32},
    "nystrom": {"landmarks": 8},
}


def small_variant(name, **overrides):
    import attention_variants as av

    cfg = {"heads": 2, "head_dim": 16, "max_length": 128, **SMALL_KNOBS.get(name, {}), **overrides}
    return av.build(name, **cfg)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
