"""Debian font packages into a cache folder, without installing anything.

``apt-get download NAME=VERSION`` fetches the exact version a list records (apt refuses a
version the archive no longer has, which we turn into a clear error instead of quietly taking
a newer one), and only the font files of its data tarball are unpacked (``dpkg-deb
--fsys-tarfile``): texlive-fonts-extra is 500 MB of .deb, mostly TeX metrics we never read.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from .errors import FontDataError

# The one small package the tests use (offline; scripts/setup.sh fetches it): 35 URW faces in
# three formats (OTF, PFB, T1), with a dingbat and a symbol font among them.
TEST_PACKAGE = ("fonts-urw-base35", "20200910-7")

FONT_SUFFIXES = (".otf", ".ttf", ".pfb", ".t1", ".woff", ".woff2", ".ttc", ".otc")


def default_cache() -> Path:
    """``.cache/fonts`` in the repository (git-ignored), or $MINIATURE_FONT_CACHE."""
    env = os.environ.get("MINIATURE_FONT_CACHE")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".cache" / "fonts"


def archive_version(name: str) -> str | None:
    """The version apt would download now (its candidate), or None when apt knows no such package."""
    out = subprocess.run(["apt-cache", "policy", name], capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            return None if version == "(none)" else version
    return None


def download_deb(name: str, version: str, debs: Path) -> Path:
    """The .deb of NAME at exactly VERSION in ``debs`` (downloaded unless already there)."""
    debs.mkdir(parents=True, exist_ok=True)
    # apt-get writes NAME_VERSION_ARCH.deb with the epoch's ':' as '%3a'.
    pattern = f"{name}_{version.replace(':', '%3a')}_*.deb"
    found = sorted(debs.glob(pattern))
    if found:
        return found[0]
    try:
        proc = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=debs,
                              capture_output=True, text=True)
    except FileNotFoundError:
        raise FontDataError(f"apt-get is not here: the font data ({name} {version}) comes from the Debian "
                            f"archive; fetch it on a Debian or Ubuntu machine into {debs}") from None
    found = sorted(debs.glob(pattern))
    if proc.returncode != 0 or not found:
        now = archive_version(name)
        if now is None:
            raise FontDataError(f"Debian package {name} is unknown to apt here; run 'apt-get update' "
                                f"(the font list needs {name} {version})")
        if now != version:
            raise FontDataError(f"Debian package {name} {version}, which the font list records, is not in "
                                f"the archive any more (apt offers {now}); the list refuses other versions: "
                                f"rebuild it with 'python -m miniature fonts-build' to use {now}")
        raise FontDataError(f"apt-get download {name}={version} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return found[0]


def unpack_fonts(deb: Path, dest: Path) -> Path:
    """The package's font files under ``dest`` (package paths kept), unpacked once and atomically."""
    if dest.is_dir():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(FONT_SUFFIXES):
                    tar.extract(member, partial, filter="data")
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise FontDataError(f"dpkg-deb could not read {deb}; delete it and run again")
    partial.rename(dest)
    return dest


def fetch_packages(packages: list[tuple[str, str]], cache: Path | None = None) -> dict[str, Path]:
    """Several packages; one apt-get call for all missing .debs (apt's start-up costs ~2 s a call)."""
    cache = cache or default_cache()
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [f"{n}={v}" for n, v in packages
               if not unpacked_dir(n, v, cache).is_dir() and not any(debs.glob(f"{n}_{v.replace(':', '%3a')}_*.deb"))]
    if missing:
        # On failure the per-package path below names the package and the reason.
        try:
            subprocess.run(["apt-get", "download", *missing], cwd=debs, capture_output=True)
        except FileNotFoundError:
            pass   # download_deb says so, naming the package
    return {n: fetch_package(n, v, cache) for n, v in packages}


def fetch_package(name: str, version: str, cache: Path | None = None) -> Path:
    """Download and unpack one package; returns the folder holding its font files."""
    cache = cache or default_cache()
    dest = unpacked_dir(name, version, cache)
    if dest.is_dir():   # the .deb may be deleted once unpacked
        return dest
    return unpack_fonts(download_deb(name, version, cache / "debs"), dest)


def unpacked_dir(name: str, version: str, cache: Path) -> Path:
    return cache / "unpacked" / f"{name}_{version.replace(':', '%3a')}"
