"""`make data-inr` (datamodules.signals.download) offline: urllib serves local bytes, never the network."""

import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from datamodules.signals import download as dl
from datamodules.signals.base import SAMPLES

REPO = Path(__file__).resolve().parents[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def served(monkeypatch):
    """``served[url] = bytes`` (or an exception to raise); ``served.requests`` lists the URLs asked for.
    Any socket connection fails the test: nothing here may reach the network."""

    class Served(dict):
        requests: list

    table = Served()
    table.requests = []

    def urlopen(request, timeout=None):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        table.requests.append(url)
        answer = table.get(url, urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")))
        if isinstance(answer, Exception):
            raise answer
        return _Response(answer)

    def no_network(*args, **kwargs):
        raise AssertionError("a test of the downloader tried to open a network connection")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return table


def test_recorded_table_covers_the_full_sets():
    targets = [f.target for f in dl.FILES]
    assert len(targets) == len(set(targets)) == 24 + 4 + 2
    assert {f"kodak/kodim{i:02d}.png" for i in range(1, 25)} <= set(targets)
    assert {"audio/gt_bach.wav", "audio/gt_counting.wav", "audio/gt_twospeakers.wav",
            "audio/gt_twospeakers_segments.json", "meshes/bunny.off", "meshes/armadillo.off"} <= set(targets)
    for f in dl.FILES:
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256), f.target
        assert (f.url is None) != (f.deb is None), f.target
        assert f.url is None or f.url.startswith(f"{dl.NEURAL_EXPERTS}/"), f.target
    assert dl.NEURAL_EXPERTS_COMMIT in dl.NEURAL_EXPERTS  # pinned: the raw URLs do not move
    assert all(u.startswith("https://") for u in dl.LIBCGAL_DEMO.urls)


def test_checksum_ok_downloads_then_skips(served, tmp_path, capsys):
    files = [f for f in dl.FILES if f.target in ("kodak/kodim19.png", "audio/gt_bach.wav")]
    for f in files:
        served[f.url] = (SAMPLES / f.target).read_bytes()  # the bundled copies are the reference bytes
    assert dl.download(tmp_path / "data", files) == 0
    for f in files:
        assert (tmp_path / "data" / f.target).read_bytes() == (SAMPLES / f.target).read_bytes()
    assert not list((tmp_path / "data").rglob("*.part"))
    assert "downloaded, checksum ok" in capsys.readouterr().out
    served.requests.clear()
    assert dl.download(tmp_path / "data", files) == 0  # second run: present and verified, no request
    assert served.requests == []
    assert capsys.readouterr().out.count("present, checksum ok") == 2


def test_checksum_mismatch_deletes_the_download_and_says_so(served, tmp_path, capsys):
    good, bad = [f for f in dl.FILES if f.target in ("kodak/kodim19.png", "audio/gt_bach.wav")]
    served[good.url] = (SAMPLES / good.target).read_bytes()
    served[bad.url] = b"RIFF, but not the clip"
    stale = tmp_path / bad.target
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an older, wrong copy")  # a wrong file already there is fetched again
    assert dl.download(tmp_path, [good, bad]) == 1
    out, err = capsys.readouterr()
    assert "checksum differs from the recorded one, downloading it again" in out
    assert f"{stale}: checksum mismatch" in err and bad.url in err and bad.sha256 in err and "deleted" in err
    assert not stale.exists() and not list(tmp_path.rglob("*.part"))
    assert (tmp_path / good.target).is_file()  # the other file is still fetched


def test_offline_stops_with_one_clear_message(served, tmp_path, capsys):
    assert dl.main(["--out", str(tmp_path / "data")]) == 1
    out, err = capsys.readouterr()
    first = dl.FILES[0]
    assert err.strip() == (f"cannot reach {first.url}: [Errno -3] Temporary failure in name resolution; "
                           f"copy the files into {tmp_path / 'data' / 'kodak'}/ by hand")
    assert served.requests == [first.url]  # stops at the first unreachable URL
    assert "Traceback" not in out + err and not (tmp_path / "data" / "kodak").exists()


def test_offline_command_exits_1_without_traceback(tmp_path):
    """The real command with every request sent to a closed local port (a proxy that refuses)."""
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed, "HTTPS_PROXY": closed,
           "no_proxy": "", "NO_PROXY": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "datamodules.signals.download", "--out", str(tmp_path / "data"),
                           "--only", "audio"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"cannot reach {dl.NEURAL_EXPERTS}/audio/gt_bach.wav: ")
    assert proc.stderr.strip().endswith(f"copy the files into {tmp_path / 'data' / 'audio'}/ by hand")


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def _tar(files: dict[str, bytes], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fake_deb(meshes: dict[str, bytes]) -> bytes:
    """A .deb laid out like libcgal-demo: data.tar.xz > ./usr/share/doc/libcgal-dev/data.tar.gz > data/meshes/."""
    inner = _tar({f"data/meshes/{n}": b for n, b in meshes.items()}, "w:gz")
    data_tar = _tar({"./usr/share/doc/libcgal-dev/data.tar.gz": inner}, "w:xz")
    return _ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar({}, "w:xz"), "data.tar.xz": data_tar})


def test_meshes_come_out_of_the_debian_package(served, tmp_path):
    import trimesh

    from datamodules import SDFSamples

    box = io.BytesIO()
    trimesh.creation.box(extents=(1.0, 2.0, 3.0)).export(box, file_type="off")
    sphere = io.BytesIO()
    trimesh.creation.icosphere(subdivisions=2).export(sphere, file_type="off")
    meshes = {"bunny00.off": box.getvalue(), "armadillo.off": sphere.getvalue()}
    deb = fake_deb(meshes)
    package = dl.DebPackage("fake.deb", ("https://mirror.invalid/fake.deb", "https://snapshot.invalid/fake.deb"),
                            sha(deb), "usr/share/doc/libcgal-dev/data.tar.gz")
    files = [dl.Remote("meshes/bunny.off", sha(meshes["bunny00.off"]), deb=package, member="data/meshes/bunny00.off"),
             dl.Remote("meshes/armadillo.off", sha(meshes["armadillo.off"]), deb=package,
                       member="data/meshes/armadillo.off")]
    served["https://snapshot.invalid/fake.deb"] = deb  # the first mirror is unreachable: the second serves
    assert dl.download(tmp_path, files) == 0
    assert served.requests == list(package.urls)  # one package download for both meshes
    assert (tmp_path / "meshes" / "bunny.off").read_bytes() == meshes["bunny00.off"]
    data = SDFSamples(str(tmp_path / "meshes" / "bunny.off"), n_surface=10, n_near=10, n_far=10, surface_samples=500)
    assert len(data.mesh.faces) == 12


def test_debian_package_with_a_wrong_checksum_is_discarded(served, tmp_path, capsys):
    deb = fake_deb({"bunny00.off": b"OFF\n0 0 0\n"})
    package = dl.DebPackage("fake.deb", ("https://mirror.invalid/fake.deb",), "0" * 64, "usr/x.tar.gz")
    served[package.urls[0]] = deb
    remote = dl.Remote("meshes/bunny.off", "1" * 64, deb=package, member="data/meshes/bunny00.off")
    assert dl.download(tmp_path, [remote]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "discarded" in err and "copy the files into" in err
    assert not (tmp_path / "meshes" / "bunny.off").exists()
