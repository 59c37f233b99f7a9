"""The panel's commands as the reader reports them, and the rule that reads a decision from an LED command.

Pure functions over libosdp's command dicts (``{"command": id, …}``); no secret leaves them: a
KEYSET summary says only that a key came, never the key.

The panel's decision (surfaced as ``panel_granted`` / ``panel_denied``) is read from the first
*decisive* LED command after the reader's card read was collected, within ``osdp.panel_decision_s``:

* an LED command that sets a state (``control_code`` not 0: a temporary or a permanent state, not
  "cancel temporary") and whose ``on_color`` is **green** → granted;
* the same with ``on_color`` **red** → denied;
* any other colour (amber, blue, …, black = off), a cancel, a buzzer or a text → no decision; the
  window stays open for the next LED command.

Colour numbers are OSDP's (``osdp_LED`` colour codes 0-7), the same as libosdp's ``LED_COLOR_*``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

#: OSDP LED colour codes.
LED_COLORS = {0: "black", 1: "red", 2: "green", 3: "amber", 4: "blue", 5: "magenta", 6: "cyan", 7: "white"}
GREEN, RED = 2, 1
#: Longest panel text kept in ``…/state`` (an OSDP text command holds at most 32 characters).
MAX_TEXT = 64

_INT_FIELDS = {
    "led": ("reader", "led_number", "control_code", "on_count", "off_count", "timer_count"),
    "buzzer": ("reader", "control_code", "on_count", "off_count", "rep_count"),
    "text": ("reader", "control_code", "temp_time", "offset_row", "offset_col"),
    "output": ("output_no", "control_code", "timer_count"),
    "comset": ("address", "baud_rate"),
    "comset_done": ("address", "baud_rate"),
    "keyset": ("type",),
    "manufacturer": ("vendor_code",),
    "file_transfer": ("id", "flags"),
    "status": ("type",),
}


def color_name(code: Any) -> str:
    """The name of an OSDP colour code (``color_9`` for one outside the standard's eight)."""
    return LED_COLORS.get(code, f"color_{code}") if isinstance(code, int) else "unknown"


def summarize(kind: str, command: Mapping[str, Any]) -> Dict[str, Any]:
    """A JSON-ready, secret-free summary of one panel command of ``kind`` (``led``, ``keyset``, …)."""
    summary: Dict[str, Any] = {"command": kind}
    for field in _INT_FIELDS.get(kind, ()):
        value = command.get(field)
        if isinstance(value, int):
            summary[field] = value
    if kind == "led":
        summary["on_color"] = color_name(command.get("on_color"))
        summary["off_color"] = color_name(command.get("off_color"))
        summary["temporary"] = bool(command.get("temporary", False))
        if command.get("cancel_temporary"):
            summary["cancel_temporary"] = True
    elif kind == "text":
        text = command.get("data")
        summary["text"] = text[:MAX_TEXT] if isinstance(text, str) else ""
    elif kind in ("manufacturer", "keyset"):
        data = command.get("data")
        summary["length"] = len(data) if isinstance(data, (bytes, bytearray)) else 0
    return summary


def verdict(kind: str, command: Mapping[str, Any]) -> Optional[str]:
    """``"granted"`` / ``"denied"`` when ``command`` is a decisive green / red LED command, else ``None``."""
    if kind != "led" or command.get("cancel_temporary"):
        return None
    if not command.get("control_code"):
        return None  # "no change"
    color = command.get("on_color")
    if color == GREEN:
        return "granted"
    if color == RED:
        return "denied"
    return None


__all__ = ["GREEN", "LED_COLORS", "RED", "color_name", "summarize", "verdict"]
