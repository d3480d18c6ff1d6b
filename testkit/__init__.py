"""Test and reliability tooling shared by tests/ and scripts/: the RTSP test server, footage readers, fault
injectors. Not part of the installed package."""
