"""Replays the Kubernetes atomic writer (pkg/volume/util/atomic_writer.go in
https://github.com/kubernetes/kubernetes) for the benchmark scripts:
timestamped directory, ..data_tmp symlink renamed over ..data, visible
symlinks through ..data, old directory removed."""
import os
import shutil
import time

_seq = 0


def write(root, files):
    global _seq
    os.makedirs(root, exist_ok=True)
    _seq += 1
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}{_seq}"
    new_dir = os.path.join(root, stamp)
    os.mkdir(new_dir, 0o755)
    for name, value in files.items():
        with open(os.path.join(new_dir, name), "wb") as f:
            f.write(value.encode() if isinstance(value, str) else value)
        os.chmod(os.path.join(new_dir, name), 0o644)
    data = os.path.join(root, "..data")
    old = os.readlink(data) if os.path.islink(data) else None
    for name in files:
        link = os.path.join(root, name)
        if not os.path.islink(link):
            os.symlink(os.path.join("..data", name), link)
    tmp = os.path.join(root, "..data_tmp")
    os.symlink(stamp, tmp)
    os.rename(tmp, data)
    if old:
        shutil.rmtree(os.path.join(root, old))
