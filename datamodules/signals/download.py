"""Download the full INR benchmark sets (what ``make data-inr`` runs): Kodak, the audio clips, the meshes.

    python -m datamodules.signals.download --out data [--only kodak audio meshes]

writes ``data/kodak/kodim01..24.png``, ``data/audio/{gt_bach,gt_counting,gt_twospeakers}.wav`` (+
``gt_twospeakers_segments.json``) and ``data/meshes/{bunny,armadillo}.off``. One sample of each ships
inside the package (``datamodules/signals/samples``, used by the configs as ``samples/...``); this is
for the full sets, e.g. ``benchmarks.paper_tables kodak --kodak data/kodak``.

Sources (every file is checked against the sha256 recorded here):

* Kodak and the audio clips: the raw files of the Neural Experts repository
  (github.com/sitzikbs/Neural-Experts, ``data/rgb_img`` and ``data/audio``), pinned to commit
  ``5ff5b59``, so the URLs do not move.
* The meshes: Debian's ``libcgal-demo`` 5.5.1-2 package (bookworm), whose
  ``usr/share/doc/libcgal-dev/data.tar.gz`` holds CGAL's ``data/meshes/bunny00.off`` (saved as
  ``bunny.off``) and ``data/meshes/armadillo.off``. The ``.deb`` (24 MB, sha256 checked) comes from
  ``deb.debian.org``'s pool, or else from snapshot.debian.org's permanent by-hash URL (for when the
  version has left the current releases); it is unpacked here with the standard library (``ar`` +
  ``tarfile``), so neither ``apt`` nor ``dpkg`` is needed.

A file already there with the right checksum is skipped. A download with the wrong checksum is deleted
and reported (exit code 1 at the end). Without network the command stops at the first unreachable URL
with one line saying which, and exit code 1.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

NEURAL_EXPERTS_COMMIT = "5ff5b59184db6cdeb2f7902e18786380c8652ba2"
NEURAL_EXPERTS = f"https://raw.githubusercontent.com/sitzikbs/Neural-Experts/{NEURAL_EXPERTS_COMMIT}/data"
TIMEOUT_S = 60


@dataclass(frozen=True)
class DebPackage:
    """A Debian package (checked against ``sha256``) whose ``data.tar.*`` holds ``inner_tar``."""

    name: str
    urls: tuple[str, ...]
    sha256: str
    inner_tar: str  # path inside the package's data.tar.* of a tar archive with the files


@dataclass(frozen=True)
class Remote:
    """One file to download: ``target`` (relative to ``--out``) from ``url``, or member ``member`` of
    ``deb``'s inner tar; either way its bytes must hash to ``sha256``."""

    target: str
    sha256: str
    url: str | None = None
    deb: DebPackage | None = None
    member: str | None = None

    @property
    def group(self) -> str:
        return self.target.split("/", 1)[0]

    @property
    def source(self) -> str:
        return self.url if self.url else f"{self.deb.name}:{self.deb.inner_tar}:{self.member}"


LIBCGAL_DEMO = DebPackage(
    name="libcgal-demo_5.5.1-2_all.deb",
    urls=(
        "https://deb.debian.org/debian/pool/main/c/cgal/libcgal-demo_5.5.1-2_all.deb",
        # permanent: snapshot.debian.org serves every file it archived by its sha1
        "https://snapshot.debian.org/file/7a59ca34d8b228e381b2c45b4cbcf21066a7b7f1",
    ),
    sha256="78b09b23d4d6d1bf15552a1060b419ab3fc09918486462faed197e5fc6ac3735",
    inner_tar="usr/share/doc/libcgal-dev/data.tar.gz",
)

KODAK_SHA256 = {
    "kodim01.png": "a56e27cbf5f843c048b6af1d6e090760e9c92fadba88b7dee0205918a37523bd",
    "kodim02.png": "4f4b74a79237e311d72cad958237b5f7088d8bce1c82305ebefe1a70e3022dfd",
    "kodim03.png": "e25ca1ff2f0c0cb5fdfd5f9b0a0bb21ac4c3de3c84a67f35b09a85d3306249db",
    "kodim04.png": "e3b946107c5d3441c022f678d0c3caf1e224d81b1604ba840a4f88e562de61aa",
    "kodim05.png": "10349e963c5c813d327852f82c1795fa4148d69fedffc4c589bee458e3ac3d53",
    "kodim06.png": "363510303b715d4cbc384e1ce227e466b613a09e1b71ae985882bf8e7fbd9b18",
    "kodim07.png": "b77d3f006f42414bb242222e0482e750c0fb9e5ee8d4bed2f6f11c5605fe54a4",
    "kodim08.png": "ba23983c76b4832ee0e8af0592664756841a16779acd69f792e268fb6d13d6e7",
    "kodim09.png": "6a4361c2fc194feb4edaa9f9a4a0620fb9943e460ac7fdf037fb0f6dd6607a7d",
    "kodim10.png": "9dfb70f5867c29ff9ed6313683f19b3d867849e40fbc0c4c54a4a89df341cf23",
    "kodim11.png": "7936814b58b5387fce2e4e2488b4ec830dadd95fa9520f358ddb30990b50f2b6",
    "kodim12.png": "d78c37c2f04f23761ed2367dd77e2db584ddd4c3950833fecf89f199a8126980",
    "kodim13.png": "bc34a3ce58dea09dce1704c997171602de90cb34d0c8503a988b77f473d39b08",
    "kodim14.png": "55a94550ff18f3246c4074fd32b77b0c74447c26b6ad274d564d999c0450ba6e",
    "kodim15.png": "7538cbb80cb9103606c48b806eae57d56c885c7f90b9b3be70a41160f9cbb683",
    "kodim16.png": "a89c7268ccd4718ba424a99fc4643c572cf692ca6eae887185ceb4e9f11d2e54",
    "kodim17.png": "37afcc89fbdcb76d9518e04b2fc011027e2f4cd14b3b2f83cefd721641a47c5b",
    "kodim18.png": "1a9258c365988961d87a0598725b609139c303ad48a5aad6c503c3b1a87849aa",
    "kodim19.png": "b7450b264b1b0a411390d8931b112c27905a992520fc90569dc4b920aa32bbdc",
    "kodim20.png": "3b46c71e3b92a563820ba32936be8330c586c41f938efd94be938386aae4328a",
    "kodim21.png": "ac958597c82073f6bb65129c68f72b651db5b9efd82e11547d07350214bc268b",
    "kodim22.png": "1cee58eb1f2d9c7ebb254d208a03c783ce6cf2c4d8c2cf45e235dd23b4ce1b29",
    "kodim23.png": "e3111a2fd4da24af15d6459ef9eacfe54106b38e27b4a21821b75c3f5d2d5baf",
    "kodim24.png": "1071c68372cc5a01435c2c225a5cf7d4bb803846ec08bb6b3d6721b156d7cb96",
}

AUDIO_SHA256 = {
    "gt_bach.wav": "023940a1bcc534349e16ff46f360ffbfffa993842961dbed955c168fd2f38190",
    "gt_counting.wav": "5becf4851addadb660da353e0e6ea6fd653d4d71e5ea1ce1f6973b556ad397ad",
    "gt_twospeakers.wav": "144f397b7d34c8ff25f942c1f0d8a1d9d0fb309d08bda6196a8e130ad956f0c8",
    "gt_twospeakers_segments.json": "f2598ffbf8ad4a9611c90e2b4257b6eb262cf12b8249d27062b967650dea274f",
}

FILES: tuple[Remote, ...] = (
    *(Remote(f"kodak/{name}", sha, url=f"{NEURAL_EXPERTS}/rgb_img/{name}") for name, sha in KODAK_SHA256.items()),
    *(Remote(f"audio/{name}", sha, url=f"{NEURAL_EXPERTS}/audio/{name}") for name, sha in AUDIO_SHA256.items()),
    Remote("meshes/bunny.off", "ab651cb04955c161efaeb079035a1e5e1f0e0d1f816a2df67beaea68f393ff2b",
           deb=LIBCGAL_DEMO, member="data/meshes/bunny00.off"),
    Remote("meshes/armadillo.off", "6f7f3ca1abc506569466b72f2f59d49493a284e7376d7a7e23c08115ec8cec4e",
           deb=LIBCGAL_DEMO, member="data/meshes/armadillo.off"),
)
GROUPS = ("kodak", "audio", "meshes")


class DownloadError(Exception):
    """A source that cannot give the files: the message says which and what to do instead."""


class Unreachable(DownloadError):
    """No network, or the server refused: the message names the URL."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, by_hand: str) -> bytes:
    """The bytes at ``url``; ``Unreachable`` (naming the URL and ``by_hand``) when it cannot be read."""
    request = urllib.request.Request(url, headers={"User-Agent": "lightning-sgmae-inr data-inr"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:  # HTTPError is a URLError; timeouts are OSError
        reason = getattr(err, "reason", None) or err
        raise Unreachable(f"cannot reach {url}: {reason}; copy the files into {by_hand} by hand") from None


def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of a Unix ``ar`` archive (a ``.deb``) by name."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (a .deb starts with '!<arch>')")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are aligned to 2 bytes
    return members


def deb_inner_tar(deb: bytes, inner_tar: str) -> tarfile.TarFile:
    """The tar archive ``inner_tar`` stored inside the package's ``data.tar.{gz,xz,bz2}``."""
    members = ar_members(deb)
    data_tar = next((members[n] for n in members if n.startswith("data.tar")), None)
    if data_tar is None:
        raise ValueError(f"no data.tar.* in the package (members: {sorted(members)})")
    with tarfile.open(fileobj=io.BytesIO(data_tar), mode="r:*") as outer:
        names = {m.name.removeprefix("./"): m for m in outer.getmembers()}
        if inner_tar not in names:
            raise ValueError(f"{inner_tar} is not in the package")
        inner = outer.extractfile(names[inner_tar]).read()
    return tarfile.open(fileobj=io.BytesIO(inner), mode="r:*")


def deb_files(package: DebPackage, members: Iterable[str], by_hand: str) -> dict[str, bytes]:
    """``members`` of ``package``'s inner tar; the package comes from its first reachable URL and must
    match its sha256."""
    errors = []
    for url in package.urls:
        try:
            deb = fetch(url, by_hand)
        except Unreachable as err:
            errors.append(str(err))
            continue
        got = sha256_of(deb)
        if got != package.sha256:
            errors.append(f"{url}: checksum mismatch (sha256 {got}, expected {package.sha256}); discarded")
            continue
        try:
            with deb_inner_tar(deb, package.inner_tar) as tar:
                return {m: tar.extractfile(m).read() for m in members}
        except (KeyError, ValueError, tarfile.TarError, EOFError, OSError) as err:  # lzma/zlib errors are OSError
            raise DownloadError(f"{url}: cannot unpack {members} from {package.inner_tar}: {err}; "
                                f"copy the files into {by_hand} by hand") from None
    if all(e.startswith("cannot reach") for e in errors):
        raise Unreachable(errors[0])  # the first: the usual cause (no network) is the same for all
    raise DownloadError(" | ".join(errors) + f"; copy the files into {by_hand} by hand")


def _error(message: str) -> None:
    print(message, file=sys.stderr)


def download(out: str | Path, files: Iterable[Remote] = FILES, log: Callable[[str], None] = print,
             error: Callable[[str], None] = _error) -> int:
    """Fetch every file of ``files`` missing from ``out`` (or with a wrong checksum); ``log`` tells the
    progress, ``error`` the failures. The exit code: 0 = all present and verified, 1 = a checksum mismatch
    or an unreachable source."""
    out = Path(out)
    files = list(files)
    status = 0
    todo = []
    for remote in files:
        target = out / remote.target
        if target.is_file():
            if sha256_file(target) == remote.sha256:
                log(f"{target}: present, checksum ok")
                continue
            log(f"{target}: checksum differs from the recorded one, downloading it again")
        todo.append(remote)
    try:
        # files of one Debian package come from a single download of the package
        packages: dict[DebPackage, list[Remote]] = {}
        for remote in todo:
            target = out / remote.target
            by_hand = f"{out / remote.group}/"
            if remote.deb is not None:
                packages.setdefault(remote.deb, []).append(remote)
                continue
            status |= _store(target, fetch(remote.url, by_hand), remote, log, error)
        for package, remotes in packages.items():
            log(f"downloading {package.name} for {', '.join(r.target for r in remotes)} ...")
            by_hand = f"{out / remotes[0].group}/"
            data = deb_files(package, [r.member for r in remotes], by_hand)
            for remote in remotes:
                status |= _store(out / remote.target, data[remote.member], remote, log, error)
    except DownloadError as err:
        error(str(err))
        return 1
    if status == 0:
        log(f"all {len(files)} files under {out} present with the recorded sha256")
    else:
        error(f"some downloads failed their checksum and were deleted: run again, or copy them into {out} by hand")
    return status


def _store(target: Path, data: bytes, remote: Remote, log: Callable[[str], None],
           error: Callable[[str], None]) -> int:
    """Write ``data`` as ``target`` through ``<target>.part`` if its sha256 is the recorded one; else delete
    the download (and any stale copy under ``target``) and say so."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    part.write_bytes(data)
    got = sha256_file(part)
    if got != remote.sha256:
        part.unlink()
        target.unlink(missing_ok=True)
        error(f"{target}: checksum mismatch for {remote.source} (sha256 {got}, expected {remote.sha256}); "
            f"the download is deleted")
        return 1
    part.replace(target)  # an interrupted run leaves no truncated file under the real name
    log(f"{target}: downloaded, checksum ok ({len(data):,} bytes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="folder to fill (default: data)")
    parser.add_argument("--only", nargs="*", choices=GROUPS, default=list(GROUPS), help="which sets (default: all)")
    args = parser.parse_args(argv)
    return download(args.out, [f for f in FILES if f.group in args.only])


if __name__ == "__main__":
    sys.exit(main())
