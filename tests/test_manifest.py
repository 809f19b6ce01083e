"""A user's own images from a manifest (manifest.py, datasets.load_dataset("manifest", ...)) and
the group-dataset protocol (datasets.group_dataset).

The manifest tests at the top import no torch (tests/test_torch_free.py runs them without it);
the ones that load datasets carry ``@pytest.mark.torch`` and import torch inside.
"""
import logging
import os
import re
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import manifest
from manifest import read_manifest

SKIN = ("light", "medium", "dark")
HEADER = "file_name,smiles,skin_tone"


def fragment(template: str) -> str:
    """The longest literal piece of a message template: what every message built from it holds."""
    return max(re.split(r"\{[^}]*\}", template), key=len).strip()


def pattern(template: str) -> str:
    """``fragment`` as a regular expression for ``pytest.raises(match=...)``."""
    return re.escape(fragment(template))


def write_images(folder, names, size=20):
    for k, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (10 * (k % 25), 120, 40)).save(path)


def default_rows(n=60):
    """(file_name, smiles, skin_tone): every skin tone x label cell has n / 6 images."""
    return [(f"img/{i:03d}.png", "yes" if i % 2 else "no", SKIN[(i // 2) % 3]) for i in range(n)]


def write_manifest(folder, rows, header=HEADER, images=True, name="metadata.csv"):
    folder.mkdir(parents=True, exist_ok=True)
    if images:
        write_images(folder, [r[0] for r in rows if r[0] and not r[0].startswith(("/", ".."))])
    lines = [header] + [",".join(r) for r in rows]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def faces(tmp_path):
    """``<tmp>/faces/metadata.csv`` with 60 PNGs, target 'smiles' (yes/no), skin_tone (3 values)."""
    return write_manifest(tmp_path / "faces", default_rows())


def read(path, **options):
    return read_manifest(path, **{"target": "smiles", "sensitive": ["skin_tone"],
                                  "positive": "yes", **options})


def load(path, **options):
    from datasets import load_dataset

    return load_dataset("manifest", path, **{"target": "smiles", "sensitive": ["skin_tone"],
                                             "positive": "yes", "image_size": 16, **options})


def line_of(row_index: int) -> str:
    """The CSV line of data row ``row_index`` (0-based): the header is line 1."""
    return f"line {row_index + 2}"


# ----------------------------------------------------------------------------- reading


def test_rows_become_targets_sensitive_values_and_resolved_paths(faces):
    result = read(faces)
    table = result.table
    assert list(table["sample_id"]) == [r[0] for r in default_rows()]
    assert list(table["target"]) == [int(r[1] == "yes") for r in default_rows()]
    assert list(table["skin_tone"]) == [r[2] for r in default_rows()]
    assert set(table["split"]) == {"unsplit"} and not result.has_split
    assert result.group_names == sorted(SKIN)
    folder = os.path.realpath(faces.parent)
    assert all(p == os.path.join(folder, s) for p, s in zip(table["path"], table["sample_id"]))
    assert list(table["where"][:2]) == ["line 2", "line 3"]


def test_zero_one_and_boolean_targets_need_no_positive(tmp_path):
    rows = [(f, "1" if t == "yes" else "0", s) for f, t, s in default_rows(12)]
    assert list(read(write_manifest(tmp_path / "a", rows), positive=None).table["target"]) == \
        [int(r[1] == "1") for r in rows]
    rows = [(f, "True" if t == "yes" else "false", s) for f, t, s in default_rows(12)]
    assert list(read(write_manifest(tmp_path / "b", rows), positive=None).table["target"]) == \
        [int(r[1] == "True") for r in rows]


def test_positive_makes_every_other_value_zero(tmp_path):
    rows = [(f, ("cat", "dog", "bird")[i % 3], s) for i, (f, _, s) in enumerate(default_rows(12))]
    table = read(write_manifest(tmp_path / "f", rows), positive="dog").table
    assert list(table["target"]) == [int(i % 3 == 1) for i in range(12)]


def test_a_missing_manifest_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=pattern(manifest.MANIFEST_NOT_FOUND)):
        read(tmp_path / "nowhere" / "metadata.csv")


def test_a_folder_instead_of_the_manifest_names_the_file_to_pass(faces):
    with pytest.raises(ValueError, match=pattern(manifest.MANIFEST_IS_FOLDER)) as error:
        read(faces.parent)
    assert f"{faces.parent}/metadata.csv" in str(error.value)


@pytest.mark.parametrize("options, argument", [({"target": None}, "target"),
                                               ({"sensitive": None}, "sensitive"),
                                               ({"sensitive": []}, "sensitive")])
def test_target_and_sensitive_are_required_and_the_columns_listed(faces, options, argument):
    with pytest.raises(ValueError, match=pattern(manifest.NEED_COLUMNS)) as error:
        read(faces, **options)
    assert f"data.{argument}" in str(error.value)
    assert "['file_name', 'smiles', 'skin_tone']" in str(error.value)


@pytest.mark.parametrize("options, column", [({"target": "smile"}, "smile"),
                                             ({"sensitive": ["skin_tone", "race"]}, "race")])
def test_a_missing_column_is_named_with_the_columns_present(faces, options, column):
    with pytest.raises(ValueError, match=pattern(manifest.MISSING_COLUMN)) as error:
        read(faces, **options)
    assert repr(column) in str(error.value)
    assert "['file_name', 'smiles', 'skin_tone']" in str(error.value)


def test_without_file_name_column_the_columns_are_listed(tmp_path):
    path = write_manifest(tmp_path / "f", default_rows(6), header="path,smiles,skin_tone",
                          images=False)
    with pytest.raises(ValueError, match="no column 'file_name'"):
        read(path)


def test_a_reserved_name_cannot_be_sensitive(tmp_path):
    path = write_manifest(tmp_path / "f", default_rows(6), header="file_name,smiles,group")
    with pytest.raises(ValueError, match=pattern(manifest.RESERVED_COLUMN)):
        read(path, sensitive=["group"])


def test_the_target_cannot_also_be_sensitive(faces):
    with pytest.raises(ValueError, match=pattern(manifest.TARGET_IS_SENSITIVE)):
        read(faces, sensitive=["skin_tone", "smiles"])


def bad_row(rows, index, **changes):
    rows = list(rows)
    file_name, smiles, skin = rows[index]
    values = {"file_name": file_name, "smiles": smiles, "skin_tone": skin, **changes}
    rows[index] = (values["file_name"], values["smiles"], values["skin_tone"])
    return rows


CELL_CASES = {
    "nan sensitive": (dict(skin_tone="NaN"), {}, manifest.EMPTY_VALUE, "'NaN'"),
    "empty sensitive": (dict(skin_tone=""), {}, manifest.EMPTY_VALUE, "''"),
    "empty target": (dict(smiles=""), {}, manifest.EMPTY_VALUE, "'smiles'"),
    "slash in a value": (dict(skin_tone="light/medium"), {}, manifest.SLASH_IN_VALUE,
                         "'light/medium'"),
    "third target value": (dict(smiles="maybe"), {"positive": None}, manifest.TARGET_NOT_BINARY,
                           "'maybe'"),
    "empty file name": (dict(file_name=""), {}, manifest.EMPTY_FILE_NAME, "file_name is empty"),
}


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_a_bad_cell_names_its_line_value_and_fix(tmp_path, case):
    changes, options, template, value = CELL_CASES[case]
    rows = [(f, "1" if t == "yes" else "0", s) for f, t, s in default_rows(30)] \
        if options.get("positive", "x") is None else default_rows(30)
    path = write_manifest(tmp_path / "f", bad_row(rows, 13, **changes))
    with pytest.raises(ValueError, match=pattern((template))) as error:
        read(path, **options)
    message = str(error.value)
    assert f"{line_of(13)}:" in message and value in message and str(path) in message


def test_later_rows_with_the_same_problem_are_counted(tmp_path):
    rows = bad_row(bad_row(default_rows(30), 4, skin_tone=""), 20, skin_tone="nan")
    with pytest.raises(ValueError, match=pattern(manifest.EMPTY_VALUE)) as error:
        read(write_manifest(tmp_path / "f", rows))
    assert f"{line_of(4)}:" in str(error.value)
    assert "1 more row(s) like it: line 22" in str(error.value)


def test_two_values_that_are_not_zero_one_need_positive(faces):
    with pytest.raises(ValueError, match=pattern(manifest.TARGET_NOT_ZERO_ONE)) as error:
        read(faces, positive=None)
    assert "line 2:" in str(error.value) and "positive='no'" in str(error.value)


def test_a_positive_value_absent_from_the_target_lists_its_values(faces):
    with pytest.raises(ValueError, match=pattern(manifest.POSITIVE_NOT_FOUND)) as error:
        read(faces, positive="Yes")
    assert "positive='Yes'" in str(error.value) and "['no', 'yes']" in str(error.value)


@pytest.mark.parametrize("labels, positive", [(("1",), None), (("1", "1.0"), None),
                                               (("yes",), "yes")])
def test_a_target_with_one_label_is_refused(tmp_path, labels, positive):
    rows = [(f, labels[i % len(labels)], s) for i, (f, _, s) in enumerate(default_rows(9))]
    with pytest.raises(ValueError, match=pattern(manifest.TARGET_ONE_VALUE)):
        read(write_manifest(tmp_path / "f", rows), positive=positive)


def test_zero_one_texts_in_any_case_are_one_binary_target(tmp_path):
    labels = ("True", "false", "TRUE", "0", "1.0")
    rows = [(f, labels[i % 5], s) for i, (f, _, s) in enumerate(default_rows(10))]
    table = read(write_manifest(tmp_path / "f", rows), positive=None).table
    assert list(table["target"]) == [1, 0, 1, 0, 1] * 2


@pytest.mark.parametrize("twin", ["img/005.png", "./img/005.png", "img/../img/005.png"])
def test_a_file_listed_twice_names_both_lines(tmp_path, twin):
    rows = default_rows(30)
    rows[17] = (twin, rows[17][1], rows[17][2])
    with pytest.raises(ValueError, match=pattern(manifest.DUPLICATE_FILE)) as error:
        read(write_manifest(tmp_path / "f", rows))
    assert f"{line_of(17)}:" in str(error.value) and f"on {line_of(5)}" in str(error.value)
    assert repr(twin) in str(error.value)


def test_a_bad_split_value_is_named(tmp_path):
    rows = [r + (("train", "val", "test")[i % 3],) for i, r in enumerate(default_rows(30))]
    rows[8] = rows[8][:3] + ("holdout",)
    path = write_manifest(tmp_path / "f", rows, header=HEADER + ",split")
    with pytest.raises(ValueError, match=pattern(manifest.BAD_SPLIT)) as error:
        read(path)
    assert f"{line_of(8)}:" in str(error.value) and "'holdout'" in str(error.value)


def test_line_numbers_count_blank_lines_and_the_header(faces):
    lines = faces.read_text().splitlines()
    lines[5] = lines[5].replace(",dark", ",").replace(",light", ",").replace(",medium", ",")
    lines.insert(3, "")
    faces.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=pattern(manifest.EMPTY_VALUE)) as error:
        read(faces)
    assert "line 7:" in str(error.value)  # data row 5 pushed down by the blank line


def test_a_row_of_the_wrong_width_is_named(faces):
    faces.write_text(faces.read_text() + "img/000.png,yes\n")
    with pytest.raises(ValueError, match=pattern(manifest.ROW_WIDTH)) as error:
        read(faces)
    assert "line 62:" in str(error.value)


def test_text_that_is_not_utf8_is_named_by_line(faces):
    faces.write_bytes(faces.read_bytes().replace(b"img/002.png", b"img/\xe9002.png"))
    with pytest.raises(ValueError, match=pattern(manifest.NOT_UTF8)) as error:
        read(faces)
    assert "line 4:" in str(error.value)


def test_another_file_type_is_refused(faces):
    path = faces.with_name("metadata.tsv")
    path.write_text(faces.read_text())
    with pytest.raises(ValueError, match=pattern((manifest.MANIFEST_FORMAT))):
        read(path)


def test_parquet_without_pyarrow_says_what_to_install(faces):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed")
    except ImportError:
        pass
    path = faces.with_name("metadata.parquet")
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=pattern(manifest.PARQUET_NEEDS_PYARROW)):
        read(path)


# ----------------------------------------------------------------------------- files


def test_a_missing_image_is_named_or_dropped_and_counted(faces, caplog):
    (faces.parent / "img" / "007.png").unlink()
    (faces.parent / "img" / "011.png").unlink()
    with pytest.raises(ValueError, match=pattern(manifest.MISSING_IMAGE)) as error:
        read(faces)
    assert "line 9:" in str(error.value) and "'img/007.png'" in str(error.value)
    assert "1 more row(s) like it: line 13" in str(error.value)
    with caplog.at_level(logging.WARNING, logger="manifest"):
        result = read(faces, skip_bad_images=True)
    assert len(result.table) == 58 and "img/007.png" not in set(result.table["sample_id"])
    assert result.dropped == {"image file missing": ["line 9 'img/007.png'",
                                                     "line 13 'img/011.png'"]}
    lines = [r.getMessage() for r in caplog.records if "Dropped" in r.getMessage()]
    assert len(lines) == 1 and "Dropped 2 row(s)" in lines[0] and "image file missing" in lines[0]


def never_opened(fifo, call):
    """Run ``call`` in a thread; it must finish while nobody holds ``fifo`` open for reading.

    Opening a FIFO for reading blocks until a writer comes, so a loader that opened it would hang:
    after the timeout the FIFO is opened for writing (which releases such a reader) and the test
    fails. Returns the exception ``call`` raised (or None).
    """
    outcome = {}

    def run():
        try:
            call()
        except Exception as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    opened = thread.is_alive()
    if opened:  # release the blocked reader, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=5)
    assert not opened, f"{fifo} was opened"
    try:  # a reader still holding the FIFO would let this open succeed
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        held = True
    except OSError:
        held = False
    assert not held, f"{fifo} is held open"
    return outcome.get("error")


@pytest.fixture
def outside_fifo(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    fifo = outside / "secret.png"
    os.mkfifo(fifo)
    return fifo


LOADERS = [pytest.param("read_manifest", id="read_manifest"),
           pytest.param("load_dataset", id="load_dataset", marks=pytest.mark.torch)]


def loader(kind):
    """read_manifest, or load_dataset("manifest", ...), which goes on to decode the images."""
    return read if kind == "read_manifest" else load


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked folder"])
def test_a_path_leaving_the_folder_is_refused_and_never_opened(tmp_path, outside_fifo, how, kind):
    folder = tmp_path / "faces"
    rows = default_rows(30)
    name = {"dotdot": "../outside/secret.png", "absolute": str(outside_fifo),
            "symlink": "img/link.png", "symlinked folder": "elsewhere/secret.png"}[how]
    write_images(folder, [r[0] for r in rows])
    rows[10] = (name, rows[10][1], rows[10][2])
    path = write_manifest(folder, rows, images=False)
    if how == "symlink":
        os.symlink(outside_fifo, folder / "img" / "link.png")
    if how == "symlinked folder":
        os.symlink(outside_fifo.parent, folder / "elsewhere")
    for skip in (False, True):  # skip_bad_images never skips a path leaving the folder
        error = never_opened(outside_fifo, lambda: loader(kind)(path, skip_bad_images=skip))
        assert isinstance(error, ValueError), error
        assert fragment(manifest.OUTSIDE_FOLDER) in str(error)
        assert f"{line_of(10)}:" in str(error) and repr(name) in str(error)


def test_a_symlink_that_stays_inside_the_folder_is_read(faces):
    os.symlink(faces.parent / "img" / "003.png", faces.parent / "img" / "alias.png")
    faces.write_text(faces.read_text().replace("img/003.png", "img/alias.png"))
    table = read(faces).table
    assert "img/alias.png" in set(table["sample_id"])


@pytest.mark.parametrize("kind", LOADERS)
def test_a_fifo_inside_the_folder_is_not_a_file_and_never_opened(faces, kind):
    fifo = faces.parent / "img" / "pipe.png"
    os.mkfifo(fifo)
    faces.write_text(faces.read_text().replace("img/004.png", "img/pipe.png"))
    error = never_opened(fifo, lambda: loader(kind)(faces))
    assert isinstance(error, ValueError) and fragment(manifest.NOT_A_FILE) in str(error)
    assert "line 6:" in str(error) and "a FIFO" in str(error)
    assert never_opened(fifo, lambda: loader(kind)(faces, skip_bad_images=True)) is None


# ----------------------------------------------------------------------------- loading (torch)


@pytest.mark.torch
def test_a_manifest_loads_into_stratified_splits_without_writing(faces):
    before = sorted(p.relative_to(faces.parent) for p in faces.parent.rglob("*"))
    splits = load(faces, seed=3)
    assert sorted(p.relative_to(faces.parent) for p in faces.parent.rglob("*")) == before
    info = splits.info
    assert info["name"] == "faces" and splits.train.name == "faces" and info["synthetic"] is False
    assert info["group_names"] == sorted(SKIN) and info["sensitive"] == ["skin_tone"]
    assert info["sizes"]["train"] == 42 and sum(info["sizes"].values()) == 60  # 7 of each 10
    rows = {r[0]: r for r in default_rows()}
    for split in ("train", "val", "test"):
        data = splits[split]
        cells = data.metadata.groupby(["group", "target"]).size()
        assert len(cells) == 6  # every group x label in every split
        for record in data.metadata.itertuples():
            assert record.target == int(rows[record.sample_id][1] == "yes")
            assert record.skin_tone == record.group == rows[record.sample_id][2]
    image, target, code, sample_id = splits.test[0]
    assert image.shape == (3, 16, 16) and sample_id == splits.test.metadata["sample_id"][0]
    assert splits.test.group_names[code] == rows[sample_id][2]
    again = load(faces, seed=3)
    assert list(again.val.metadata["sample_id"]) == list(splits.val.metadata["sample_id"])
    other = load(faces, seed=4)
    assert list(other.val.metadata["sample_id"]) != list(splits.val.metadata["sample_id"])


@pytest.mark.torch
def test_a_split_column_is_followed_and_name_is_used(tmp_path):
    rows = [r + (("train", "train", "val", "test")[i % 4],) for i, r in enumerate(default_rows(48))]
    path = write_manifest(tmp_path / "faces", rows, header=HEADER + ",split")
    splits = load(path, name="skin_study", max_per_split=None)
    for split in ("train", "val", "test"):
        expected = [r[0] for r in rows if r[3] == split]
        assert list(splits[split].metadata["sample_id"]) == expected
    assert splits.info["name"] == "skin_study" and splits.val.name == "skin_study"


@pytest.mark.torch
def test_a_group_missing_from_a_split_is_named_with_the_fix(tmp_path):
    rows = [r + ("test" if r[2] != "dark" and i % 3 == 0 else "val" if i % 3 == 1 else "train",)
            for i, r in enumerate(default_rows(60))]
    path = write_manifest(tmp_path / "faces", rows, header=HEADER + ",split")
    with pytest.raises(ValueError, match=pattern(manifest.GROUP_NOT_IN_SPLIT)) as error:
        load(path)
    assert "'dark'" in str(error.value) and "test split" in str(error.value)
    assert fragment(manifest.FIX_WITH_SPLIT_COLUMN) in str(error.value)


@pytest.mark.torch
def test_an_undecodable_image_is_named_or_dropped(faces, caplog):
    (faces.parent / "img" / "021.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=pattern(manifest.BAD_IMAGE)) as error:
        load(faces)
    assert "line 23:" in str(error.value) and "'img/021.png'" in str(error.value)
    with caplog.at_level(logging.WARNING, logger="manifest"):
        splits = load(faces, skip_bad_images=True)
    assert sum(splits.info["sizes"].values()) == 59
    assert splits.info["dropped"] == {"image cannot be decoded": 1}
    assert any("Dropped 1 row(s)" in r.getMessage() and "cannot be decoded" in r.getMessage()
               for r in caplog.records)


@pytest.mark.torch
def test_small_groups_are_flagged_in_one_warning(tmp_path):
    rows = default_rows(60) + [(f"img/x{i}.png", "yes" if i % 2 else "no", "albino")
                               for i in range(6)]
    path = write_manifest(tmp_path / "faces", rows)
    with pytest.warns(UserWarning) as caught:
        splits = load(path, min_group_size=2)
    flagged = [w for w in caught if "min_group_size=2" in str(w.message)]
    assert len(flagged) == 1
    small = {g: n for g, n in splits.info["group_counts"]["test"].items() if n < 2}
    assert "albino" in small and len(small) < 4
    message = str(flagged[0].message)
    assert message.startswith(f"{len(small)} group(s)")
    assert all(f"{g} (n={n})" in message for g, n in small.items())
    assert not any(f"{g} (n=" in message for g in set(splits.info["group_names"]) - set(small))


@pytest.mark.torch
def test_positive_and_a_bad_name_are_refused_where_they_do_not_apply(faces, tmp_path):
    import datasets

    with pytest.raises(ValueError, match=pattern(datasets.POSITIVE_ONLY_FOR_MANIFEST)):
        datasets.load_dataset("celeba", tmp_path, positive="yes")
    with pytest.raises(ValueError, match=pattern((datasets.BAD_DATASET_NAME))):
        load(faces, name="a/b")


# ----------------------------------------------------------------------------- the protocol (torch)


def _user_dataset(n_per_group=(30, 12, 6), seed=0):
    """A user's own Dataset meeting the protocol: metadata + sensitive_attrs, (image, label)
    items."""
    import torch
    from torch.utils.data import Dataset

    class MyFaces(Dataset):
        def __init__(self):
            rng = np.random.default_rng(seed)
            tones = [tone for tone, n in zip(SKIN, n_per_group) for _ in range(n)]
            self.metadata = pd.DataFrame({
                "sample_id": [f"photo_{i}.jpg" for i in range(len(tones))],
                "target": rng.integers(0, 2, len(tones)),
                "skin_tone": tones,
            })
            self.sensitive_attrs = ["skin_tone"]
            self.images = torch.arange(len(tones), dtype=torch.float32).view(-1, 1, 1, 1).expand(
                -1, 3, 4, 4).contiguous()

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i], int(self.metadata["target"][i])

    return MyFaces()


@pytest.mark.torch
def test_a_users_dataset_works_with_every_subset_function_and_the_loader():
    import datasets

    mine = _user_dataset()
    balanced = datasets.balanced_subset(mine, 18, seed=0)
    assert isinstance(balanced, datasets.GroupView) and balanced.group_names == sorted(SKIN)
    assert balanced.group_counts() == {"dark": 6, "light": 6, "medium": 6}
    for position in range(len(balanced)):  # items follow the metadata through the subset
        image, target, code, sample_id = balanced[position]
        row = balanced.metadata.iloc[position]
        assert sample_id == row["sample_id"] and target == row["target"]
        assert balanced.group_names[code] == row["skin_tone"] == row["group"]
        assert image[0, 0, 0].item() == int(sample_id.split("_")[1].split(".")[0])
    enriched = datasets.minority_enriched_subset(mine, 30, seed=1)
    assert enriched.group_counts()["dark"] == 6  # raised to the equal share 10, capped at 6
    for kind in datasets.CALIBRATION_KINDS:
        drawn = datasets.calibration_subset(mine, kind, 24, seed=2)
        assert len(drawn) == 24
        assert set(drawn.metadata["sample_id"]) <= set(mine.metadata["sample_id"])
    again = datasets.balanced_subset(balanced, 9, seed=0)  # a view of a view stays aligned
    assert all(again[i][3] == again.metadata["sample_id"].iat[i] for i in range(len(again)))
    batches = list(datasets.make_loader(mine, 16))
    images, targets, codes, ids = batches[0]
    assert images.shape == (16, 3, 4, 4) and list(ids) == list(mine.metadata["sample_id"][:16])
    assert codes.tolist() == [0 if t == "dark" else 1 if t == "light" else 2
                              for t in mine.metadata["skin_tone"][:16]]


@pytest.mark.torch
def test_predictions_over_a_users_dataset_carry_its_groups():
    import torch

    import datasets
    import evaluation

    mine = _user_dataset()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    table = evaluation.predict(model,
                               datasets.make_loader(datasets.random_subset(mine, 20, seed=0), 8),
                               progress=False)
    expected = mine.metadata.set_index("sample_id")
    assert len(table) == 20
    assert (table["skin_tone"] == expected.loc[table["sample_id"], "skin_tone"].to_numpy()).all()
    assert (table["y_true"] == expected.loc[table["sample_id"], "target"].to_numpy()).all()
    assert (table["group"] == table["skin_tone"]).all()


@pytest.mark.torch
def test_datasets_balanced_subset_of_a_users_dataset_with_forty():
    import datasets

    drawn = datasets.balanced_subset(_user_dataset((20, 20, 20)), 40, seed=0)
    assert sorted(drawn.group_counts().values()) == [13, 13, 14]


@pytest.mark.torch
def test_a_plain_dataset_or_loader_gets_the_protocol_error():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import datasets

    plain = TensorDataset(torch.zeros(8, 3, 4, 4), torch.zeros(8, dtype=torch.long))
    for given in (plain, DataLoader(plain, batch_size=4)):
        for call in (lambda: datasets.balanced_subset(given, 4, seed=0),
                     lambda: datasets.make_loader(given, 4),
                     lambda: datasets.group_dataset(given, "calibration_data")):
            with pytest.raises(datasets.NotAGroupDataset) as error:
                call()
            message = str(error.value)
            assert fragment(datasets.NOT_A_GROUP_DATASET) in message or \
                "Group-aware functions need the group-dataset protocol" in message
            assert "TensorDataset without a `metadata` pandas DataFrame" in message
            assert "docs/datasets.md" in message and 'load_dataset("manifest"' in message
    assert issubclass(datasets.NotAGroupDataset, TypeError)
    assert issubclass(datasets.NotAGroupDataset, ValueError)
    half = _user_dataset()
    del half.sensitive_attrs
    with pytest.raises(datasets.NotAGroupDataset, match="`sensitive_attrs` list"):
        datasets.group_dataset(half)


@pytest.mark.torch
@pytest.mark.parametrize("damage, template", [
    (lambda d: setattr(d, "metadata", d.metadata.drop(columns="target")),
     "METADATA_COLUMNS_MISSING"),
    (lambda d: setattr(d, "metadata", d.metadata.iloc[:-1]), "METADATA_LENGTH"),
    (lambda d: d.metadata.__setitem__("target", 2), "METADATA_BAD_TARGET"),
    (lambda d: d.metadata.__setitem__("sample_id", "same.jpg"), "METADATA_DUPLICATE_IDS"),
    (lambda d: d.metadata.loc.__setitem__((3, "skin_tone"), None), "METADATA_EMPTY_SENSITIVE"),
])
def test_a_metadata_table_breaking_the_protocol_is_named(damage, template):
    import datasets

    mine = _user_dataset()
    damage(mine)
    with pytest.raises(ValueError, match=pattern((getattr(datasets, template)))):
        datasets.group_dataset(mine)


@pytest.mark.torch
def test_items_whose_sample_id_disagrees_with_the_metadata_are_refused():
    import datasets

    mine = _user_dataset()
    items = type(mine).__getitem__
    type(mine).__getitem__ = lambda self, i: (*items(self, i), 0, f"photo_{i + 1}.jpg")
    with pytest.raises(ValueError, match=pattern((datasets.ITEM_NOT_ALIGNED))):
        datasets.group_dataset(mine)[0]


@pytest.mark.torch
def test_largest_balanced_size_is_groups_times_the_smallest_group(faces):
    import datasets

    mine = _user_dataset((30, 12, 7))
    assert datasets.largest_balanced_size(mine) == 21
    drawn = datasets.balanced_subset(mine, datasets.largest_balanced_size(mine), seed=0)
    assert set(drawn.group_counts().values()) == {7}
    splits = load(faces, seed=0)
    smallest = min(splits.test.group_counts().values())
    assert datasets.largest_balanced_size(splits.test) == 3 * smallest
    assert datasets.largest_balanced_size(datasets.make_loader(splits.test, 4)) == 3 * smallest
    empty = splits.test.subset(np.flatnonzero(splits.test.metadata["group"] != "dark"))
    assert datasets.largest_balanced_size(empty) == 0


@pytest.mark.torch
def test_a_face_dataset_subset_or_from_files_is_a_group_dataset(faces):
    from torch.utils.data import Subset

    import datasets

    splits = load(faces)
    assert datasets.group_dataset(splits.train) is splits.train
    part = datasets.group_dataset(Subset(splits.train, [4, 1, 7]))
    train_ids = splits.train.metadata["sample_id"]
    assert list(part.metadata["sample_id"]) == [train_ids[i] for i in (4, 1, 7)]
    table = read(faces).table
    built = datasets.FaceDataset.from_files(
        table["path"], table[["sample_id", "target", "skin_tone"]], sensitive_attrs=["skin_tone"],
        name="mine", image_size=16)
    assert built.group_names == sorted(SKIN) and len(built) == 60
    image, target, code, sample_id = built[5]
    assert image.shape == (3, 16, 16) and sample_id == "img/005.png" and target == 1
    assert built.group_names[code] == table["skin_tone"][5]
    assert datasets.balanced_subset(built, 6, seed=0).group_counts() == {t: 2 for t in sorted(SKIN)}
