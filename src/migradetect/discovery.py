"""Which movies a batch run analyses: experiments and movies found under an input path.

The rules (DESIGN.md, "Inputs"):

- INPUT is a folder: each immediate sub-folder is an **experiment**; TIFF files lying directly
  in INPUT form one more experiment named after INPUT.
- Inside an experiment, each TIFF file is a **movie**, and each sub-folder holding only TIFF
  files is one movie made of one file per frame.
- A multi-position OME-TIFF gives one movie per position, named ``<stem>_p<k>``.
- INPUT is a single movie (a TIFF file or a frame folder): its experiment is the name of the
  folder it lies in. A folder of only TIFF files is a frame folder when its files are single
  2-D planes (else it is an experiment of movie files).

Hidden files and folders (names starting with ``.``) are ignored. Nothing is opened here
except to count the positions of a file; a file that cannot be read is still listed (as one
movie) so that the batch records why it fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import tifffile

from migradetect import io
from migradetect.errors import InputError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")


@dataclass(frozen=True)
class MovieJob:
    """One movie to analyse.

    Attributes
    ----------
    experiment
        Experiment name (the output sub-folder ``OUT_DIR/<experiment>``).
    movie
        Movie name (the output sub-folder ``OUT_DIR/<experiment>/<movie>``), unique within
        its experiment.
    path
        The TIFF file or frame folder.
    position
        0-based position in a multi-position file, else None.
    """

    experiment: str
    movie: str
    path: Path
    position: int | None = None

    @property
    def key(self) -> str:
        """``experiment/movie``, for messages."""
        return f"{self.experiment}/{self.movie}"


def is_tiff(path: Path) -> bool:
    """Whether ``path`` names a TIFF file (by its suffix, case-insensitive)."""
    return path.name.lower().endswith(TIFF_SUFFIXES) and not path.name.startswith(".")


def movie_stem(path: Path) -> str:
    """A file's name without ``.ome.tif``/``.tif``/``.tiff`` (a folder's name as it is)."""
    name = path.name
    low = name.lower()
    for suffix in TIFF_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _positions(path: Path) -> int:
    """Number of positions of a file; 1 when it cannot be read (the open stage says why)."""
    if path.is_dir():
        return 1
    try:
        return max(1, int(io.count_positions(path)))
    except Exception as exc:  # noqa: BLE001 - any reader error is reported when opening
        log.debug("cannot count positions of %s: %s", path, exc)
        return 1


def _movie_jobs(experiment: str, paths: list[Path]) -> list[MovieJob]:
    """Jobs for the movie files and frame folders of one experiment, with unique names."""
    jobs: list[MovieJob] = []
    for path in paths:
        n = _positions(path)
        stem = movie_stem(path)
        if n == 1:
            jobs.append(MovieJob(experiment, stem, path, None))
        else:
            jobs.extend(MovieJob(experiment, f"{stem}_p{k}", path, k) for k in range(n))
    # Two inputs with the same stem (a.tif and a.tiff, or a.tif and a folder a/): name
    # them by their full file names so that neither overwrites the other's results.
    seen: dict[str, int] = {}
    for job in jobs:
        seen[job.movie] = seen.get(job.movie, 0) + 1
    out = []
    for job in jobs:
        if seen[job.movie] > 1:
            name = job.path.name + ("" if job.position is None else f"_p{job.position}")
            log.warning("%s: several inputs are named %r; using %r", experiment, job.movie, name)
            job = MovieJob(job.experiment, name, job.path, job.position)
        out.append(job)
    return out


def _experiment_movies(folder: Path) -> list[Path]:
    """Movie files and frame folders directly inside an experiment folder."""
    movies = []
    for p in _visible(folder):
        if p.is_file() and is_tiff(p):
            movies.append(p)
        elif p.is_dir() and io.is_frame_folder(p):
            movies.append(p)
        else:
            log.info("ignoring %s (not a TIFF file or a folder of TIFF frames)", p)
    return movies


def _is_single_frame_movie(folder: Path) -> bool:
    """Whether INPUT ``folder`` is one movie made of frame files, not an experiment of movies.

    Both hold only TIFF files; a frame folder's files are single 2-D planes (at least two of
    them), while an experiment's movie files hold several planes. Only the TIFF headers
    are read. A folder of single-frame movies (fixed stains) given as INPUT is
    read as one movie: give its parent folder as INPUT to analyse them one by one.
    """
    if not io.is_frame_folder(folder):
        return False
    files = io.find_movie_files(folder)
    if len(files) < 2:
        return False
    for f in files:
        try:
            with tifffile.TiffFile(f) as tif:
                if len(tif.pages) != 1 or tif.pages.first.ndim != 2:
                    return False
        except Exception:  # noqa: BLE001 - unreadable: let the open stage report it
            continue
    return True


def discover(input_path: str | Path) -> list[MovieJob]:
    """List the movies under ``input_path``, experiment by experiment.

    Parameters
    ----------
    input_path
        A TIFF file, a frame folder, an experiment folder or a folder of experiments.

    Returns
    -------
    list of MovieJob
        The movies lying directly in INPUT first, then the experiment folders in name
        order, each in file-name order; never empty.

    Raises
    ------
    InputError
        If the path does not exist or holds no movie.
    """
    root = Path(input_path).expanduser().resolve()
    if not root.exists():
        raise InputError("does not exist.", path=root, fix="check the INPUT path.")
    if root.is_file():
        if not is_tiff(root):
            raise InputError("is not a TIFF file (.tif, .tiff, .ome.tif).", path=root,
                             fix="give a TIFF movie, a folder of frames or a folder of movies.")
        return _movie_jobs(root.parent.name, [root])
    if _is_single_frame_movie(root):
        log.info("%s holds only single-plane TIFF frames: one movie", root)
        return _movie_jobs(root.parent.name, [root])
    jobs: list[MovieJob] = []
    loose = [p for p in _visible(root) if p.is_file() and is_tiff(p)]
    if loose:
        jobs.extend(_movie_jobs(root.name, loose))
    for sub in _visible(root):
        if sub.is_dir():
            found = _experiment_movies(sub)
            if not found:
                log.warning("%s: no movies in this experiment folder", sub)
            jobs.extend(_movie_jobs(sub.name, found))
    if not jobs:
        raise InputError(
            "holds no movies (no TIFF files, no folders of TIFF frames, hidden ones ignored).",
            path=root,
            fix="give a movie, an experiment folder of movies, or a folder of experiment folders.",
        )
    names = [j.key for j in jobs]
    if len(set(names)) != len(names):  # a sub-folder named like INPUT itself
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(
            f"two movies would share the output folder {dup[0]!r}.", path=root,
            fix="rename the sub-folder that has the same name as the INPUT folder.",
        )
    return jobs
