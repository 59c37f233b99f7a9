"""Model updates: signed model packages, their transfer over CAN (UDS), staging and the model swap.

Sub-modules are imported where they are used (``appliance.updates.package`` needs ONNX, the UDS
server python-can), so importing this package costs nothing.
"""
