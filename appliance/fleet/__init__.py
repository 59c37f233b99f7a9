"""A fleet of doors kept in step through the MQTT broker: signed, encrypted, retained records per identity.

``records`` is the format both sides share; ``authority`` is the operator's side (``face-appliance
fleet …``); ``member`` is the door's side (the daemon with ``[fleet]`` configured).
"""
