"""The configuration as pydantic v2 models: what the daemon reads, what the loader validates, what the JSON
Schema (`monitor config schema`, config.schema.json) describes.

Adding a section or a key:
  1. Add a field to a model below (or a new `class FooConfig(Section)` and a `foo: FooConfig = _section("...")`
     field on Config), with `Field(default, description="...")`: what it does, its unit, what the default or
     null means. Editors show it on hover (config.schema.json); tests/test_config_docs.py refuses a key without
     one. Use the value types of monitor.config.fields (Int(1, 64), Number(0, 1), Duration(),
     Size, Bool, Text, Name, Choice("a", "b"), FilePath, Url("http"), List(...)): they give the wording the
     error corpus expects, accept what YAML users write (30s, 10MB, relative paths) and describe themselves in
     the schema. A plain `int`/`str` annotation works too, with pydantic's wording.
  2. A check that needs other keys: a `@field_validator` reading `info.data` (fields listed before it), raising
     `problem("...")` from monitor.config.fields; `problem(..., at=(i,))` points at an item of the value.
     A secret: a `FooConfig.password_file: Optional[FilePath]` and a hidden derived field read with
     fields.read_secret() (see AuthConfig.secret).
  3. A check across entries or sections (unique names, rules naming cameras): _cross_checks() in loader.py.
  4. Show the key in config.yaml at its place, commented out if it is off there, with a comment saying what the
     description says (tests/test_config_docs.py checks every key is there), then regenerate the schema:
     `python -m monitor config schema > config.schema.json` (a test compares them). A file that is only
     valid with your key: tests/configs/good/; one broken config per new check: tests/configs/bad/.
Models are frozen: derive a changed copy with `cfg.model_copy(update={...})`.
"""
from __future__ import annotations

import ipaddress
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, Tag,
                      ValidationInfo, WithJsonSchema, field_validator, model_validator)
from pydantic.json_schema import SkipJsonSchema

from monitor.core import groups
from monitor.core.region import Region, RegionError
from monitor.core.sample import SAMPLE_SOURCE, sample_clip
from monitor.config.apprise_urls import check_apprise_url, read_urls_file
from monitor.config.tls import check_ca_file, check_client_certificate
from monitor.config.fields import (
    NOT_GIVEN, Bool, Choice, Duration, FilePath, Host, Int, List, Name, Number, Size, Text, Url, any_case,
    check_url, from_config, problem, read_secret, resolve_path, source_kind,
)

CAMERA_URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
COMMAND_PLACEHOLDERS = ("camera", "rule", "label", "score", "event_id", "snapshot")
AUTH_MODES = ("none", "basic", "bearer")


class Section(BaseModel):
    """Unknown keys are errors; `key:` with nothing after it means the defaults."""
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_defaults(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, dict):  # non-string YAML keys (1:, null:) are reported as unknown keys by name
            return {k if isinstance(k, str) else str(k): v for k, v in data.items()}
        return data


def _section(description: str) -> Any:
    """A nested section: absent means its defaults, validated like written ones (default paths resolve)."""
    return Field(default_factory=dict, description=description)


def _hidden(default: Any = NOT_GIVEN) -> Any:
    return Field(default=default, repr=False, exclude=True)


def _not_from_yaml(cls: type[BaseModel], value: Any, info: ValidationInfo) -> None:
    """Derived fields (hidden from the schema): code may pass them, a config file may not."""
    if from_config(info) and value is not NOT_GIVEN:
        allowed = [name for name, f in cls.model_fields.items() if not f.exclude]
        raise problem(f"unknown key (allowed: {', '.join(allowed)})", show_value=False)


def _password_from_file(cls: type[BaseModel], value: Any, handler: Any, info: ValidationInfo) -> str:
    """The hidden `password` of a section with a `password_file` (mqtt, fleet): read from that file; code may pass
    it directly, a config file may not."""
    _not_from_yaml(cls, value, info)
    if value is not NOT_GIVEN:
        return handler(value)
    file = info.data.get("password_file")
    return read_secret(file, "password_file") if file is not None else ""


# --- server --------------------------------------------------------------------------------------------------

class AuthConfig(Section):
    mode: Choice(*AUTH_MODES) = Field("none", description=(
        "none: no login (keep server.host on 127.0.0.1); basic: HTTP basic auth with username and "
        "password_file; bearer: clients send `Authorization: Bearer <token>` with the token in token_file. "
        "/healthz always stays open."))
    username: Optional[Text] = Field(None, description=(
        "User name for mode basic (no ':'); required with basic, refused with the other modes."))
    password_file: Optional[FilePath] = Field(None, description=(
        "Mode basic: a file holding only the password, never inline in the config. Read at startup and again "
        "on SIGHUP, so a rotated password applies at once."))
    token_file: Optional[FilePath] = Field(None, description=(
        "Mode bearer: a file holding only the token clients send as `Authorization: Bearer <token>`. Read at "
        "startup and again on SIGHUP."))
    protect_metrics: Bool = Field(True, description=(
        "true: /metrics needs the same credentials as the page and the API; false: anyone who reaches the "
        "port may read it (for a Prometheus that scrapes without credentials)."))
    # A guesser is slowed down per client, not for everyone: the owner logging in from another address is never
    # refused because of it (monitor/web/auth.py).
    max_failures: Int(0, 1_000_000) = Field(10, description=(
        "Failed logins (wrong credentials) from one client address (an IPv6 one counted as its /64) within a "
        "minute before that client gets 429 on every protected path for a minute, twice as long each next "
        "time, up to an hour. Other clients are not affected; a successful login clears the count. 0 = no "
        "limit."))
    secret: SkipJsonSchema[str] = _hidden()  # read from the file at validation time, never logged

    @field_validator("username", "password_file", "token_file", mode="after")
    @classmethod
    def _per_mode(cls, value: Any, info: ValidationInfo) -> Any:
        mode = info.data.get("mode")
        needs = {"none": (), "basic": ("username", "password_file"), "bearer": ("token_file",)}.get(mode)
        if needs is None:
            return value    # the bad mode is reported; checking the other keys against it would mislead
        if value is not None and info.field_name not in needs:
            raise problem(f"not used with mode {mode!r}")
        if value is None and info.field_name in needs:
            raise problem(f"required with mode {mode!r}", show_value=False)
        if info.field_name == "username" and value is not None and ":" in value:
            raise problem("must not contain ':' (HTTP basic auth)")
        return "" if info.field_name == "username" and value is None else value

    @field_validator("secret", mode="wrap")
    @classmethod
    def _read_secret(cls, value: Any, handler: Any, info: ValidationInfo) -> str:
        _not_from_yaml(cls, value, info)
        if value is not NOT_GIVEN:
            return handler(value)
        key = {"basic": "password_file", "bearer": "token_file"}.get(info.data.get("mode", ""))
        return read_secret(info.data[key], key) if key and info.data.get(key) else ""


class StreamConfig(Section):
    fps: Number(above=0) = Field(10.0, description="MJPEG frames per second sent to each viewer of a live view.")
    width: Int(0, 16384) = Field(0, description=(
        "Width in pixels the live view is resized to, the height following the aspect ratio; 0 = the camera's "
        "native width."))
    quality: Int(1, 100) = Field(80, description="JPEG quality of the live view, 1..100 (higher: sharper, larger).")
    max_viewers: Int(1, 10000) = Field(20, description=(
        "Most live views open at once, over all cameras; one more is answered 503 with Retry-After."))


_HOST_NAME_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")


def _allowed_host(value: Any) -> str:
    """A host name or IP address as it appears in a Host header, without port: compared case-insensitively."""
    if not isinstance(value, str) or not value.strip():
        raise problem("must be a host name such as monitor.lan")
    name = value.strip().lower()
    if "://" in name or "/" in name:
        raise problem("must be a host name only, without scheme or path (e.g. monitor.lan)")
    if name.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(name.strip('[]')).compressed}]"
        except ValueError:
            raise problem("must be a host name or IP address") from None
    if ":" in name:
        try:
            return f"[{ipaddress.IPv6Address(name).compressed}]"
        except ValueError:
            raise problem("must be a host name without a port (any port is accepted)") from None
    if not _HOST_NAME_RE.fullmatch(name) or len(name) > 253:
        raise problem("must be a host name made of letters, digits, '-' and '.' (e.g. monitor.lan)")
    return name


class ServerConfig(Section):
    host: Host = Field("127.0.0.1", description=(
        "Address the HTTP server (page, API, live views, /metrics) listens on: 127.0.0.1 = this machine only, "
        "0.0.0.0 = every interface (then turn server.auth on)."))
    port: Int(0, 65535) = Field(8080, description=(
        "TCP port of the HTTP server; 0 picks a free port (tests) and the bound port is logged."))
    upload_max_bytes: Size = Field(10 * 1024 * 1024, description=(
        "Largest image the upload page (POST /api/classify) accepts: bytes, or 512KB / 10MB / 1GB (binary "
        "units). A larger body is refused with 413."))
    upload_max_pixels: Int(1, 2_000_000_000) = Field(40_000_000, description=(
        "Most pixels (width x height) an uploaded image may have; an upload whose header promises more is "
        "refused before it is decoded."))
    upload_timeout: Duration(allow_zero=False) = Field(30.0, description=(
        "Time a whole upload body has to arrive (e.g. 30s); a slower one is answered 408."))
    batch_max_files: Int(1, 100_000) = Field(500, description=(
        "Most images one POST /api/classify/batch may carry (multipart files, or files in its zip archive); "
        "a request with more is refused with 413."))
    # The body is held in memory (beside the single uploads' budget) while its files are classified.
    batch_max_bytes: Size = Field(64 * 1024 * 1024, description=(
        "Largest POST /api/classify/batch body, and most bytes its zip archive may unpack to: bytes, or 512KB "
        "/ 64MB (binary units). Each file is also held to upload_max_bytes and upload_max_pixels."))
    # Kept below the process's file descriptor limit.
    max_connections: Int(8, 65536) = Field(256, description=(
        "Open HTTP connections at once; more are answered 503 and closed. The last 4 (an eighth when that is "
        "fewer) are kept for /healthz and /readyz, one per client address."))
    # One client cannot take the whole of max_connections (nor the health-check reserve) from the others.
    max_connections_per_client: Int(1, 65536) = Field(32, description=(
        "Open HTTP connections from one client address (an IPv6 one counted as its /64); more are answered 503 "
        "and closed. A browser opens at most 6 to one server, live views included. Behind a reverse proxy every "
        "client has the proxy's address: raise it to max_connections there."))
    keepalive_timeout: Duration(allow_zero=False) = Field(5.0, description=(
        "An idle keep-alive HTTP connection is closed after this long."))
    head_timeout: Duration(allow_zero=False) = Field(10.0, description=(
        "Time a client has to send a whole request head (request line and headers); a slower one is "
        "answered 408."))
    # Host names a browser may use to reach the daemon besides localhost, IP addresses and `host`: a page that
    # rebinds its own DNS name to this machine (DNS rebinding) arrives with that name in Host and gets 421.
    allowed_hosts: List(Annotated[str, BeforeValidator(_allowed_host)], empty=None) = Field((), description=(
        "Host names (no port, no scheme) the HTTP server answers to besides localhost, IP addresses and "
        "server.host, e.g. the machine's DNS or mDNS name, or the name a reverse proxy passes on. A request "
        "whose Host header names any other host is refused with 421 (DNS rebinding protection)."))
    auth: AuthConfig = _section(
        "Who may use the page, the API, the live views and (with protect_metrics) /metrics. Default: no login.")
    stream: StreamConfig = _section("The MJPEG live view each camera card shows.")


class ModelConfig(Section):
    weights: FilePath = Field(Path("weights/resnet18-int8.pt"), description=(
        "The network's INT8 TorchScript artifact, built with `monitor weights ...` (weights never go into "
        "git). The OpenVINO artifact is looked for next to it, with the suffix .ov."))
    runtime: Choice("auto", "openvino", "torch") = Field("auto", description=(
        "auto: OpenVINO when its artifact sits next to the weights (weights/resnet18-int8.ov), else torch; "
        "openvino or torch: that runtime only."))
    threads: Int(1, 64) = Field(1, description=(
        "Inference threads (OpenVINO's INFERENCE_NUM_THREADS, or torch's). More than 1 lowers one frame's "
        "latency on idle cores, but with many cameras the extra thread spins waiting for CPU the decoders hold "
        "(16 1080p cameras: p99 133 ms with 2, 71 ms with 1): keep 1 for many cameras."))
    top_k: Int(1, 1000) = Field(3, description=(
        "Predictions (class and probability) kept per classified frame, shown in /api/status, the overlay and "
        "MQTT attributes."))
    batch_max: Int(1, 256) = Field(8, description=(
        "Most frames classified in one inference call; frames due at once, across cameras, are batched up to "
        "this."))


# --- cameras -------------------------------------------------------------------------------------------------

class MotionConfig(Section):
    enabled: Bool = Field(False, description=(
        "true: due frames are skipped while the picture does not change (saves CPU on still scenes; counted in "
        "monitor_frames_skipped_still_total); false: every due frame is classified."))
    threshold: Number(high=1, above=0) = Field(0.02, description=(
        "Fraction of pixels (0..1) of a small grey thumbnail of the frame that must have changed since the "
        "last classified frame for this one to be classified."))
    keepalive: Duration(allow_zero=False) = Field(30.0, description=(
        "While the scene is still, classify anyway this often, so a result never gets older than this."))


class ClipsRetainConfig(Section):
    days: Number(above=0) = Field(7.0, description=(
        "Clips older than this many days are deleted (oldest first); their events stay, without a clip."))
    max_bytes: Optional[Size] = Field(10 * 1024 ** 3, description=(
        "Most bytes all clips together may take (e.g. 10GB); above it the oldest clips go first. null = no cap."))
    per_camera_max_bytes: Optional[Size] = Field(None, description=(
        "Most bytes one camera's clips may take; above it that camera's oldest clips go first. null = no cap."))


CLIPS_DEFAULTS = {"enabled": False, "pre": 5.0, "post": 10.0, "max_length": 120.0,
                  "max_preroll_bytes": 16 * 1024 * 1024, "encode": False, "encode_fps": 10.0}


class CameraClipsConfig(Section):
    """Per camera: each key left out (null) takes the global `clips:` value; after loading every key is set."""
    enabled: Optional[Bool] = Field(None, description=(
        "Record a clip of each event of this camera (needs backend pyav, or clips.encode). null: clips.enabled."))
    pre: Optional[Duration()] = Field(None, description="Seconds before the event start kept. null: clips.pre.")
    post: Optional[Duration()] = Field(None, description="Seconds after the event end recorded. null: clips.post.")
    max_length: Optional[Duration(allow_zero=False)] = Field(None, description=(
        "Longest clip; a longer event's clip is cut there. null: clips.max_length."))
    max_preroll_bytes: Optional[Size] = Field(None, description=(
        "Most bytes of packets held for the pre-roll. null: clips.max_preroll_bytes."))
    encode: Optional[Bool] = Field(None, description=(
        "Cameras read by OpenCV (webcams, backend: opencv): true = record by encoding the frames to H.264 (costs "
        "CPU). null: clips.encode."))
    encode_fps: Optional[Number(above=0, high=60)] = Field(None, description=(
        "Frames per second encoded at most (clips.encode). null: clips.encode_fps."))


class ClipsConfig(Section):
    enabled: Bool = Field(CLIPS_DEFAULTS["enabled"], description=(
        "true: every event of a camera read by PyAV (backend auto or pyav: files and URLs) gets a video clip (its "
        "packets copied into MP4, no re-encoding), from `pre` seconds before it started to `post` after it ended. "
        "Cameras read by OpenCV (webcams, backend: opencv) give no packets: they record only with encode: true."))
    path: Optional[FilePath] = Field(None, description=(
        "Folder of the clips (<camera>/<time>-<event id>.mp4). null: `clips` next to events.database."))
    pre: Duration() = Field(CLIPS_DEFAULTS["pre"], description=(
        "Seconds of video before the event start kept in the clip: each camera holds its packets back to the "
        "keyframe before this (so a clip starts up to one GOP earlier)."))
    post: Duration() = Field(CLIPS_DEFAULTS["post"], description="Seconds recorded after the event ended.")
    max_length: Duration(allow_zero=False) = Field(CLIPS_DEFAULTS["max_length"], description=(
        "Longest clip (e.g. 2m); the clip of a longer event is cut there."))
    max_preroll_bytes: Size = Field(CLIPS_DEFAULTS["max_preroll_bytes"], description=(
        "Most bytes of packets a camera holds for the pre-roll (e.g. 16MB); past it the oldest GOPs go first "
        "(counted in monitor_clip_preroll_dropped_bytes_total) and the pre-roll gets shorter."))
    min_free_bytes: Size = Field(256 * 1024 ** 2, description=(
        "Recording stops (WARNING, monitor_clips_disk_full 1) while the clips folder's disk has less free than "
        "this; classification and events go on, and recording resumes once space frees."))
    encode: Bool = Field(CLIPS_DEFAULTS["encode"], description=(
        "true: cameras read by OpenCV (webcams, backend: opencv), which give no packets to copy, record clips by "
        "encoding their frames to H.264 (libx264 ultrafast, a keyframe every second; browsers play it, unlike a "
        "webcam's MJPEG). Costs CPU per camera (README, event clips), hence off by default. Cameras read by PyAV "
        "ignore it (their clips are a stream copy)."))
    encode_fps: Number(above=0, high=60) = Field(CLIPS_DEFAULTS["encode_fps"], description=(
        "Frames per second encoded at most (clips.encode): each encoded frame is converted and compressed, so "
        "the CPU cost grows with it; a source slower than this is encoded at its own rate."))
    retain: ClipsRetainConfig = _section("How long and how many bytes of clips are kept.")


def clips_need_packets(source: str) -> str:
    """The error of clips on a camera read by OpenCV without clips.encode: what to set instead."""
    if source_kind(source) in ("webcam", "device"):
        return ("a webcam gives no packets to copy: set clips.encode: true (its frames encoded to H.264, "
                "costs CPU)")
    return "needs backend: pyav (a clip copies the packets, which OpenCV does not give) or clips.encode: true"


def _source(value: Any, info: ValidationInfo) -> str:
    """A webcam index, /dev/videoN, an rtsp/rtsps/http/https URL or a file path (made absolute).
    A file that does not exist is not an error: the camera shows as down and retries."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise problem("webcam index must be >= 0")
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise problem("must be a webcam index, a device (/dev/videoN), an rtsp/http(s) URL or a file path")
    text = value.strip()
    if text == SAMPLE_SOURCE:
        return str(sample_clip())   # the packaged demo clip (a file named "sample" is spelled ./sample)
    kind = source_kind(text)
    if kind == "url":
        return check_url(text, CAMERA_URL_SCHEMES)
    if text.lower().startswith(("rtsp:", "rtsps:", "http:", "https:")):
        raise problem("malformed URL: expected scheme://host/...")
    return str(resolve_path(text, info)) if kind == "file" else text


def _crop_shape(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("center", "full"):
        return value.lower()
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise problem("must be center, full or [x, y, width, height] in pixels")
    return value


# "center" | "full" | (x, y, w, h) region of interest in pixels
Crop = Annotated[Union[
    Annotated[Literal["center", "full"], Tag("word"), WithJsonSchema(any_case("center", "full"))],
    Annotated[tuple[Int(0), Int(0), Int(1), Int(1)], Tag("box")]],
                 Discriminator(lambda v: "word" if isinstance(v, str) else "box"), BeforeValidator(_crop_shape)]
UNION_TAGS = ("word", "box")   # pydantic puts the chosen branch in an error's location; the loader drops it


class CameraConfig(Section):
    name: Name = Field(description=(
        "The camera's name, unique: 1-64 characters from A-Z a-z 0-9 _ . - (it is used in URLs, MQTT topics "
        "and metric labels)."))
    source: Annotated[str, BeforeValidator(_source), WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "minLength": 1}]})] = Field(description=(
            "Where frames come from: a webcam index (0), a device (/dev/video0), an rtsp://, rtsps://, http:// "
            "or https:// URL, a video file, or `sample`: the demo clip shipped inside the package (a file "
            "really named sample is written ./sample). Credentials in a URL are redacted in logs and errors."))
    fps: Number(0) = Field(5.0, description=(
        "Classifications per second (the frames in between are still read and shown); 0 = every frame."))
    crop: Crop = Field("center", description=(
        "Region of the frame that is classified: center = the centred square of 7/8 of the shorter side "
        "(the ImageNet convention), full = the whole frame squashed to a square, or [x, y, width, height] in "
        "pixels (of frame_size when it is set)."))
    loop: Bool = Field(False, description=(
        "File sources only: start again at the end of the file (demos); false: a finished file stays down."))
    open_timeout: Duration(allow_zero=False) = Field(10.0, description=(
        "Give up opening the source after this long; it is retried with backoff."))
    read_timeout: Duration(allow_zero=False) = Field(10.0, description=(
        "Give up waiting for one frame after this long; the source is reopened."))
    stale_after: Duration(allow_zero=False) = Field(10.0, description=(
        "Reopen the source when no frame arrived for this long."))
    backoff_max: Duration(allow_zero=False) = Field(30.0, description=(
        "Cap of the reconnect delay, which doubles after each failed attempt."))
    hwaccel: Choice("none", "auto") = Field("none", description=(
        "none: software decoding; auto: a hardware decoder when the backend finds one, else software (logged "
        "once; the status shows which). Webcams and devices always decode in software."))
    decode_threads: Optional[Int(0, 16)] = Field(None, description=(
        "FFmpeg decoder threads; 0 = FFmpeg's choice (cores + 1). Unset (the default): 1, on the capture thread. "
        "Each thread holds pictures of its own. With PyAV, 2 frame threads hand every-frame decoding off the "
        "capture thread, which then holds the GIL less (16 x 1080p25: 0.97 of the due frames classified instead "
        "of 0.87, README capacity), but a stream of undecodable data is then no longer refused at its first "
        "packet. Keyframes-only decoding uses 1 unless set."))
    backend: Choice("auto", "opencv", "pyav") = Field("auto", validate_default=True, description=(
        "auto: pyav for files and URLs, opencv for webcams/devices; pyav: files and URLs demuxed and decoded by "
        "PyAV (the packets feed event clips, keyframe sampling decodes only what is classified, each used frame "
        "is converted straight to frame_size); opencv: cv2.VideoCapture, every kind of source, every frame "
        "decoded, no clips. After loading it is opencv or pyav."))
    sample: Choice("auto", "keyframes", "all") = Field("auto", description=(
        "Which frames are decoded (backend pyav): auto = only the keyframes while the stream's measured keyframe "
        "interval is no longer than 1/fps and nobody watches the live view (a camera sampled at 1 fps with a 1 s "
        "GOP then decodes 1 frame a second instead of 25), else every frame; keyframes = only keyframes, each one "
        "classified, whatever fps says; all = every frame. Packets are still read: clips keep their pre-roll. "
        "/api/status shows the measured keyframe_interval and what is decoded."))
    frame_size: Optional[tuple[Int(16, 7680), Int(16, 4320)]] = Field(None, description=(
        "Backend pyav: [width, height] the frames are classified, shown and saved at (crops are in these "
        "pixels); a 1080p camera at [960, 540] holds 1.5 MB frames instead of 6.2 MB. null: the native size."))
    capture_priority: Choice("normal", "low", "idle") = Field("idle", description=(
        "CPU priority of this camera's capture thread (decoding, conversion) against classification: idle = "
        "Linux SCHED_IDLE (only the CPU other threads leave), low = nice 19, normal = the same. When the cores "
        "are busy, classification runs first and decoding catches up from the socket buffer."))
    motion: MotionConfig = _section(
        "Motion gate: classify only when the picture changes. Default: off, every due frame is classified.")
    clips: CameraClipsConfig = _section(
        "This camera's clip settings; keys left out take the global clips: ones.")

    @field_validator("backend")
    @classmethod
    def _pyav_reads_files_and_urls(cls, backend: str, info: ValidationInfo) -> str:
        device = "source" in info.data and source_kind(info.data["source"]) in ("webcam", "device")
        if backend == "auto":
            return "opencv" if device or "source" not in info.data else "pyav"
        if backend == "pyav" and device:
            raise problem("pyav reads files and URLs; a webcam/device needs backend: opencv", show_value=False)
        return backend

    @field_validator("sample")
    @classmethod
    def _keyframes_need_pyav(cls, sample: str, info: ValidationInfo) -> str:
        if sample == "keyframes" and info.data.get("backend", "opencv") != "pyav":
            raise problem("needs backend: pyav (OpenCV decodes every frame)", show_value=False)
        return sample

    @field_validator("frame_size")
    @classmethod
    def _frame_size_needs_pyav(cls, size: tuple[int, int] | None, info: ValidationInfo) -> tuple[int, int] | None:
        if size is None:
            return size
        if info.data.get("backend", "opencv") != "pyav":
            raise problem("needs backend: pyav (OpenCV always converts the full picture)", show_value=False)
        crop = info.data.get("crop")
        if crop is not None:
            try:
                Region.of(crop).clip_to(size[0], size[1], what="frame_size")
            except RegionError as e:
                raise problem(str(e), show_value=False) from None
        return size

    @field_validator("clips")
    @classmethod
    def _clips_need_pyav(cls, clips: CameraClipsConfig, info: ValidationInfo) -> CameraClipsConfig:
        # encode left out (null) is decided by the global clips.encode: Config._resolve_camera_clips checks it
        if clips.enabled and clips.encode is False and info.data.get("backend", "opencv") != "pyav":
            raise problem(clips_need_packets(info.data.get("source", "")), at=("enabled",), show_value=False)
        return clips

    @field_validator("loop")
    @classmethod
    def _loop_needs_a_file(cls, loop: bool, info: ValidationInfo) -> bool:
        kind = source_kind(info.data.get("source", ""))
        if loop and "source" in info.data and kind != "file":
            raise problem(f"only applies to file sources (source is a {kind})", show_value=False)
        return loop


# --- watchlist -----------------------------------------------------------------------------------------------

def _class_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise problem("must be an ImageNet class name or a group name (a string)")
    if ":" in name:     # "head:class", a custom class; the loader checks the head is configured
        head, _, cls = name.partition(":")
        if not head.strip() or not cls.strip() or ":" in cls:
            raise problem(f"{name!r}: a custom class is written as <custom_classes name>:<class>, "
                          f"e.g. porch:package", show_value=False)
        return name
    try:
        groups.lookup(name)
        return name
    except KeyError as exc:
        reason = str(exc.args[0])
    why = groups.explain_missing(name)
    if why:
        raise problem(f"no class for {name!r}: {why}", show_value=False)
    if "ambiguous" in reason:
        raise problem(reason, show_value=False)
    message = f"unknown class {name!r}"
    suggestions = groups.suggest(name)
    if suggestions:
        message += f"; did you mean: {', '.join(suggestions)}?"
    else:
        message += f" (not an ImageNet class or a group; groups: {', '.join(groups.group_names())})"
    near = groups.near_missing(name)
    if near:
        message += f" (if you meant {near[0]!r}: {near[1]})"
    raise problem(message, show_value=False)


class SmoothingConfig(Section):
    window: Int(2, 100) = Field(5, description=(
        "Sampled frames each class's score is smoothed over; the window starts filled with zeros."))
    method: Choice("median", "mean") = Field("median", description=(
        "median (one odd frame changes nothing) or mean of the scores in the window."))


class RuleConfig(Section):
    name: Name = Field(description=(
        "The rule's name, unique: 1-64 characters from A-Z a-z 0-9 _ . -. It names the rule's events, MQTT "
        "topics (then not label, snapshot, state or enabled) and metric labels."))
    classes: List(Annotated[str, BeforeValidator(_class_name)]) = Field(description=(
        "What the rule watches for: ImageNet class names (\"sports car\"), groups (dog = the 118 dog breeds, "
        "cat, bird, car, truck, vehicle, ...; monitor/data/groups.yaml), or custom classes written "
        "<custom_classes name>:<class>. A group scores the sum of its classes' probabilities; a frame hits when "
        "the best entry reaches min_score. ImageNet-1k has no person class."))
    # resolved: (canonical class/group name, ImageNet indices); derived from `classes` when not given
    indices: SkipJsonSchema[tuple[tuple[str, tuple[int, ...]], ...]] = _hidden()
    cameras: List(Text, empty="must not be empty (leave the key out to watch all cameras)") = Field((), description=(
        "Names of the cameras the rule watches; leave the key out to watch all cameras."))
    min_score: Number(0, 1) = Field(0.5, description=(
        "Score (0..1) from which a sampled frame is a hit: a class's probability, or for a group the sum of "
        "its classes' probabilities."))
    min_frames: Int(1) = Field(3, description=(
        "Consecutive hits (sampled frames) before an event starts; a miss resets the count."))
    end_after: Duration(allow_zero=False) = Field(10.0, description=(
        "The event ends after this long without a hit."))
    cooldown: Duration() = Field(60.0, description=(
        "After an event ends, the rule stays quiet on that camera this long (hits keep counting, so a class "
        "still there alerts as soon as it is over); 0 = no cooldown."))
    smoothing: Optional[SmoothingConfig] = Field(None, description=(
        "Replace each class's score by the median or mean of its last `window` sampled frames, so one odd "
        "frame neither starts nor prolongs an event. Absent: raw scores."))

    @field_validator("classes")
    @classmethod
    def _each_once(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        first: dict[str, int] = {}
        for i, name in enumerate(classes):
            canonical = name if ":" in name else groups.lookup(name)[0]
            if canonical in first:
                raise problem(f"{name!r} is listed twice (as {{path}}[{first[canonical]}])",
                              show_value=False, at=(i,))
            first[canonical] = i
        return classes

    @field_validator("indices", mode="wrap")
    @classmethod
    def _resolve(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        _not_from_yaml(cls, value, info)
        if value is NOT_GIVEN:
            # a custom class "head:class" has no ImageNet index: the engine reads the head's result
            value = tuple((name, ()) if ":" in name else groups.lookup(name)
                          for name in info.data.get("classes", ()))
        return handler(value)


# --- custom classes ------------------------------------------------------------------------------------------

class CustomClassConfig(Section):
    name: Name = Field(description=(
        "Name of this set of classes: rules name its classes <name>:<class> (e.g. porch:package); 1-64 "
        "characters from A-Z a-z 0-9 _ . -."))
    head: FilePath = Field(description=(
        "The head file written by `monitor classes train`; refused when it was trained on other weights than "
        "model.weights."))
    cameras: List(Text, empty="must not be empty (leave the key out to run it on all cameras)") = Field(
        (), description="Names of the cameras the head runs on; leave the key out to run it on all cameras.")
    crop: Optional[Crop] = Field(None, description=(
        "A region of its own (center, full or [x, y, width, height] in pixels), classified as one more crop in "
        "the same inference call. Absent: the camera's crop, whose features are already computed (no extra "
        "cost)."))
    examples: Optional[FilePath] = Field(None, description=(
        "Folder of the frames labelled on the web page, which retraining learns from. Absent: "
        "examples/<name> next to events.database (state, never the repository)."))
    retrain_interval: Duration() = Field(60.0, description=(
        "Least time between the end of one retrain of this head (POST /api/heads/{name}/retrain) and the start "
        "of the next; sooner requests get 429 with Retry-After. 0 = no limit."))


# --- alerts, events, logging ---------------------------------------------------------------------------------

class WebhookConfig(Section):
    url: Url("http", "https", secret_path=True) = Field(description=(
        "http(s) URL each event is POSTed to as JSON. Redirects are not followed. Errors and logs show only "
        "its scheme://host:port, since a webhook's path or query is often its secret."))
    timeout: Duration(allow_zero=False) = Field(5.0, description="Time one POST may take before it counts as failed.")
    retries: Int(0, 10) = Field(3, description=(
        "Further attempts after a failed POST, with exponential backoff; a 4xx answer other than 408, 425 and "
        "429 is not retried."))


NOTIFY_PLACEHOLDERS = ("camera", "rule", "label", "score", "time", "event_id", "link", "snapshot_url", "clip_url")
_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")


def _notify_template(value: Any) -> str:
    if not isinstance(value, str):
        raise problem("must be a string")
    for m in _TEMPLATE_FIELD.finditer(value):
        if m.group(1) not in NOTIFY_PLACEHOLDERS:
            allowed = ", ".join("{" + p + "}" for p in NOTIFY_PLACEHOLDERS)
            raise problem(f"unknown placeholder {{{m.group(1)}}} (allowed: {allowed})", show_value=False)
    return value


def _apprise_url(value: Any) -> str:
    """Apprise parses the URL now, so a typo is a config error at its key path, not a silent loss at the first
    event. The URL is never echoed (it holds the service's token): only its scheme is named."""
    return check_apprise_url(value)


NotifyTemplate = Annotated[str, BeforeValidator(_notify_template)]
AppriseUrl = Annotated[str, BeforeValidator(_apprise_url), WithJsonSchema({"type": "string", "minLength": 1})]


class NotifyConfig(Section):
    name: Name = Field("notify", description=(
        "Names this notification target in logs and in the sink label of monitor_sink_dropped_total and "
        "monitor_sink_failures_total; unique among alerts.notify (give each a name when there are several)."))
    urls: List(AppriseUrl, empty=None) = Field((), repr=False, description=(
        "Apprise URLs the notification goes to, e.g. ntfys://ntfy.sh/my-topic, tgram://BOT_TOKEN/CHAT_ID, "
        "mailtos://user:pass@example.com, pover://USER_KEY@APP_TOKEN (https://github.com/caronc/apprise/wiki). "
        "They usually hold a token: logs and errors never show more than the scheme; prefer urls_file."))
    urls_file: Optional[FilePath] = Field(None, description=(
        "A file of Apprise URLs, one per line (blank lines and # comments skipped), kept out of the config "
        "because they hold tokens; read at start and on SIGHUP. Used together with urls."))
    rules: List(Text, empty="must not be empty (leave the key out to notify for every rule)") = Field((), description=(
        "Names of the watchlist rules whose events are sent here; leave the key out for every rule."))
    title: NotifyTemplate = Field("{label} on {camera}", description=(
        "Title of the notification. Placeholders: {camera} {rule} {label} {score} {time} {event_id} {link} "
        "{snapshot_url} {clip_url}; the last three are empty without node.public_url, {clip_url} also when no "
        "camera records clips."))
    body: NotifyTemplate = Field("{label} ({score}) on {camera}, rule {rule}, at {time}\n{link}", description=(
        "Text of the notification, with the placeholders of title. {link} is the event on the status page, "
        "{snapshot_url} its JPEG, {clip_url} its video clip (playable once the event and its post-roll are "
        "over), all under node.public_url."))
    attach: Bool = Field(True, description=(
        "true: the event's snapshot JPEG (with the overlay) is attached; false: text only."))
    timeout: Duration(allow_zero=False) = Field(15.0, description=(
        "Time one delivery attempt may take (all of this target's URLs) before it counts as failed."))
    retry_for: Duration() = Field(600.0, description=(
        "How long an undelivered notification is retried (backoff from 0.5 s doubling up to 30 s) while later "
        "ones wait in the queue (alerts.queue_size, then dropped and counted); after that it is given up and "
        "counted in monitor_sink_failures_total. 0 = one attempt."))
    all_urls: SkipJsonSchema[tuple[str, ...]] = _hidden()  # urls + the file's, read at validation time

    @field_validator("all_urls", mode="wrap")
    @classmethod
    def _read_urls(cls, value: Any, handler: Any, info: ValidationInfo) -> tuple[str, ...]:
        _not_from_yaml(cls, value, info)
        if value is not NOT_GIVEN:
            return handler(value)
        if "urls" not in info.data or "urls_file" not in info.data:
            return ()            # the bad key is reported; "no URL" on top of it would mislead
        urls = list(info.data["urls"])
        file = info.data["urls_file"]
        if file is not None:
            urls += read_urls_file(file)
        if not urls:
            raise problem("no Apprise URL: give urls or urls_file", show_value=False, sibling="urls")
        return tuple(urls)


def _command_arg(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str) or not value:
        raise problem("must be a non-empty string")
    if not from_config(info):
        return value    # code may pass any argv (the sink substitutes what it knows and leaves the rest)
    allowed = ", ".join("{" + p + "}" for p in COMMAND_PLACEHOLDERS)
    try:
        fields = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise problem(f"malformed placeholder ({exc}); write {{{{ and }}}} for literal braces") from None
    for _, field, spec, conversion in fields:
        if field is not None and field not in COMMAND_PLACEHOLDERS:
            raise problem(f"unknown placeholder {{{field}}} (allowed: {allowed})")
        if field is not None and (spec or conversion):
            raise problem(f"placeholder {{{field}}} takes no format spec or conversion")
    return value


def _argv(value: Any) -> Any:
    if isinstance(value, str):
        raise problem("must be a list of strings (the argv, run without a shell), "
                      "e.g. [/usr/local/bin/notify, \"{camera}\"]")
    return value


class AlertsConfig(Section):
    snapshots: Optional[FilePath] = Field(None, description=(
        "Folder the JPEG of the frame that started each event is written to; null = no snapshots. Under "
        "systemd: /var/lib/monitor/snapshots."))
    snapshots_max_bytes: Optional[Size] = Field(1024 ** 3, description=(
        "Most bytes the snapshot files under alerts.snapshots may take (e.g. 500MB, 2GB); above it the oldest "
        "are deleted first, their events stay without a picture. Checked as snapshots are written and at each "
        "hourly retention pass. null = no cap (events.retention still applies)."))
    webhook: Optional[WebhookConfig] = Field(None, description=(
        "POST each event as JSON to a URL when it starts and when it ends. Absent: no webhook."))
    command: Annotated[List(Annotated[str, BeforeValidator(_command_arg)]), BeforeValidator(_argv)] = Field(
        (), description=(
            "A program run when an event starts: its argv as a list, run without a shell, e.g. "
            "[/usr/local/bin/notify, \"{camera}\", \"{label}\"]. The placeholders {camera} {rule} {label} "
            "{score} {event_id} {snapshot} are replaced in each argument. Absent: no command."))
    command_timeout: Duration(allow_zero=False) = Field(10.0, description=(
        "The command is killed, with every process it started, when it runs longer than this."))
    notify: List(NotifyConfig, empty=None) = Field((), description=(
        "Notifications through Apprise (ntfy, Telegram, e-mail, Pushover, Matrix, Discord, ...) when an event "
        "starts, with its snapshot attached: each entry is a target with its URLs, rules and templates, and a "
        "queue of its own. Absent: none."))
    queue_size: Int(1, 100000) = Field(64, description=(
        "Deliveries waiting per sink (snapshot, webhook, command, ...); when a sink's queue is full, its new "
        "deliveries are dropped and counted in monitor_sink_dropped_total, never blocking classification."))


class EventsConfig(Section):
    database: FilePath = Field(Path("events.db"), description=(
        "SQLite file holding the event history; labelled examples are kept in the same folder. Under "
        "systemd: /var/lib/monitor/events.db."))
    retention: Duration(allow_zero=False) = Field(30 * 86400.0, description=(
        "Events older than this (e.g. 30d) are deleted with their snapshots, by an hourly pass."))


class LoggingConfig(Section):
    level: Choice("debug", "info", "warning", "error") = Field("info", description=(
        "Least severity logged: debug, info, warning or error."))
    format: Choice("text", "json") = Field("text", description=(
        "text: one readable line per record; json: one JSON object per line (journald, ELK). Both go to "
        "stderr, with credentials in URLs redacted."))


# --- mqtt ----------------------------------------------------------------------------------------------------

# Topic levels under <prefix>/<camera>/ that a watch-list rule may not take when MQTT is on (loader cross-check).
MQTT_RESERVED_RULE_NAMES = ("label", "snapshot", "state", "enabled")


def _topic_prefix(value: Any) -> str:
    """An MQTT topic prefix: levels of printable characters, no wildcards, no empty level."""
    if not isinstance(value, str) or not value.strip():
        raise problem("must be a non-empty string")
    if any(c in "+#" or c.isspace() or not c.isprintable() for c in value):
        raise problem("must be an MQTT topic without wildcards (+ #), blanks or control characters")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise problem("must not start or end with '/' nor contain an empty level ('//')")
    if len(value.encode("utf-8")) > 200:
        raise problem("must be at most 200 bytes")
    return value


def _client_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise problem("must be a non-empty string")
    if len(value.encode("utf-8")) > 128 or any(not c.isprintable() for c in value):
        raise problem("must be at most 128 bytes of printable characters")
    return value


Topic = Annotated[str, BeforeValidator(_topic_prefix), WithJsonSchema({"type": "string", "pattern": "^[^+#/\\s][^+#\\s]*$"})]


def _default_client_id() -> str:
    import socket
    return f"monitor-{socket.gethostname()}"


class MqttTlsConfig(Section):
    """TLS to the broker; no keys (or `tls: true`) = the system's CA certificates, no client certificate."""
    ca_file: Optional[FilePath] = Field(None, description=(
        "PEM CA certificate(s) the broker's certificate must chain to. Absent: the system's CA certificates."))
    cert_file: Optional[FilePath] = Field(None, description=(
        "PEM client certificate presented to the broker (brokers with require_certificate)."))
    key_file: Optional[FilePath] = Field(None, description=(
        "The client certificate's private key, unencrypted PEM; needs cert_file. Absent: the key is in "
        "cert_file."))

    @field_validator("ca_file", mode="after")
    @classmethod
    def _ca_loads(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and from_config(info):
            check_ca_file(value, "ca_file")
        return value

    @field_validator("key_file", mode="after")
    @classmethod
    def _client_certificate_loads(cls, value: Any, info: ValidationInfo) -> Any:
        cert = info.data.get("cert_file")
        if value is not None and cert is None:
            if "cert_file" in info.data:        # absent from info.data: cert_file was wrong (reported there)
                raise problem("needs mqtt.tls.cert_file", show_value=False)
            return value
        if cert is not None and from_config(info):
            check_client_certificate(cert, value, "cert_file", "key_file")
        return value


def _tls(value: Any) -> Any:
    """`tls: true` is TLS with the system's CA certificates (a section without keys); false or null: none."""
    if value is True:
        return {}
    if value is False or value is None:
        return None
    if isinstance(value, (dict, MqttTlsConfig)):
        return value
    raise problem("must be true, false or a section with ca_file, cert_file, key_file")


def _tls_schema(schema: dict[str, Any]) -> None:
    schema["anyOf"].insert(0, {"type": "boolean"})


class MqttConfig(Section):
    host: Host = Field("127.0.0.1", description=(
        "The broker's host name or IP address; with TLS it must be a name in the broker's certificate."))
    port: Int(1, 65535) = Field(1883, description="The broker's port (1883; 8883 is the usual TLS port).")
    username: Optional[Text] = Field(None, description="User name to log in to the broker. Absent: anonymous.")
    password_file: Optional[FilePath] = Field(None, description=(
        "A file holding only the broker password, never inline in the config; needs username."))
    tls: Annotated[Optional[MqttTlsConfig], BeforeValidator(_tls), Field(json_schema_extra=_tls_schema)] = Field(
        None, description=(
            "TLS to the broker: true = verified with the system's CA certificates; a section = your own CA "
            "and/or a client certificate; false or absent: plain TCP."))
    topic_prefix: Topic = Field("monitor", description=(
        "First level of every topic published: <prefix>/status, <prefix>/<camera>/label, ... (no wildcards, "
        "no empty level)."))
    discovery_prefix: Optional[Topic] = Field("homeassistant", description=(
        "Home Assistant's discovery prefix: every camera and rule is announced under "
        "<discovery_prefix>/<component>/<id>/config. null: no discovery. Must differ from topic_prefix."))
    client_id: Annotated[str, BeforeValidator(_client_id), WithJsonSchema({"type": "string", "minLength": 1})] = \
        Field(default_factory=_default_client_id, description=(
            "MQTT client id, at most 128 bytes; default monitor-<hostname>. Two clients with one id keep "
            "disconnecting each other."))
    label_keepalive: Duration(allow_zero=False) = Field(60.0, description=(
        "An unchanged label is published again this often while results come."))
    queue_size: Int(1, 100000) = Field(256, description=(
        "Outgoing messages held while the broker is away; when full, new ones are dropped and counted in "
        "monitor_mqtt_dropped_total."))
    # Off by default: MQTT carries no publisher identity, so any client the broker lets write
    # `<prefix>/<camera>/enabled/set` could stop classification. On only with a broker ACL (systemd/mosquitto-acl.example).
    control: Bool = Field(False, description=(
        "Accept `<prefix>/<camera>/enabled/set` ON/OFF to resume/pause classifying a camera, and announce the "
        "Home Assistant switch for it. Off: not subscribed, no switch, a paused set kept from earlier is "
        "ignored. Turn on only when the broker's ACL lets nobody but Home Assistant write those topics."))
    password: SkipJsonSchema[str] = _hidden()  # read from password_file at validation time, never logged

    @field_validator("password_file", mode="after")
    @classmethod
    def _needs_username(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("username"):
            raise problem("needs mqtt.username", show_value=False)
        return value

    @field_validator("discovery_prefix", mode="after")
    @classmethod
    def _not_the_topic_prefix(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and value == info.data.get("topic_prefix"):
            raise problem("must differ from mqtt.topic_prefix")
        return value

    @field_validator("password", mode="wrap")
    @classmethod
    def _read_password(cls, value: Any, handler: Any, info: ValidationInfo) -> str:
        return _password_from_file(cls, value, handler, info)


# --- node and fleet ------------------------------------------------------------------------------------------

def _default_node_name() -> str:
    import socket
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].strip(".") or "node"
    return name


def _database_url(value: Any) -> str:
    text = check_url(value, ("postgresql", "postgres"))
    from urllib.parse import parse_qs, urlsplit
    parts = urlsplit(text)
    if parts.password is not None or "password" in parse_qs(parts.query):
        # the config is read by many (backups, support requests); the password lives in a file of its own
        raise problem("must not hold the password (put it in a file named by fleet.password_file)",
                      show_value=False)
    if not parts.path.strip("/"):
        raise problem("names no database (postgresql://user@host:5432/DATABASE)")
    return text


class NodeConfig(Section):
    name: Name = Field(default_factory=_default_node_name, description=(
        "This daemon's name in a fleet: in its events (locally and in PostgreSQL), its MQTT availability topic, "
        "/api/status and monitor_node_info. Default: the host name. Unique per daemon."))
    public_url: Optional[Url("http", "https")] = Field(None, description=(
        "How other nodes and people reach this daemon's page (http://box1:8080): the fleet section's links to "
        "its live views and the snapshot URLs of its events in PostgreSQL. Absent: http://<host name>:<port>."))


class FleetConfig(Section):
    database: Annotated[str, BeforeValidator(_database_url), WithJsonSchema(
        {"type": "string", "pattern": "^postgres(ql)?://"})] = Field(description=(
            "The shared PostgreSQL, postgresql://user@host:5432/database, without the password (see "
            "password_file). Its schema is created or upgraded at start."))
    password_file: Optional[FilePath] = Field(None, description=(
        "A file holding only the database password, never inline in the config."))
    heartbeat: Duration(allow_zero=False) = Field(5.0, description=(
        "How often the node renews its leases, claims free cameras and sends its outbox to PostgreSQL."))
    lease_time: Duration(allow_zero=False) = Field(30.0, description=(
        "How long a camera lease lasts without renewal: a dead node's cameras move within it. At least 3 "
        "heartbeats; a node that cannot renew stops its fleet cameras before its leases run out."))
    max_cameras: Int(0, 10000) = Field(16, description=(
        "Most fleet cameras this node runs at once (its local cameras not counted). 0: it only shares events."))
    cameras_file: Optional[FilePath] = Field(None, description=(
        "The fleet cameras, one YAML file ({cameras: [...]}, entries like the config's cameras) that every node "
        "loads; names must not clash with local cameras. Absent: no fleet cameras, only the shared events."))
    password: SkipJsonSchema[str] = _hidden()  # read from password_file at validation time, never logged

    @field_validator("lease_time", mode="after")
    @classmethod
    def _three_heartbeats(cls, value: float, info: ValidationInfo) -> float:
        beat = info.data.get("heartbeat")
        if beat is not None and value < 3 * beat:
            raise problem(f"must be at least 3 heartbeats ({3 * beat:g}s): the node renews on a heartbeat and "
                          "stops its cameras before the lease can run out")
        return value

    @field_validator("password", mode="wrap")
    @classmethod
    def _read_password(cls, value: Any, handler: Any, info: ValidationInfo) -> str:
        return _password_from_file(cls, value, handler, info)


class LabelsConfig(Section):
    language: Choice("en", "zh") = Field("en", description=(
        "Language of the class names people read: the overlay, the status page's default, the API's and MQTT's "
        "display names. en = English, zh = Simplified Chinese. Machine outputs keep the class index and the "
        "English name either way."))
    font: Optional[FilePath] = Field(None, description=(
        "Font file (TTF, OTF or TTC) the overlay draws Chinese labels with. Absent: a CJK font found on the "
        "system (fc-match, then Noto CJK / WenQuanYi paths); none found: the overlay draws English and logs "
        "one warning."))


class Config(Section):
    # cameras may be empty only on a fleet node (it claims fleet cameras): said in the schema too
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, json_schema_extra={
        "if": {"not": {"properties": {"fleet": {"type": "object"}}, "required": ["fleet"]}},
        "then": {"properties": {"cameras": {"type": "array", "minItems": 1}}}})
    server: ServerConfig = _section("The HTTP server: web page, REST API, MJPEG live views and /metrics.")
    model: ModelConfig = _section("The classification network and how it runs.")
    cameras: List(CameraConfig, empty=None) = Field(description=(
        "The cameras to classify, at least one (none: only with fleet, whose cameras the node claims). A camera that cannot be opened (a missing file, a host that "
        "is down) is not a config error: it shows as down and is retried with backoff while the others run."))
    watchlist: List(RuleConfig, empty=None) = Field((), description=(
        "Alert rules: each turns classification results into events, which are stored and sent to the alert "
        "sinks and MQTT. Absent or empty: no events."))
    custom_classes: List(CustomClassConfig, empty=None) = Field((), description=(
        "Custom classes: small heads trained on the network's pooled features (512 for ResNet-18, 2048 ResNet-50, "
        "960 MobileNetV3) from your own examples "
        "(`monitor classes train NAME EXAMPLES_DIR`). One network pass serves ImageNet and every head; rules "
        "name their classes <name>:<class>."))
    alerts: AlertsConfig = _section(
        "Where events go when they start and end: snapshot files, a webhook, a command. Each sink has a queue "
        "of its own and never blocks classification.")
    events: EventsConfig = _section("The event history (SQLite) and how long it is kept.")
    logging: LoggingConfig = _section("Log level and format.")
    labels: LabelsConfig = _section("The language class names are shown in (overlay, page, display names).")
    mqtt: Optional[MqttConfig] = Field(None, description=(
        "MQTT publishing and Home Assistant discovery of every camera and rule. Absent or null: no MQTT."))
    clips: ClipsConfig = _section("Video clips of events: pre-roll, length, folder and retention.")
    node: NodeConfig = _section("This daemon's identity among several (a fleet).")
    fleet: Optional[FleetConfig] = Field(None, description=(
        "Several daemons sharing one PostgreSQL: events replicated there, fleet cameras moved between nodes by "
        "leases. Absent or null: a daemon on its own."))
    _path: Optional[Path] = PrivateAttr(None)

    @field_validator("fleet", mode="after")
    @classmethod
    def _some_camera(cls, value: Any, info: ValidationInfo) -> Any:
        # code may build a camera-less daemon (the capacity bench's baseline step); a config file may not
        if value is None and info.data.get("cameras", None) == () and from_config(info):
            raise problem("must list at least one camera (got [])", show_value=False, sibling="cameras")
        return value

    @model_validator(mode="after")
    def _resolve_camera_clips(self) -> Config:
        """Each camera's clips keys left out take the global values, so a camera's config alone says what it
        records (a reload that changes the global clips restarts the cameras it changes). Set on the fresh
        validated camera models, before anything reads them."""
        for i, cam in enumerate(self.cameras):
            own = cam.clips
            merged = {k: getattr(own, k) if getattr(own, k) is not None else getattr(self.clips, k)
                      for k in CLIPS_DEFAULTS}
            if own.enabled and own.encode is None and not merged["encode"] and cam.backend != "pyav":
                raise problem(clips_need_packets(cam.source), at=("cameras", i, "clips", "enabled"),
                              show_value=False)
            if merged != own.model_dump():
                object.__setattr__(cam, "clips", CameraClipsConfig.model_construct(**merged))
        return self

    @property
    def path(self) -> Optional[Path]:
        """The file it was read from (None when built in code)."""
        return self._path
