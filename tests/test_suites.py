"""Suites: smoke (drawn by code), DreamBench (750 cases), VideoBench v1 (50 subjects, >= 100 prompts)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from videobench.suites import Suite, available_suites, default_suite, dreambench, load_suite, smoke, videobench

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ROOT = Path("/data-root")  # make_cases only builds paths; nothing is read
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _ids_digest(cases) -> str:
    return hashlib.sha256("\n".join(f"{c.case_id}\t{c.prompt}" for c in cases).encode()).hexdigest()


def _check_prompts(cases):
    for case in cases:
        assert "{" not in case.prompt and "}" not in case.prompt, case.case_id
        assert "  " not in case.prompt and case.prompt == case.prompt.strip(), case.case_id
        assert re.search(rf"\b{re.escape(case.entity)}\b", case.prompt), (case.case_id, case.prompt)
        assert FILE_NAME.match(case.case_id), case.case_id
    assert len({c.case_id for c in cases}) == len(cases)


def test_available_suites():
    """The built-in suites in leaderboard order (the paper's, then smoke), whatever other packages add."""
    built_in = ["dreambench", "videobench", "smoke"]
    assert [name for name in available_suites() if name in built_in] == built_in
    assert default_suite() == "smoke" and load_suite(None).name == "smoke"
    with pytest.raises(KeyError, match=f"unknown suite 'nope'; available: {', '.join(available_suites())}"):
        load_suite("nope")


# ----------------------------------------------------------------------------------------------------- smoke

SMOKE_PIXELS = {  # sha256 of the drawn pixels: changes here change every smoke score
    "red_circle": "98ce35bf5753e394a9130b3422a987ac85dc548f7878425b0e3f986021d1e3dc",
    "blue_square": "51af5872e3452355acea6072bd742134e5ffe60e5b35ba56809ce6e7d5ae01e9",
    "green_triangle": "c3fef2d099e55590a7c9d447ca58c68b80883b41745f5da9861ede4627d5217d",
}


def test_smoke_suite_draws_distinct_images(tmp_path):
    suite = load_suite("smoke", tmp_path)
    assert isinstance(suite, Suite) and suite.name == "smoke" and suite.version == "v1"
    assert [c.case_id for c in suite.cases] == ["red_circle-p01", "red_circle-p02", "blue_square-p03",
                                                "green_triangle-p04"]
    _check_prompts(suite.cases)
    colours = {}
    for subject, expected in SMOKE_PIXELS.items():
        path = tmp_path / "smoke" / subject / "00.png"
        with Image.open(path) as image:
            assert image.size == (256, 256) and image.mode == "RGB"
            pixels = np.asarray(image)
        assert smoke.pixel_sha256(pixels) == expected
        assert tuple(pixels[0, 0]) == (255, 255, 255)  # white background
        colours[subject] = tuple(int(v) for v in pixels[140, 128])  # inside every shape
        assert (pixels != 255).any(axis=2).mean() > 0.15  # a real shape, not a dot
    assert colours == {"red_circle": (220, 30, 30), "blue_square": (30, 60, 220), "green_triangle": (30, 170, 60)}
    masks = [(smoke.render(s) != 255).any(axis=2) for s in SMOKE_PIXELS]
    assert all((masks[i] != masks[j]).mean() > 0.05 for i in range(3) for j in range(i + 1, 3))  # distinct shapes
    case = suite.cases[2]
    assert case.references == (str(tmp_path.resolve() / "smoke/blue_square/00.png"),) and case.entity == "square"


def test_smoke_images_are_idempotent_and_repaired(tmp_path):
    load_suite("smoke", tmp_path)
    square = tmp_path / "smoke/blue_square/00.png"
    circle = tmp_path / "smoke/red_circle/00.png"
    stamp = square.stat().st_mtime_ns
    Image.new("RGB", (256, 256), "black").save(circle)  # damaged
    (tmp_path / "smoke/green_triangle/00.png").unlink()  # missing
    load_suite("smoke", tmp_path)
    assert square.stat().st_mtime_ns == stamp  # verified by pixel hash, not rewritten
    with Image.open(circle) as image:
        assert smoke.pixel_sha256(np.asarray(image)) == SMOKE_PIXELS["red_circle"]
    assert (tmp_path / "smoke/green_triangle/00.png").is_file()
    assert sorted(p.name for p in (tmp_path / "smoke/red_circle").iterdir()) == ["00.png"]  # no temp files


def test_smoke_uses_env_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOBENCH_DATA", str(tmp_path / "env"))
    suite = load_suite("smoke")
    assert all(Path(p).is_relative_to((tmp_path / "env").resolve()) for c in suite.cases for p in c.references)


# ------------------------------------------------------------------------------------------------ dreambench


def test_dreambench_cases():
    cases = dreambench.make_cases(ROOT)
    assert len(cases) == 750
    _check_prompts(cases)
    per_subject = Counter(c.subject for c in cases)
    assert len(per_subject) == 30 and set(per_subject.values()) == {25}
    kinds = {c.subject: c.category for c in cases}
    assert sorted(s for s, k in kinds.items() if k == "live") == [
        "cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    golden = {
        "dog2-p00": "a dog in the jungle",
        "cat-p14": "a cat in a chef outfit",
        "teapot-p14": "a teapot floating in an ocean of milk",
        "bear_plushie-p24": "a cube shaped stuffed animal",
        "backpack_dog-p06": "a backpack with a city in the background",
        "red_cartoon-p20": "a red cartoon",
    }
    by_id = {c.case_id: c for c in cases}
    for case_id, prompt in golden.items():
        assert by_id[case_id].prompt == prompt
    assert by_id["bear_plushie-p00"].entity == "stuffed animal"
    assert by_id["dog2-p13"].prompt_id == "live-p13" and by_id["vase-p13"].prompt_id == "object-p13"
    assert sum(len(by_id[f"{s}-p00"].references) for s in per_subject) == 158
    assert by_id["dog2-p00"].references[0] == str(ROOT / "dreambench/dog2/00.jpg")
    assert _ids_digest(cases) == "6a66e13c5d011e3c547b9e26ff15cb828750f9b99fadf3f5aed8b91cc31500e2"


@pytest.mark.skipif(not (SHARED / "dreambench/dataset/prompts_and_classes.txt").is_file(),
                    reason=f"DreamBooth's prompts_and_classes.txt is not at {SHARED}")
def test_dreambench_spec_matches_upstream_file():
    text = (SHARED / "dreambench/dataset/prompts_and_classes.txt").read_text()
    classes = dict(line.split(",", 1) for line in text.split("Prompts")[0].splitlines()[3:] if "," in line)
    spec = dreambench.load_spec()
    assert {s["id"]: s["class"] for s in spec["subjects"]} == classes
    objects, live = text.split("Object Prompts")[1].split("Live Subject Prompts")
    pattern = re.compile(r"'(.*?)'\.format\(unique_token, class_token\)")
    assert spec["prompts"]["object"] == pattern.findall(objects)
    assert spec["prompts"]["live"] == pattern.findall(live)
    for subject in spec["subjects"]:
        on_disk = sorted(p.name for p in (SHARED / "dreambench/dataset" / subject["id"]).iterdir())
        assert [Path(i["path"]).name for i in subject["images"]] == on_disk


# ------------------------------------------------------------------------------------------------ videobench

CATEGORIES = {"animal", "human", "vehicle", "building", "clothing", "accessory", "food", "furniture", "instrument",
              "toy", "household"}


def test_videobench_subjects_and_exclusions():
    spec = videobench.load_spec()
    subjects = spec["subjects"]
    assert len(subjects) == 50 and spec["version"] == "v1"
    db_ids = {s["id"] for s in dreambench.load_spec()["subjects"]}
    excluded = {e["subject"] for e in spec["excluded"]}
    assert excluded == {"dog6", "shiny_sneaker"} and all(len(e["reason"]) > 40 for e in spec["excluded"])
    assert {s["id"] for s in subjects if s["source"] == "dreambench"} == db_ids - excluded
    if (SHARED / "videobench/objects.json").is_file():
        objects = json.loads((SHARED / "videobench/objects.json").read_text())
        ours = {s["id"]: s for s in subjects if s["source"] == "objects"}
        assert set(ours) == {o["id"] for o in objects}
        for o in objects:
            assert ours[o["id"]]["category"] == o["category"] and ours[o["id"]]["entity"] == o["entity"]
            image = ours[o["id"]]["images"][0]
            assert (image["repo"], image["commit"], image["source_path"]) == (
                o["source"]["repo"], o["source"]["commit"], o["source"]["path"])
            assert image["sha256"] == o["sha256"][o["images"][0]]
    assert {s["category"] for s in subjects} == CATEGORIES
    dreambench_class = {s["id"]: s["class"] for s in dreambench.load_spec()["subjects"]}
    for s in subjects:
        if s["source"] == "dreambench":
            assert s["entity"] == dreambench_class[s["id"]]


def test_videobench_prompts():
    spec = videobench.load_spec()
    templates = [p["template"] for p in spec["prompts"]]
    assert len(set(templates)) == len(templates) >= 100
    assert all(t.count("{entity}") == 1 for t in templates)
    kinds = Counter(k for p in spec["prompts"] for k in p["motion"])
    assert all(p["motion"] for p in spec["prompts"]) and set(kinds) == {"action", "interaction", "camera"}
    assert min(kinds.values()) >= 30  # rich in actions, interactions and camera moves alike
    # nothing copied from DreamBench's still-image prompts: none of their scene phrases appears
    db = dreambench.load_spec()["prompts"]
    phrases = {t.split("{1}")[1].strip() for kind in db for t in db[kind]} - {""}
    assert len(phrases) == 30  # 20 object scenes + 10 live-only outfits (the first 10 are shared)
    for template in templates:
        assert not [p for p in phrases if p in template], template
    # fit: only animals and people walk/run/jump themselves; only aircraft fly
    animate = re.compile(r"^(a|the) \{entity\} (walking|running|jumping|dancing|drinking|eating|jogging|climbing|"
                         r"chasing|wading|foraging|stretching|sniffing|lying|wandering|shaking)\b")
    for prompt in spec["prompts"]:
        if animate.search(prompt["template"]):
            assert set(prompt["groups"]) <= {"pet", "wild", "human"}, prompt
        if re.search(r"\{entity\} (flying|taking off|banking)", prompt["template"]):
            assert prompt["groups"] == ["aircraft"], prompt


def test_videobench_cases_follow_the_rule():
    spec = videobench.load_spec()
    cases = videobench.make_cases(ROOT)
    assert len(cases) == 530
    _check_prompts(cases)
    per_subject = Counter(c.subject for c in cases)
    assert len(per_subject) == 50 and min(per_subject.values()) >= 2
    group = {s["id"]: s["group"] for s in spec["subjects"]}
    by_prompt = {p["id"]: p for p in spec["prompts"]}
    expected = [(s["id"], p["id"]) for s in spec["subjects"] for p in spec["prompts"] if s["group"] in p["groups"]]
    assert [(c.subject, c.prompt_id) for c in cases] == expected
    assert all(group[c.subject] in by_prompt[c.prompt_id]["groups"] for c in cases)
    assert {c.prompt_id for c in cases} == set(by_prompt)  # every prompt is used
    assert len({c.prompt for c in cases}) >= 100
    by_id = {c.case_id: c for c in cases}
    golden = {
        "dog2-p010": "a dog chasing a rolling ball across a living room floor",
        "elephant-p001": "an elephant walking through fresh snow and leaving a trail of footprints as the camera "
                         "tracks alongside",
        "excavator-p042": "an excavator rolling out of thick fog straight toward the camera",
        "pink_sunglasses-p071": "the glasses blown off a man's head by a gust of wind on a pier",
        "biplane-p035": "a biplane taking off from a grassy airfield and climbing into the sky",
        "phonograph-p106": "a phonograph playing a record, its turntable spinning in a dim room",
    }
    for case_id, prompt in golden.items():
        assert by_id[case_id].prompt == prompt
    assert by_id["bear_plushie-p053"].entity == "stuffed animal" and by_id["armchair-p102"].entity == "chair"
    assert not any(re.search(r"\ba [aeiou]", c.prompt) for c in cases)  # articles fixed
    assert by_id["biplane-p035"].references == (str(ROOT / "videobench/objects/biplane/00.png"),)
    assert len(by_id["dog2-p010"].references) == 6 and by_id["dog2-p010"].category == "animal"
    assert _ids_digest(cases) == "4bb79167c6cf83cebf656efe94420937c16d0ff6da92dac85b18ca470cd9c05d"


def test_fill_prompt():
    assert videobench.fill_prompt("a {entity} rolling", "excavator") == "an excavator rolling"
    assert videobench.fill_prompt("A {entity} and a box", "owl") == "An owl and a box"
    assert videobench.fill_prompt("the {entity} fell", "owl") == "the owl fell"
    assert dreambench.fill_prompt("a {0} {1} in the snow", "dog") == "a dog in the snow"
    assert dreambench.fill_prompt("a {0} {1} in the snow", "dog", "sks") == "a sks dog in the snow"
