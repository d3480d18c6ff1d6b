"""PyAVCapture: decode with PyAV (FFmpeg's own bindings) behind the part of cv2.VideoCapture the camera loop uses.

Why a second decoder path: cv2.VideoCapture converts every retrieved picture to full-resolution BGR in a buffer
of its own and copies it out, so a 1080p camera costs the decoder's pictures plus two or three 6.2 MB BGR
arrays whatever the daemon needs. PyAV hands over the decoded YUV picture and converts it with one swscale
pass straight to the size the camera is processed at (`frame_size`, like Frigate's detect resolution): a
960x540 BGR frame is 1.5 MB, and no full-resolution BGR copy exists at all. grab() decodes; retrieve()
converts, only for the frames the camera uses, as with OpenCV.
"""
from __future__ import annotations

import logging
import statistics
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from monitor.core.redact import redact_url

if TYPE_CHECKING:
    from monitor.capture.packet_ring import PacketRing

log = logging.getLogger(__name__)

# Switches for the A/B measurements of issue 22 (the daemon never changes them):
I420_IN_PLACE = True            # False: every conversion through PyAV's reformat() (scripts/gil_profile.py, sws)
READ_TIMEOUT_IN_FFMPEG = True   # False: PyAV's own read timeout (bench capacity pyav+pytimeout, gil_profile)
FEED_KEYFRAMES_ONLY = True      # False: every packet handed to the decoder while skipping (bench, pyav+feedall)
SKIP_LOOP_FILTER = True         # False: keyframes decoded with deblocking (bench capacity's pyav-keyframes-deblock)
_quiet_lock = threading.Lock()
_quiet_done = False


def _quiet_ffmpeg_log(av: Any) -> None:
    """PyAV's FFmpeg log stays off (PyAV's own default, made sure of once): FFmpeg's default callback would print
    unredacted lines to stderr, and PyAV's Python callback takes the GIL on FFmpeg's own threads (a decoder
    thread logging while the GIL holder waits for it deadlocks, see av.logging). What FFmpeg reports on a
    failure still arrives in the exception text, which is redacted below. Should anything turn it on anyway,
    its "libav" logger goes through our (redacting) handler, errors only."""
    global _quiet_done
    with _quiet_lock:
        if _quiet_done:
            return
        av.logging.set_level(None)
        logging.getLogger("libav").setLevel(logging.ERROR)
        _quiet_done = True


class PyAVCapture:
    """One input (file or URL) decoded on the calling thread. Not thread-safe: the camera thread owns it."""

    def __init__(self, target: str, open_timeout: float, read_timeout: float, threads: int | None = None,
                 size: tuple[int, int] | None = None, rtsp_tcp: bool = True, ring: PacketRing | None = None) -> None:
        import av  # imported here: only cameras with `backend: pyav` load it

        _quiet_ffmpeg_log(av)
        self._av = av
        self._target = target
        self._size = size
        # One swscale context per camera, kept while the sizes stay: a frame's own reformat() builds a new one
        # on every call, and each starts a thread per core (the threads=1 below) that 16 cameras would
        # multiply into 32 threads waking for every conversion.
        self._reformatter = av.video.reformatter.VideoReformatter()
        self._i420: np.ndarray | None = None    # full-size conversions: the planes gathered for cv2 (reused)
        self._frame: Any = None
        self._container: Any = None
        self._decoded: Any = None
        self._ring = ring
        self.error = ""
        # Keyframe sampling (issue 22): the camera thread sets keyframes_only between grabs; the decoder follows
        # at the next keyframe (a full decode joining mid-GOP would show broken pictures until then). Packets are
        # still demuxed either way: the clip pre-roll and the keyframe interval below need them.
        self.keyframes_only = False
        self._skipping = False
        self._decoder: Any = None       # the picture decoder of the current mode (see _new_decoder)
        self._key_times: deque[float] = deque(maxlen=9)    # stream seconds of the last keyframes
        self.consumed = 0           # video packets read for the picture grab() returned (a file's pace counts them)
        rtsp = target.lower().startswith(("rtsp://", "rtsps://"))
        options = {"rtsp_transport": "tcp"} if rtsp_tcp and rtsp else {}
        timeouts: tuple[float, float | None] = (open_timeout, read_timeout)
        if READ_TIMEOUT_IN_FFMPEG and "://" in target:
            # PyAV's timeout works through FFmpeg's interrupt callback, which PyAV implements in Python: it takes
            # the GIL on every call, and FFmpeg calls it on every socket read. With 16 cameras that is thousands
            # of GIL acquisitions a second by capture threads running at SCHED_IDLE; one that is descheduled while
            # holding the GIL stalls the inference worker (measured: monitor_inference_thread_seconds_total
            # {state="blocked"}, README capacity). So PyAV's timeout covers only the open, and reads are bounded
            # by FFmpeg's own socket timeout (C, no GIL): rtsp's `timeout`, every other protocol's `rw_timeout`,
            # in microseconds.
            micros = str(max(1, int(read_timeout * 1_000_000)))
            options["timeout" if rtsp else "rw_timeout"] = micros
            timeouts = (open_timeout, None)
        try:
            self._container = av.open(target, options=options, timeout=timeouts)
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError, OSError) as e:
            self.error = self._redact(str(e)) if not isinstance(e, IndexError) else "no video stream"
            self.release()
            return
        # FFmpeg decoder threads, both modes (frame threads each hold pictures of their own). Unset: 1, on this
        # thread. 2 frame threads for every-frame decoding measured better at 16 x 1080p25 on 2 cores (0.97-0.99
        # of the due frames classified instead of 0.87-0.89, README capacity) but are not the default: FFmpeg's
        # frame-threaded decoder drops undecodable packets without an error, and a source sending garbage after
        # a good RTSP set-up then kept the capture inside av_read_frame for ever instead of failing at the first
        # packet (tests/test_faults_stream.py). `decode_threads: 2` opts in.
        self._threads = 1 if threads is None else max(0, int(threads))
        self._decoded = self._frames()

    def _frames(self) -> Any:
        """Decoded pictures: demux + decode, every video packet's keyframe flag noted; with a ring, every packet
        (video, and the first audio stream) also pushed into the camera's clip pre-roll."""
        if self._ring is None:
            return self._demux_and_decode(None)
        from monitor.capture.packet_ring import StreamSpec
        audio = self._container.streams.audio[0] if self._container.streams.audio else None
        self._ring.connect(StreamSpec.of(self._av, self._stream, audio))
        return self._demux_and_decode(audio)

    def _demux_and_decode(self, audio: Any) -> Any:
        ring = self._ring
        video = self._stream
        index = video.index
        if self._decoder is None:
            self._decoder = self._new_decoder(self._skipping)
        decoder = self._decoder                 # a rewind keeps the mode
        streams = (video, audio) if audio is not None else (video,)
        consumed = 0
        for packet in self._container.demux(streams):
            is_video = packet.stream_index == index
            if ring is not None:
                ring.push(packet, is_video)
            if not is_video:
                continue
            consumed += 1
            if packet.is_keyframe and packet.size:
                self._note_keyframe(packet)
                if self.keyframes_only != self._skipping:
                    # Decoders switch at a keyframe, which needs no picture before it: the one left hands over
                    # what it still holds (frame threads, B-frame reordering) and starts afresh next time.
                    wanted = self.keyframes_only
                    for frame in self._drain(decoder):
                        yield frame
                    self._skipping = wanted
                    decoder = self._decoder = self._new_decoder(wanted)     # the other one's pictures are freed
            elif self._skipping and FEED_KEYFRAMES_ONLY and packet.size and self._threads == 1 \
                    and not video.codec_context.has_b_frames:
                # Keyframes only, a stream without reordering and a decoder without frame threads (neither holds
                # pictures back): FFmpeg would parse this packet and drop it. Not handing it over saves a decode
                # call per packet, each a GIL release and re-take on this thread (64 cameras: 1,500 a second).
                continue
            for frame in decoder.decode(packet):
                self.consumed, consumed = consumed, 0
                yield frame

    @staticmethod
    def _drain(decoder: Any) -> list[Any]:
        if not decoder.is_open:
            return []
        frames = list(decoder.decode(None))
        decoder.flush_buffers()
        return frames

    def _new_decoder(self, keyframes_only: bool) -> Any:
        """A picture decoder for the stream, made from its parameters: one per mode, since FFmpeg reads
        `skip_loop_filter` only when a decoder opens, and only the current one is kept (a 1080p decoder holds
        several MB of pictures; 64 cameras with two each measured +430 MB).

        Keyframes only: FFmpeg's own skip (`skip_frame` NONKEY: other packets are parsed, not decoded, and a
        B-frame stream's reordering still works), and no deblocking (`skip_loop_filter`), about a fifth of an
        I-frame's decode (README, keyframe sampling). Skipping it is safe only there: no decoded picture is ever
        a reference for another, since every other picture is skipped, and at this size the blocking it leaves
        is below what the frame_size scaling and the network's 224x224 input keep (PSNR 54-58 dB against the
        deblocked picture on 1080p H.264 and H.265)."""
        source = self._stream.codec_context
        decoder = self._av.CodecContext.create(source.name, "r")
        decoder.extradata = source.extradata
        if source.width and source.height:          # raw and some intra codecs carry no size of their own
            decoder.width, decoder.height = source.width, source.height
        if source.pix_fmt:
            decoder.pix_fmt = source.pix_fmt
        decoder.thread_count = self._threads
        decoder.thread_type = "SLICE" if self._threads == 1 else "FRAME"
        if keyframes_only:
            decoder.options = {"skip_loop_filter": "all"} if SKIP_LOOP_FILTER else {}
            decoder.skip_frame = "NONKEY"
        return decoder

    def _note_keyframe(self, packet: Any) -> None:
        if packet.pts is not None and packet.time_base is not None:
            self._key_times.append(float(packet.pts * packet.time_base))

    @property
    def skipping(self) -> bool:
        """Only keyframes are decoded now (keyframes_only took effect at a keyframe)."""
        return self._skipping

    @property
    def keyframe_interval(self) -> float | None:
        """The stream's keyframe interval in seconds (median of the last 8), None until two keyframes came."""
        times = list(self._key_times)
        gaps = [b - a for a, b in zip(times, times[1:]) if b > a]
        return statistics.median(gaps) if gaps else None

    def _redact(self, text: str) -> str:
        # FFmpeg's exceptions quote the URL as given ("Connection refused: 'rtsp://user:pw@cam/?token=...'")
        return redact_url(text.replace(self._target, redact_url(self._target)))

    def isOpened(self) -> bool:
        return self._decoded is not None

    def grab(self) -> bool:
        """Decode the next picture; False at the end of the input or on any error (the camera loop decides)."""
        if self._decoded is None:
            return False
        try:
            self._frame = next(self._decoded)
            return True
        except StopIteration:
            self._frame = None
            return False
        except (self._av.error.FFmpegError, OSError) as e:
            self.error = self._redact(str(e))
            self._frame = None
            return False

    def retrieve(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray | None]:
        """The grabbed picture as BGR at `size` (or its own size), written into `image` when the shape fits."""
        frame = self._frame
        if frame is None:
            return False, None
        width, height = self._size or (frame.width, frame.height)
        if (I420_IN_PLACE and (width, height) == (frame.width, frame.height) and frame.format.name == "yuv420p"
                and not (width % 2 or height % 2)):
            return True, self._i420_to_bgr(frame, image)
        converted = self._reformatter.reformat(frame, width, height, "bgr24", threads=1).to_ndarray()
        if image is not None and image.shape == converted.shape:
            np.copyto(image, converted)
            return True, image
        return True, np.ascontiguousarray(converted)

    def _i420_to_bgr(self, frame: Any, image: np.ndarray | None) -> np.ndarray:
        """A full-size yuv420p picture to BGR, into `image` when it fits, with no allocation.

        Why not swscale here: PyAV's reformat() allocates a new picture for every conversion, and its release
        (free, munmap of a 6 MB block, with the GIL held in PyAV's dealloc) plus the copy out of it were the
        largest GIL holders of the capture threads at 16 x 1080p (py-spy --gil, README capacity). The three planes
        are copied into one reused I420 buffer (numpy copies without the GIL) and OpenCV converts it straight into
        the camera's pooled array (cv2 releases the GIL), with the BT.601 limited-range conversion that swscale
        and OpenCV's own capture use for untagged streams."""
        width, height = frame.width, frame.height
        if self._i420 is None or self._i420.shape != (height * 3 // 2, width):
            self._i420 = np.empty((height * 3 // 2, width), np.uint8)
        flat = self._i420.reshape(-1)
        luma, chroma = width * height, (width // 2) * (height // 2)
        targets = (flat[:luma].reshape(height, width),
                   flat[luma:luma + chroma].reshape(height // 2, width // 2),
                   flat[luma + chroma:].reshape(height // 2, width // 2))
        for plane, target in zip(frame.planes, targets):
            rows, cols = target.shape
            np.copyto(target, np.ndarray((rows, cols), np.uint8, buffer=plane, strides=(plane.line_size, 1)))
        if image is not None and image.shape == (height, width, 3):
            return cv2.cvtColor(self._i420, cv2.COLOR_YUV2BGR_I420, dst=image)
        return cv2.cvtColor(self._i420, cv2.COLOR_YUV2BGR_I420)

    def get(self, prop: int) -> float:
        if self._decoded is None:
            return 0.0
        if prop == cv2.CAP_PROP_FPS:
            rate = self._stream.average_rate or self._stream.guessed_rate
            return float(rate) if rate else 0.0
        return 0.0       # CAP_PROP_HW_ACCELERATION and the rest: software decoding, nothing else to report

    def set(self, prop: int, value: float) -> bool:
        """Only a rewind to the start (files that loop)."""
        if self._decoded is None or prop != cv2.CAP_PROP_POS_FRAMES or value != 0:
            return False
        try:
            self._container.seek(0)
        except (self._av.error.FFmpegError, OSError):
            return False
        if self._ring is not None:
            self._ring.discontinuity()
        self._key_times.clear()                 # a rewound file's timestamps start again
        if self._decoder is not None and self._decoder.is_open:
            self._decoder.flush_buffers()       # seek() flushes only the stream's own decoder, not used here
        self._decoded = self._demux_and_decode(
            self._container.streams.audio[0] if self._ring is not None and self._container.streams.audio else None)
        return True

    def release(self) -> None:
        self._frame = None
        self._decoded = None
        self._decoder = None
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None
