import pytest
import torch


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
