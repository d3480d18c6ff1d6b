"""monitor: a real-time camera monitoring daemon."""
from __future__ import annotations

import os

__version__ = "0.1.0"

# torch 2.13 prints a C++ deprecation warning for every quantized tensor creation path (torch.ao moves to
# torchao); it says nothing about our run and would repeat in every journal line. Real errors still print.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
# OpenCV's per-open warnings (e.g. "all OpenCV locks removed", FFmpeg stream chatter) would flood the journal;
# errors still print. Must be set before cv2 is first imported.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
