"""A daemon run with `labels: {language: zh}`: Chinese on the overlay (the camera snapshot decoded and matched
against Pillow's rendering of the names), in the API's display names, on the page in real headless Chromium
(text and glyphs, not tofu), in the MQTT label attributes and HA state, and in the webhook, while every machine
output keeps the index and the English name."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from monitor.commands.classify import _columns, format_predictions
from monitor.config.loader import parse_config
from monitor.inference.classifier import Prediction
from monitor.core.labels import imagenet_classes, imagenet_classes_zh
from monitor.render import overlay
from testkit.chromium import Browser
from testkit.glyphs import best_match, template
from testkit.mqtt import Subscriber
from testkit.webhook import Receiver
from tests.webapp import Served, demo_weights, request



def _still_clip(path: Path, frame: np.ndarray) -> None:
    """A short clip of one frame, every frame coded alone (MJPEG): the camera shows exactly the same picture all
    the time, so the predictions hold still."""
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (w, h))
    for _ in range(10):
        writer.write(frame)
    writer.release()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path, broker) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("zh-run")
    cap = cv2.VideoCapture(str(videos_dir / "car-detection.mp4"))
    for _ in range(40):
        ok, frame = cap.read()
    cap.release()
    assert ok
    clip = tmp / "still.avi"
    _still_clip(clip, frame)
    cv2.imwrite(str(tmp / "frame.png"), frame)
    with Receiver("ok") as hook:
        config = parse_config({
            "server": {"host": "127.0.0.1", "port": 0},
            "model": {"weights": str(demo_weights(tmp_path_factory.getbasetemp())), "threads": 2, "top_k": 3},
            "cameras": [{"name": "yard", "source": str(clip), "loop": True, "fps": 5}],
            # a group written in Chinese that hits on every frame (min_score 0): an event at once
            "watchlist": [{"name": "dogs", "classes": ["狗"], "min_score": 0, "min_frames": 1}],
            "alerts": {"snapshots": None, "webhook": {"url": hook.url}},
            "events": {"database": str(tmp / "events.db")},
            "labels": {"language": "zh"},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": "zhrun", "client_id": "zh-run"},
        }, tmp)
        sub = Subscriber(broker.port, ("zhrun/#", "homeassistant/#"))
        try:
            with Served(config) as served:
                yield {"served": served, "port": served.port, "hook": hook, "mqtt": sub, "tmp": tmp}
        finally:
            sub.close()


def _status(port: int, lang: str = "") -> dict:
    answer = request(port, "GET", "/api/status" + (f"?lang={lang}" if lang else ""))
    assert answer.status == 200, answer
    return answer.json()


def test_api_display_names_follow_the_language_and_keep_the_machine_fields(run: dict) -> None:
    port = run["port"]
    zh, en = _status(port), _status(port, "en")
    assert zh["language"] == "zh" and en["language"] == "en"
    for doc, names in ((zh, imagenet_classes_zh()), (en, imagenet_classes())):
        preds = doc["cameras"][0]["predictions"]
        assert len(preds) == 3
        for p in preds:
            assert p["label"] == imagenet_classes()[p["index"]]      # the machine name stays English
            assert p["display"] == names[p["index"]]
    assert zh["cameras"][0]["active"] == ["dog"] and zh["cameras"][0]["active_display"] == ["狗"]
    events = request(port, "GET", "/api/events").json()["events"]           # labels.language by default
    assert events and (events[-1]["label"], events[-1]["display"]) == ("dog", "狗")
    assert request(port, "GET", "/api/events?lang=en").json()["events"][-1]["display"] == "dog"
    bad = request(port, "GET", "/api/status?lang=fr")
    assert bad.status == 400 and "lang must be one of en, zh" in bad.json()["error"]

    png = (run["tmp"] / "frame.png").read_bytes()
    for lang, names in (("zh", imagenet_classes_zh()), ("en", imagenet_classes())):
        answer = request(port, "POST", f"/api/classify?lang={lang}", png, {"Content-Type": "image/png"})
        assert answer.status == 200, answer
        for p in answer.json()["predictions"]:
            assert p["display"] == names[p["index"]] and p["label"] == imagenet_classes()[p["index"]]


def test_the_overlay_of_the_live_view_draws_the_chinese_names(run: dict) -> None:
    port = run["port"]
    before = [p["display"] for p in _status(port)["cameras"][0]["predictions"]]
    answer = request(port, "GET", "/snapshot/yard.jpg")
    assert answer.status == 200
    after = [p["display"] for p in _status(port)["cameras"][0]["predictions"]]
    assert before == after, "the predictions of a still picture changed"
    image = cv2.imdecode(np.frombuffer(answer.body, np.uint8), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    scale = overlay._font_scale(w)
    thick = max(1, round(scale * 2))
    (_, text_h), baseline = cv2.getTextSize(overlay._METRIC_TEXT, overlay._FONT, scale, thick)
    panel = image[: h // 3, : w // 2]
    for name in before:
        assert best_match(panel, template(name, text_h + baseline)) > 0.8, name
    absent = next(n for n in ("暹罗猫", "大白鲨", "金鱼", "鹦鹉螺") if n not in before)
    assert best_match(panel, template(absent, text_h + baseline)) < 0.6
    (_, th), tb = cv2.getTextSize(overlay._METRIC_TEXT, overlay._FONT, scale * 1.2, thick + 1)
    banner = image[h - overlay.banner_height(w):]
    assert best_match(banner, template("事件: 狗", th + tb)) > 0.8          # the event banner


def test_mqtt_and_home_assistant_and_the_webhook_carry_the_display_name(run: dict) -> None:
    sub: Subscriber = run["mqtt"]
    attrs = sub.wait_topic("zhrun/yard/label/attributes", timeout=15).json()
    assert attrs["label"] == imagenet_classes()[attrs["index"]]
    assert attrs["display"] == imagenet_classes_zh()[attrs["index"]]
    assert [t["display"] for t in attrs["top"]] == [imagenet_classes_zh()[t["index"]] for t in attrs["top"]]
    label = sub.wait_topic("zhrun/yard/label", timeout=15)
    assert label.text in imagenet_classes()                               # the plain topic stays English
    config = sub.wait(lambda m: m.topic.startswith("homeassistant/sensor/") and m.topic.endswith("_label/config")
                      and m.payload != b"", timeout=15).json()
    assert config["state_topic"] == "zhrun/yard/label/attributes"
    assert config["value_template"] == "{{ value_json.display }}"        # HA's state: the Chinese name
    # the event's picture (the MQTT snapshot, the same bytes as a snapshot file) has the Chinese banner
    jpeg = sub.wait(lambda m: m.topic == "zhrun/yard/snapshot" and m.payload[:2] == b"\xff\xd8", timeout=15)
    picture = cv2.imdecode(np.frombuffer(jpeg.payload, np.uint8), cv2.IMREAD_COLOR)
    h, w = picture.shape[:2]
    scale = overlay._font_scale(w)
    (_, th), tb = cv2.getTextSize(overlay._METRIC_TEXT, overlay._FONT, scale * 1.2, max(1, round(scale * 2)) + 1)
    assert best_match(picture[h - overlay.banner_height(w):], template("事件: 狗", th + tb)) > 0.8
    hook: Receiver = run["hook"]
    assert hook.wait_for(1, timeout=15)
    start = hook.requests[0]
    assert (start["kind"], start["label"], start["display"]) == ("start", "dog", "狗")


def _crop(png: bytes, box: list[float]) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    x, y, w, h = (int(round(v)) for v in box)
    return image[y:y + h, x:x + w].astype(np.int16)


# Four probes laid side by side in the page's own font: two different Chinese strings and two different
# private-use strings (which no font draws: each is a tofu box or nothing, the same for every code point).
_PROBES = r"""(() => {
  const probe = (id, text, x) => {
    const s = document.createElement('span');
    s.id = id; s.textContent = text; s.className = 'label';
    Object.assign(s.style, {position: 'fixed', left: x + 'px', top: '4px', background: '#000', color: '#fff',
                            fontSize: '24px', lineHeight: '30px', zIndex: 99});
    document.body.append(s);
  };
  probe('p-zh1', '金鱼大白鲨', 10); probe('p-zh2', '波斯猫暹罗', 220);
  probe('p-pua1', '\uE000\uE001\uE002\uE003\uE004', 430); probe('p-pua2', '\uE010\uE011\uE012\uE013\uE014', 640);
  return ['p-zh1', 'p-zh2', 'p-pua1', 'p-pua2'].map((id) => {
    const r = document.getElementById(id).getBoundingClientRect();
    return [r.left, r.top, r.width, r.height];
  });
})()"""


def test_the_page_in_chinese_in_real_chromium(run: dict, tmp_path: Path) -> None:
    port = run["port"]
    with Browser(tmp_path) as browser:
        page = browser.page(f"http://127.0.0.1:{port}/")
        # the daemon's labels.language decides the first view
        assert page.wait("document.documentElement.lang === 'zh-CN' && "
                         "document.querySelectorAll('.camera .preds li').length === 3", 15)
        texts = page.evaluate("""({
            title: document.querySelector('[data-i18n="classifyTitle"]').textContent,
            events: document.querySelector('[data-i18n="eventsTitle"]').textContent,
            figure: document.querySelector('.camera .figures dt').textContent,
            active: document.querySelector('.camera .active-events').textContent,
            labels: [...document.querySelectorAll('.camera .preds li .label')].map((e) => e.textContent),
            english: [...document.querySelectorAll('.camera .preds li')].map((e) => e.dataset.label),
            index: [...document.querySelectorAll('.camera .preds li')].map((e) => Number(e.dataset.index)),
        })""")
        assert texts["title"] == "识别一张图片" and texts["events"] == "最近事件" and texts["figure"] == "输入帧率"
        assert texts["active"] == "事件：狗"
        assert page.wait("[...document.querySelectorAll('#events li.event strong')]"
                         ".some((e) => e.textContent.trim() === '狗')", 10)
        assert texts["labels"] == [imagenet_classes_zh()[i] for i in texts["index"]]
        assert texts["english"] == [imagenet_classes()[i] for i in texts["index"]]
        status = _status(port)
        assert texts["labels"] == [p["display"] for p in status["cameras"][0]["predictions"]]

        # rendered glyphs, not tofu: two Chinese strings look different from each other and from tofu, while two
        # strings of missing glyphs look the same (the test would notice a font-less browser)
        boxes = page.evaluate(_PROBES)
        shot = page.screenshot()
        (tmp_path / "page-zh.png").write_bytes(shot)
        zh1, zh2, pua1, pua2 = (_crop(shot, b) for b in boxes)
        n = min(c.shape[1] for c in (zh1, zh2, pua1, pua2))
        zh1, zh2, pua1, pua2 = (c[:, :n] for c in (zh1, zh2, pua1, pua2))
        assert np.abs(pua1 - pua2).mean() < 1.0                # missing glyphs: all alike
        assert np.abs(zh1 - zh2).mean() > 10.0                  # real glyphs: each its own shape
        assert np.abs(zh1 - pua1).mean() > 10.0 and (zh1 > 128).mean() > 0.05
        widths = page.evaluate("""(() => {
            const c = document.createElement('canvas').getContext('2d');
            c.font = getComputedStyle(document.querySelector('.camera .preds li .label')).font;
            return [c.measureText('金鱼').width, c.measureText('\\uE000\\uE001').width, c.measureText('MM').width];
        })()""")
        assert widths[0] != widths[1], widths                    # the page's font has the CJK glyphs

        # an upload is answered with Chinese names too
        page.set_files("#file", run["tmp"] / "frame.png")
        assert page.wait("document.querySelectorAll('#upload-result li .label').length === 3", 15)
        shown = page.evaluate("[...document.querySelectorAll('#upload-result li')].map((e) => "
                              "[e.querySelector('.label').textContent, Number(e.dataset.index)])")
        assert all(name == imagenet_classes_zh()[index] for name, index in shown), shown

        # the switch: English page text and names, kept for the next visit
        page.select("#lang", "en")
        assert page.wait("document.querySelector('[data-i18n=\"classifyTitle\"]').textContent === "
                         "'Classify an image' && [...document.querySelectorAll('.camera .preds li .label')]"
                         ".every((e) => e.textContent === e.parentNode.dataset.label)", 10)
        assert page.evaluate("document.documentElement.lang + ' ' + localStorage.getItem('monitor.lang')") == "en en"
        page.navigate(f"http://127.0.0.1:{port}/")
        assert page.wait("document.querySelector('.camera .figures dt') && "
                         "document.querySelector('.camera .figures dt').textContent === 'fps in'", 10)
        page.select("#lang", "zh")
        assert page.wait("document.querySelector('[data-i18n=\"drop\"]').textContent === '把图片拖到这里，或点击选择'",
                         10)
        assert page.errors() == []


def test_monitor_classify_lang_zh(run: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    weights = demo_weights(tmp_path_factory.getbasetemp())
    frame = run["tmp"] / "frame.png"
    args = [sys.executable, "-m", "monitor", "classify", str(frame), "--weights", str(weights), "--lang", "zh",
            "--json"]
    doc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert doc.returncode == 0, doc.stderr
    preds = json.loads(doc.stdout)["results"][0]["predictions"]
    assert len(preds) == 3
    for p in preds:
        assert p["label"] == imagenet_classes()[p["index"]] and p["display"] == imagenet_classes_zh()[p["index"]]
    # the text output: the Chinese name, then the English one, columns aligned for wide characters
    lines = format_predictions([Prediction(p["label"], p["index"], p["probability"]) for p in preds], "zh")
    for line, p in zip(lines, preds):
        assert f"{p['display']} ({p['label']})" in line
    assert len({_columns(line) for line in lines}) == 1                  # the percentages line up
