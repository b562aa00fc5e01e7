"""Shared pytest setup.

Test rules (every module follows them): sockets only on 127.0.0.1 with port 0;
real aiohttp servers, the embedded Durable Streams server, or the real
reference server (marker ``realserver``); every test has a hard timeout
(pytest-timeout, 60 s by default in pyproject.toml, shorter where marked);
time-dependent logic runs on a ManualClock instead of sleeping.
"""

pytest_plugins = ["fixtures_servers"]
