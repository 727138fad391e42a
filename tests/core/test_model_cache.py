"""The session model cache: keys follow the files' identity, one run per cached model, bounded, thread-safe."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from mc_uncertainty_plugin.core.models.cache import ModelCache, model_key


class Loader:
    """Counts loads; each load returns a new object (a stand-in for a model)."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls = 0
        self.seconds = seconds
        self._lock = threading.Lock()

    def __call__(self) -> object:
        with self._lock:
            self.calls += 1
        time.sleep(self.seconds)
        return object()


def touch(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def bump_mtime(path: str) -> None:
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_second_lease_reuses_the_model(tmp_path: Path) -> None:
    key = model_key(touch(tmp_path / "m.pt", "x"), device="cpu")
    cache: ModelCache[object] = ModelCache(capacity=2)
    load = Loader()
    with cache.lease(key, load) as first:
        assert (first.reused, first.cached) == (False, True)
    with cache.lease(model_key(tmp_path / "m.pt", device="cpu"), load) as second:
        assert second.reused and second.value is first.value
    assert load.calls == 1


def test_a_model_in_use_is_not_shared(tmp_path: Path) -> None:
    key = model_key(touch(tmp_path / "m.pt", "x"))
    cache: ModelCache[object] = ModelCache()
    load = Loader()
    with cache.lease(key, load) as first, cache.lease(key, load) as second:
        assert second.value is not first.value and not second.reused and not second.cached
    with cache.lease(key, load) as third:
        assert third.value is first.value  # the cached one, free again
    assert load.calls == 2 and len(cache) == 1


def test_least_recently_used_goes_first(tmp_path: Path) -> None:
    keys = {name: model_key(touch(tmp_path / f"{name}.pt", name)) for name in "abc"}
    cache: ModelCache[object] = ModelCache(capacity=2)
    load = Loader()
    for name in ("a", "b", "a", "c"):  # a is used again after b: b is the least recent when c arrives
        with cache.lease(keys[name], load):
            pass
    assert cache.keys() == [keys["a"], keys["c"]] and load.calls == 3
    with cache.lease(keys["b"], load) as lease:
        assert not lease.reused


def test_an_entry_in_use_is_never_evicted(tmp_path: Path) -> None:
    a, b = (model_key(touch(tmp_path / f"{n}.pt", n)) for n in "ab")
    cache: ModelCache[object] = ModelCache(capacity=1)
    with cache.lease(a, Loader()) as held, cache.lease(b, Loader()) as other:
        assert held.cached and not other.cached  # b could only be kept by evicting a, which is in use
    assert cache.keys() == [a]


def test_failed_load_caches_nothing(tmp_path: Path) -> None:
    key = model_key(touch(tmp_path / "m.pt", "x"))
    cache: ModelCache[object] = ModelCache()

    def broken() -> object:
        raise ValueError("bad model")

    with pytest.raises(ValueError, match="bad model"), cache.lease(key, broken):
        pass
    assert len(cache) == 0


def test_key_follows_the_files_identity(tmp_path: Path) -> None:
    model = touch(tmp_path / "m.yaml", "model: {_target_: torch.nn.Identity}\ncheckpoint_path: w.pth\n")
    weights = touch(tmp_path / "w.pth", "1")
    before = model_key(model, device="cpu")
    assert before == model_key(model, device="cpu")
    assert before != model_key(model, device="cuda")
    assert before != model_key(model, weights, device="cpu")  # given explicitly: another key
    bump_mtime(weights)  # the config's checkpoint_path changed on disk, the config did not
    assert model_key(model, device="cpu") != before
    after_weights = model_key(model, device="cpu")
    Path(model).write_text(Path(model).read_text() + "# edited\n", encoding="utf-8")
    assert model_key(model, device="cpu") != after_weights
    assert model_key(model, options=("x.",)) != model_key(model)


def test_checkpoint_path_with_interpolation_is_followed(tmp_path: Path) -> None:
    model = touch(tmp_path / "m.yaml", "paths: {ckpt: w.pth}\ncheckpoint_path: ${paths.ckpt}\nmodel: {}\n")
    weights = touch(tmp_path / "w.pth", "1")
    before = model_key(model)
    assert before.files[0] is not None and before.files[0].path == os.path.realpath(weights)
    bump_mtime(weights)
    assert model_key(model) != before


def test_torchscript_sidecar_is_part_of_the_key(tmp_path: Path) -> None:
    model = touch(tmp_path / "net.pt", "x")
    before = model_key(model)
    touch(tmp_path / "net.yaml", "class_names: [a, b]\n")
    assert model_key(model) != before


def test_concurrent_leases_never_share_a_model(tmp_path: Path) -> None:
    key = model_key(touch(tmp_path / "m.pt", "x"))
    cache: ModelCache[object] = ModelCache(capacity=2)
    load = Loader(seconds=0.005)
    holders: dict[int, int] = {}
    clashes: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(20):
            with cache.lease(key, load) as lease:
                with lock:
                    holders[id(lease.value)] = holders.get(id(lease.value), 0) + 1
                    if holders[id(lease.value)] > 1:
                        clashes.append(id(lease.value))
                time.sleep(0.001)
                with lock:
                    holders[id(lease.value)] -= 1

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clashes == []
    assert len(cache) == 1
    assert load.calls < 6 * 20  # the cached model served most leases


def test_reuse_reports_the_age(tmp_path: Path) -> None:
    now = [100.0]
    cache: ModelCache[object] = ModelCache(clock=lambda: now[0])
    key = model_key(touch(tmp_path / "m.pt", "x"))
    with cache.lease(key, Loader()):
        pass
    now[0] += 42
    with cache.lease(key, Loader()) as lease:
        assert lease.reused and lease.age_s == pytest.approx(42)
