"""The face access appliance: daemon, command line and the parts they are made of."""

__version__ = "0.1.0"
