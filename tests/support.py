"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import socket

import numpy as np


def free_ports(n: int = 1) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open while choosing, so no repeats)."""
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tone(seconds: float, sample_rate: int, f0: float = 150.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A harmonic-rich, speech-band test signal with a little noise, peak 0.5."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12) if f0 * k < sample_rate / 2)
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    wave = wave + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    wave = (0.5 * wave / np.max(np.abs(wave))).astype(np.float32)
    return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave
