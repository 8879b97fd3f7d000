"""UTKFace file-name parsing and class selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from facediff.data.utkface import ClassSelector, UTKRecord, parse_utkface_name, scan_utkface


def rec(age: int = 30, gender: int = 0, race: int = 0) -> UTKRecord:
    return UTKRecord(Path("x.jpg"), age, gender, race)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("100_1_2_20170105174847679.jpg.chip.jpg", (100, 1, 2)),
        ("1_0_4_20161221193121245.jpg", (1, 0, 4)),
        ("26_1_0_20170116235308787.jpg.chip.jpg", (26, 1, 0)),
    ],
)
def test_well_formed_names(name: str, expected: tuple[int, int, int]) -> None:
    assert parse_utkface_name(name) == expected


def test_release_malformed_kinds(malformed_names: list[str]) -> None:
    assert all(parse_utkface_name(name) is None for name in malformed_names)


@pytest.mark.parametrize(
    "name",
    [
        "30_2_0_20170116235308787.jpg.chip.jpg",  # gender out of range
        "30_0_5_20170116235308787.jpg.chip.jpg",  # race out of range
        "30_0_1_20170116235308787.png",  # wrong extension
        "30_0_1_20170116235308787.jpg.chip.jpg.bak",
        "README.txt",
    ],
)
def test_malformed_names(name: str) -> None:
    assert parse_utkface_name(name) is None


def test_scan_separates_malformed(utk_root: Path, malformed_names: list[str]) -> None:
    (utk_root / "subdir").mkdir()
    (utk_root / ".DS_Store").write_text("hidden files are ignored")
    records, malformed = scan_utkface(utk_root)
    assert len(records) == 30
    assert malformed == sorted(malformed_names)
    assert [r.path.name for r in records] == sorted(r.path.name for r in records)
    assert {r.race for r in records} == {0, 1, 2, 3, 4}


def test_race_and_gender_selection() -> None:
    race = ClassSelector("race", {"black": 1, "white": 0})
    assert race.names == ["black", "white"]
    assert race(rec(race=1)) == 0 and race(rec(race=0)) == 1 and race(rec(race=3)) is None
    gender = ClassSelector("gender", {"f": 1})
    assert gender(rec(gender=1)) == 0 and gender(rec(gender=0)) is None


def test_age_ranges_are_half_open() -> None:
    age = ClassSelector("age", {"young": [0, 20], "mid": [20, 40], "old": (60, 120)})
    assert [age(rec(age=a)) for a in (0, 19, 20, 39, 40, 59, 60, 119, 120)] == [
        0,
        0,
        1,
        1,
        None,
        None,
        2,
        2,
        None,
    ]
    assert age.describe(1) == "age in [20, 40)"


def test_default_classes() -> None:
    assert ClassSelector("race", None).names == ["White", "Black", "Asian", "Indian", "Others"]
    assert ClassSelector("gender", None).names == ["male", "female"]
    with pytest.raises(ValueError, match="no default classes"):
        ClassSelector("age", None)


@pytest.mark.parametrize(
    ("attribute", "classes", "message"),
    [
        ("ethnicity", {"a": 0}, "Unknown UTKFace attribute 'ethnicity'.*race, gender, age"),
        ("race", {"a": 5}, "race value 5 is invalid.*0 \\(White\\)"),
        ("race", {"a": "0"}, "race value '0' is invalid"),
        ("race", {"a": 0, "b": 0}, "both use race value 0"),
        ("gender", {"a": 2}, "gender value 2 is invalid.*1 \\(female\\)"),
        ("age", {"a": [30, 20]}, "age range \\[30, 20\\] is malformed.*lo < hi"),
        ("age", {"a": [30]}, "malformed"),
        ("age", {"a": 30}, "malformed"),
        ("age", {"a": [0, 30], "b": [20, 40]}, "overlap.*'a' \\[0, 30\\].*'b' \\[20, 40\\]"),
        ("race", {}, "empty"),
        ("race", ["white"], "must be a mapping"),
    ],
)
def test_selector_errors_name_problem_and_fix(
    attribute: str, classes: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ClassSelector(attribute, classes)  # type: ignore[arg-type]
    assert "Fix" in str(info.value)
