"""Validation of imagesUnlabeled: each bad input gives an error naming the file."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2_sss.data.folder_lock import LOCK_FILE, FolderLock, FolderLockedError
from nnunetv2_sss.data.image_checks import ImageFileError, check_case_headers, check_voxels, read_header
from nnunetv2_sss.data.unlabeled_raw import UnlabeledDataError, find_unlabeled_cases

DATASET_JSON = {"channel_names": {"0": "T1", "1": "T2"}, "file_ending": ".nii.gz"}


def _image(path, shape=(4, 5, 6), value=None, spacing=(1.0, 1.0, 1.0)):
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32) if value is None \
        else np.full(shape, value, np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def raw(tmp_path):
    (tmp_path / "imagesUnlabeled").mkdir()
    (tmp_path / "imagesTr").mkdir()
    for channel in (0, 1):
        _image(tmp_path / "imagesUnlabeled" / f"u1_{channel:04d}.nii.gz")
        _image(tmp_path / "imagesTr" / f"t1_{channel:04d}.nii.gz")
    return tmp_path


def test_valid_folder(raw):
    cases = find_unlabeled_cases(str(raw), DATASET_JSON)
    assert list(cases) == ["u1"] and [p.split("/")[-1] for p in cases["u1"]] == ["u1_0000.nii.gz", "u1_0001.nii.gz"]
    check_case_headers(cases["u1"], 3, SimpleITKIO())


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(UnlabeledDataError, match="imagesUnlabeled does not exist"):
        find_unlabeled_cases(str(tmp_path), DATASET_JSON)
    (tmp_path / "imagesUnlabeled").mkdir()
    with pytest.raises(ImageFileError, match="contains no images"):
        find_unlabeled_cases(str(tmp_path), DATASET_JSON)


@pytest.mark.parametrize("name, message", [
    ("u2_0000.nii", "file ending"), ("u2.nii.gz", "4-digit channel index"), ("u2_0000.nii.gz", r"channel files \[0\]"),
    ("t1_0000.nii.gz", "also in imagesTr")])
def test_bad_names(raw, name, message):
    if name == "t1_0000.nii.gz":
        _image(raw / "imagesUnlabeled" / "t1_0001.nii.gz")
    _image(raw / "imagesUnlabeled" / name)
    with pytest.raises(ImageFileError, match=message) as error:
        find_unlabeled_cases(str(raw), DATASET_JSON)
    assert name.split("_")[0].split(".")[0] in str(error.value)


def test_dimension_and_geometry(raw):
    two_d = _image(raw / "flat_0000.nii.gz", shape=(5, 6))
    with pytest.raises(ImageFileError, match="flat_0000.nii.gz: image is 2-D, the dataset's images are 3-D"):
        check_case_headers([two_d], 3, SimpleITKIO())
    a = _image(raw / "g_0000.nii.gz")
    b = _image(raw / "g_0001.nii.gz", spacing=(1.0, 1.0, 2.0))
    with pytest.raises(ImageFileError, match=r"g_0001.nii.gz: spacing \[1.0, 1.0, 2.0\] differs from \[1.0, 1.0, 1.0\] "
                                             r"of .*g_0000.nii.gz"):
        check_case_headers([a, b], 3, SimpleITKIO())
    c = _image(raw / "h_0000.nii.gz", shape=(4, 5, 7))
    with pytest.raises(ImageFileError, match=r"size \[6, 5, 4\] differs from \[7, 5, 4\]"):
        check_case_headers([c, a], 3, SimpleITKIO())


def test_voxel_checks():
    images = np.random.default_rng(0).normal(size=(2, 3, 4, 4))
    check_voxels(images, ["a", "b"])
    images[1, 0, 0, 0] = np.nan
    with pytest.raises(ImageFileError, match="b: contains NaN"):
        check_voxels(images, ["a", "b"])
    with pytest.raises(ImageFileError, match="a: image is empty"):
        check_voxels(np.zeros((1, 3, 4, 4)), ["a"])


@pytest.mark.parametrize("permutation, flips", [([2, 1, 0], [True, False, False]), ([1, 2, 0], [False, True, True]),
                                                ([0, 1, 2], [True, True, False])])
def test_header_reoriented_like_dicom_orient(tmp_path, permutation, flips):
    """The header check's idea of a reoriented scan (shape, spacing in nnU-Net's axis order) is what
    SimpleITK.DICOMOrient makes of it."""
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    image.SetSpacing((0.5, 0.7, 2.0))
    odd = sitk.Flip(sitk.PermuteAxes(image, permutation), flips)
    path = str(tmp_path / "odd_0000.nii.gz")
    sitk.WriteImage(odd, path)
    header = read_header(path, SimpleITKIO())
    assert header.orientation == sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(odd.GetDirection())
    reoriented = header.reoriented("LPS")
    expected = sitk.DICOMOrient(odd, "LPS")
    assert reoriented.shape == tuple(expected.GetSize())[::-1] == (3, 4, 5)
    assert np.allclose(reoriented.spacing, expected.GetSpacing()[::-1])


def test_unreadable_header(tmp_path):
    path = tmp_path / "junk_0000.nii.gz"
    path.write_bytes(b"junk" * 10)
    with pytest.raises(ImageFileError, match=r"junk_0000.nii.gz: cannot be read \(.+\); replace the file"):
        check_case_headers([str(path)], 3, SimpleITKIO())


def test_folder_lock_second_holder_refused(tmp_path):
    folder = str(tmp_path / "out")
    with FolderLock(folder):
        assert open(os.path.join(folder, LOCK_FILE)).read().split()[0] == str(os.getpid())
        with pytest.raises(FolderLockedError, match=rf"out: another .* run \(pid {os.getpid()} on host "):
            FolderLock(folder).acquire()
    with FolderLock(folder):  # released
        pass
    assert open(os.path.join(folder, LOCK_FILE)).read() == ""
