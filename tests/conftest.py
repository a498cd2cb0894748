import pytest
import torch
from _tiny import load_tool_module


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    """The tests use tiny tensors: intra-op threads gain nothing and, on a loaded 2-core machine, OpenMP
    spinning makes them 10-100x slower. (Subprocess tests run their tools with the default threads.)"""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A tiny synthetic Occluded-Duke (64x32 images, 8 training identities) in the real folder layout, shared by the
    end-to-end tests (read only)."""
    from fastreid_dpmpp.data.synthetic import make_synthetic_benchmark
    root = tmp_path_factory.mktemp("datasets")
    make_synthetic_benchmark(str(root), seed=0, layout="occluded_duke", image_size=(64, 32), num_train_ids=8,
                             images_per_train_id=4, num_test_ids=6, gallery_images_per_id=3, num_distractor_ids=4)
    return str(root)


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory):
    """A small synthetic Occluded-Duke at the default 128x64 size (Stage II and SPT tool runs; read only)."""
    from fastreid_dpmpp.data.synthetic import make_synthetic_benchmark
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_benchmark(str(root), seed=0, layout="occluded_duke", num_train_ids=8, images_per_train_id=4,
                             num_test_ids=4, max_queries_per_id=1, gallery_images_per_id=3, num_distractor_ids=0)
    return str(root)


@pytest.fixture
def load_tool():
    """Import tools/<name>.py as a module (its main() is then called in-process)."""
    return load_tool_module
