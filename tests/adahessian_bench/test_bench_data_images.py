"""Image data: the real Fashion-MNIST files, CIFAR-10, fetching (offline paths and errors),
batching."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from adahessian_bench import data, data_images, fetchers


def test_fashion_mnist_files_have_the_published_shapes_and_counts(fmnist_dir: Path) -> None:
    a = data_images.load_fashion_mnist(fmnist_dir)
    assert a.x_train.shape == (60000, 28, 28)
    assert a.x_test.shape == (10000, 28, 28)
    assert a.x_train.dtype == np.uint8 and a.x_test.dtype == np.uint8
    assert a.x_train.min() == 0 and a.x_train.max() == 255
    assert a.x_test.min() == 0 and a.x_test.max() == 255
    assert a.y_train.shape == (60000,) and a.y_test.shape == (10000,)
    assert np.bincount(a.y_train).tolist() == [6000] * 10
    assert np.bincount(a.y_test).tolist() == [1000] * 10
    # Not all one image: the classes differ in their mean brightness.
    means = [a.x_train[a.y_train == c].mean() for c in range(10)]
    assert max(means) - min(means) > 10


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_fetch_copies_the_installed_debian_package(
    fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path))
    monkeypatch.setattr(data_images, "SYSTEM_FMNIST_DIR", fmnist_dir)
    _no_network(monkeypatch)
    dest = fetchers.fetch("fashion-mnist", verbose=False)
    assert dest == tmp_path / "fashion-mnist"
    for name in data_images.FMNIST_FILES.values():
        assert (dest / name).read_bytes() == (fmnist_dir / name).read_bytes()
    assert data_images.load_fashion_mnist(dest).x_test.shape == (10000, 28, 28)


def test_fetch_keeps_a_complete_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path))
    monkeypatch.setattr(data_images, "SYSTEM_FMNIST_DIR", tmp_path / "absent")
    _no_network(monkeypatch)
    (tmp_path / "fashion-mnist").mkdir()
    for name in data_images.FMNIST_FILES.values():
        (tmp_path / "fashion-mnist" / name).write_bytes(b"cached")
    assert fetchers.fetch("fashion-mnist", verbose=False) == tmp_path / "fashion-mnist"
    assert (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes() == b"cached"


def test_fetch_without_any_source_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path))
    monkeypatch.setattr(data_images, "SYSTEM_FMNIST_DIR", tmp_path / "absent")
    monkeypatch.setattr(data_images.shutil, "which", lambda name: None)  # no apt-get, no dpkg
    _no_network(monkeypatch)
    with pytest.raises(data.DataUnavailable, match="apt-get install dataset-fashion-mnist"):
        fetchers.fetch("fashion-mnist", verbose=False)


def test_fetch_without_the_package_unpacks_it_from_apt_get_download(
    fetch_fmnist: Callable[[Path], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way the tests get the data on a machine without root: `apt-get download` + `dpkg -x`
    of the Debian package into the cache (here with no package installed and no other network)."""
    monkeypatch.setattr(data_images, "_fmnist_complete", lambda d: False)  # as if not installed
    _no_network(monkeypatch)  # the Debian mirror only, through apt-get
    dest = fetch_fmnist(tmp_path / "cache")
    assert dest == tmp_path / "cache" / "fashion-mnist"
    assert sorted(p.name for p in dest.iterdir()) == sorted(data_images.FMNIST_FILES.values())
    # checked on reading
    assert data_images.load_fashion_mnist(dest).x_test.shape == (10000, 28, 28)


def test_the_tests_fail_with_the_reason_when_the_data_cannot_be_fetched(
    fetch_fmnist: Callable[[Path], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_images, "SYSTEM_FMNIST_DIR", tmp_path / "absent")
    monkeypatch.setattr(data_images.shutil, "which", lambda name: None)  # no apt-get, no dpkg
    _no_network(monkeypatch)
    with pytest.raises(pytest.fail.Exception, match="could not be fetched into") as e:
        fetch_fmnist(tmp_path / "cache")
    assert "apt-get install dataset-fashion-mnist" in str(e.value)  # what to do
    assert "apt-get/dpkg not found" in str(e.value)  # what was tried


def test_cifar10_offline_error_says_where_to_put_the_tarball(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path))
    _no_network(monkeypatch)
    with pytest.raises(data.DataUnavailable, match=r"cifar-10-python\.tar\.gz") as e:
        fetchers.fetch("cifar10", verbose=False)
    assert data_images.CIFAR10_URL in str(e.value)


def test_read_idx_checks_the_header(tmp_path: Path) -> None:
    good = tmp_path / "good.gz"
    header = (0x0803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (2, 3, 4))
    good.write_bytes(gzip.compress(header + bytes(range(24))))
    assert data_images.read_idx(good).tolist() == np.arange(24).reshape(2, 3, 4).tolist()
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(gzip.compress(header + bytes(23)))
    with pytest.raises(ValueError, match="header says"):
        data_images.read_idx(truncated)
    not_bytes = tmp_path / "float.gz"
    not_bytes.write_bytes(gzip.compress((0x0D01).to_bytes(4, "big") + (1).to_bytes(4, "big")))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        data_images.read_idx(not_bytes)


def test_balanced_subset_is_balanced_and_fixed() -> None:
    labels = np.repeat(np.arange(10), 50)
    idx = data_images.balanced_subset(labels, 100)
    assert np.bincount(labels[idx]).tolist() == [10] * 10
    assert len(set(idx.tolist())) == 100
    assert np.array_equal(idx, data_images.balanced_subset(labels, 100))
    with pytest.raises(ValueError, match="multiple"):
        data_images.balanced_subset(labels, 15)


def test_to_nchw32_centres_28x28_images() -> None:
    x = np.full((2, 28, 28), 7, np.uint8)
    t = data_images.to_nchw32(x)
    assert t.shape == (2, 1, 32, 32) and t.dtype == torch.uint8
    assert int(t[:, :, 2:30, 2:30].min()) == 7
    assert int(t.sum()) == 7 * 2 * 28 * 28  # zeros around
    rgb = data_images.to_nchw32(np.zeros((3, 32, 32, 3), np.uint8))
    assert rgb.shape == (3, 3, 32, 32)


def _batches(seed: int, augment: bool, n: int = 10) -> data_images.Batches:
    images = torch.randint(0, 256, (n, 1, 32, 32), generator=torch.Generator().manual_seed(9))
    return data_images.Batches(
        images.to(torch.uint8),
        torch.arange(n),  # the label is the example's index
        mean=(0.5,),
        std=(0.25,),
        batch_size=4,
        device=torch.device("cpu"),
        augment=augment,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def test_batches_cover_every_example_once_per_epoch_in_a_seeded_order() -> None:
    b = _batches(seed=0, augment=False)
    assert len(b) == 3
    epoch1 = [(x.clone(), y.clone()) for x, y in b]
    assert [len(y) for _, y in epoch1] == [4, 4, 2]
    order = torch.cat([y for _, y in epoch1])
    assert sorted(order.tolist()) == list(range(10))
    for x, y in epoch1:  # normalised, no augmentation
        expected = (b.images[y].float() / 255 - 0.5) / 0.25
        assert torch.allclose(x, expected)
    epoch2 = torch.cat([y for _, y in b])
    assert not torch.equal(order, epoch2)  # reshuffled
    same_seed = torch.cat([y for _, y in _batches(seed=0, augment=False)])
    assert torch.equal(order, same_seed)


def test_augmentation_is_a_random_crop_of_the_padded_image_and_a_flip() -> None:
    b = _batches(seed=1, augment=True)
    x = b.images.float() / 255
    state = b.generator.get_state() if b.generator is not None else None
    out = b._crop_flip(x)
    g = torch.Generator()
    g.set_state(state)
    oy = torch.randint(0, 9, (10,), generator=g)
    ox = torch.randint(0, 9, (10,), generator=g)
    flip = torch.rand(10, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(10):
        ref = padded[i, :, oy[i] : oy[i] + 32, ox[i] : ox[i] + 32]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    # The same seed gives the same augmented batches.
    first = [x for x, _ in _batches(seed=3, augment=True)]
    again = [x for x, _ in _batches(seed=3, augment=True)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_cifar10_tarball_in_the_cache_is_checked_unpacked_and_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A miniature tarball in CIFAR-10's layout: 5 training batches of 2 images and a test batch.
    def batch(n: int, label: int) -> bytes:
        images = np.arange(n * 3072, dtype=np.int64).reshape(n, 3072) % 256
        return pickle.dumps({b"data": images.astype(np.uint8), b"labels": [label] * n})

    (tmp_path / "cifar10").mkdir()
    tarball = tmp_path / "cifar10" / data_images.CIFAR10_TARBALL
    with tarfile.open(tarball, "w:gz") as tf:
        members = {f"data_batch_{i}": batch(2, i) for i in range(1, 6)}
        members["test_batch"] = batch(3, 9)
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path))
    _no_network(monkeypatch)
    with pytest.raises(data.DataUnavailable, match="md5"):
        fetchers.fetch("cifar10", verbose=False)
    monkeypatch.setattr(data_images, "CIFAR10_MD5", hashlib.md5(tarball.read_bytes()).hexdigest())
    with pytest.raises(data.DataUnavailable, match="data_batch_1: does not match its MD5"):
        fetchers.fetch("cifar10", verbose=False)  # the batches are checked after unpacking
    digests = {name: hashlib.md5(payload).hexdigest() for name, payload in members.items()}
    monkeypatch.setattr(data_images, "CIFAR10_BATCHES", digests)
    a = data_images.load_cifar10(fetchers.fetch("cifar10", verbose=False))
    assert a.x_train.shape == (10, 32, 32, 3) and a.x_test.shape == (3, 32, 32, 3)
    assert a.y_train.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and a.y_test.tolist() == [9] * 3
    # Channel-first rows of 1024 values per channel become channels-last pixels.
    assert a.x_train[0, 0, 0].tolist() == [0, 1024 % 256, 2048 % 256]
    assert data_images.to_nchw32(a.x_train).shape == (10, 3, 32, 32)


def _idx(path: Path, values: list[int], shape: tuple[int, ...]) -> None:
    header = (0x0800 + len(shape)).to_bytes(4, "big")
    header += b"".join(n.to_bytes(4, "big") for n in shape)
    path.write_bytes(gzip.compress(header + bytes(values)))


def test_fashion_mnist_files_are_checked_whenever_read(
    fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four small files in the IDX format: 3 training and 2 test images of 2x2 pixels.
    files = {name: tmp_path / name for name in data_images.FMNIST_FILES.values()}
    f = data_images.FMNIST_FILES
    _idx(files[f["train_images"]], list(range(12)), (3, 2, 2))
    _idx(files[f["train_labels"]], [0, 1, 9], (3,))
    _idx(files[f["test_images"]], list(range(8)), (2, 2, 2))
    _idx(files[f["test_labels"]], [2, 3], (2,))
    with pytest.raises(data.DataCorrupt, match="does not match its SHA-256") as e:
        data_images.load_fashion_mnist(tmp_path)  # the real files' digests
    assert str(tmp_path / f["train_images"]) in str(e.value)
    assert "`adahessian-bench data fetch fashion-mnist` repairs it" in str(e.value)

    def digests() -> dict[str, str]:
        return {n: hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest()
                for n, p in files.items()}  # fmt: skip

    monkeypatch.setattr(data_images, "FMNIST_SHA256", digests())
    assert data_images.load_fashion_mnist(tmp_path).y_train.tolist() == [0, 1, 9]
    # Counts that differ, and a label that is not a class: errors naming the files.
    _idx(files[f["train_labels"]], [0, 1], (2,))
    monkeypatch.setattr(data_images, "FMNIST_SHA256", digests())
    with pytest.raises(data.DataCorrupt, match="holds 3 images") as e:
        data_images.load_fashion_mnist(tmp_path)
    assert f["train_images"] in str(e.value) and f["train_labels"] in str(e.value)
    _idx(files[f["test_labels"]], [2, 10], (2,))
    _idx(files[f["train_labels"]], [0, 1, 9], (3,))
    monkeypatch.setattr(data_images, "FMNIST_SHA256", digests())
    with pytest.raises(data.DataCorrupt, match=r"labels outside 0\.\.9") as e:
        data_images.load_fashion_mnist(tmp_path)
    assert str(files[f["test_labels"]]) in str(e.value)


def test_the_recorded_fashion_mnist_digests_are_those_of_the_installed_files(
    fmnist_dir: Path,
) -> None:
    # Their content's MD5s are the published ones of the uncompressed files.
    published = {"train-images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                 "train-labels": "9018921c3c673c538a1fc5bad174d6f9",
                 "t10k-images": "8181f5470baa50b63fa0f6fddb340f0a",
                 "t10k-labels": "15d484375f8d13e6eb1aabb0c3f46965"}  # fmt: skip
    for name, digest in data_images.FMNIST_SHA256.items():
        raw = gzip.decompress((fmnist_dir / name).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest
        assert hashlib.md5(raw).hexdigest() == published[name[: name.index("-idx")]]


def test_a_damaged_cifar10_batch_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = tmp_path / data_images.CIFAR10_DIR
    batches.mkdir()
    payloads = {}
    for i, name in enumerate(data_images.CIFAR10_BATCHES):
        labels = [i, 11] if name == "data_batch_3" else [i, i]
        b = {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}
        payloads[name] = pickle.dumps(b)
    payloads["data_batch_2"] = payloads["data_batch_2"][:100]  # truncated
    for name, payload in payloads.items():
        (batches / name).write_bytes(payload)
    with pytest.raises(data.DataCorrupt, match="data_batch_1: does not match its MD5") as e:
        data_images.load_cifar10(tmp_path)
    assert "`adahessian-bench data fetch cifar10` repairs it" in str(e.value)
    digests = {n: hashlib.md5(p).hexdigest() for n, p in payloads.items()}
    monkeypatch.setattr(data_images, "CIFAR10_BATCHES", digests)
    with pytest.raises(data.DataCorrupt, match="data_batch_2: not a CIFAR-10 batch"):
        data_images.load_cifar10(tmp_path)
    (batches / "data_batch_2").write_bytes(payloads["data_batch_1"])
    digests["data_batch_2"] = digests["data_batch_1"]
    with pytest.raises(data.DataCorrupt, match=r"data_batch_3: labels outside 0\.\.9"):
        data_images.load_cifar10(tmp_path)
