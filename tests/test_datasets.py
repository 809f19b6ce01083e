import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import config
import synthetic
from datasets import (
    CALIBRATION_KINDS,
    CELEBA_ATTRIBUTES,
    FAIRFACE_RACES,
    UNKNOWN_CALIBRATION_KIND,
    UTK_RACES,
    balanced_subset,
    calibration_seed,
    calibration_subset,
    load_dataset,
    make_loader,
    minority_enriched_shares,
    random_subset,
    read_celeba_attributes,
)
from synthetic import (
    BAD_EXPOSURE,
    BAD_EXPOSURE_GAIN,
    BAD_EXPOSURE_GROUP,
    apply_exposure,
    ensure_synthetic_celeba,
    generate_synthetic_celeba,
)

# ----------------------------------------------------------------------------- fixture writers


def _jpeg_bytes(color=(200, 30, 60), size=(10, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=100)
    return buffer.getvalue()


def _write_images(folder: Path, names, color=(200, 30, 60)) -> None:
    data = _jpeg_bytes(color)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _celeba_rows(n=24):
    """Rows (file, {attr: +-1}, split code) with every Male x Young group in every split."""
    rows = []
    for i in range(n):
        values = {a: -1 for a in CELEBA_ATTRIBUTES}
        values.update(Male=1 if i % 2 else -1, Young=1 if (i // 2) % 2 else -1,
                      Smiling=1 if (i // 4) % 2 else -1, Eyeglasses=1 if i % 3 == 0 else -1)
        rows.append((f"{i + 1:06d}.jpg", values, 0 if i < n // 2 else 1 if i < 3 * n // 4 else 2))
    return rows


def _write_celeba(root: Path, rows) -> Path:
    folder = root / "celeba"
    _write_images(folder / "img_align_celeba", [r[0] for r in rows])
    lines = [str(len(rows)), " ".join(CELEBA_ATTRIBUTES)]
    lines += [f"{f} " + " ".join(f"{v[a]:2d}" for a in CELEBA_ATTRIBUTES) for f, v, _ in rows]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{f} {s}\n" for f, _, s in rows))
    return folder


@pytest.fixture
def celeba_root(tmp_path):
    _write_celeba(tmp_path, _celeba_rows())
    return tmp_path


@pytest.fixture
def utk_root(tmp_path):
    """7 files per (race, gender, age) cell, plus two files with broken names."""
    names = [f"{age}_{gender}_{race}_2017011{copy}.jpg" + (".chip.jpg" if copy % 2 else "")
             for race in range(5) for gender in (0, 1) for age in (25, 45) for copy in range(7)]
    names += ["39_1_20170116174525125.jpg.chip.jpg", "30_7_1_20170116174525125.jpg"]
    _write_images(tmp_path / "utkface" / "UTKFace", names)
    return tmp_path


def _fairface_rows(prefix, copies):
    rows = []
    for race in FAIRFACE_RACES:
        for gender in ("Male", "Female"):
            for k in range(copies):
                age = ("20-29", "50-59", "more than 70")[k % 3]
                rows.append(f"{prefix}/{len(rows) + 1}.jpg,{age},{gender},{race},True")
    return rows


@pytest.fixture
def fairface_root(tmp_path):
    folder = tmp_path / "fairface"
    for split, copies in (("train", 7), ("val", 2)):
        rows = _fairface_rows(split, copies)
        _write_images(folder, [r.split(",")[0] for r in rows])
        (folder / f"fairface_label_{split}.csv").write_text(
            "file,age,gender,race,service_test\n" + "\n".join(rows) + "\n")
    return tmp_path


# ----------------------------------------------------------------------------- CelebA format


def test_celeba_loader_follows_files_and_maps_groups(celeba_root):
    splits = load_dataset("celeba", celeba_root, image_size=16)
    rows = {f: (v, s) for f, v, s in _celeba_rows()}
    assert not splits.train.synthetic and splits.info["synthetic"] is False
    assert splits.train.sensitive_attrs == ["gender", "age"]
    for split_code, dataset in enumerate((splits.train, splits.val, splits.test)):
        for record in dataset.metadata.itertuples():
            values, code = rows[record.sample_id]
            assert code == split_code and record.split == ("train", "val", "test")[code]
            assert record.target == (values["Smiling"] == 1)
            assert record.gender == ("Male" if values["Male"] == 1 else "Female")
            assert record.age == ("Young" if values["Young"] == 1 else "Old")
            assert record.group == f"{record.gender}/{record.age}"
    assert splits.info["group_counts"]["train"] == {"Female/Old": 3, "Female/Young": 3,
                                                    "Male/Old": 3, "Male/Young": 3}
    image = splits.test[0][0]  # a solid (200, 30, 60) JPEG -> mean 0.5 / std 0.5 scaling
    assert image.shape == (3, 16, 16)
    assert torch.allclose(image.mean(dim=(1, 2)), torch.tensor([200, 30, 60]) / 127.5 - 1,
                          atol=0.05)


def test_celeba_any_attribute_can_be_sensitive_or_target(celeba_root):
    splits = load_dataset("celeba", celeba_root, target="Male", sensitive=["Eyeglasses", "age"])
    meta = splits.train.metadata
    assert set(meta["Eyeglasses"]) == {"Eyeglasses", "not Eyeglasses"}
    assert set(meta["group"]) == {"Eyeglasses/Old", "Eyeglasses/Young", "not Eyeglasses/Old",
                                  "not Eyeglasses/Young"}
    assert splits.train.target_name == "Male"
    assert list(meta["target"]) == [int(i % 2 == 1) for i in range(12)]


def test_group_codes_index_sorted_group_names(celeba_root):
    train = load_dataset("celeba", celeba_root).train
    assert train.group_names == sorted(train.group_names)
    codes = [train[i][2] for i in range(len(train))]
    assert [train.group_names[c] for c in codes] == list(train.metadata["group"])


@pytest.mark.parametrize("line_index, text, lineno", [
    (0, "many", 1),
    (3, "000002.jpg 1 -1", 4),
    (4, "000003.jpg " + " ".join(["2"] * 40), 5),
])
def test_malformed_attribute_file_names_file_and_line(celeba_root, line_index, text, lineno):
    path = celeba_root / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[line_index] = text
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"list_attr_celeba.txt, line {lineno}:"):
        load_dataset("celeba", celeba_root)


def test_malformed_partition_file_names_file_and_line(celeba_root):
    path = celeba_root / "celeba" / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    lines[6] = "000007.jpg 3"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_eval_partition.txt, line 7: .*'000007.jpg 3'"):
        load_dataset("celeba", celeba_root)


@pytest.mark.parametrize("name, source", [
    ("celeba", "mmlab.ie.cuhk.edu.hk/projects/CelebA.html"),
    ("utkface", "susanqq.github.io/UTKFace"),
    ("fairface", "github.com/joojs/fairface"),
])
def test_missing_dataset_folder_says_where_to_get_it(tmp_path, name, source):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(name, tmp_path)
    message = str(err.value)
    assert source in message and str(tmp_path / name) in message and "'synthetic'" in message


def test_unknown_dataset_name_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'celebA'.*'synthetic', 'celeba', 'utkface'"):
        load_dataset("celebA", tmp_path)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"target": "Smiles"}, r"target attribute\(s\) \['Smiles'\].*'Smiling'"),
    ({"sensitive": ["Male", "Skin"]}, r"sensitive attribute\(s\) \['Skin'\].*'Young'"),
    ({"target": "Male", "sensitive": ["gender"]}, "overlap"),
    ({"sensitive": []}, "No sensitive attribute"),
])
def test_bad_attribute_names_list_available_ones(celeba_root, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_dataset("celeba", celeba_root, **kwargs)


def test_unreadable_image_is_named_or_skipped_with_warning(celeba_root, caplog):
    bad = celeba_root / "celeba" / "img_align_celeba" / "000002.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="1 image file.*000002.jpg.*skip_bad_images=True"):
        load_dataset("celeba", celeba_root)  # at load, not mid-training
    with caplog.at_level(logging.WARNING, logger="datasets"):
        train = load_dataset("celeba", celeba_root, skip_bad_images=True).train
    assert "000002.jpg" not in set(train.metadata["sample_id"]) and len(train) == 11
    assert "Skipped 1 unreadable image" in caplog.text


def test_missing_image_file_fails_at_load_or_is_skipped(celeba_root):
    (celeba_root / "celeba" / "img_align_celeba" / "000005.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 image file.*000005.jpg.*skip_bad_images"):
        load_dataset("celeba", celeba_root)
    train = load_dataset("celeba", celeba_root, skip_bad_images=True).train
    assert len(train) == 11


def test_decoded_images_are_cached_below_the_limit(celeba_root):
    cached = load_dataset("celeba", celeba_root, image_size=8).train
    uncached = load_dataset("celeba", celeba_root, image_size=8, cache_limit_gib=0).train
    first_cached, first_uncached = cached[0][0], uncached[0][0]
    Path(cached.image_path(0)).unlink()
    assert torch.equal(cached[0][0], first_cached)  # served from memory
    with pytest.raises(ValueError, match="000001.jpg"):
        uncached[0]
    assert torch.equal(first_cached, first_uncached)


# ----------------------------------------------------------------------------- UTKFace


def test_utkface_parses_names_skips_broken_ones_with_a_count(utk_root, caplog):
    with caplog.at_level(logging.WARNING, logger="datasets"):
        splits = load_dataset("utkface", utk_root, sensitive=["race"], seed=3)
    assert "Skipped 2 UTKFace file(s)" in caplog.text
    meta = splits.train.metadata
    assert set(meta["race"]) == set(UTK_RACES)
    for record in meta.itertuples():
        age, gender, race = (int(v) for v in record.sample_id.split("/")[-1].split("_")[:3])
        assert record.target == gender and record.race == UTK_RACES[race]


def test_utkface_split_is_stratified_and_seeded(utk_root):
    splits = load_dataset("utkface", utk_root, sensitive=["race"], seed=3)
    sizes = {s: splits[s].metadata.groupby(["group", "target"]).size() for s in
             ("train", "val", "test")}
    # each (race, gender) stratum has 14 files: 0.7/0.15/0.15 -> 10/2/2 exactly
    assert (sizes["train"] == 10).all() and (sizes["val"] == 2).all()
    assert (sizes["test"] == 2).all() and len(sizes["test"]) == 10
    again = load_dataset("utkface", utk_root, sensitive=["race"], seed=3)
    other = load_dataset("utkface", utk_root, sensitive=["race"], seed=4)
    ids = lambda s: list(s.test.metadata["sample_id"])  # noqa: E731
    assert ids(again) == ids(splits) and ids(other) != ids(splits)


def test_utkface_defaults_and_age_target(utk_root):
    default = load_dataset("utkface", utk_root).train
    assert default.target_name == "gender" and default.sensitive_attrs == ["race", "age_group"]
    assert set(default.metadata["age_group"]) == {"20-39", "40-59"}
    aged = load_dataset("utkface", utk_root, target="age_ge_40", sensitive=["gender", "race"])
    meta = aged.train.metadata
    ages = meta["sample_id"].str.split("/").str[-1].str.split("_").str[0].astype(int)
    assert list(meta["target"]) == list((ages >= 40).astype(int))
    assert len(aged.train.group_names) == 10
    with pytest.raises(ValueError, match="overlap"):
        load_dataset("utkface", utk_root, target="age_ge_40", sensitive=["age_group"])


# ----------------------------------------------------------------------------- FairFace


def test_fairface_val_file_is_test_and_val_is_carved_from_train(fairface_root):
    splits = load_dataset("fairface", fairface_root, sensitive=["race"], seed=1)
    assert all(s.startswith("val/") for s in splits.test.metadata["sample_id"])
    assert len(splits.test) == 28
    carved = splits.val.metadata
    assert all(s.startswith("train/") for s in carved["sample_id"])
    # 7 train rows per (race, gender); train:val = 0.7:0.15 -> 6:1 in each stratum
    assert (carved.groupby(["group", "target"]).size() == 1).all() and len(carved) == 14
    assert splits.train.metadata["target"].mean() == pytest.approx(0.5)


def test_fairface_age_bins_give_age_target(fairface_root):
    splits = load_dataset("fairface", fairface_root, target="age_ge_40", sensitive=["race"])
    rows = {r.split(",")[0]: r.split(",")[1] for r in _fairface_rows("val", 2)}
    for record in splits.test.metadata.itertuples():
        assert record.target == (rows[record.sample_id] in ("50-59", "more than 70"))


@pytest.mark.parametrize("bad_row, fragment", [
    ("train/999.jpg,20-29,Male,Martian,True", r"line 100: race='Martian'"),
    ("train/999.jpg,21,Male,White,True", r"line 100: age='21'"),
])
def test_fairface_bad_label_names_file_and_line(fairface_root, bad_row, fragment):
    path = fairface_root / "fairface" / "fairface_label_train.csv"
    path.write_text(path.read_text() + bad_row + "\n")
    with pytest.raises(ValueError, match=fragment):
        load_dataset("fairface", fairface_root, sensitive=["race"])


def test_fairface_missing_column_is_reported(fairface_root):
    path = fairface_root / "fairface" / "fairface_label_val.csv"
    path.write_text("file,age,sex,race\nval/1.jpg,20-29,Male,White\n")
    with pytest.raises(ValueError, match=r"fairface_label_val.csv, line 1: .*\['gender'\]"):
        load_dataset("fairface", fairface_root)


# ----------------------------------------------------------------------------- synthetic


def _folder_bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthetic_generator_is_deterministic(tmp_path):
    first = generate_synthetic_celeba(tmp_path / "a", n_images=30, image_size=32, seed=5)
    second = generate_synthetic_celeba(tmp_path / "b", n_images=30, image_size=32, seed=5)
    other = generate_synthetic_celeba(tmp_path / "c", n_images=30, image_size=32, seed=6)
    assert _folder_bytes(first) == _folder_bytes(second)
    assert len(_folder_bytes(first)) == 30 + 3  # images, attributes, partition, params
    assert _folder_bytes(first)["img_align_celeba/000001.jpg"] != \
        _folder_bytes(other)["img_align_celeba/000001.jpg"]


def test_synthetic_group_shares_and_label_rates_follow_the_knobs(tmp_path):
    shares = {"Female/Young": 0.4, "Male/Young": 0.3, "Male/Old": 0.2, "Female/Old": 0.1}
    folder = generate_synthetic_celeba(tmp_path, n_images=400, image_size=16, group_shares=shares,
                                       smiling_rate={"Female/Old": 0.25})
    attributes = read_celeba_attributes(folder / "list_attr_celeba.txt")
    assert list(attributes.columns) == list(CELEBA_ATTRIBUTES)
    gender = np.where(attributes["Male"] == 1, "Male", "Female")
    age = np.where(attributes["Young"] == 1, "Young", "Old")
    groups = np.char.add(np.char.add(gender, "/"), age)
    for group, share in shares.items():
        assert abs(np.mean(groups == group) - share) <= 1 / 400
    assert attributes["Smiling"][groups == "Female/Old"].mean() == pytest.approx(0.25, abs=0.03)
    assert attributes["Smiling"][groups == "Female/Young"].mean() == pytest.approx(0.5, abs=0.01)


def test_default_synthetic_shares_mimic_celeba(tiny_synthetic_splits):
    counts = {g: 0 for g in tiny_synthetic_splits.train.group_names}
    for split in ("train", "val", "test"):
        for group, n in tiny_synthetic_splits[split].group_counts().items():
            counts[group] += n
    assert min(counts, key=counts.get) == "Female/Old"
    assert counts["Female/Old"] / 400 == pytest.approx(0.09, abs=0.01)
    assert counts["Female/Young"] / 400 == pytest.approx(0.49, abs=0.01)


def test_synthetic_folder_is_reused_or_regenerated_by_parameters(tmp_path):
    folder = ensure_synthetic_celeba(tmp_path, n_images=20, image_size=16)
    stamp = (folder / "list_attr_celeba.txt").stat().st_mtime_ns
    assert ensure_synthetic_celeba(tmp_path, n_images=20, image_size=16) == folder
    assert (folder / "list_attr_celeba.txt").stat().st_mtime_ns == stamp
    ensure_synthetic_celeba(tmp_path, n_images=25, image_size=16)
    assert len(list((folder / "img_align_celeba").iterdir())) == 25


@pytest.mark.parametrize("options, fragment", [
    ({"n_images": 20, "colour": 1}, r"Unknown synthetic option\(s\) \['colour'\]"),
    ({"n_images": 20, "cue_strength": {"Female/Elder": 0.5}}, r"unknown group\(s\) \['Female/"),
    ({"n_images": 20, "smiling_rate": 1.5}, "smiling_rate for 'Female/Old'"),
    ({"n_images": 20, "group_shares": {"Male/Old": 1.0}}, "must give all of"),
])
def test_bad_synthetic_options_are_named(tmp_path, options, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_dataset("synthetic", tmp_path, synthetic=options)


def test_synthetic_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="Refusing to write"):
        generate_synthetic_celeba(tmp_path, n_images=5, image_size=16)
    assert (tmp_path / "notes.txt").exists()


def test_synthetic_splits_yield_contract_items(tiny_synthetic_splits):
    train = tiny_synthetic_splits.train
    image, target, group_code, sample_id = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert target == train.metadata.loc[0, "target"]
    assert train.group_names[group_code] == train.metadata.loc[0, "group"]
    assert sample_id == train.metadata.loc[0, "sample_id"]
    assert train.synthetic and tiny_synthetic_splits.info["synthetic"]
    assert tiny_synthetic_splits.info["generator"]["n_images"] == 400
    assert "SYNTHETIC" in repr(train)


# ----------------------------------------------------------------------------- splits, subsets


def test_max_per_split_caps_every_split_keeping_groups(tmp_path):
    options = {"n_images": 200, "image_size": 16}
    full = load_dataset("synthetic", tmp_path, synthetic=options)
    splits = load_dataset("synthetic", tmp_path, max_per_split=40, synthetic=options)
    assert len(full.train) > 40 and len(splits.train) == 40
    assert (len(splits.val), len(splits.test)) == (len(full.val), len(full.test))  # < 40 kept
    assert all(n > 0 for n in splits.train.group_counts().values())
    with pytest.raises(ValueError, match=r"Group '.*' has no samples in the train split"):
        load_dataset("synthetic", tmp_path, max_per_split=3,
                     synthetic={"n_images": 200, "image_size": 16})


def test_a_split_left_without_a_group_is_an_error(utk_root):
    with pytest.raises(ValueError, match=r"Group '.*' has no samples in the val split"):
        load_dataset("utkface", utk_root, sensitive=["race"], split_fractions=(1.0, 0.0, 0.0))


def test_balanced_subset_is_balanced_where_groups_allow(tiny_synthetic_splits):
    train = tiny_synthetic_splits.train
    available = train.group_counts()
    smallest = min(available, key=available.get)
    n = 4 * available[smallest] + 20  # the smallest group cannot fill its quarter
    counts = balanced_subset(train, n, seed=0).group_counts()
    assert counts[smallest] == available[smallest] and sum(counts.values()) == n
    others = [c for g, c in counts.items() if g != smallest]
    assert max(others) - min(others) <= 1
    random_counts = random_subset(train, n, seed=0).group_counts()
    assert sum(random_counts.values()) == n and random_counts != counts
    assert max(random_counts.values()) > max(counts.values())


def test_balanced_subset_by_label_and_seeding(tiny_synthetic_splits):
    train = tiny_synthetic_splits.train
    subset = balanced_subset(train, 40, seed=1, by_label=True)
    cells = subset.metadata.groupby(["group", "target"]).size()
    assert len(cells) == 8 and (cells == 5).all()
    ids = lambda d: list(d.metadata["sample_id"])  # noqa: E731
    assert ids(balanced_subset(train, 40, seed=1, by_label=True)) == ids(subset)
    assert ids(balanced_subset(train, 40, seed=2, by_label=True)) != ids(subset)
    assert ids(random_subset(train, 40, seed=1)) == ids(random_subset(train, 40, seed=1))


def test_subset_keeps_metadata_aligned_and_empty_group_is_named(tiny_synthetic_splits):
    train = tiny_synthetic_splits.train
    keep = np.flatnonzero(train.metadata["group"] != "Female/Old")
    without = train.subset(keep)
    assert list(without.metadata["sample_id"]) == list(train.metadata["sample_id"].iloc[keep])
    assert without[0][3] == train[int(keep[0])][3]
    with pytest.raises(ValueError, match=r"\['Female/Old'\] have no samples"):
        balanced_subset(without, 20, seed=0)
    with pytest.raises(ValueError, match=r"n=100000 must be an integer in \[1, "):
        random_subset(train, 100000, seed=0)
    with pytest.raises(ValueError, match="subset indices must lie in"):
        train.subset([len(train)])


def test_make_loader_is_seeded_and_validates(tiny_synthetic_splits):
    train = tiny_synthetic_splits.train
    images, targets, groups, ids = next(iter(make_loader(train, 16, shuffle=True, seed=1)))
    assert images.shape == (16, 3, 32, 32) and targets.dtype == torch.int64
    assert len(ids) == 16 and groups.max() < len(train.group_names)
    _, _, _, same = next(iter(make_loader(train, 16, shuffle=True, seed=1)))
    _, _, _, other = next(iter(make_loader(train, 16, shuffle=True, seed=2)))
    assert list(same) == list(ids) and list(other) != list(ids)
    _, _, _, ordered = next(iter(make_loader(train, 4)))
    assert list(ordered) == list(train.metadata["sample_id"][:4])
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        make_loader(train, 0)


def test_empty_and_truncated_images_are_all_named_at_load(celeba_root):
    folder = celeba_root / "celeba" / "img_align_celeba"
    (folder / "000003.jpg").write_bytes(b"")
    data = (folder / "000004.jpg").read_bytes()
    (folder / "000004.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as err:
        load_dataset("celeba", celeba_root)
    message = str(err.value)
    assert message.startswith("2 image file(s) of celeba are empty, not regular files or cannot be "
                              "decoded")
    assert "000003.jpg (empty file, 0 bytes)" in message and "000004.jpg (" in message
    assert "data.skip_bad_images: true" in message
    assert len(load_dataset("celeba", celeba_root, skip_bad_images=True).train) == 10


def test_checked_images_are_not_decoded_again_until_they_change(celeba_root, monkeypatch):
    import datasets
    decoded = []
    real = datasets._image_problem
    monkeypatch.setattr(datasets, "_image_problem", lambda path: decoded.append(path) or real(path))
    load_dataset("celeba", celeba_root)
    assert len(decoded) == 24
    decoded.clear()
    load_dataset("celeba", celeba_root)
    assert decoded == []  # same size and mtime: trusted
    (celeba_root / "celeba" / "img_align_celeba" / "000007.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="000007.jpg"):
        load_dataset("celeba", celeba_root)
    assert [Path(p).name for p in decoded] == ["000007.jpg"]


@pytest.mark.parametrize("file_name", ["list_attr_celeba.txt", "list_eval_partition.txt"])
def test_non_utf8_label_file_names_file_line_and_fix(celeba_root, file_name):
    path = celeba_root / "celeba" / file_name
    lines = path.read_bytes().split(b"\n")
    lines[4] = lines[4][:3] + b"\xff" + lines[4][4:]  # one damaged byte on line 5
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError) as err:
        load_dataset("celeba", celeba_root)
    assert str(err.value).startswith(f"{path}, line 5: byte 0xff is not UTF-8 text")
    assert "iconv -f latin1 -t utf-8" in str(err.value)


def test_a_duplicated_row_in_the_attribute_file_is_refused(celeba_root):
    path = celeba_root / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[0] = str(int(lines[0]) + 1)
    lines.append(lines[3])  # 000002.jpg again
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 27: '000002.jpg' is already listed on line 4"):
        load_dataset("celeba", celeba_root)


def test_a_duplicated_row_in_a_fairface_label_file_is_refused(fairface_root):
    path = fairface_root / "fairface" / "fairface_label_val.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(ValueError,
                       match=rf"line {len(lines) + 1}: 'val/1.jpg' is already listed on line 2"):
        load_dataset("fairface", fairface_root)


@pytest.mark.parametrize("root", ["a_file/data", "/sys/bnq_data"])
def test_a_synthetic_root_that_cannot_be_written_is_named(tmp_path, root):
    (tmp_path / "a_file").write_text("x")
    root = tmp_path / root if not root.startswith("/") else Path(root)
    with pytest.raises(ValueError, match=r"Cannot write the synthetic dataset under .*data\.root"):
        load_dataset("synthetic", root, synthetic={"n_images": 40, "image_size": 16})


# ----------------------------------------------------------------------------- exposure knob

def _images_by_group(folder: Path) -> tuple[dict, np.ndarray]:
    attributes = read_celeba_attributes(folder / "list_attr_celeba.txt")
    gender = np.where(attributes["Male"] == 1, "Male", "Female")
    age = np.where(attributes["Young"] == 1, "Young", "Old")
    pixels = {name: np.asarray(Image.open(folder / "img_align_celeba" / name), dtype=float) / 255
              for name in attributes.index}
    return pixels, np.char.add(np.char.add(gender, "/"), age)


def test_apply_exposure_scales_deviations_from_the_image_mean_then_clips():
    rng = np.random.default_rng(0)
    images = rng.uniform(0.3, 0.7, (2, 8, 8, 3)).astype(np.float32)
    out = apply_exposure(images, [1.5, 0.5])
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    assert np.allclose(out[0], mean[0] + 1.5 * (images[0] - mean[0]), atol=1e-6)  # no clipping
    assert np.allclose(out[1], mean[1] + 0.5 * (images[1] - mean[1]), atol=1e-6)
    assert np.allclose(out.std(axis=(1, 2, 3)), [1.5, 0.5] * images.std(axis=(1, 2, 3)), rtol=1e-4)
    assert apply_exposure(images, 10.0).min() == 0.0 and apply_exposure(images, 10.0).max() == 1.0


def test_exposure_changes_only_the_named_group_by_the_gain(tmp_path):
    options = dict(n_images=60, image_size=32, seed=3)
    plain = generate_synthetic_celeba(tmp_path / "plain", **options)
    lit = generate_synthetic_celeba(tmp_path / "lit", **options, exposure={"Female/Old": 0.5})
    before, groups = _images_by_group(plain)
    after, _ = _images_by_group(lit)
    names = sorted(before)
    planted = [n for n, g in zip(names, groups) if g == "Female/Old"]
    assert planted
    for name, group in zip(names, groups):
        if group != "Female/Old":  # the other images are the same bytes
            assert (plain / "img_align_celeba" / name).read_bytes() == \
                (lit / "img_align_celeba" / name).read_bytes()
    for name in planted:  # a gain below 1 never clips: std halves, mean stays (JPEG rounding aside)
        assert after[name].std() == pytest.approx(0.5 * before[name].std(), rel=0.08)
        assert after[name].mean() == pytest.approx(before[name].mean(), abs=0.01)
    assert ((plain / "list_attr_celeba.txt").read_bytes()
            == (lit / "list_attr_celeba.txt").read_bytes())


def test_a_changed_exposure_regenerates_the_cached_set(tmp_path):
    folder = ensure_synthetic_celeba(tmp_path, n_images=20, image_size=16)
    stamp = (folder / "synthetic_params.json").read_text()
    ensure_synthetic_celeba(tmp_path, n_images=20, image_size=16, exposure={"Male/Old": 1.5})
    assert (folder / "synthetic_params.json").read_text() != stamp
    assert synthetic.stored_synthetic_params(folder)["exposure"] == {"Male/Old": 1.5}


@pytest.mark.parametrize("exposure, message", [
    ({"Female/Elder": 1.8}, BAD_EXPOSURE_GROUP.format(group="Female/Elder",
                                                       groups=list(synthetic.SYNTHETIC_GROUPS))),
    ({"Female/Old": 0}, BAD_EXPOSURE_GAIN.format(group="Female/Old", gain=0)),
    ({"Female/Old": -1.0}, BAD_EXPOSURE_GAIN.format(group="Female/Old", gain=-1.0)),
    ({"Female/Old": "high"}, BAD_EXPOSURE_GAIN.format(group="Female/Old", gain="high")),
    (1.8, BAD_EXPOSURE.format(given=1.8)),
])
def test_bad_exposure_is_named(tmp_path, exposure, message):
    with pytest.raises(ValueError) as error:
        load_dataset("synthetic", tmp_path, synthetic={"n_images": 20, "exposure": exposure})
    assert str(error.value) == message


def test_config_carries_the_exposure_knob():
    cfg = config.load_config(None, ["data.synthetic.exposure={Female/Old: 1.8}"])
    assert cfg.data.synthetic.exposure == {"Female/Old": 1.8}
    assert config.load_config(None).data.synthetic.exposure == {}


# ----------------------------------------------------------------------------- calibration sets

def test_calibration_kind_names_are_the_config_choices():
    assert tuple(CALIBRATION_KINDS) == config.CALIBRATION_KINDS


def test_minority_enriched_raises_small_groups_to_the_equal_share():
    assert np.allclose(minority_enriched_shares([49, 29, 13, 9]),
                       [0.5 * 49 / 78, 0.5 * 29 / 78, 0.25, 0.25])
    assert np.allclose(minority_enriched_shares([25, 25, 25, 25]), 0.25)


def test_minority_enriched_subset_has_the_documented_composition(tiny_synthetic_splits):
    train = tiny_synthetic_splits.train
    sizes = np.array([train.group_counts()[g] for g in train.group_names])
    n = 60
    counts = calibration_subset(train, "minority_enriched", n, seed=0).group_counts()
    expected = n * minority_enriched_shares(sizes)
    for group, target in zip(train.group_names, expected):
        assert abs(counts[group] - target) < 1  # largest-remainder rounding of the shares
    assert sum(counts.values()) == n
    smallest = train.group_names[int(np.argmin(sizes))]
    assert counts[smallest] == pytest.approx(n / 4, abs=1)  # raised to the equal share


def test_minority_enriched_gives_a_short_group_all_it_has(tiny_synthetic_splits):
    train = tiny_synthetic_splits.train
    sizes = train.group_counts()
    smallest = min(sizes, key=sizes.get)
    n = 5 * sizes[smallest]  # its share n/4 is more than it has
    counts = calibration_subset(train, "minority_enriched", n, seed=0).group_counts()
    assert counts[smallest] == sizes[smallest] and sum(counts.values()) == n


def test_paired_draws_share_the_seed_across_kinds(tiny_synthetic_splits):
    train = tiny_synthetic_splits.train
    ids = lambda d: list(d.metadata["sample_id"])  # noqa: E731
    seeds = {kind: [calibration_seed(7, draw) for draw in range(5)] for kind in CALIBRATION_KINDS}
    assert all(s == seeds["random"] for s in seeds.values())
    assert seeds["random"] == [7000, 7001, 7002, 7003, 7004]
    for kind in CALIBRATION_KINDS:  # the same seed redraws the same set; the next draw differs
        first = calibration_subset(train, kind, 40, calibration_seed(7, 0))
        assert ids(first) == ids(calibration_subset(train, kind, 40, calibration_seed(7, 0)))
        assert ids(first) != ids(calibration_subset(train, kind, 40, calibration_seed(7, 1)))
    assert ids(calibration_subset(train, "random", 40, 7000)) == ids(random_subset(train, 40, 7000))


def test_unknown_calibration_kind_lists_the_kinds(tiny_synthetic_splits):
    with pytest.raises(ValueError) as error:
        calibration_subset(tiny_synthetic_splits.train, "stratified", 10, 0)
    assert str(error.value) == UNKNOWN_CALIBRATION_KIND.format(kind="stratified",
                                                               kinds=list(CALIBRATION_KINDS))


# ------------------------------------------------------------------------- listed paths stay inside

@pytest.fixture
def never_opened(tmp_path):
    """A FIFO outside every dataset folder: opening it for reading would block, so a test that
    lists it fails by the alarm instead of hanging."""
    import os
    import signal
    fifo = tmp_path / "outside" / "secret.jpg"
    fifo.parent.mkdir()
    os.mkfifo(fifo)

    def opened(*_):
        raise AssertionError(f"{fifo} was opened")
    previous = signal.signal(signal.SIGALRM, opened)
    signal.alarm(20)
    yield fifo
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _relist_celeba(root: Path, file_name: str, new_name: str, row: int = 3) -> int:
    """List ``new_name`` instead of the image on line ``row`` (1-based) of ``file_name``."""
    path = root / "celeba" / file_name
    lines = path.read_text().splitlines()
    old = lines[row - 1].split()[0]
    lines[row - 1] = lines[row - 1].replace(old, new_name, 1)
    path.write_text("\n".join(lines) + "\n")
    return row


@pytest.mark.parametrize("file_name, row", [("list_attr_celeba.txt", 3),
                                            ("list_eval_partition.txt", 1)])
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "etc_passwd"])
def test_a_celeba_listing_cannot_name_a_file_outside_the_dataset(celeba_root, never_opened,
                                                                 file_name, row, kind):
    name = {"dotdot": "../../outside/secret.jpg", "absolute": str(never_opened),
            "etc_passwd": "../../../../../../../../etc/passwd"}[kind]
    _relist_celeba(celeba_root, file_name, name, row)
    with pytest.raises(ValueError) as err:
        load_dataset("celeba", celeba_root)
    message = str(err.value)
    assert message.startswith(f"{celeba_root / 'celeba' / file_name}, line {row}: image {name!r}")
    assert "the file was not opened" in message and "docs/reliability.md" in message


def test_a_symlinked_image_leading_out_of_the_dataset_is_refused_unopened(celeba_root,
                                                                           never_opened):
    image = celeba_root / "celeba" / "img_align_celeba" / "000001.jpg"
    image.unlink()
    image.symlink_to(never_opened)
    with pytest.raises(ValueError, match=r"line 3: image '000001.jpg' resolves to .*secret.jpg "
                                         r"\(through a symlink\) outside the folder"):
        load_dataset("celeba", celeba_root)


def test_a_dataset_folder_that_is_itself_a_link_is_read(celeba_root, tmp_path):
    elsewhere = tmp_path / "linked_root"
    (elsewhere).mkdir()
    (elsewhere / "celeba").symlink_to(celeba_root / "celeba")  # a dataset kept on another disk
    assert len(load_dataset("celeba", elsewhere).train) == 12


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_fairface_csv_cannot_name_a_file_outside_the_dataset(fairface_root, never_opened, kind):
    name = "../outside/secret.jpg" if kind == "dotdot" else str(never_opened)
    path = fairface_root / "fairface" / "fairface_label_val.csv"
    lines = path.read_text().splitlines()
    lines[2] = name + lines[2][lines[2].index(","):]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"fairface_label_val.csv, line 3: image '{name}'"):
        load_dataset("fairface", fairface_root)


def test_a_utkface_image_linked_from_outside_is_refused_unopened(utk_root, never_opened):
    (utk_root / "utkface" / "UTKFace" / "30_0_0_20170119.jpg").symlink_to(never_opened)
    with pytest.raises(ValueError, match=r"image 'UTKFace/30_0_0_20170119.jpg' under .* resolves "
                                         r"to .*outside the folder"):
        load_dataset("utkface", utk_root)


def test_a_relative_root_still_works_after_a_chdir(celeba_root, monkeypatch, tmp_path):
    monkeypatch.chdir(celeba_root)
    splits = load_dataset("celeba", ".")
    monkeypatch.chdir(tmp_path / "..")
    assert splits.train[0][0].shape == (3, 32, 32)
    assert Path(splits.train.image_path(0)).is_absolute()


def test_a_fifo_image_is_called_what_it_is_and_never_opened(celeba_root, never_opened):
    import os
    image = celeba_root / "celeba" / "img_align_celeba" / "000005.jpg"
    image.unlink()
    os.mkfifo(image)  # inside the folder: it passes containment, and opening it would block
    with pytest.raises(ValueError) as err:
        load_dataset("celeba", celeba_root)
    assert "000005.jpg (not a regular file but a FIFO)" in str(err.value)
    assert "empty file" not in str(err.value)
    assert len(load_dataset("celeba", celeba_root, skip_bad_images=True).train) == 11
