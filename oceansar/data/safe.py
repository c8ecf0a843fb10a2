"""Sentinel-1 SAFE products (folders, or zips of one) as a source of calibrated sigma0 vignettes.

Here live `Product` (one SAFE folder or zip, read by member path), `read_manifest` (the product's mode and type
and the MD5 of each data object), `list_measurements` (one `Measurement` per annotation file: a Wave Mode vignette,
or one IW/EW sub-swath or SM swath of one polarisation, with its measurement TIFF, calibration and noise XML),
`Annotation` (the geometry and timing of a measurement), `read_sigma0` (a window of a measurement calibrated and
denoised by `s1_calibration`, then multilooked to a target pixel spacing, the raster read a block of lines at a
time: a full IW SLC swath decodes to more than a gigabyte) and `SafeSource`, the random-access source over a folder
of products: one record per measurement file, or per square tile of it, on the project's uint8 sigma0-dB scale
(`wv_files.normalised_db`). The floor on sigma0 applies after multilooking, to the mean of the looks: raised pixel by
pixel, the single-look values below the noise (about half of them near the noise floor) would bias dark water high.
A record's incidence comes from the annotation's geolocation grid at the window's centre, its azimuth time from the
line timing (per burst for TOPS). Measurements are found from the annotation files a product holds, so a partial
product (a subset of swaths or polarisations) reads; a measurement whose TIFF, calibration or noise XML is missing
is an error naming that file. TOPS bursts are not deburst: a whole IW/EW SLC swath keeps its burst overlaps, and
the no-data fill between bursts is left out of the looks. The LUTs and sigma0 live in `s1_calibration`, the labels
CSV reader in `folder`, the TFDS packaging in `tfds_safe`; this module is numpy, tifffile and the standard library.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import pathlib
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import tifffile

from oceansar.data.decode import CorruptImageError
from oceansar.data.folder import LabelTable, read_labels_csv
from oceansar.data.s1_calibration import Calibration, intensity, interp_weights, multilook
from oceansar.data.synthetic import DB_RANGE
from oceansar.data.wv_files import normalised_db
from oceansar.errors import DataError, DataNotFoundError

log = logging.getLogger(__name__)

# Record codes of the `swath` and `polarisation` fields: indices into these tuples (append only: prepared
# datasets store the codes).
SWATHS = ("s1", "s2", "s3", "s4", "s5", "s6", "iw", "iw1", "iw2", "iw3", "ew", "ew1", "ew2", "ew3", "ew4", "ew5",
          "wv", "wv1", "wv2")
POLARISATIONS = ("hh", "hv", "vh", "vv")
# Ground pixel spacing (m) records are multilooked to: the 50 m of OceanSAR-1's WV vignettes (arXiv 2504.06962).
PIXEL_SPACING = 50.0
# Linear sigma0 floor before the log: -60 dB, below any DB_RANGE, so only the no-signal cells land on it.
SIGMA0_FLOOR = 1e-6
# Raster pixels decoded per block of lines: 4 Mpx of complex64 is 32 MB, with its float32 LUTs about 100 MB.
BLOCK_PIXELS = 1 << 22


def _seconds(iso: str | None, where: str) -> float:
    """Seconds since 1970-01-01 (UTC) of an annotation time such as 2021-04-01T05:26:24.209990."""
    try:
        return float(np.datetime64((iso or "").strip().rstrip("Z"), "us").astype(np.int64)) / 1e6
    except ValueError as e:
        raise CorruptImageError(where, f"unreadable time {iso!r}") from e


@functools.lru_cache(maxsize=16)
def _zip_names(path: str, mtime_ns: int) -> frozenset[str]:
    del mtime_ns  # part of the cache key: a rewritten zip is listed again
    with zipfile.ZipFile(path) as z:
        return frozenset(z.namelist())


@dataclasses.dataclass(frozen=True)
class Product:
    """One SAFE product, a folder or a zip holding one, read by paths relative to its `.SAFE` folder.

    Attributes:
      path: the folder or the zip file.
      prefix: inside a zip, the member folder that holds `manifest.safe` (e.g. `X.SAFE/`); "" for a folder.
    """

    path: str
    prefix: str = ""

    @classmethod
    def open(cls, path: str | os.PathLike) -> Product:
        """The product at `path`.

        Raises:
          DataNotFoundError: nothing at `path`.
          DataError: a folder without `manifest.safe`, or a file that is no zip of a SAFE product.
        """
        p = pathlib.Path(path)
        if p.is_dir():
            if not (p / "manifest.safe").is_file():
                raise DataError(f"{p}: no manifest.safe, not a SAFE product folder")
            return cls(str(p))
        if not p.is_file():
            raise DataNotFoundError(f"SAFE product {p} does not exist")
        if not zipfile.is_zipfile(p):
            raise DataError(f"{p}: neither a SAFE folder nor a zip of one")
        try:
            names = _zip_names(str(p), p.stat().st_mtime_ns)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{p}: unreadable zip ({type(e).__name__}: {e})") from e
        manifests = sorted((m for m in names if m.rsplit("/", 1)[-1] == "manifest.safe"), key=lambda m: m.count("/"))
        if not manifests:
            raise DataError(f"{p}: the zip holds no manifest.safe")
        return cls(str(p), manifests[0][:-len("manifest.safe")])

    @property
    def name(self) -> str:
        """The `.SAFE` folder's name."""
        if self.prefix:
            return pathlib.PurePosixPath(self.prefix).name
        name = pathlib.Path(self.path).name
        return name if os.path.isdir(self.path) else name.removesuffix(".zip")

    @property
    def product_id(self) -> str:
        """The product name without `.SAFE`."""
        return self.name.removesuffix(".SAFE")

    def where(self, rel: str) -> str:
        """How errors name a member: its path, inside the zip for a zipped product."""
        return str(pathlib.Path(self.path) / (self.prefix + rel))

    def _names(self) -> frozenset[str]:
        return _zip_names(self.path, os.stat(self.path).st_mtime_ns)

    def exists(self, rel: str) -> bool:
        if os.path.isdir(self.path):
            return os.path.isfile(os.path.join(self.path, rel))
        return self.prefix + rel in self._names()

    def listdir(self, folder: str) -> list[str]:
        """Sorted names of the files directly under `folder` (relative, without a trailing slash)."""
        if not os.path.isdir(self.path):
            head = f"{self.prefix}{folder}/"
            return sorted(n[len(head):] for n in self._names() if n.startswith(head) and "/" not in n[len(head):]
                          and n != head)
        d = os.path.join(self.path, folder)
        return sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n))) if os.path.isdir(d) else []

    @contextlib.contextmanager
    def open_member(self, rel: str) -> Iterator:
        """A binary, seekable file of member `rel`.

        Raises:
          DataNotFoundError: no such member.
        """
        if not self.exists(rel):
            raise DataNotFoundError(f"{self.where(rel)} does not exist")
        if os.path.isdir(self.path):
            with open(os.path.join(self.path, rel), "rb") as f:
                yield f
            return
        with zipfile.ZipFile(self.path) as z, z.open(self.prefix + rel) as f:
            yield f

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of member `rel`.

        Raises:
          DataNotFoundError: no such member.
          CorruptImageError: it cannot be read (a damaged zip: bad CRC, bad deflate stream); naming it.
        """
        with self.open_member(rel) as f, self._reading(rel):
            return f.read()

    def md5(self, rel: str) -> str:
        """Hex MD5 of member `rel`, read in 8 MiB chunks (errors as `read_bytes`)."""
        digest = hashlib.md5()
        with self.open_member(rel) as f, self._reading(rel):
            for chunk in iter(lambda: f.read(1 << 23), b""):
                digest.update(chunk)
        return digest.hexdigest()

    @contextlib.contextmanager
    def _reading(self, rel: str) -> Iterator[None]:
        try:
            yield
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise CorruptImageError(self.where(rel), f"cannot read ({type(e).__name__}: {e})") from e


def product_paths(root: str | os.PathLike) -> list[pathlib.Path]:
    """The SAFE product folders and zips at `root`: itself (a `.SAFE` folder or a zip), or every one below it,
    sorted.

    Raises:
      DataNotFoundError: `root` does not exist or holds no product.
    """
    root = pathlib.Path(root)
    if not root.exists():
        raise DataNotFoundError(f"SAFE archive {root} does not exist")
    if root.is_file() or (root / "manifest.safe").is_file():
        return [root]
    found = sorted({p.parent for p in root.rglob("manifest.safe")} | set(root.rglob("*.zip")))
    if not found:
        raise DataNotFoundError(f"no SAFE products (*.SAFE/manifest.safe or *.zip) under {root}")
    return found


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What `manifest.safe` says of a product.

    Attributes:
      mission: e.g. S1B.
      mode: IW, EW, SM (strip map, swaths s1..s6) or WV.
      product_type: SLC or GRD.
      ipf_version: the processor version, e.g. 003.31.
      checksums: MD5 (lower-case hex) of each data object, by path relative to the product folder.
      measurements: the measurement TIFFs listed, by relative path.
    """

    mission: str
    mode: str
    product_type: str
    ipf_version: str
    checksums: dict[str, str]
    measurements: tuple[str, ...]


def read_manifest(product: Product) -> Manifest:
    """Parses a product's `manifest.safe`.

    Raises:
      DataNotFoundError: no manifest.
      CorruptImageError: unreadable XML; the message names the file.
    """
    where = product.where("manifest.safe")
    try:
        root = ET.fromstring(product.read_bytes("manifest.safe"))
    except ET.ParseError as e:
        raise CorruptImageError(where, f"unreadable XML ({e})") from e
    text = {}
    checksums, measurements, ipf = {}, [], ""
    for el in root.iter():
        tag = _local(el.tag)
        if tag in ("familyName", "number", "mode", "productType") and tag not in text:
            text[tag] = (el.text or "").strip()
        elif tag == "software" and el.get("name") == "Sentinel-1 IPF" and not ipf:
            ipf = el.get("version", "")
        elif tag == "dataObject":
            href = next((e.get("href") for e in el.iter() if _local(e.tag) == "fileLocation"), None)
            md5 = next(((e.text or "").strip().lower() for e in el.iter() if _local(e.tag) == "checksum"), "")
            if href:
                rel = href.removeprefix("./")
                checksums[rel] = md5
                if el.get("repID") == "s1Level1MeasurementSchema":
                    measurements.append(rel)
    mission = text.get("familyName", "").replace("SENTINEL-", "S") + text.get("number", "")
    return Manifest(mission, text.get("mode", ""), text.get("productType", ""), ipf, checksums, tuple(measurements))


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One measurement file of a product and the XML that describe it, named by their shared stem
    (`s1b-iw1-slc-vv-<start>-<stop>-<orbit>-<datatake>-<image number>`)."""

    product: Product
    stem: str

    def _part(self, i: int) -> str:
        return self.stem.split("-")[i]

    @property
    def swath(self) -> str:
        return self._part(1)

    @property
    def polarisation(self) -> str:
        return self._part(3)

    @property
    def name(self) -> str:
        """The measurement TIFF's file name."""
        return f"{self.stem}.tiff"

    @property
    def measurement(self) -> str:
        return f"measurement/{self.stem}.tiff"

    @property
    def annotation(self) -> str:
        return f"annotation/{self.stem}.xml"

    @property
    def calibration(self) -> str:
        return f"annotation/calibration/calibration-{self.stem}.xml"

    @property
    def noise(self) -> str:
        return f"annotation/calibration/noise-{self.stem}.xml"

    def files(self, thermal_noise: bool = True) -> tuple[str, ...]:
        """The members a record of this measurement reads."""
        return (self.annotation, self.calibration) + ((self.noise,) if thermal_noise else ()) + (self.measurement,)


def list_measurements(product: Product, polarisations: Sequence[str] = ()) -> list[Measurement]:
    """One `Measurement` per annotation file of `product` (of `polarisations`, all when empty), sorted by stem.

    Raises:
      DataError: an annotation file name that is no Sentinel-1 measurement stem, naming it.
    """
    out = []
    for name in product.listdir("annotation"):
        if not name.endswith(".xml"):
            continue
        parts = name[:-4].split("-")
        if len(parts) != 9 or parts[1] not in SWATHS or parts[3] not in POLARISATIONS:
            raise DataError(f"{product.where('annotation/' + name)}: not a Sentinel-1 annotation file name "
                            f"(<mission>-<swath>-<type>-<polarisation>-<start>-<stop>-<orbit>-<datatake>-<number>)")
        if not polarisations or parts[3] in polarisations:
            out.append(Measurement(product, name[:-4]))
    return out


def check_files(m: Measurement, thermal_noise: bool = True) -> None:
    """Raises DataNotFoundError naming the first file of `m` (`Measurement.files`) that is missing."""
    for rel in m.files(thermal_noise):
        if not m.product.exists(rel):
            raise DataNotFoundError(f"{m.product.where(rel)} does not exist (needed by {m.name})")


def verify_checksums(m: Measurement, thermal_noise: bool = True) -> None:
    """Compares the MD5 of each file of `m` with the one `manifest.safe` lists.

    Raises:
      CorruptImageError: a file the manifest does not list, or whose MD5 differs; the message names it.
    """
    checksums = read_manifest(m.product).checksums
    for rel in m.files(thermal_noise):
        expected = checksums.get(rel)
        if not expected:
            raise CorruptImageError(m.product.where(rel), "not listed with an MD5 in manifest.safe")
        got = m.product.md5(rel)
        if got != expected:
            raise CorruptImageError(m.product.where(rel), f"MD5 {got} differs from manifest.safe's {expected}")


@dataclasses.dataclass(frozen=True)
class Annotation:
    """The geometry and timing of one measurement, from its annotation XML.

    Attributes:
      ground_range: GRD (ground-range pixels) rather than SLC (slant-range pixels).
      lines, samples: the image size the annotation states.
      range_spacing, azimuth_spacing: pixel spacing (m); slant range for SLC.
      incidence_mid: incidence angle at mid swath (degrees).
      first_line_time: seconds since the epoch of the first line.
      line_interval: seconds between lines.
      lines_per_burst: TOPS (IW/EW SLC) lines per burst; 0 without bursts.
      burst_times: seconds since the epoch of each burst's first line.
      grid: geolocation grid points, [n, 3] (line, pixel, incidence angle in degrees).
    """

    ground_range: bool
    lines: int
    samples: int
    range_spacing: float
    azimuth_spacing: float
    incidence_mid: float
    first_line_time: float
    line_interval: float
    lines_per_burst: int
    burst_times: np.ndarray
    grid: np.ndarray

    @classmethod
    def from_xml(cls, xml: bytes, where: str) -> Annotation:
        """Parses an annotation XML.

        Raises:
          CorruptImageError: unreadable XML or a missing field; the message names the file.
        """
        def f(key: str) -> float:
            return float(info.findtext(key))

        try:
            root = ET.fromstring(xml)
            info = root.find("imageAnnotation/imageInformation")
            bursts = root.findall("swathTiming/burstList/burst")
            points = root.findall("geolocationGrid/geolocationGridPointList/geolocationGridPoint")
            grid = np.array([[float(p.findtext(k)) for k in ("line", "pixel", "incidenceAngle")] for p in points])
            out = cls(
                ground_range=root.findtext("generalAnnotation/productInformation/projection") == "Ground Range",
                lines=int(info.findtext("numberOfLines")), samples=int(info.findtext("numberOfSamples")),
                range_spacing=f("rangePixelSpacing"), azimuth_spacing=f("azimuthPixelSpacing"),
                incidence_mid=f("incidenceAngleMidSwath"),
                first_line_time=_seconds(info.findtext("productFirstLineUtcTime"), where),
                line_interval=f("azimuthTimeInterval"),
                lines_per_burst=int(root.findtext("swathTiming/linesPerBurst") or 0) if bursts else 0,
                burst_times=np.array([_seconds(b.findtext("azimuthTime"), where) for b in bursts]),
                grid=grid.reshape(-1, 3))
        except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
            raise CorruptImageError(where, f"unreadable annotation ({type(e).__name__}: {e})") from e
        if not out.grid.size:
            raise CorruptImageError(where, "no geolocation grid")
        return out

    def looks(self, pixel_spacing: float) -> tuple[int, int]:
        """(azimuth, range) pixels averaged per cell for `pixel_spacing` metres on the ground (at least 1)."""
        ground = self.range_spacing if self.ground_range else (
            self.range_spacing / np.sin(np.deg2rad(self.incidence_mid)))
        return max(1, int(round(pixel_spacing / self.azimuth_spacing))), max(1, int(round(pixel_spacing / ground)))

    def time_at(self, line: float) -> float:
        """Azimuth time (s since the epoch) of `line`, within its burst for TOPS products."""
        if self.lines_per_burst and self.burst_times.size:
            burst = int(np.clip(line // self.lines_per_burst, 0, self.burst_times.size - 1))
            return float(self.burst_times[burst] + (line - burst * self.lines_per_burst) * self.line_interval)
        return float(self.first_line_time + line * self.line_interval)

    def incidence_at(self, line: float, pixel: float) -> float:
        """Incidence angle (degrees) at (line, pixel): bilinear over the geolocation grid, nearest point if the
        grid is not a full (lines x pixels) lattice."""
        lines, pixels = np.unique(self.grid[:, 0]), np.unique(self.grid[:, 1])
        if lines.size * pixels.size != len(self.grid):
            scale = np.array([max(np.ptp(self.grid[:, 0]), 1.0), max(np.ptp(self.grid[:, 1]), 1.0)])
            d = (((self.grid[:, :2] - (line, pixel)) / scale) ** 2).sum(axis=1)
            return float(self.grid[np.argmin(d), 2])
        values = np.empty((lines.size, pixels.size))
        values[np.searchsorted(lines, self.grid[:, 0]), np.searchsorted(pixels, self.grid[:, 1])] = self.grid[:, 2]
        l0, l1, wl = interp_weights(lines, np.array([line]))
        p0, p1, wp = interp_weights(pixels, np.array([pixel]))
        top = values[l0, p0] * (1 - wp) + values[l0, p1] * wp
        bottom = values[l1, p0] * (1 - wp) + values[l1, p1] * wp
        return float((top * (1 - wl) + bottom * wl)[0])


@functools.lru_cache(maxsize=32)
def load_metadata(m: Measurement, thermal_noise: bool = True) -> tuple[Annotation, Calibration]:
    """The annotation and the calibration (with the noise LUTs when `thermal_noise`) of `m`, cached per process.

    Raises:
      DataNotFoundError: a missing annotation, calibration or noise XML, naming it.
      CorruptImageError: unreadable XML, naming it.
    """
    annotation = Annotation.from_xml(m.product.read_bytes(m.annotation), m.product.where(m.annotation))
    calibration = Calibration.from_xml(
        m.product.read_bytes(m.calibration), m.product.read_bytes(m.noise) if thermal_noise else None,
        calibration_where=m.product.where(m.calibration), noise_where=m.product.where(m.noise))
    return annotation, calibration


def _layout_problem(page: tifffile.TiffPage, strip_ends: np.ndarray, size: int) -> str | None:
    """What keeps a TIFF page from being read strip by strip as a single-band measurement, if anything."""
    if page.is_tiled:
        return "tiled TIFF (expected strips)"
    if page.samplesperpixel != 1:
        return f"{page.samplesperpixel} samples per pixel (expected 1)"
    if page.dtype is None or page.dtype.kind not in "iuc":
        return f"unsupported pixel type {page.dtype} (expected complex int16 SLC or uint16 GRD)"
    if np.any(strip_ends > size):
        return f"truncated: strip {int(np.argmax(strip_ends > size))} ends past the file's {size} bytes"
    return None


class Raster:
    """A measurement TIFF open for reading blocks of lines (strip by strip, never the whole image).

    Attributes:
      shape: (lines, pixels) of the TIFF.

    Raises:
      DataNotFoundError: the TIFF is missing.
      CorruptImageError: unreadable, tiled, multi-band, or truncated (a strip ends past the end of the file).
    """

    def __init__(self, m: Measurement):
        self.where = m.product.where(m.measurement)
        self._stack = contextlib.ExitStack()
        try:
            self._tif = self._stack.enter_context(tifffile.TiffFile(self._stack.enter_context(
                m.product.open_member(m.measurement))))
            page = self._tif.pages.first
            offsets, counts = np.asarray(page.dataoffsets), np.asarray(page.databytecounts)
            size = self._tif.filehandle.size
        except DataError:
            self._stack.close()
            raise
        except Exception as e:  # tifffile raises a zoo of types for damaged files
            self._stack.close()
            raise CorruptImageError(self.where, f"cannot read TIFF ({type(e).__name__}: {e})") from e
        self._page, self._offsets, self._counts = page, offsets, counts
        problem = _layout_problem(page, offsets + counts, size)
        if problem:
            self.close()
            raise CorruptImageError(self.where, problem)
        self.shape = (int(page.imagelength), int(page.imagewidth))

    def read(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """Lines [top, bottom) and pixels [left, right), in the file's dtype (complex64 for complex int16 SLC)."""
        page, fh = self._page, self._tif.filehandle
        rows_per_strip = int(page.rowsperstrip) or self.shape[0]
        out = np.empty((bottom - top, right - left), page.dtype)
        for strip in range(top // rows_per_strip, (bottom - 1) // rows_per_strip + 1):  # strips, not pixels
            fh.seek(int(self._offsets[strip]))
            data = fh.read(int(self._counts[strip]))
            try:
                segment = page.decode(data, strip, jpegtables=page.jpegtables)[0]
                segment = np.asarray(segment).reshape(-1, self.shape[1])
            except Exception as e:  # a damaged strip: wrong length, bad compressed stream
                raise CorruptImageError(self.where, f"cannot decode strip {strip} ({type(e).__name__}: {e})") from e
            first = strip * rows_per_strip
            lo, hi = max(top, first), min(bottom, first + segment.shape[0])
            out[lo - top:hi - top] = segment[lo - first:hi - first, left:right]
        return out

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Raster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def full_window(shape: tuple[int, int], looks: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the whole raster cut to whole multilook cells."""
    return 0, shape[0] // looks[0] * looks[0], 0, shape[1] // looks[1] * looks[1]


def tile_windows(shape: tuple[int, int], looks: tuple[int, int], tile_size: int) -> np.ndarray:
    """int64 [n, 4] (top, bottom, left, right) of the square tiles of `tile_size` multilooked pixels that fit in
    the raster, row by row; a partial tile at the end of a row or column is left out."""
    rows, cols = shape[0] // looks[0] // tile_size, shape[1] // looks[1] // tile_size
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    r, c = r.ravel(), c.ravel()
    th, tw = tile_size * looks[0], tile_size * looks[1]
    return np.stack([r * th, (r + 1) * th, c * tw, (c + 1) * tw], axis=1).astype(np.int64)


def _check_window(raster: Raster, annotation: Annotation, window: tuple[int, int, int, int],
                  looks: tuple[int, int]) -> None:
    if raster.shape[0] > annotation.lines or raster.shape[1] > annotation.samples:
        raise CorruptImageError(raster.where, f"raster {raster.shape} is larger than its annotation's "
                                              f"({annotation.lines}, {annotation.samples})")
    top, bottom, left, right = window
    if not (0 <= top < bottom <= raster.shape[0] and 0 <= left < right <= raster.shape[1]):
        raise CorruptImageError(raster.where, f"window {window} is empty or outside the raster {raster.shape} "
                                              f"(looks {looks})")
    if (bottom - top) % looks[0] or (right - left) % looks[1]:
        raise ValueError(f"window {window} is not a whole number of {looks} multilook cells")


def read_sigma0(m: Measurement, window: tuple[int, int, int, int] | None = None, *,
                pixel_spacing: float = PIXEL_SPACING, thermal_noise: bool = True, floor: float = SIGMA0_FLOOR,
                block_pixels: int = BLOCK_PIXELS) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A window of a measurement as multilooked, calibrated sigma0.

    Each block of lines: sigma0 = (|DN|^2 - noise) / A^2 (`s1_calibration`), averaged over cells of
    `Annotation.looks(pixel_spacing)` pixels, leaving out no-data pixels (DN = 0: the fill between TOPS bursts and
    around GRD swaths), then raised to `floor` (a cell without data is `floor`).

    Args:
      m: the measurement.
      window: (top, bottom, left, right) raster pixels, whole cells; None: the whole raster, cut to whole cells.
      pixel_spacing: target ground spacing (m).
      thermal_noise: subtract the noise LUTs.
      floor: linear sigma0 floor.
      block_pixels: about how many raster pixels are decoded at once.

    Returns:
      (float32 [lines / la, pixels / lr] linear sigma0, the window read).

    Raises:
      DataNotFoundError: a missing file of `m`, naming it.
      CorruptImageError: an unreadable or truncated file, or a raster larger than its annotation, naming it.
    """
    annotation, calibration = load_metadata(m, thermal_noise)
    looks = annotation.looks(pixel_spacing)
    with Raster(m) as raster:
        window = tuple(int(v) for v in window) if window is not None else full_window(raster.shape, looks)
        _check_window(raster, annotation, window, looks)
        top, bottom, left, right = window
        lut = calibration.at_pixels(np.arange(left, right))
        step = looks[0] * max(1, block_pixels // (looks[0] * (right - left)))
        out = np.empty(((bottom - top) // looks[0], (right - left) // looks[1]), np.float32)
        for start in range(top, bottom, step):  # blocks of lines: the raster is never in memory whole
            stop = min(bottom, start + step)
            power = intensity(raster.read(start, stop, left, right))
            valid = power > 0
            mean, count = multilook(lut.sigma0_of_power(power, np.arange(start, stop)), looks, valid)
            out[(start - top) // looks[0]:(stop - top) // looks[0]] = np.where(count > 0, np.maximum(mean, floor),
                                                                               floor)
    return out, window


def _label_key(name: str) -> str:
    """A CSV `filename`, measurement or product name as labels match it: the base name, lower case, without
    `.zip`, `.SAFE`, `.tiff` or `.tif`."""
    key = os.path.basename(name.strip().rstrip("/\\")).lower()
    for suffix in (".zip", ".safe", ".tiff", ".tif"):
        key = key.removesuffix(suffix)
    return key


def _on_classes(table: LabelTable, class_names: list[str], where: str | os.PathLike) -> LabelTable:
    """`table` with its labels (or multi-hot code columns) mapped by name onto `class_names`.

    Raises:
      DataError: a label (or code column) of the CSV not in `class_names`, naming the CSV and the label.
    """
    index = {c: i for i, c in enumerate(class_names)}
    unknown = [c for c in table.class_names if c not in index]
    if unknown:
        raise DataError(f"{where}: label {unknown[0]!r} is not one of the class_names {class_names}")
    columns = np.array([index[c] for c in table.class_names], np.int64)
    if table.label is not None:
        return LabelTable(table.filenames, list(class_names), columns[table.label].astype(np.int32), None)
    multi_hot = np.zeros((len(table.filenames), len(class_names)), np.int32)
    multi_hot[:, columns] = table.multi_hot
    return LabelTable(table.filenames, list(class_names), None, multi_hot)


class SafeSource:
    """Random-access source over Sentinel-1 SAFE products, on the simulator's uint8 sigma0-dB scale.

    One record per measurement file (a WV vignette; an IW/EW sub-swath or SM swath of one polarisation), or with
    `tile_size` one per square tile of it. Each is `read_sigma0` (calibrated, denoised, multilooked to
    `pixel_spacing`), then `wv_files.normalised_db` (centre crop and antialiased resize of the intensity to
    `image_size`, dB, `db_range` onto 0..255).

    Records: `image` uint8 [S, S, 1], `sample_id` int64 (position in this source), `incidence` float32 (degrees,
    at the window's centre), `swath` int32 (index into `SWATHS`), `polarisation` int32 (index into
    `POLARISATIONS`), `azimuth_time` float64 (seconds since 1970-01-01 UTC, the window's centre line), and with a
    labels CSV `label` int32 (`filename,label` or `filename,class`) or `labels` int32 [K] multi-hot. A CSV
    `filename` names a measurement TIFF (with or without `.tiff`) or a product (its id, `.SAFE` folder or zip);
    a measurement's own row wins over its product's. With a CSV, only the measurements it labels are used. The
    classes are the CSV's, sorted, or an explicit `class_names` the labels are mapped onto by name: give every
    split read from its own CSV the same list, so an index names one class in all of them.

    The source holds names and numbers only (the XML is parsed when a record is read, cached per process), so it
    pickles small into Grain workers. Without `tile_size`, `skip_corrupt` or `verify_checksums`, construction
    lists files and checks that each measurement's files exist; tiling reads each annotation and TIFF header.

    Args:
      root: a `.SAFE` folder, a zip of one, or a folder searched recursively for both.
      image_size: side of the square output.
      pixel_spacing: ground spacing (m) the measurement is multilooked to.
      tile_size: side of a tile in multilooked pixels; 0: one record per measurement file.
      polarisations: the polarisations used (of `POLARISATIONS`); empty: all.
      thermal_noise: subtract the noise LUTs (then every measurement needs its noise XML).
      db_range: (lo, hi) sigma0 dB mapped onto 0..255.
      labels_csv: optional labels CSV.
      class_names: optional class list (single-label names, or multi-hot code columns) the CSV's labels are
        mapped onto by name (a class may be absent from the CSV); None: the CSV's own, sorted. Needs `labels_csv`.
      labels_elsewhere: the CSV also labels products outside `root` (one CSV for several split folders): its rows
        that match nothing here are left out silently and listed in `unmatched_rows`, not errors or skips.
      skip_corrupt: at construction, parse each measurement's XML and check its TIFF header, and drop (and count)
        measurements with a missing, unreadable or truncated file or (with `verify_checksums`) a bad MD5, and CSV
        rows that match nothing; otherwise these raise.
      verify_checksums: at construction, compare the MD5 of every file a record reads with `manifest.safe`'s.

    Attributes:
      image_shape: (S, S, 1).
      class_names: the CSV's classes or codes (or the `class_names` given), or None.
      unmatched_rows: the `filename` of each CSV row matching no measurement here (empty without a CSV).
      measurements: the `Measurement` of each record's file, by index into `measurement_of`.
      num_skipped, skipped_files: what `skip_corrupt` dropped (the errors' messages).

    Raises:
      DataNotFoundError: no products; a missing file of a measurement, or a CSV row matching nothing (without
        `skip_corrupt`).
      CorruptImageError: a bad MD5 (with `verify_checksums`), or unreadable XML or TIFF found at construction.
      DataError: no usable measurement; a CSV label not in `class_names`.
    """

    def __init__(self, root: str | os.PathLike, *, image_size: int, pixel_spacing: float = PIXEL_SPACING,
                 tile_size: int = 0, polarisations: Sequence[str] = (), thermal_noise: bool = True,
                 db_range: tuple[float, float] = DB_RANGE, labels_csv: str | os.PathLike | None = None,
                 class_names: Sequence[str] | None = None, labels_elsewhere: bool = False,
                 skip_corrupt: bool = False, verify_checksums: bool = False):
        if image_size <= 0 or pixel_spacing <= 0 or tile_size < 0:
            raise ValueError(f"need image_size > 0, pixel_spacing > 0 and tile_size >= 0, got {image_size}, "
                             f"{pixel_spacing}, {tile_size}")
        unknown = [p for p in polarisations if p not in POLARISATIONS]
        if unknown or len(db_range) != 2 or not db_range[0] < db_range[1]:
            raise ValueError(f"polarisations must be of {POLARISATIONS} (got {tuple(polarisations)}) and db_range "
                             f"(lo, hi) with lo < hi (got {tuple(db_range)})")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if labels_csv is None or not class_names or len(set(class_names)) != len(class_names):
                raise ValueError(f"class_names must be distinct, non-empty and come with a labels_csv (got "
                                 f"{class_names}, labels_csv={labels_csv})")
        self.root, self.image_size, self.tile_size = str(root), int(image_size), int(tile_size)
        self.pixel_spacing, self.thermal_noise = float(pixel_spacing), bool(thermal_noise)
        self.db_range = (float(db_range[0]), float(db_range[1]))
        self.image_shape = (self.image_size, self.image_size, 1)
        self._skip, self._verify = bool(skip_corrupt), bool(verify_checksums)
        self.skipped_files: list[str] = []
        measurements = [m for p in self._products(root) for m in list_measurements(p, tuple(polarisations))]
        measurements, label, multi_hot = self._labelled(measurements, labels_csv, class_names, labels_elsewhere)
        records, kept = [], []
        for m in measurements:
            windows = self._windows(m)
            if windows is not None:
                records.append(np.concatenate([np.full((len(windows), 1), len(kept)), windows], axis=1))
                kept.append(m)
        if self.skipped_files:
            log.warning("SafeSource(%s): skipped %d measurement(s) or CSV row(s), first: %s", root,
                        len(self.skipped_files), self.skipped_files[0])
        self.num_skipped = len(self.skipped_files)
        self._records = np.concatenate(records).astype(np.int64) if records else np.zeros((0, 5), np.int64)
        if not len(self._records):
            raise DataError(f"no usable Sentinel-1 measurement ({tuple(polarisations) or 'any polarisation'}) "
                            f"under {root}" + (f"; skipped: {self.skipped_files[0]}" if self.skipped_files else ""))
        index = {m: i for i, m in enumerate(measurements)}
        rows = np.array([index[m] for m in kept], np.int64)
        self.measurements = kept
        self._label = None if label is None else label[rows]
        self._multi_hot = None if multi_hot is None else multi_hot[rows]

    def _products(self, root) -> list[Product]:
        """The products under `root`; with `skip_corrupt`, those that open (a stray zip is skipped)."""
        products = []
        for path in product_paths(root):
            try:
                products.append(Product.open(path))
            except DataError as e:
                if not self._skip:
                    raise
                self.skipped_files.append(str(e))
        return products

    def _labelled(self, measurements: list[Measurement], labels_csv, class_names: list[str] | None,
                  labels_elsewhere: bool):
        """The measurements a labels CSV labels, with their labels (all of them, unlabelled, without a CSV)."""
        self.class_names: list[str] | None = None
        self.unmatched_rows: list[str] = []
        if labels_csv is None:
            return measurements, None, None
        table = read_labels_csv(labels_csv)
        if class_names is not None:
            table = _on_classes(table, class_names, labels_csv)
        rows = {_label_key(f): i for i, f in enumerate(table.filenames)}
        matched = [(m, rows.get(_label_key(m.stem), rows.get(_label_key(m.product.name)))) for m in measurements]
        matched = [(m, r) for m, r in matched if r is not None]
        used = {r for _, r in matched}
        self.unmatched_rows = unmatched = [f for i, f in enumerate(table.filenames) if i not in used]
        if unmatched and not labels_elsewhere:
            if not self._skip:
                raise DataNotFoundError(f"{labels_csv}: {len(unmatched)} row(s) match no measurement or product "
                                        f"under {self.root}, first: {unmatched[0]}")
            self.skipped_files += [f"{labels_csv}: no measurement for {f}" for f in unmatched]
        self.class_names = table.class_names
        picked = np.array([r for _, r in matched], np.int64)
        return ([m for m, _ in matched], None if table.label is None else table.label[picked],
                None if table.multi_hot is None else table.multi_hot[picked])

    def _windows(self, m: Measurement) -> np.ndarray | None:
        """int64 [k, 4] windows of `m`'s records (-1s: the whole raster), or None when `skip_corrupt` drops it."""
        try:
            check_files(m, self.thermal_noise)
            if self._verify:
                verify_checksums(m, self.thermal_noise)
            if not (self._skip or self.tile_size):
                return np.full((1, 4), -1, np.int64)
            annotation, _ = load_metadata(m, self.thermal_noise)
            with Raster(m) as raster:
                shape = raster.shape
        except (CorruptImageError, DataNotFoundError) as e:
            if not self._skip:
                raise
            self.skipped_files.append(str(e))
            return None
        if not self.tile_size:
            return np.full((1, 4), -1, np.int64)
        return tile_windows(shape, annotation.looks(self.pixel_spacing), self.tile_size)

    def __len__(self) -> int:
        return len(self._records)

    def labels(self, indices=None) -> np.ndarray | None:
        """The class index of each record (None without single labels), read without decoding images."""
        if self._label is None:
            return None
        per_record = self._label[self._records[:, 0]]
        return per_record if indices is None else per_record[np.asarray(indices)]

    def measurement_of(self, index: int) -> tuple[Measurement, tuple[int, int, int, int] | None]:
        """The measurement and the window (None: the whole raster) of record `index`."""
        row = self._records[int(index)]
        return self.measurements[int(row[0])], (None if row[1] < 0 else tuple(int(v) for v in row[1:]))

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.record_and_window(index)[0]

    def record_and_window(self, index: int) -> tuple[dict[str, np.ndarray], tuple[int, int, int, int]]:
        """Record `index` and the window (top, bottom, left, right raster pixels) it was read from: for a
        whole-file record, the raster cut to whole multilook cells."""
        index = int(index)
        if not 0 <= index < len(self._records):
            raise IndexError(f"index {index} out of range for {len(self._records)} records")
        m, window = self.measurement_of(index)
        sigma0, (top, bottom, left, right) = read_sigma0(m, window, pixel_spacing=self.pixel_spacing,
                                                          thermal_noise=self.thermal_noise)
        norm = normalised_db(sigma0[..., None], self.image_size, m.product.where(m.measurement),
                             db_range=self.db_range)
        annotation, _ = load_metadata(m, self.thermal_noise)
        line, pixel = (top + bottom - 1) / 2.0, (left + right - 1) / 2.0
        record = {"image": np.rint(norm * 255.0).astype(np.uint8), "sample_id": np.int64(index),
                  "incidence": np.float32(annotation.incidence_at(line, pixel)),
                  "swath": np.int32(SWATHS.index(m.swath)),
                  "polarisation": np.int32(POLARISATIONS.index(m.polarisation)),
                  "azimuth_time": np.float64(annotation.time_at(line))}
        row = int(self._records[index, 0])
        if self._label is not None:
            record["label"] = np.int32(self._label[row])
        if self._multi_hot is not None:
            record["labels"] = self._multi_hot[row]
        return record, (top, bottom, left, right)

    def __repr__(self) -> str:
        return (f"SafeSource({self.root!r}, n={len(self)}, image_size={self.image_size}, "
                f"pixel_spacing={self.pixel_spacing}, tile_size={self.tile_size})")
