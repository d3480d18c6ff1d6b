"""The custom-class controls of the status page, used in a real headless Chromium against the real daemon.

The browser is driven over the DevTools protocol (testkit/chromium.py): mouse clicks where the controls are
drawn, a choice in the class list, a file given to the upload box. The page's own JavaScript does the rest,
and every step is checked where it lands: example files under the state folder, the head swapped in
/api/status and on disk, the activation map painted over the upload preview, the live view's heatmap blended
into the stream the page shows. tests/test_web_custom.py covers the same routes over plain HTTP.

Footage: Intel IoT DevKit sample videos (CC BY 4.0) in ../shared/data/videos.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from monitor.config.loader import parse_config
from monitor.inference.classifier import Classifier
from monitor.inference.heads import save_head
from monitor.alerts.snapshot_files import clean_snapshot_path
from monitor.inference.heads.training import train_head
from monitor.inference.preprocess import crop_box
from testkit.chromium import Browser, Page
from testkit.footage import read_video_frames
from testkit.waiting import wait_until
from tests.webapp import Served, file_camera, request

# The head the daemon starts with knows "people"; the examples labelled from the page teach cars, bottles and
# none, so a head trained on them has other classes, which tells the swapped head from the old one.
START_CLASSES = ["bottles", "cars", "people"]
LABELLED_CLASSES = ["bottles", "cars", "none"]
SAVES_PER_CLASS = 4


@pytest.fixture(scope="module")
def start_head(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path) -> Path:
    root = tmp_path_factory.mktemp("browserhead")
    for cls, frames in (("cars", read_video_frames("car-detection", 8, stride=45)),
                        ("bottles", read_video_frames("bottle-detection", 8, stride=140)),
                        ("people", read_video_frames("one-by-one-person-detection", 8, stride=170))):
        (root / "ex" / cls).mkdir(parents=True)
        for i, f in enumerate(frames):
            cv2.imwrite(str(root / "ex" / cls / f"{i}.jpg"), f)
    head, _ = train_head(Classifier(demo_weights), "scene", root / "ex", progress=False)
    assert list(head.classes) == START_CLASSES
    return save_head(head, root / "scene.head")


def card(camera: str) -> str:
    return f'article[data-camera="{camera}"]'


def text(page: Page, selector: str) -> str:
    return page.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")


def options(page: Page, camera: str) -> str:
    return page.evaluate(f"[...document.querySelectorAll('{card(camera)} select.label-class option')]"
                         ".map((o) => o.value).join(',')")


def jpegs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg")) if folder.is_dir() else []


def status(port: int) -> dict:
    return request(port, "GET", "/api/status").json()


def saturation_of(page: Page, selector: str) -> float:
    """Mean colour saturation of the element as painted on screen (a JET heatmap blended in raises it)."""
    box = page.evaluate(f"""(() => {{
        const e = document.querySelector({json.dumps(selector)});
        e.scrollIntoView({{block: 'center'}});
        const r = e.getBoundingClientRect();
        return [r.left, r.top, r.width, r.height].map(Math.round);
    }})()""")
    x, y, w, h = box
    assert w >= 200 and h >= 100, f"{selector} is not displayed ({box})"
    shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    region = shot[y:y + h, x:x + w]
    return float(cv2.cvtColor(region, cv2.COLOR_BGR2HSV)[..., 1].mean())


def saturation_until(page: Page, selector: str, ok: Callable[[float], bool], timeout: float = 10.0) -> float | None:
    """The first saturation of the element's painting that satisfies `ok` within `timeout`, else None (the live
    view changes only when the next streamed frame arrives)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = saturation_of(page, selector)
        if ok(value):
            return value
        time.sleep(0.2)
    return None


def check_upload(page: Page, port: int, path: Path, image: np.ndarray) -> None:
    """Upload `path` through the page's file box; the predictions and the painted map are the daemon's."""
    path.write_bytes(cv2.imencode(".jpg", image)[1].tobytes())
    reference = request(port, "POST", "/api/classify?explain=true", body=path.read_bytes(),
                        headers={"Content-Type": "image/jpeg"}).json()
    page.set_files("#file", path)
    # the canvas names the label it shows; the preview's src is this upload's blob (not the previous one's)
    label = page.wait("(() => { const c = document.getElementById('heat'), p = document.getElementById('preview');"
                      f" return !c.hidden && p.naturalWidth === {image.shape[1]} && c.dataset.label; }})()", 15)
    assert label == reference["explanation"]["label"], label
    shown = page.evaluate("[...document.querySelectorAll('#upload-result li')].map((li) => li.dataset.label)")
    assert shown == [p["label"] for p in reference["predictions"][:3]]
    geometry = page.evaluate("""(() => {
        const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
        const c = document.getElementById('heat'), p = document.getElementById('preview');
        return {canvas: box(c), preview: box(p), size: [c.width, c.height]};
    })()""")
    assert geometry["preview"][2] > 50 and geometry["preview"][3] > 50, geometry
    assert np.allclose(geometry["canvas"], geometry["preview"], atol=1), f"map not over the image: {geometry}"
    # the canvas holds the daemon's 7x7 grid: read back at each cell's centre (alpha encodes the value)
    bx, by, bw, bh = reference["explanation"]["box"]
    painted = np.array(page.evaluate(f"""(() => {{
        const c = document.getElementById('heat'), ctx = c.getContext('2d'), out = [];
        for (let r = 0; r < 7; r++) for (let k = 0; k < 7; k++) {{
            const x = Math.floor(({bx} + (k + 0.5) * {bw} / 7) * c.width);
            const y = Math.floor(({by} + (r + 0.5) * {bh} / 7) * c.height);
            out.push(Array.from(ctx.getImageData(x, y, 1, 1).data));
        }}
        return out;
    }})()"""), dtype=float).reshape(7, 7, 4)
    grid = np.array(reference["explanation"]["grid"])
    assert np.allclose((painted[..., 3] / 255 - 0.15) / 0.45, grid, atol=0.01), painted[..., 3]
    assert np.allclose(painted[..., 0] / 255, grid, atol=0.03), painted[..., 0]


def test_custom_class_controls_in_chromium(tmp_path: Path, demo_weights: Path, start_head: Path,
                                          videos_dir: Path) -> None:
    head_file = shutil.copy(start_head, tmp_path / "scene.head")     # retraining rewrites it
    state = tmp_path / "state"
    config = parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(demo_weights), "threads": 2},
        "cameras": [file_camera(videos_dir, "street", "car-detection"),
                    file_camera(videos_dir, "shelf", "bottle-detection")],
        "custom_classes": [{"name": "scene", "head": str(head_file)}],
        "watchlist": [{"name": "cars-seen", "classes": ["scene:cars"], "min_score": 0.6, "min_frames": 2,
                       "cameras": ["street"]}],
        "alerts": {"snapshots": str(tmp_path / "snapshots")},
        "events": {"database": str(state / "events.db")},
    }, tmp_path)
    examples = state / "examples" / "scene"
    with Served(config) as s, Browser(tmp_path) as browser:
        port = s.port
        page = browser.page(f"http://127.0.0.1:{port}/")
        start_options = ",".join([f"scene:{c}" for c in START_CLASSES] + ["scene:none"])
        assert page.wait(f"document.querySelector('{card('street')} .label-row:not([hidden]) select') && "
                         f"[...document.querySelectorAll('{card('street')} select.label-class option')]"
                         f".map((o) => o.value).join(',') === '{start_options}'", 15), options(page, "street")

        # -- "save this frame as": each click files the camera's newest frame under the chosen class
        for n in range(1, SAVES_PER_CLASS + 1):
            for camera, cls in (("street", "cars"), ("shelf", "bottles")):
                note = f"{card(camera)} .label-note"
                before = text(page, note)
                page.select(f"{card(camera)} select.label-class", f"scene:{cls}")
                page.click(f"{card(camera)} button.label-save")
                assert page.wait(f"document.querySelector('{note}').textContent !== {json.dumps(before)}", 10)
                said = text(page, note)
                assert said.startswith(f"saved as scene:{cls} (") and f"{cls} {n}" in said, said
                files = jpegs(examples / cls)
                assert len(files) == n and all(f.name.endswith(f"-{camera}.jpg") for f in files), files
            time.sleep(0.2)        # the next saves take later frames of the videos

        # -- an event of the custom rule: "right" files its clean frame under the class, "wrong" under none
        event_id = page.wait("(() => { const b = document.querySelector('#events li.event .mark-right');"
                             " return b && b.closest('li').dataset.event; })()", 30)
        assert event_id, "no custom-class event with right/wrong buttons on the page within 30 s"
        ev = s.app.events.get(int(event_id))
        assert ev.label == "scene:cars" and ev.camera == "street"
        clean = cv2.imread(str(clean_snapshot_path(ev.snapshot)))
        x, y, w, h = crop_box(*clean.shape[:2], "center")
        seen_by_head = clean[y:y + h, x:x + w]
        item = f'#events li[data-event="{event_id}"]'
        # "right" is held across a refresh of the event list (every 5 s), which must not lose the click
        for button, cls, count, hold in (("mark-right", "cars", SAVES_PER_CLASS + 1, 5.3),
                                         ("mark-wrong", "none", 1, 0.0)):
            old = set(jpegs(examples / cls))
            page.click(f"{item} button.{button}", hold=hold)
            folder = examples / cls
            assert wait_until(lambda f=folder, n=count: len(jpegs(f)) == n, 10), jpegs(folder)
            (filed,) = set(jpegs(folder)) - old
            image = cv2.imread(str(filed))
            assert image.shape == seen_by_head.shape
            assert np.abs(image.astype(int) - seen_by_head).mean() < 4, f"{filed} is not the event's frame"
            expected = "filed under scene:cars" if cls == "cars" else "filed under none"
            assert page.wait(f"document.querySelector('{item} .mark .muted').textContent === '{expected}'", 7), \
                text(page, f"{item} .mark")

        # -- "retrain": trained in the background on the labelled examples, swapped in without a restart
        sha_before = hashlib.sha256(Path(head_file).read_bytes()).hexdigest()
        classified = s.sample("monitor_frames_classified_total", {"camera": "street"})
        # held across a status poll (every 1.5 s): the page must not rebuild the button under the pointer
        page.click('#heads-list li[data-head="scene"] button.retrain', hold=1.8)
        assert wait_until(lambda: status(port)["custom_classes"][0]["retrain"]["state"] != "idle", 5), \
            "the retrain click was lost"
        retrain = wait_until(lambda: status(port)["custom_classes"][0]["retrain"]["state"] in ("done", "failed")
                             and status(port)["custom_classes"][0]["retrain"], 60)
        assert retrain and retrain["state"] == "done", retrain
        assert status(port)["custom_classes"][0]["classes"] == LABELLED_CLASSES
        assert retrain["examples"] == [SAVES_PER_CLASS, SAVES_PER_CLASS + 1, 1]
        assert hashlib.sha256(Path(head_file).read_bytes()).hexdigest() != sha_before
        assert wait_until(lambda: all(sorted(c["custom"][0]["classes"]) == LABELLED_CLASSES
                                      for c in status(port)["cameras"]), 10), "the worker still runs the old head"
        assert s.sample("monitor_frames_classified_total", {"camera": "street"}) > classified
        # ... and the page follows: the retrain note and the class list come from the new head
        assert page.wait("document.querySelector('#heads-list li[data-head=\"scene\"] .retrain-state')"
                         ".textContent.startsWith('done (held-out ')", 10), text(page, "#heads-list")
        new_options = ",".join(f"scene:{c}" for c in LABELLED_CLASSES)
        assert page.wait(f"[...document.querySelectorAll('{card('shelf')} select.label-class option')]"
                         f".map((o) => o.value).join(',') === '{new_options}'", 10), options(page, "shelf")

        # -- the upload box: predictions and the top class's activation map painted over the preview; a wide
        # frame fills the box, a portrait one is centred in it (the map must follow the image, not the box)
        frame = read_video_frames("car-detection", 1)[0]
        for name, image in (("wide.jpg", frame), ("portrait.jpg", frame[:, 300:540])):
            check_upload(page, port, tmp_path / name, image)
        # a file that is no image: the daemon's reason is shown, and the last image's map goes with it
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"this is not an image, whatever its name says")
        page.set_files("#file", broken)
        said = page.wait("(() => { const e = document.getElementById('upload-error');"
                         " return !e.hidden && e.textContent; })()", 10)
        assert said and said.startswith("Not classified: upload 'broken.jpg': not a readable image"), said
        assert page.evaluate("document.getElementById('heat').hidden") is True
        assert page.evaluate("document.querySelectorAll('#upload-result li').length") == 0

        # -- the live view's heatmap toggle, per camera: the stream the page shows gets the map blended in
        live = f"{card('street')} img.live"
        plain = saturation_of(page, live)
        page.click(f"{card('street')} input.heat-toggle")
        assert wait_until(lambda: s.app.heatmaps == {"street"}, 5), s.app.heatmaps
        assert {c["name"]: c["heatmap"] for c in status(port)["cameras"]} == {"street": True, "shelf": False}
        shown = saturation_until(page, live, lambda v: v > plain + 25)
        assert shown is not None, (plain, saturation_of(page, live))
        time.sleep(2)          # a status poll later the page still agrees with the daemon
        assert page.evaluate(f"document.querySelector('{card('street')} input.heat-toggle').checked") is True
        assert page.evaluate(f"document.querySelector('{card('shelf')} input.heat-toggle').checked") is False
        page.click(f"{card('street')} input.heat-toggle")
        assert wait_until(lambda: not s.app.heatmaps, 5), s.app.heatmaps
        hidden = saturation_until(page, live, lambda v: v < plain + 10)
        assert hidden is not None, (plain, saturation_of(page, live))
        print(f"live view saturation: {plain:.1f} plain, {shown:.1f} with the heatmap, {hidden:.1f} after it")

        assert page.errors() == [], page.errors()
