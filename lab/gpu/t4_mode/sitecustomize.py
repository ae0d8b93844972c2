"""On PYTHONPATH with MEDICAL_R1_T4=1, every Python process (papermill's kernels too) sees a T4: t4_device.py."""
import os

if os.environ.get("MEDICAL_R1_T4") == "1":
    import t4_device

    t4_device.install()
