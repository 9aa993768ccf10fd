"""STAND-IN for NVML (``pynvml`` from nvidia-ml-py), tests only: this machine has no NVIDIA GPU.

Exposes the calls ``kit.energy.Nvml`` makes, with NVML's units: each device's total energy
since the driver loaded, in millijoules, advanced by a fixed step per read (not measured),
so a test can assert what the kit computes.
"""

from __future__ import annotations


class NVMLError(Exception):
    pass


class FakeNvml:
    def __init__(self, devices: int = 2, step_mj: int = 250_000, start_mj: int = 10**12, supported: bool = True):
        self.devices, self.step_mj, self.supported = devices, step_mj, supported
        self.energy_mj = [start_mj + i for i in range(devices)]
        self.initialized = 0

    def nvmlInit(self):
        self.initialized += 1

    def nvmlShutdown(self):
        self.initialized -= 1

    def nvmlDeviceGetCount(self):
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < self.devices:
            raise NVMLError("Invalid Argument")
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.supported:
            raise NVMLError("Not Supported")
        self.energy_mj[handle] += self.step_mj
        return self.energy_mj[handle]
