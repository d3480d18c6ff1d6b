"""Chinese labels: the package data, rules written in Chinese, and the overlay drawing Chinese with FreeType."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from monitor.config.loader import ConfigError, parse_config
from monitor.core import groups
from monitor.core.labels import class_names, display_name, imagenet_classes, imagenet_classes_zh
from monitor.inference.classifier import Prediction
from monitor.render import overlay, text
from monitor.render.overlay import draw_overlay
from testkit.glyphs import best_match, template

DATA = Path(groups.__file__).resolve().parents[1] / "data"
LATIN_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def test_every_class_has_exactly_one_distinct_chinese_name() -> None:
    lines = (DATA / "imagenet_classes_zh.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1000 == len(imagenet_classes())
    assert all(line.strip() and line == line.strip() for line in lines), "empty line or outer spaces"
    assert len(set(lines)) == 1000, "two classes share a Chinese name"
    assert imagenet_classes_zh() == tuple(lines) == class_names("zh")
    # the names Chinese users know, at the right index (a shifted line would break all of these)
    en = imagenet_classes()
    for english, chinese in [("goldfish", "金鱼"), ("great white shark", "大白鲨"), ("Persian cat", "波斯猫"),
                             ("Siamese cat", "暹罗猫"), ("giant panda", "大熊猫"), ("toilet tissue", "卫生纸"),
                             ("tench", "丁鲷"), ("sports car", "跑车"), ("golden retriever", "金毛寻回犬")]:
        assert imagenet_classes_zh()[en.index(english)] == chinese
    # ImageNet's look-alike English names get distinct Chinese ones: the bird and the machine, the two maillots
    assert (display_name(134, "zh"), display_name(517, "zh")) == ("鹤", "起重机")
    assert en[517] == "crane" and display_name(638, "zh") != display_name(639, "zh")
    assert class_names("en") == en
    with pytest.raises(ValueError, match="unknown label language 'fr'"):
        class_names("fr")


def test_every_group_has_a_chinese_name_that_resolves_to_it() -> None:
    spec = yaml.safe_load((DATA / "groups_zh.yaml").read_text(encoding="utf-8"))["groups"]
    assert set(spec) == set(groups.group_names())
    for group in groups.group_names():
        zh = groups.group_display_name(group, "zh")
        assert zh and zh != group and zh == spec[group]["name"]
        assert groups.lookup(zh) == (group, groups.group_indices(group))
    assert groups.lookup("狗") == ("dog", groups.group_indices("dog"))
    assert groups.lookup("小汽车")[0] == "car"                      # an alias
    assert groups.lookup("金鱼") == ("goldfish", (1,))              # a class: the English canonical name
    assert groups.lookup("起重机") == ("crane", (517,)) and groups.lookup("鹤") == ("crane bird", (134,))
    assert groups.display_name("dog", "zh") == "狗" and groups.display_name("goldfish", "zh") == "金鱼"
    assert groups.display_name("porch:package", "zh") == "porch:package"
    assert groups.explain_missing("行人") == groups.explain_missing("pedestrian")
    assert groups.suggest("大白沙")[0] == "大白鲨" and groups.suggest("波斯描") == ["波斯猫"]


def test_a_chinese_name_colliding_with_a_class_is_refused() -> None:
    tables = groups._tables()
    bad = {"groups": {g: {"name": groups.group_display_name(g, "zh")} for g in groups.group_names()}}
    bad["groups"]["dog"] = {"name": "金鱼"}
    with pytest.raises(RuntimeError, match="'金鱼' \\(dog\\) is also a class"):
        groups.build_zh_tables(bad, tables, imagenet_classes_zh())
    del bad["groups"]["dog"]
    with pytest.raises(RuntimeError, match="without a Chinese name: \\['dog'\\]"):
        groups.build_zh_tables(bad, tables, imagenet_classes_zh())


def _config(classes: list[str]) -> dict:
    return {"cameras": [{"name": "cam", "source": 0}], "watchlist": [{"name": "r", "classes": classes}],
            "labels": {"language": "zh"}}


def test_rules_accept_chinese_names_with_the_same_errors() -> None:
    cfg = parse_config(_config(["狗", "金鱼", "sports car"]))
    assert cfg.labels.language == "zh"
    assert [name for name, _ in cfg.watchlist[0].indices] == ["dog", "goldfish", "sports car"]
    with pytest.raises(ConfigError) as err:
        parse_config(_config(["金鱼", "goldfish"]))                 # the same class twice, in two languages
    assert "'goldfish' is listed twice" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(_config(["波斯描"]))
    assert "unknown class '波斯描'; did you mean: 波斯猫?" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(_config(["鹿"]))
    assert "no class for '鹿': ImageNet-1k has no deer class" in str(err.value)


# --- the overlay -----------------------------------------------------------------------------------------


def _frame() -> np.ndarray:
    return np.zeros((360, 640, 3), np.uint8)       # black: the drawn text is the only light in the panel


def _predictions() -> list[Prediction]:
    names = imagenet_classes()
    return [Prediction(names[1], 1, 0.7), Prediction(names[2], 2, 0.2)]


def _label_size(width: int) -> int:
    scale = overlay._font_scale(width)
    (_, text_h), baseline = cv2.getTextSize(overlay._METRIC_TEXT, overlay._FONT, scale, max(1, round(scale * 2)))
    return text_h + baseline


def test_overlay_draws_the_chinese_names_pillow_draws() -> None:
    en = draw_overlay(_frame(), "cam", _predictions(), 10.0, ["dog"], False, when=0)
    zh = draw_overlay(_frame(), "cam", _predictions(), 10.0, ["dog"], False, when=0, language="zh")
    assert not np.array_equal(en, zh)
    size = _label_size(640)
    panel = zh[:120, :320]
    assert best_match(panel, template("金鱼", size)) > 0.9
    assert best_match(panel, template("大白鲨", size)) > 0.9
    assert best_match(en[:120, :320], template("金鱼", size)) < 0.6        # English: no such glyphs
    assert best_match(panel, template("暹罗猫", size)) < 0.6             # a name not shown
    banner = zh[360 - overlay.banner_height(640):]
    (_, th), tb = cv2.getTextSize(overlay._METRIC_TEXT, overlay._FONT, overlay._font_scale(640) * 1.2, 3)
    assert best_match(banner, template("狗", th + tb)) > 0.8              # "事件: 狗"
    # the header (ASCII) is drawn by cv2 either way: identical pixels
    assert np.array_equal(en[:20, :200], zh[:20, :200])


def test_strips_are_rasterised_once_and_the_cache_is_bounded() -> None:
    cjk = text.cjk_text(None)
    assert cjk is not None and "CJK" in cjk.name()
    draw_overlay(_frame(), "cam", _predictions(), 10.0, [], False, language="zh")
    before = cjk.rasterised
    for _ in range(5):
        draw_overlay(_frame(), "cam", _predictions(), 10.0, [], False, language="zh")
    assert cjk.rasterised == before
    for i in range(text.CACHE_STRIPS + 10):
        cjk.strip(f"标签{i}", 12)
    assert len(cjk._strips) == text.CACHE_STRIPS


def test_without_a_cjk_font_the_overlay_draws_english_and_warns_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert LATIN_FONT.is_file() and not text.has_glyphs(LATIN_FONT, 0)
    empty = tmp_path / "fonts.conf"
    empty.write_text('<?xml version="1.0"?>\n<fontconfig></fontconfig>\n')
    monkeypatch.setenv("FONTCONFIG_FILE", str(empty))      # fc-match knows no font at all
    monkeypatch.setattr(text, "KNOWN_FONTS", ())            # as on a system without fonts-noto-cjk
    caplog.set_level(logging.WARNING, logger="monitor.render.text")
    en = draw_overlay(_frame(), "cam", _predictions(), 10.0, [], False, when=0)
    for _ in range(3):
        zh = draw_overlay(_frame(), "cam", _predictions(), 10.0, [], False, when=0, language="zh",
                          font=LATIN_FONT)
        assert np.array_equal(en, zh)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no CJK font" in warnings[0].getMessage()
    assert "DejaVuSans.ttf" in warnings[0].getMessage()
    # a configured CJK font is used as given
    monkeypatch.delenv("FONTCONFIG_FILE")
    noto = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc")
    renderer = text.cjk_text(noto)
    assert renderer is not None and renderer.path == noto and "SC" in renderer.name()
