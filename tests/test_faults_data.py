"""Bad data the project survives, each with its expected message.

Every fault a user can fix by changing a file or a config value is a `UserError`, printed as one line:
the type says what kind of problem it is, the message names the file, directory or field at fault.
Mixed bit depths are no fault at all: a folder's first file fixes one scale for every record.
"""
import pickle
import re

import numpy as np
import pytest
import tifffile
from flax import nnx
from PIL import Image

from configs import default
from oceansar import release
from oceansar.data.cache import InMemorySource
from oceansar.data.decode import CorruptImageError
from oceansar.data.folder import ImageFolderSource
from oceansar.data.sources import make_pretrain_source
from oceansar.errors import DataError, DataNotFoundError, UserError
from oceansar.experiment import run_spec
from oceansar.models.vit import ViT


def _png(path, value):
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_mixed_bit_depths_share_the_first_files_scale(tmp_path):
    _png(tmp_path / "a.png", 40)
    _png(tmp_path / "b.png", 200)
    tifffile.imwrite(tmp_path / "c.tif", np.full((8, 8), 65535, np.uint16))
    tifffile.imwrite(tmp_path / "d.tif", np.full((8, 8), 32896, np.uint16))  # 32896 / 65535 * 255 = 128
    src = ImageFolderSource(tmp_path, image_size=None)
    assert src.image_dtype == np.uint8
    images = [src[i]["image"] for i in range(len(src))]
    assert all(im.dtype == np.uint8 and im.shape == (8, 8, 1) for im in images)
    assert [int(im[0, 0, 0]) for im in images] == [40, 200, 255, 128]
    cached = InMemorySource(ImageFolderSource(tmp_path, image_size=4))
    assert cached.images.dtype == np.uint8 and cached.images.shape == (4, 4, 4, 1)
    np.testing.assert_array_equal(cached.images[:, 0, 0, 0], [40, 200, 255, 128])


def test_an_8bit_file_in_a_16bit_folder_is_divided_by_255(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.full((8, 8), 65535, np.uint16))
    _png(tmp_path / "b.png", 51)
    src = ImageFolderSource(tmp_path, image_size=None)
    assert src.image_dtype == np.float16
    np.testing.assert_allclose([float(src[i]["image"][0, 0, 0]) for i in range(2)], [1.0, 0.2], atol=1e-3)


def test_a_float_tiff_among_pngs_is_a_corrupt_file_named_with_both_dtypes(tmp_path):
    _png(tmp_path / "a.png", 40)
    tifffile.imwrite(tmp_path / "db.tif", np.full((8, 8), -15.0, np.float32))
    src = ImageFolderSource(tmp_path, image_size=None)
    with pytest.raises(CorruptImageError, match=r"db\.tif: pixel dtype float32 differs from uint8 of .*a\.png"):
        src[1]
    clean = ImageFolderSource(tmp_path, image_size=None, skip_corrupt=True)
    assert len(clean) == 1 and clean.num_skipped == 1 and clean.skipped_files == [str(tmp_path / "db.tif")]
    cached = InMemorySource(clean)
    assert cached.num_skipped == 1 and cached.skipped_files == clean.skipped_files


def test_a_cache_over_mixed_records_names_the_first_offending_file(tmp_path):
    class Mixed(ImageFolderSource):
        def _image(self, path):  # a source that breaks the one-dtype rule, as a buggy reader might
            image = super()._image(path)
            return image.astype(np.float16) if path.endswith("b.png") else image

    _png(tmp_path / "a.png", 40)
    _png(tmp_path / "b.png", 50)
    with pytest.raises(DataError, match=r"b\.png: image \(8, 8, 1\) float16 differs from .* uint8 of record 0 "
                                        r"\(.*a\.png\)"):
        InMemorySource(Mixed(tmp_path, image_size=None))


def _named(path) -> str:
    """A regex matching `path` literally."""
    return re.escape(str(path))


def test_images_with_the_wrong_channel_count_name_the_release(tmp_path):
    spec = run_spec(default.get_config("smoke"))
    vit = ViT(spec.model.variant, img_size=spec.crops.global_size, in_channels=spec.model.in_channels,
              rngs=nnx.Rngs(0))
    path = release.export(tmp_path / "release", teacher_params={"backbone": nnx.split(vit, nnx.Param)[1]},
                          spec=spec)
    fn, params, _ = release.embedder(path)
    with pytest.raises(DataError, match=f"have 3 channels, the release {_named(path)} expects 1 "
                                        r"\(model.in_channels\)"):
        fn(params, np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(DataNotFoundError, match=f"{_named(tmp_path / 'nowhere')}.*not an oceansar release"):
        release.embedder(tmp_path / "nowhere")


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(DataNotFoundError, match=f"image folder {_named(tmp_path / 'nowhere')} does not exist"):
        ImageFolderSource(tmp_path / "nowhere", image_size=8)


def test_a_missing_root_is_named_with_its_field(tmp_path):
    config = default.get_config("smoke")
    config.data.source, config.data.root = "folder", str(tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match=f"config.data.root: {_named(tmp_path / 'nowhere')} is not a"):
        make_pretrain_source(run_spec(config).data, seed=0)


def test_an_empty_folder_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"no image files .* under {_named(tmp_path / 'empty')}"):
        ImageFolderSource(tmp_path / "empty", image_size=8)


def test_a_folder_of_corrupt_files_is_named(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"every one of the 1 files under {_named(tmp_path)} is corrupt"):
        ImageFolderSource(tmp_path, image_size=8, skip_corrupt=True)


def test_a_corrupt_file_is_a_user_error_that_pickles():
    # Grain workers pickle it back to the main process; the command line prints it as one line.
    assert issubclass(CorruptImageError, DataError) and issubclass(DataError, UserError)
    again = pickle.loads(pickle.dumps(CorruptImageError("/data/x.png", "empty file")))
    assert (type(again), again.path, again.reason, str(again)) == (
        CorruptImageError, "/data/x.png", "empty file", "/data/x.png: empty file")
